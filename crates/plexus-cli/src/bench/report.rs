//! The bench's results: one JSON object, or a human summary.
//!
//! Invariants: the JSON object has the same fields whichever mode ran the nodes (in this
//! process, one process per node with `--spawn`, or agents with `--agent`); optional figures are `null`, never
//! left out, except `errors`, present only when there are some, and the comparisons with
//! `--baseline` systems (`ratio_vs_<system>`, `msgs_ratio_vs_<system>`), present for each
//! system asked for.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::arrival::ArrivalOrder;
use super::baseline::BaselineResult;
use super::consume::ConsumeMode;
use super::shape::Shape;
use super::size::format_bytes;
use super::timeline::Series;
use super::verdict::KilledEndpoint;

/// Everything a bench run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every consumer got every message of every producer exactly once, in order, intact;
    /// with `--baseline`, over every system that ran too.
    pub verified: bool,
    /// Why the run did not verify, if it did not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The run's shape.
    #[serde(flatten)]
    pub shape: ShapeFields,
    /// Size of every message but a channel's last, header included.
    pub message_size: u64,
    /// How every consumer read its job's producers: `interleaved`, `merge` or
    /// `build-then-probe`.
    pub consume_mode: ConsumeMode,
    /// The order in which each node asked for its jobs: `same` or `per-node-random`.
    pub arrival_order: ArrivalOrder,
    /// The seed of the run's randomness (`--seed`, or taken from the clock).
    pub seed: u64,
    /// Waves of `jobs` jobs, run one after another on the same nodes.
    pub waves: u32,
    /// Jobs of every wave: `waves · jobs`.
    pub jobs_total: u64,
    /// Payload bytes delivered to consumers, over every wave.
    pub bytes_total: u64,
    /// Messages delivered to consumers.
    pub messages_total: u64,
    /// From the start of the endpoints to the end of the last one.
    pub elapsed_s: f64,
    /// `bytes_total / elapsed_s`.
    pub throughput_bytes_per_s: f64,
    /// The least goodput any node's consumers received, in bytes per second, from every
    /// producer (their own node's included).
    pub node_received_bytes_per_s_min: Option<f64>,
    /// The same, counting only what came from other nodes (the part a node's network
    /// interface carried in): to compare with a line rate.
    pub node_network_received_bytes_per_s_min: Option<f64>,
    /// `messages_total / elapsed_s`.
    pub messages_per_s: f64,
    /// With an ordered `consume_mode`, the throughput of the same shape read interleaved,
    /// run right after this one (`null` otherwise, or if this run did not verify).
    pub interleaved_throughput_bytes_per_s: Option<f64>,
    /// `throughput_bytes_per_s / interleaved_throughput_bytes_per_s` (`null` without it).
    pub ratio_vs_interleaved: Option<f64>,
    /// Median over the completed jobs of the time from the first endpoint of the job opened
    /// on any node to its last consumer ended, in ms (`null` without such jobs).
    pub job_latency_ms_p50: Option<f64>,
    /// 99th percentile of the same.
    pub job_latency_ms_p99: Option<f64>,
    /// (resident memory after the last wave − after the first tenth of the waves) / jobs
    /// run in between, in bytes; may be negative. Read from `VmRSS` of this process, or
    /// with `--spawn` summed over the node processes; `null` with fewer than two waves.
    pub rss_growth_bytes_per_job: Option<f64>,
    /// Most established TCP connections any node's address held, from /proc/net/tcp.
    pub links_per_node_max: usize,
    /// Connections a node would need with one connection per producer-consumer pair: the
    /// maximum over nodes v of k_v · (m_p·N·m_c + m_c·N·m_p), where k_v is the number of
    /// jobs using v (every producer connects to each of its job's N·m_c consumers, every
    /// consumer to each of its N·m_p producers). With every node in every job and
    /// m_p = m_c = m this is 2·k·m·(m·n).
    pub naive_connections_per_node: u64,
    /// Consumers that stalled.
    pub stalled_consumers: u32,
    /// Bytes received by consumers that did not stall, per second until the last of them
    /// finished.
    pub healthy_throughput_bytes_per_s: f64,
    /// Until the last consumer that did not stall finished.
    pub healthy_elapsed_s: f64,
    /// Peak bytes granted and not yet read, for any one stalled consumer: an upper bound of
    /// what its channels held anywhere (sender queues, sockets, receive queue).
    pub stalled_buffered_bytes_max: u64,
    /// The largest peak of credit outstanding of any consumer, stalled or not, read when it
    /// ended: an upper bound of what its channels ever held, unread ones included. Never
    /// above `credit_pool_bytes` (the run fails otherwise).
    pub consumer_held_bytes_max: u64,
    /// Each consumer's credit pool.
    pub credit_pool_bytes: u64,
    /// Peak resident memory (`VmHWM`) of the bench process, or with `--spawn` the largest
    /// peak of the node processes.
    pub rss_peak_bytes: u64,
    /// Peak resident memory of each process that ran nodes, in process order (with
    /// `--spawn`, process i runs the i-th group of `--nodes-per-process` nodes); `null` for
    /// a process that did not report it (the killed one).
    pub rss_peak_bytes_per_process: Vec<Option<u64>>,
    /// OS processes that ran nodes: 1, or with `--spawn` one per group of
    /// `--nodes-per-process` nodes, or with `--agent` one agent per node.
    pub processes: usize,
    /// Agent processes (`plexus agent`), one per node, with `--agent`; 0 otherwise.
    pub agents: usize,
    /// Processes that each ran one endpoint attached to its node's agent, with `--agent`;
    /// 0 otherwise.
    pub endpoint_processes: usize,
    /// Jobs whose every endpoint finished without error and whose every consumer verified.
    pub jobs_completed: u32,
    /// Jobs that did not complete (the ids are in `failed_job_ids`). A job that uses the
    /// killed node is expected to fail; any other failure, or a job that used it and did not
    /// fail cleanly, is listed in `errors`.
    pub jobs_failed: u32,
    /// Ids of the jobs that did not complete (job index + 1).
    pub failed_job_ids: Vec<u64>,
    /// Ids of the jobs that use the killed node: those expected to fail.
    pub affected_job_ids: Vec<u64>,
    /// The node whose process (or with `--agent`, whose agent) was killed
    /// (`--kill-node`), if it was.
    pub killed_node: Option<u32>,
    /// The endpoint whose process was killed (`--agent --kill-endpoint`), if it was.
    pub killed_endpoint: Option<KilledEndpoint>,
    /// Max over the endpoints of affected jobs on surviving nodes of (time the endpoint saw
    /// its error − time of the kill), in ms; `null` without a kill (or without such errors).
    pub failure_detect_ms_max: Option<u64>,
    /// Links aborted from outside by `--chaos-link-kill-ms` (`ss -K` destroyed a socket).
    pub link_kills: u64,
    /// With `--impostor`: handshakes an outsider without the cluster's secret tried
    /// against the nodes during the run (`null` without).
    pub impostor_attempts: Option<u64>,
    /// Of those, refused as unauthenticated (any other outcome fails the run).
    pub impostor_refused: Option<u64>,
    /// Times a link came back after a failure and traffic resumed, summed over the nodes:
    /// each end of a link counts its own resume (`plexus::Node::resume_times`).
    pub link_resumes: usize,
    /// Median time a link was down until traffic resumed, in ms (`null` without resumes).
    pub resume_ms_p50: Option<f64>,
    /// 99th percentile of the same (`null` without resumes).
    pub resume_ms_p99: Option<f64>,
    /// Each node's memory budget (`--memory-budget`), if any.
    pub memory_budget_bytes: Option<u64>,
    /// The most bytes any node had buffered at once: data queued to send or kept until
    /// acknowledged, plus credit its consumers granted and had not got back. Never above
    /// the budget.
    pub peak_buffered_bytes: u64,
    /// The longest any job waited for admission on any node, in ms.
    pub admission_wait_ms_max: f64,
    /// The same workload over the `--baseline` systems, in the order they ran.
    pub baselines: Vec<BaselineResult>,
    /// For each baseline system: `ratio_vs_<system>`, plexus's throughput divided by the
    /// system's, and `msgs_ratio_vs_<system>`, the same for messages per second (`null`
    /// unless the system ran and verified).
    #[serde(flatten)]
    pub comparisons: BTreeMap<String, Option<f64>>,
    /// Bytes delivered over time to healthy and to stalled consumers, if sampled
    /// (`--report`); not part of the JSON object.
    #[serde(skip)]
    pub timeline: Option<Series>,
}

