//! How many file descriptors this process may open, read from `/proc/self/limits`, and
//! whether a run fits under that limit: a baseline that needs one connection per channel
//! ([`too_many`]), or the plexus nodes of each process ([`check_nodes`]), which are refused
//! before anything starts rather than failing link after link for want of descriptors.
//!
//! A plexus node holds its listener and one socket per peer (every other node of its jobs:
//! both directions share one link); while both ends of a link dial at once it briefly holds
//! two, which [`node_fds`] allows for with a sixteenth more. A process adds
//! [`PROCESS_ALLOWANCE`] for its own (stdio, the runtime's poller and wakers, files read
//! under /proc, pipes to node processes). A link between two nodes of one process costs two
//! descriptors there, one for each end, and is counted once for each.
//!
//! Through agents (`--agent`, [`check_attached`]), an agent holds its node's sockets, its
//! Unix listener and one Unix connection per endpoint process attached to it, and the
//! bench two pipes per endpoint process and one per agent.
//!
//! Invariants: the soft limit ("Max open files", first number) is the one that counts (the
//! bench does not raise it); `unlimited` reads as `u64::MAX`; an unreadable or malformed file
//! gives `None`, never a guessed number, and then nothing is skipped or refused for want of
//! descriptors.

use super::shape::Shape;

/// Share of the soft limit a baseline may plan to use; the rest is left for the runtime,
/// listeners and whatever else the process holds.
const USABLE_SHARE: f64 = 0.9;

/// Descriptors a process holds besides its nodes' sockets.
const PROCESS_ALLOWANCE: u64 = 64;

/// One link in this many is counted twice, for dials that cross.
const CROSSING_DIALS: u64 = 16;

/// The limits of open files of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// What the process may open now.
    pub soft: u64,
    /// What the soft limit may be raised to (`ulimit -n`).
    pub hard: u64,
}

