//! A snapshot of what a node did and holds, for operators: its counters (traffic per peer,
//! resumes, peers dead and jobs ended by cause, refusals, admission waits), its gauges
//! (links, channels, buffered bytes against the budget, jobs waiting for admission), and,
//! on an agent, the processes attached. An agent exports it in the Prometheus format; an
//! embedded node gives it through [`crate::Node::metrics`].

use plexus_proto::node::metrics::Counters;
use plexus_proto::node::Stats;
use plexus_proto::NodeId;

/// A node's figures at one moment.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The node.
    pub node: NodeId,
    /// What it did since it started.
    pub counters: Counters,
    /// What it holds now.
    pub stats: Stats,
    /// Every peer it knows, and whether a link to it is up.
    pub links: Vec<(NodeId, bool)>,
    /// Bytes it has buffered now (queued to send, kept until acknowledged, and credit its
    /// consumers granted).
    pub buffered_bytes: u64,
    /// The most it may buffer, if limited.
    pub memory_budget: Option<u64>,
    /// Jobs waiting for admission here.
    pub admission_waiting: usize,
    /// Processes attached through the local socket.
    pub attached_processes: usize,
}
