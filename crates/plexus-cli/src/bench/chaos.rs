//! Chaos: aborting live links from outside the nodes, the way an operator would. Every
//! period one pair of node addresses with an established TCP connection is picked at
//! random from the OS socket table (`/proc/net/tcp`, plus IPv4-mapped entries of
//! `/proc/net/tcp6`), and `ss -K` (iproute2) destroys its sockets, which resets the peer.
//!
//! Invariants: only connections whose both ends are node addresses are touched; a kill
//! counts as successful only if `ss` exits with success and lists at least one socket it
//! destroyed; the table parser is lenient (malformed lines are skipped, never an error).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::sockets;
use tokio::task::JoinHandle;

use super::roles::wall_ms;
use super::workload::splitmix64;

/// Fails with a clear message unless `ss` (iproute2) can be run.
pub fn check_ss() -> Result<(), String> {
    check_tool("--chaos-link-kill-ms", "ss", "-V", "iproute2")
}

/// Fails with a message saying that `what` needs `program` (from `package`) unless
/// `program version_flag` runs and succeeds.
pub fn check_tool(
    what: &str,
    program: &str,
    version_flag: &str,
    package: &str,
) -> Result<(), String> {
    match Command::new(program).arg(version_flag).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{what} needs `{program}` from {package}, but `{program} {version_flag}` failed ({})",
            out.status
        )),
        Err(e) => Err(format!(
            "{what} needs `{program}` from {package} on the PATH: {e}"
        )),
    }
}

/// A running link killer.
pub struct Chaos {
    task: JoinHandle<()>,
    kills: Arc<AtomicU64>,
}

/// A running link killer of the kind a shape's links need: `ss -K` for TCP, packets
/// dropped for a while for QUIC ([`super::udp_cut`]).
pub enum LinkChaos {
    /// TCP links.
    Tcp(Chaos),
    /// QUIC links.
    Udp(super::udp_cut::UdpChaos),
}

impl LinkChaos {
    /// Starts killing one random link between the nodes of `shape` every `period`.
    pub fn start(shape: &super::shape::Shape, period: Duration) -> LinkChaos {
        match shape.transport() {
            plexus::Transport::Tcp => LinkChaos::Tcp(Chaos::start(shape.node_ips(), period)),
            plexus::Transport::Quic => {
                LinkChaos::Udp(super::udp_cut::UdpChaos::start(shape.node_ips(), period))
            }
        }
    }

    /// Stops killing and returns how many kills succeeded.
    pub fn stop(self) -> u64 {
        match self {
            LinkChaos::Tcp(chaos) => chaos.stop(),
            LinkChaos::Udp(chaos) => chaos.stop(),
        }
    }
}

impl Chaos {
    /// Starts killing one random live link between `ips` every `period`.
    pub fn start(ips: Vec<Ipv4Addr>, period: Duration) -> Chaos {
        let kills = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(kill_links(ips, period, kills.clone()));
        Chaos { task, kills }
    }

    /// Stops killing and returns how many kills succeeded.
    pub fn stop(self) -> u64 {
        self.task.abort();
        self.kills.load(Ordering::Relaxed)
    }
}

async fn kill_links(ips: Vec<Ipv4Addr>, period: Duration, kills: Arc<AtomicU64>) {
    let mut rng = wall_ms() ^ u64::from(std::process::id()).rotate_left(32);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let ips = ips.clone();
        let pick = splitmix64(&mut rng);
        let killed = tokio::task::spawn_blocking(move || {
            let pairs = node_pairs(&sockets::established_pairs(), &ips);
            let len = u64::try_from(pairs.len()).ok().filter(|&l| l > 0)?;
            let (a, b) = *pairs.get(usize::try_from(pick % len).ok()?)?;
            // Either end will do; alternate with the pick's top bit.
            let (src, dst) = if pick >> 63 == 0 { (a, b) } else { (b, a) };
            Some(kill_link(src, dst))
        })
        .await;
        match killed {
            Ok(Some(true)) => {
                kills.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(false)) => tracing::warn!("ss -K destroyed no socket"),
            Ok(None) | Err(_) => {}
        }
    }
}

/// Destroys the TCP sockets from `src` to `dst` with `ss -K`; whether any was destroyed.
fn kill_link(src: Ipv4Addr, dst: Ipv4Addr) -> bool {
    let out = Command::new("ss")
        .args(["-H", "-K", "-t", "src"])
        .arg(src.to_string())
        .arg("dst")
        .arg(dst.to_string())
        .output();
    match out {
        Ok(out) => {
            tracing::info!(%src, %dst, status = %out.status, "ss -K");
            out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot run ss");
            false
        }
    }
}

/// The unordered pairs of distinct addresses of `ips` with an established connection
/// between them, sorted.
fn node_pairs(pairs: &[(Ipv4Addr, Ipv4Addr)], ips: &[Ipv4Addr]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    pairs
        .iter()
        .filter(|(a, b)| a != b && ips.contains(a) && ips.contains(b))
        .map(|&(a, b)| (a.min(b), a.max(b)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_distinct_node_pairs_once() {
        let ip = |d| Ipv4Addr::new(127, 0, 0, d);
        let pairs = [
            (ip(1), ip(2)),
            (ip(2), ip(1)),
            (ip(3), ip(3)),
            (ip(1), ip(9)),
            (ip(3), ip(1)),
        ];
        let nodes = [ip(1), ip(2), ip(3)];
        assert_eq!(node_pairs(&pairs, &nodes), [(ip(1), ip(2)), (ip(1), ip(3))]);
    }
}
