//! What a node did since it started, for operators (a Prometheus exporter, a status view):
//! traffic per peer, resumes and downtime, peers declared dead and jobs ended, by cause,
//! refused connections, members cut off, and how long jobs waited for admission.
//!
//! Invariants: every figure only grows (they are counters; gauges are in
//! [`super::Stats`]); the causes are a fixed set of names, so a label never takes more
//! values than these; traffic is kept per peer that proved membership, so the peers are
//! the cluster's members and an outsider adds no series.

use std::time::Duration;

use super::error::{ExchangeError, LinkCause};
use crate::ids::NodeId;
use crate::map::Map;

/// Traffic with one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PeerCounters {
    /// Bytes written to its links (frames of every kind).
    pub bytes_sent: u64,
    /// Bytes read from its links.
    pub bytes_received: u64,
    /// Messages sent to it (in `Data` and `Batch` frames, resends excluded).
    pub messages_sent: u64,
    /// Messages received from it.
    pub messages_received: u64,
    /// Times its link came back and the session resumed.
    pub resumes: u64,
    /// Time its link was down before those resumes, summed.
    pub down: Duration,
    /// The round trip of the latest ping answered (pings go out on quiet links).
    pub rtt: Option<Duration>,
}

/// Upper bounds of the admission-wait histogram's buckets, in seconds.
pub const ADMISSION_WAIT_BUCKETS: [f64; 8] = [0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0];

/// How long jobs waited for admission here: counts per bucket (cumulative, as Prometheus
/// wants them), the count and the sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WaitHistogram {
    /// Waits at most each of [`ADMISSION_WAIT_BUCKETS`].
    pub buckets: [u64; ADMISSION_WAIT_BUCKETS.len()],
    /// Waits in all.
    pub count: u64,
    /// Seconds waited in all.
    pub sum: f64,
}

impl WaitHistogram {
    fn record(&mut self, waited: Duration) {
        let s = waited.as_secs_f64();
        for (bucket, bound) in self.buckets.iter_mut().zip(ADMISSION_WAIT_BUCKETS) {
            if s <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }
}

/// Everything the node counts.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Traffic per peer.
    pub peers: Map<NodeId, PeerCounters>,
    /// Peers declared dead, by cause (see [`link_cause_kind`]).
    pub peers_dead: Map<&'static str, u64>,
    /// Jobs that ended here without an error.
    pub jobs_completed: u64,
    /// Jobs that ended here with an error, by cause (see [`job_failure_kind`]).
    pub jobs_failed: Map<&'static str, u64>,
    /// Connections closed because they did not prove membership.
    pub unauthenticated: u64,
    /// Members cut off for going beyond a limit.
    pub limits_exceeded: u64,
    /// How long admitted jobs waited.
    pub admission_waits: WaitHistogram,
    /// Time producers here spent waiting for credit on a channel, summed over channels
    /// (counted when the wait ends; see [`Starving`] for waits still going on).
    pub producers_blocked: Duration,
}

impl Counters {
    pub(super) fn peer(&mut self, peer: NodeId) -> &mut PeerCounters {
        self.peers.entry(peer).or_default()
    }

    pub(super) fn peer_dead(&mut self, cause: &LinkCause) {
        *self.peers_dead.entry(link_cause_kind(cause)).or_insert(0) += 1;
    }

    pub(super) fn job_ended(&mut self, failure: Option<&ExchangeError>) {
        match failure {
            None => self.jobs_completed += 1,
            Some(e) => *self.jobs_failed.entry(job_failure_kind(e)).or_insert(0) += 1,
        }
    }

    pub(super) fn admitted(&mut self, waited: Duration) {
        self.admission_waits.record(waited);
    }
}

/// A channel whose producer here waits for credit: its consumer has not made room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Starving {
    /// The job.
    pub job: crate::ids::JobId,
    /// The producer that waits (on this node).
    pub producer: crate::ids::Endpoint,
    /// The consumer whose credit it waits for.
    pub consumer: crate::ids::Endpoint,
    /// For how long, so far.
    pub blocked_for: Duration,
}

/// One job as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobSummary {
    /// The job.
    pub job: crate::ids::JobId,
    /// Its producers open here.
    pub producers: usize,
    /// Its consumers open here.
    pub consumers: usize,
    /// Where its admission stands here: "not asked", "awaiting turn", "queued",
    /// "admitted", "released" (its consumers here closed), or "failed".
    pub admission: &'static str,
    /// Bytes (payload and per-message overhead) its producers here queued to send so far.
    pub bytes_sent: u64,
    /// The same, that its consumers here received.
    pub bytes_received: u64,
    /// Time its producers here waited for credit so far (waits that ended).
    pub producers_blocked: Duration,
}