/// This process's limits of open files, if `/proc/self/limits` tells them.
pub fn open_files() -> Option<OpenFiles> {
    parse_open_files(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// This process's soft limit of open files, if `/proc/self/limits` tells it.
pub fn soft_limit() -> Option<u64> {
    open_files().map(|l| l.soft)
}

/// The limits in the `Max open files` line of a `/proc/<pid>/limits` text.
pub fn parse_open_files(text: &str) -> Option<OpenFiles> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let mut next = || match fields.next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    Some(OpenFiles {
        soft: next()?,
        hard: next()?,
    })
}

/// Why a run needing `connections` TCP connections with both ends in this process (and
/// `per_connection` descriptors for each) cannot run under `limit`: `None` if it fits.
pub fn too_many(connections: u64, per_connection: u64, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    let fds = connections.saturating_mul(per_connection);
    if (fds as f64) <= limit as f64 * USABLE_SHARE {
        return None;
    }
    Some(format!(
        "skipped: would need {connections} connections ({fds} file descriptors in one process), the fd limit is {limit}"
    ))
}

/// Descriptors a plexus node with `links` peers needs: its listener, a socket per link,
/// and room for dials that cross.
pub fn node_fds(links: u64) -> u64 {
    1 + links + links.div_ceil(CROSSING_DIALS)
}

/// Links each node of `shape` holds: a peer for every other node of its jobs. Counted as
/// `min(n − 1, k_v · (N − 1))` for a node in `k_v` jobs: exact when every job spans every
/// node or a node is in one job, and never less than the truth.
pub fn links_per_node(shape: &Shape) -> Vec<u64> {
    let mut jobs_of = vec![0u64; shape.nodes() as usize];
    for j in 0..shape.jobs() {
        for node in shape.job_nodes(j) {
            if let Some(count) = jobs_of.get_mut(node.0 as usize) {
                *count += 1;
            }
        }
    }
    let others = u64::from(shape.nodes()) - 1;
    let peers_per_job = u64::from(shape.nodes_per_job()) - 1;
    jobs_of
        .into_iter()
        .map(|k| others.min(k * peers_per_job))
        .collect()
}

/// Refuses a run whose processes cannot hold their nodes' sockets under `limits`: every
/// node in this process (`group` is `None`), or with `--spawn` `group` consecutive nodes
/// in each node process (which inherit this process's limits) and a pair of pipes per node
/// process here. Nothing is refused when the limits are unknown.
pub fn check_nodes(
    shape: &Shape,
    group: Option<u32>,
    limits: Option<OpenFiles>,
) -> Result<(), String> {
    let Some(limits) = limits else {
        return Ok(());
    };
    let links = links_per_node(shape);
    let size = group.unwrap_or(shape.nodes()).max(1) as usize;
    let (need, busiest) = links
        .chunks(size)
        .map(|nodes| {
            let fds = nodes.iter().map(|&l| node_fds(l)).sum::<u64>();
            (PROCESS_ALLOWANCE + fds, nodes.len())
        })
        .max()
        .unwrap_or((0, 0));
    let links_max = links.iter().copied().max().unwrap_or(0);
    let raise = if limits.soft < limits.hard {
        format!(", or raise the limit (ulimit -n, up to {})", limits.hard)
    } else {
        String::new()
    };
    if need > limits.soft {
        let fit = (limits.soft.saturating_sub(PROCESS_ALLOWANCE)) / node_fds(links_max);
        let way_out = if fit == 0 {
            format!(
                "Not even one node fits: raise the limit (ulimit -n; the hard limit is {})",
                limits.hard
            )
        } else {
            format!("Use --spawn --nodes-per-process G (G ≤ {fit}){raise}")
        };
        let (who, may) = match group {
            None => ("in one process", "this process"),
            Some(_) => ("in one node process", "a node process"),
        };
        return Err(format!(
            "{busiest} nodes {who} need about {need} file descriptors ({links_max} links per node); {may} may open {}. {way_out}",
            limits.soft
        ));
    }
    if let Some(group) = group {
        let processes = u64::from(shape.nodes().div_ceil(group.max(1)));
        let need = PROCESS_ALLOWANCE + 2 * processes;
        if need > limits.soft {
            return Err(format!(
                "{processes} node processes need about {need} file descriptors in this process (two pipes each); it may open {}. Use a larger --nodes-per-process{raise}",
                limits.soft
            ));
        }
    }
    Ok(())
}

/// Refuses a run through agents (`--agent`) whose processes cannot hold their descriptors
/// under `limits` (which the agents inherit): the busiest agent, and this process with its
/// pipes. Nothing is refused when the limits are unknown.
pub fn check_attached(shape: &Shape, limits: Option<OpenFiles>) -> Result<(), String> {
    let Some(limits) = limits else {
        return Ok(());
    };
    let endpoints = shape.endpoints();
    let mut attached = vec![0u64; shape.nodes() as usize];
    for e in &endpoints {
        if let Some(count) = attached.get_mut(e.node as usize) {
            *count += 1;
        }
    }
    let busiest = links_per_node(shape)
        .into_iter()
        .zip(attached)
        .enumerate()
        .map(|(node, (links, attached))| {
            let need = PROCESS_ALLOWANCE + node_fds(links) + 1 + attached;
            (need, node, links, attached)
        })
        .max();
    if let Some((need, node, links, attached)) = busiest.filter(|b| b.0 > limits.soft) {
        return Err(format!(
            "the agent of node {node} needs about {need} file descriptors ({links} links, {attached} attached endpoint processes); a process may open {}",
            limits.soft
        ));
    }
    let need = PROCESS_ALLOWANCE + 2 * endpoints.len() as u64 + u64::from(shape.nodes());
    if need > limits.soft {
        return Err(format!(
            "{} endpoint processes and {} agents need about {need} file descriptors in this process (two pipes per endpoint process, one per agent); it may open {}",
            endpoints.len(),
            shape.nodes(),
            limits.soft
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::shape::tests::spec;
    use super::*;

    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max open files            1024                 524288               files     \n";

    fn shape(nodes: u32, nodes_per_job: Option<u32>, jobs: u32) -> Shape {
        Shape::new(spec(nodes, nodes_per_job, jobs)).expect("valid shape")
    }

    fn limits(soft: u64, hard: u64) -> Option<OpenFiles> {
        Some(OpenFiles { soft, hard })
    }

    #[test]
    fn reads_the_limits() {
        let both = OpenFiles {
            soft: 1024,
            hard: 524_288,
        };
        assert_eq!(parse_open_files(LIMITS), Some(both));
        let unlimited = LIMITS.replace("1024   ", "unlimited");
        assert_eq!(parse_open_files(&unlimited).map(|l| l.soft), Some(u64::MAX));
        assert_eq!(parse_open_files("Max cpu time 1 1 seconds"), None);
        assert_eq!(parse_open_files("Max open files  lots"), None);
        assert_eq!(parse_open_files("Max open files  10"), None);
    }

    #[test]
    fn skips_only_past_ninety_percent() {
        assert_eq!(too_many(460, 2, Some(1024)), None);
        let note = too_many(512, 2, Some(1024)).expect("over the limit");
        assert_eq!(
            note,
            "skipped: would need 512 connections (1024 file descriptors in one process), the fd limit is 1024"
        );
        assert_eq!(too_many(1 << 40, 2, None), None);
    }

    #[test]
    fn links_count_the_peers_of_every_job() {
        assert_eq!(links_per_node(&shape(5, None, 3)), [4; 5]);
        // Jobs of 2 of 5 nodes: node 0 is in jobs 0 and 2, node 3 in job 1 only.
        assert_eq!(links_per_node(&shape(5, Some(2), 3)), [2, 1, 1, 1, 1]);
    }

    #[test]
    fn refuses_what_one_process_cannot_hold_and_says_how_many_fit() {
        let big = shape(300, None, 2);
        // 299 links: 1 + 299 + 19 = 319 per node; 300 nodes and 64 = 95764.
        let error = check_nodes(&big, None, limits(20_000, 20_000)).expect_err("too many");
        assert_eq!(
            error,
            "300 nodes in one process need about 95764 file descriptors (299 links per node); this process may open 20000. Use --spawn --nodes-per-process G (G ≤ 62)"
        );
        assert!(check_nodes(&big, Some(62), limits(20_000, 20_000)).is_ok());
        let error = check_nodes(&big, Some(63), limits(20_000, 40_000)).expect_err("63 too many");
        assert!(
            error.starts_with("63 nodes in one node process need about")
                && error.ends_with("(G ≤ 62), or raise the limit (ulimit -n, up to 40000)"),
            "{error}"
        );
        assert!(check_nodes(&big, None, None).is_ok());
    }

    #[test]
    fn agents_count_their_attached_processes_and_the_bench_its_pipes() {
        // 4 nodes, 2 jobs, 2 + 3 endpoints per node and job: 40 endpoint processes.
        let s = shape(4, None, 2);
        assert!(check_attached(&s, limits(1024, 1024)).is_ok());
        assert!(check_attached(&s, None).is_ok());
        // An agent: 64 + (1 + 3 + 1) + 1 + 10 = 80; the bench: 64 + 80 + 4 = 148.
        let error = check_attached(&s, limits(79, 79)).expect_err("agent");
        assert!(error.starts_with("the agent of node"), "{error}");
        let error = check_attached(&s, limits(100, 100)).expect_err("pipes");
        assert!(
            error.starts_with("40 endpoint processes and 4 agents need about 148"),
            "{error}"
        );
    }

    #[test]
    fn a_thousand_nodes_fit_sixteen_per_process_under_twenty_thousand() {
        let fleet = shape(1000, None, 1);
        let under = limits(20_000, 20_000);
        assert!(check_nodes(&fleet, Some(16), under).is_ok());
        assert!(check_nodes(&fleet, Some(20), under).is_err());
        let error = check_nodes(&fleet, Some(1), limits(900, 900)).expect_err("one is too many");
        assert!(error.contains("Not even one node fits"), "{error}");
        // Alone, a node fits in 2000; but the coordinator holds two pipes per node process.
        let error = check_nodes(&fleet, Some(1), limits(2000, 2000)).expect_err("pipes");
        assert!(
            error.starts_with("1000 node processes need about 2064"),
            "{error}"
        );
    }
}
