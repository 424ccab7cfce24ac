//! The node's memory budget on the send side, and the peak of what the node buffered.
//!
//! With a budget configured, a node's buffered bytes — credit its consumers granted (which
//! bounds what is in flight to them and queued for them), data queued to send, and data kept
//! until acknowledged — stay under it:
//! - a fixed `send_buffer` share covers the send side: a producer's message is refused (like
//!   a lack of credit) while the node's queued and retained data would exceed it; that
//!   drains by writing and acknowledgement alone, never by any consumer's progress;
//! - the rest is carved into consumer credit pools, reserved per job by admission (see
//!   `admission`).
//!
//! Invariant: the send side's running total equals the sum over peers (checked in debug
//! builds); producers refused for send room are woken once it drains.

use super::{Event, NodeCore};
use crate::ids::{Endpoint, JobId};

/// Producers refused for lack of send buffer, to wake when it drains.
#[derive(Debug, Default)]
pub(crate) struct SendWaiters {
    waiters: Vec<(JobId, u32, Endpoint)>,
}

impl NodeCore {
    /// Bytes queued to send and kept until acknowledged, all peers (a running total; debug
    /// builds check it against the sum).
    pub(super) fn send_buffered(&self) -> u64 {
        debug_assert_eq!(
            self.send_buffered,
            self.peers
                .values()
                .map(super::state::Peer::buffered)
                .sum::<u64>(),
            "the running total of send-side bytes drifted"
        );
        self.send_buffered
    }

    /// Whether the send share of the budget has room for `cost` more bytes.
    pub(super) fn send_room_for(&self, cost: u64) -> bool {
        self.config.memory_budget.is_none()
            || self.send_buffered() + cost <= self.config.send_buffer
    }

    /// Remembers to wake `consumer`'s channel of producer `(job, slot)` once the send
    /// buffer has room.
    pub(super) fn wait_for_send_room(&mut self, job: JobId, slot: u32, consumer: Endpoint) {
        let waiter = (job, slot, consumer);
        if !self.send_waiters.waiters.contains(&waiter) {
            self.send_waiters.waiters.push(waiter);
        }
    }

    /// Wakes producers refused for send buffer, once it has room again.
    pub(super) fn wake_send_waiters(&mut self) {
        if self.send_waiters.waiters.is_empty() || !self.send_room_for(0) {
            return;
        }
        for (job, slot, consumer) in std::mem::take(&mut self.send_waiters.waiters) {
            self.events.push_back(Event::ProducerReady {
                job,
                slot,
                consumer,
            });
        }
    }

    /// Records the current buffered bytes in the peak.
    pub(super) fn note_buffered(&mut self) {
        let now = self.send_buffered() + self.consumers.granted();
        self.peak_buffered = self.peak_buffered.max(now);
    }

    /// The bytes this node has buffered now: data queued to send or kept until
    /// acknowledged, plus credit its consumers granted and have not got back.
    pub fn buffered(&self) -> u64 {
        self.send_buffered() + self.consumers.granted()
    }

    /// The most bytes this node ever had buffered: data queued to send or kept until
    /// acknowledged, plus credit its consumers granted and had not got back.
    pub fn peak_buffered(&self) -> u64 {
        self.peak_buffered
    }
}