/// The shape of a run, as every report gives it (flattened into the report's object).
#[derive(Clone, Debug, Serialize)]
pub struct ShapeFields {
    /// Nodes in the cluster (n).
    pub nodes: u32,
    /// Nodes each job uses (N), spread round robin: job j uses nodes (j·N + i) mod n.
    pub nodes_per_job: u32,
    /// Producers per node and job (m_p).
    pub producers_per_node: u32,
    /// Consumers per node and job (m_c).
    pub consumers_per_node: u32,
    /// Jobs (k).
    pub jobs: u32,
    /// Logical channels: k · (N·m_p) · (N·m_c).
    pub channels: u64,
}

impl ShapeFields {
    /// The fields of `shape`.
    pub fn of(shape: &Shape) -> ShapeFields {
        ShapeFields {
            nodes: shape.nodes(),
            nodes_per_job: shape.nodes_per_job(),
            producers_per_node: shape.producers(),
            consumers_per_node: shape.consumers(),
            jobs: shape.jobs(),
            channels: shape.channels(),
        }
    }
}

/// The summary's "k jobs × N of n nodes × (m_p producers + m_c consumers) = c channels".
impl fmt::Display for ShapeFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} jobs × {} of {} nodes × ({} producers + {} consumers) = {} channels",
            self.jobs,
            self.nodes_per_job,
            self.nodes,
            self.producers_per_node,
            self.consumers_per_node,
            self.channels
        )
    }
}

