//! A node's status for operators, as one serialisable snapshot: its links (traffic,
//! resumes, round trips), its jobs (endpoints, bytes, admission), buffered bytes against the budget, attached processes,
//! and above all **who starves whom**: every channel whose producer waits for credit,
//! grouped by the consumer that holds it, longest wait first.
//!
//! [`crate::Node::status`] gives it for a node of this process;
//! [`crate::AttachedNode::status`] asks the machine's agent for its node's (`plexus status`).

use std::collections::BTreeMap;

use plexus_proto::{Endpoint, JobId, NodeId};
use serde::{Deserialize, Serialize};

/// One snapshot of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The node.
    pub node: u32,
    /// Every peer it knows.
    pub links: Vec<LinkStatus>,
    /// Jobs with a record here.
    pub jobs_active: usize,
    /// The jobs with the most bytes here (at most [`JOBS_SHOWN`]).
    pub jobs: Vec<JobStatus>,
    /// Jobs waiting for admission here.
    pub admission_waiting: usize,
    /// Bytes buffered now.
    pub buffered_bytes: u64,
    /// The most it may buffer, if limited.
    pub memory_budget: Option<u64>,
    /// Processes attached through the local socket.
    pub attached_processes: usize,
    /// Consumers that keep producers here waiting for credit, longest wait first.
    pub starving: Vec<StarvedBy>,
}

/// Jobs a status lists, at most (the ones with the most bytes).
pub const JOBS_SHOWN: usize = 50;

/// A job as the node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job.
    pub job: u64,
    /// Its producers open here.
    pub producers: usize,
    /// Its consumers open here.
    pub consumers: usize,
    /// Where its admission stands here ("admitted", "queued", "awaiting turn", ...).
    pub admission: String,
    /// Bytes its producers here queued to send so far.
    pub bytes_sent: u64,
    /// Bytes its consumers here received so far.
    pub bytes_received: u64,
    /// Milliseconds its producers here waited for credit so far (waits that ended).
    pub producers_blocked_ms: u64,
}

/// A peer and the link to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The peer.
    pub peer: u32,
    /// Whether a link to it is up.
    pub up: bool,
    /// Bytes written to its links so far.
    pub bytes_sent: u64,
    /// Bytes read from its links so far.
    pub bytes_received: u64,
    /// Times its link resumed.
    pub resumes: u64,
    /// The latest measured round trip to it, in microseconds (pings go out on quiet
    /// links).
    pub rtt_us: Option<u64>,
}

/// A consumer that keeps producers of this node waiting for credit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StarvedBy {
    /// The job.
    pub job: u64,
    /// The consumer's node.
    pub consumer_node: u32,
    /// The consumer's slot.
    pub consumer_slot: u32,
    /// The producers (slots on this node) waiting for it.
    pub producers: Vec<u32>,
    /// The longest of their waits so far, in milliseconds.
    pub longest_wait_ms: u64,
}

impl StarvedBy {
    /// A line that says it: "job 7: consumer 3/2 keeps 12 producers waiting, the longest
    /// for 4.2 s".
    pub fn describe(&self) -> String {
        format!(
            "job {}: consumer {}/{} keeps {} producer{} here waiting, the longest for {:.1} s",
            self.job,
            self.consumer_node,
            self.consumer_slot,
            self.producers.len(),
            if self.producers.len() == 1 { "" } else { "s" },
            self.longest_wait_ms as f64 / 1000.0
        )
    }
}

impl Status {
    /// The snapshot of `metrics` and the starving channels `starving`.
    pub(crate) fn of(
        metrics: &crate::Metrics,
        starving: &[plexus_proto::node::metrics::Starving],
        jobs: &[plexus_proto::node::metrics::JobSummary],
    ) -> Self {
        let links = metrics
            .links
            .iter()
            .map(|&(peer, up)| {
                let c = metrics
                    .counters
                    .peers
                    .get(&peer)
                    .copied()
                    .unwrap_or_default();
                LinkStatus {
                    peer: peer.0,
                    up,
                    bytes_sent: c.bytes_sent,
                    bytes_received: c.bytes_received,
                    resumes: c.resumes,
                    rtt_us: c
                        .rtt
                        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                }
            })
            .collect();
        let mut by_consumer: BTreeMap<(JobId, Endpoint), StarvedBy> = BTreeMap::new();
        for s in starving {
            let entry = by_consumer
                .entry((s.job, s.consumer))
                .or_insert_with(|| StarvedBy {
                    job: s.job.0,
                    consumer_node: s.consumer.node.0,
                    consumer_slot: s.consumer.slot,
                    producers: Vec::new(),
                    longest_wait_ms: 0,
                });
            entry.producers.push(s.producer.slot);
            let waited = u64::try_from(s.blocked_for.as_millis()).unwrap_or(u64::MAX);
            entry.longest_wait_ms = entry.longest_wait_ms.max(waited);
        }
        let mut starving: Vec<StarvedBy> = by_consumer.into_values().collect();
        starving.sort_by_key(|s| std::cmp::Reverse(s.longest_wait_ms));
        Status {
            node: metrics.node.0,
            links,
            jobs_active: metrics.stats.jobs,
            jobs: jobs
                .iter()
                .map(|j| JobStatus {
                    job: j.job.0,
                    producers: j.producers,
                    consumers: j.consumers,
                    admission: j.admission.to_string(),
                    bytes_sent: j.bytes_sent,
                    bytes_received: j.bytes_received,
                    producers_blocked_ms: u64::try_from(j.producers_blocked.as_millis())
                        .unwrap_or(u64::MAX),
                })
                .collect(),
            admission_waiting: metrics.admission_waiting,
            buffered_bytes: metrics.buffered_bytes,
            memory_budget: metrics.memory_budget,
            attached_processes: metrics.attached_processes,
            starving,
        }
    }

    /// The peer named `peer`'s link, if known.
    pub fn link(&self, peer: NodeId) -> Option<&LinkStatus> {
        self.links.iter().find(|l| l.peer == peer.0)
    }
}
