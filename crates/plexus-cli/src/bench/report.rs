//! The bench's results: one JSON object, or a human summary.

use serde::Serialize;

use super::size::format_bytes;

/// Everything a bench run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every consumer got every message of every producer exactly once, in order, intact.
    pub verified: bool,
    /// Why the run did not verify, if it did not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    pub nodes: u32,
    pub producers_per_node: u32,
    pub consumers_per_node: u32,
    pub jobs: u32,
    /// Logical channels: jobs × (n·m producers) × (n·m consumers).
    pub channels: u64,
    pub message_size: u64,
    pub bytes_total: u64,
    pub messages_total: u64,
    pub elapsed_s: f64,
    pub throughput_bytes_per_s: f64,
    pub messages_per_s: f64,
    /// Most established TCP connections any node's address held, from /proc/net/tcp.
    pub links_per_node_max: usize,
    /// Connections per node with one connection per producer-consumer pair: 2·k·m·(m·n).
    pub naive_connections_per_node: u64,
    pub stalled_consumers: u32,
    /// Bytes received by consumers that did not stall, per second until the last of them
    /// finished.
    pub healthy_throughput_bytes_per_s: f64,
    pub healthy_elapsed_s: f64,
    /// Peak bytes granted and not yet read, for any one stalled consumer: an upper bound of
    /// what its channels held anywhere (sender queues, sockets, receive queue).
    pub stalled_buffered_bytes_max: u64,
    pub credit_pool_bytes: u64,
    pub rss_peak_bytes: u64,
}

impl Report {
    /// Prints the report: JSON on stdout, or a summary for people.
    pub fn print(&self, json: bool) {
        if json {
            match serde_json::to_string(self) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("plexus bench: cannot encode the report: {e}"),
            }
            return;
        }
        let verdict = if self.verified { "VERIFIED" } else { "FAILED" };
        println!(
            "plexus bench: {verdict}: {} nodes × ({} producers + {} consumers) × {} jobs = {} channels",
            self.nodes, self.producers_per_node, self.consumers_per_node, self.jobs, self.channels
        );
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
        println!(
            "  links per node (from the OS): max {}, where one connection per pair would need {}",
            self.links_per_node_max, self.naive_connections_per_node
        );
        if self.stalled_consumers > 0 {
            println!(
                "  {} stalled consumers: healthy consumers finished in {:.2} s at {}/s; a stalled consumer held at most {} (credit pool {})",
                self.stalled_consumers,
                self.healthy_elapsed_s,
                format_bytes(self.healthy_throughput_bytes_per_s as u64),
                format_bytes(self.stalled_buffered_bytes_max),
                format_bytes(self.credit_pool_bytes)
            );
        }
        println!("  peak RSS {}", format_bytes(self.rss_peak_bytes));
    }
}