impl super::NodeCore {
    /// Every job with a record here, the most bytes first, at most `most` of them.
    /// (A scan of the channels: for status views, not for every message.)
    pub fn job_summaries(&self, most: usize) -> Vec<JobSummary> {
        let mut live: Map<crate::ids::JobId, (u64, u64)> = Map::default();
        for ch in self.out_channels.values() {
            live.entry(ch.producer.0).or_default().0 += ch.sent;
        }
        for ch in self.in_channels.values() {
            live.entry(ch.consumer.0).or_default().1 += ch.received;
        }
        let mut jobs: Vec<JobSummary> = self
            .jobs
            .iter()
            .map(|(&job, state)| JobSummary {
                job,
                producers: self.producers.count(job),
                consumers: self.consumers.count(job),
                admission: if state.failed.is_some() {
                    "failed"
                } else {
                    state.admission.stage.name()
                },
                bytes_sent: state.bytes_sent + live.get(&job).map_or(0, |l| l.0),
                bytes_received: state.bytes_received + live.get(&job).map_or(0, |l| l.1),
                producers_blocked: state.producers_blocked,
            })
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.bytes_sent + j.bytes_received));
        jobs.truncate(most);
        jobs
    }

    /// Every channel whose producer waits for credit now, longest wait first (a scan of
    /// the channels: for status views, not for every message).
    pub fn starving(&self, now: std::time::Instant) -> Vec<Starving> {
        let mut starving: Vec<Starving> = self
            .out_channels
            .values()
            .filter_map(|ch| {
                let since = ch.blocked_since?;
                Some(Starving {
                    job: ch.producer.0,
                    producer: crate::ids::Endpoint::new(self.config.node, ch.producer.1),
                    consumer: ch.consumer,
                    blocked_for: now.saturating_duration_since(since),
                })
            })
            .collect();
        starving.sort_by_key(|s| std::cmp::Reverse(s.blocked_for));
        starving
    }

    /// Every peer this node knows, and whether a link to it is up now.
    pub fn peer_links(&self) -> Vec<(NodeId, bool)> {
        self.peers
            .iter()
            .filter(|(_, p)| !matches!(p.state, super::state::PeerState::Local))
            .map(|(&peer, p)| (peer, matches!(p.state, super::state::PeerState::Up(_))))
            .collect()
    }
}

/// Messages a frame carries.
pub(super) fn messages_in(frame: &crate::frame::Frame) -> u64 {
    match frame {
        crate::frame::Frame::Data { .. } => 1,
        crate::frame::Frame::Batch { messages, .. } => messages.len() as u64,
        _ => 0,
    }
}

/// A short name for a link's cause, from a fixed set.
pub fn link_cause_kind(cause: &LinkCause) -> &'static str {
    match cause {
        LinkCause::Unreachable(_) => "unreachable",
        LinkCause::Protocol(_) => "protocol",
        LinkCause::GoAway(_) => "goaway",
        LinkCause::Silent => "silent",
        LinkCause::HandshakeTimeout => "handshake_timeout",
        LinkCause::Superseded => "superseded",
        LinkCause::Restarted(_) => "restarted",
        LinkCause::ReportedDead { .. } => "reported_dead",
        LinkCause::Io(_) => "io",
        LinkCause::Shutdown => "shutdown",
        LinkCause::Idle(_) => "idle",
        LinkCause::Unauthenticated(_) => "unauthenticated",
    }
}

/// A short name for why a job failed, from a fixed set.
pub fn job_failure_kind(e: &ExchangeError) -> &'static str {
    match e {
        ExchangeError::LinkFailed { .. } => "link_failed",
        ExchangeError::Cancelled { .. } => "consumer_cancelled",
        ExchangeError::JobCancelled { .. } => "job_cancelled",
        ExchangeError::ParkExpired { .. } => "park_expired",
        ExchangeError::ProducerAborted { .. } => "producer_aborted",
        ExchangeError::OverBudget { .. } => "over_budget",
        ExchangeError::AdmissionTimeout { .. } => "admission_timeout",
        ExchangeError::JobRefused { .. } => "refused",
        ExchangeError::NodeShutdown { .. } => "node_shutdown",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_histogram_is_cumulative() {
        let mut h = WaitHistogram::default();
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(2));
        assert_eq!(h.buckets[0], 0);
        assert_eq!(h.buckets[1], 1, "5 ms ≤ 10 ms");
        assert_eq!(h.buckets[5], 2, "both ≤ 5 s");
        assert_eq!(h.count, 2);
        assert!((h.sum - 2.005).abs() < 1e-9);
    }
}