/// Prints `report` as exactly one line of JSON on stdout.
pub fn print_json(report: &impl Serialize) {
    match serde_json::to_string(report) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("plexus bench: cannot encode the report: {e}"),
    }
}

impl Report {
    /// Prints the report: JSON on stdout, or a summary for people.
    pub fn print(&self, json: bool) {
        if json {
            print_json(self);
            return;
        }
        let verdict = if self.verified { "VERIFIED" } else { "FAILED" };
        if self.agents > 0 {
            println!(
                "plexus bench: {verdict}: {}, through {} agents, every endpoint in a process of its own ({})",
                self.shape, self.agents, self.endpoint_processes
            );
        } else {
            println!(
                "plexus bench: {verdict}: {}, in {} process(es)",
                self.shape, self.processes
            );
        }
        for e in &self.errors {
            println!("  error: {e}");
        }
        println!(
            "  moved {} in {} messages in {:.2} s: {}/s, {:.0} msgs/s",
            format_bytes(self.bytes_total),
            self.messages_total,
            self.elapsed_s,
            format_bytes(self.throughput_bytes_per_s as u64),
            self.messages_per_s
        );
        self.print_consumption();
        println!(
            "  links per node (from the OS): max {}, where one connection per pair would need {}",
            self.links_per_node_max, self.naive_connections_per_node
        );
        if self.stalled_consumers > 0 {
            let held = format!("at most {}", format_bytes(self.stalled_buffered_bytes_max));
            println!(
                "  {} stalled consumers: healthy consumers finished in {:.2} s at {}/s; what a stalled consumer held: {held} (credit pool {})",
                self.stalled_consumers,
                self.healthy_elapsed_s,
                format_bytes(self.healthy_throughput_bytes_per_s as u64),
                format_bytes(self.credit_pool_bytes)
            );
        }
        println!(
            "  jobs: {} completed, {} failed {:?}",
            self.jobs_completed, self.jobs_failed, self.failed_job_ids
        );
        self.print_waves();
        let killed = match (self.killed_node, self.killed_endpoint) {
            (Some(node), _) if self.agents > 0 => Some(format!("the agent of node {node}")),
            (Some(node), _) => Some(format!("node {node}")),
            (None, Some(e)) => Some(format!(
                "endpoint {} ({:?} {}/{} of job {})",
                e.index, e.role, e.node, e.slot, e.job
            )),
            (None, None) => None,
        };
        if let Some(killed) = killed {
            let detect = self
                .failure_detect_ms_max
                .map_or("never".to_string(), |ms| {
                    format!("at most {ms} ms after the kill")
                });
            println!(
                "  killed {}: affected jobs {:?}; their endpoints saw it {detect}",
                killed.to_lowercase(),
                self.affected_job_ids
            );
        }
        if let (Some(tried), Some(refused)) = (self.impostor_attempts, self.impostor_refused) {
            println!("  impostor handshakes: {tried}, refused as unauthenticated: {refused}");
        }
        if self.link_kills > 0 || self.link_resumes > 0 {
            let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
            println!(
                "  links killed from outside: {}; links resumed: {} (down p50 {}, p99 {})",
                self.link_kills,
                self.link_resumes,
                ms(self.resume_ms_p50),
                ms(self.resume_ms_p99)
            );
        }
        let reported: Vec<u64> = self
            .rss_peak_bytes_per_process
            .iter()
            .flatten()
            .copied()
            .collect();
        match (reported.iter().min(), reported.len()) {
            (Some(&least), n) if n > 1 => println!(
                "  peak RSS per process: {} to {} ({n} processes)",
                format_bytes(least),
                format_bytes(self.rss_peak_bytes)
            ),
            _ => println!("  peak RSS {}", format_bytes(self.rss_peak_bytes)),
        }
        if !self.baselines.is_empty() {
            self.print_baselines();
        }
    }

    /// With an ordered reading, what it cost against interleaved reading, and what a
    /// consumer held meanwhile.
    fn print_consumption(&self) {
        if !self.consume_mode.is_ordered() {
            return;
        }
        let interleaved = self
            .interleaved_throughput_bytes_per_s
            .map_or("-".to_string(), |t| format!("{}/s", format_bytes(t as u64)));
        let ratio = self
            .ratio_vs_interleaved
            .map_or("-".to_string(), |r| format!("{r:.2}×"));
        let held = format!("at most {}", format_bytes(self.consumer_held_bytes_max));
        println!(
            "  read by {}: {ratio} the throughput of interleaved reading ({interleaved}); a consumer held {held} of credit (pool {})",
            self.consume_mode.name(),
            format_bytes(self.credit_pool_bytes)
        );
    }

    /// How the jobs arrived, and with several waves what a job took and left behind.
    fn print_waves(&self) {
        if self.arrival_order != ArrivalOrder::Same {
            println!(
                "  jobs arrived in a random order per node (seed {})",
                self.seed
            );
        }
        if self.waves < 2 {
            return;
        }
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} ms"));
        let growth = self
            .rss_growth_bytes_per_job
            .map_or("-".to_string(), |b| format!("{b:.0} B"));
        println!(
            "  {} waves of {} jobs ({} in all): job latency p50 {}, p99 {}; RSS growth per job {growth}",
            self.waves,
            self.shape.jobs,
            self.jobs_total,
            ms(self.job_latency_ms_p50),
            ms(self.job_latency_ms_p99)
        );
    }

    /// The plexus run and every baseline, one line each.
    fn print_baselines(&self) {
        println!(
            "  {:<10} {:>9} {:>9} {:>12} {:>12} {:>6} {:>6} {:>7}",
            "system", "verified", "elapsed", "throughput", "msgs/s", "links", "conns", "plexus×"
        );
        let line = |system: &str, verified: bool, elapsed: f64, bytes: f64, msgs: f64| {
            format!(
                "  {system:<10} {:>9} {:>8.2}s {:>10}/s {msgs:>12.0}",
                if verified { "yes" } else { "NO" },
                elapsed,
                format_bytes(bytes as u64)
            )
        };
        println!(
            "{} {:>6} {:>6} {:>7}",
            line(
                "plexus",
                self.verified,
                self.elapsed_s,
                self.throughput_bytes_per_s,
                self.messages_per_s
            ),
            self.links_per_node_max,
            "-",
            "-"
        );
        for b in &self.baselines {
            if b.skipped {
                let note = b.note.as_deref().unwrap_or("skipped");
                println!("  {:<10} {note}", b.system);
                continue;
            }
            let key = format!("ratio_vs_{}", b.system.replace('-', "_"));
            let ratio = self
                .comparisons
                .get(&key)
                .copied()
                .flatten()
                .map_or("-".to_string(), |r| format!("{r:.2}"));
            println!(
                "{} {:>6} {:>6} {ratio:>7}",
                line(
                    b.system,
                    b.verified,
                    b.elapsed_s.unwrap_or(0.0),
                    b.throughput_bytes_per_s.unwrap_or(0.0),
                    b.messages_per_s.unwrap_or(0.0)
                ),
                b.links_per_node_max,
                b.connections
            );
        }
    }
}
