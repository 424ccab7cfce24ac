//! The node's memory budget and the admission queue of jobs.
//!
//! With a budget configured, a node's buffered bytes — credit its consumers granted (which
//! bounds what is in flight to them and queued for them), data queued to send, and data kept
//! until acknowledged — stay under it:
//! - a fixed `send_buffer` share covers the send side: a producer's message is refused (like
//!   a lack of credit) while the node's queued and retained data would exceed it; that
//!   drains by writing and acknowledgement alone, never by any consumer's progress;
//! - the rest is carved into consumer credit pools: a job is admitted on this node only
//!   when the pools of all its consumers here fit at once; otherwise it waits in a FIFO
//!   queue, and fails with a clear error after `admission_timeout`. A job's reservation is
//!   released when its last endpoint here is gone.
//!
//! Invariants: reserved ≤ capacity − send_buffer; jobs are admitted in arrival order (a job
//! that does not fit holds back those behind it, so big jobs are not starved); a job that
//! could never fit is refused at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Event, ExchangeError, NodeCore};
use crate::ids::{Endpoint, JobId};

/// Budget state of a node with a memory budget.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    /// Bytes reserved for admitted jobs' consumer pools.
    reserved: u64,
    /// Jobs admitted here, with their reservation.
    admitted: crate::map::Map<JobId, u64>,
    /// Jobs waiting to be admitted, in arrival order: job, bytes needed, since when.
    queue: VecDeque<(JobId, u64, Instant)>,
    /// Producers refused for lack of send buffer, to wake when it drains.
    pub send_waiters: Vec<(JobId, u32, Endpoint)>,
    /// Longest time a job waited before admission.
    pub longest_wait: Duration,
}

/// Whether a job may open its endpoints here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Admitted,
    /// Wait for `Event::Admitted` (or `Event::AdmissionFailed`).
    Queued,
}

impl NodeCore {
    /// Asks to admit `job`, which runs `consumers_here` consumers on this node. Without a
    /// memory budget every job is admitted at once.
    pub fn admit_job(
        &mut self,
        job: JobId,
        consumers_here: u32,
    ) -> Result<Admission, ExchangeError> {
        let Some(capacity) = self.config.memory_budget else {
            return Ok(Admission::Admitted);
        };
        if let Some(error) = self.job_failure(job) {
            return Err(error);
        }
        if self.budget.admitted.contains_key(&job) {
            return Ok(Admission::Admitted);
        }
        if self.budget.queue.iter().any(|(j, _, _)| *j == job) {
            return Ok(Admission::Queued);
        }
        let need = u64::from(consumers_here) * self.config.credit_pool;
        let room = capacity.saturating_sub(self.config.send_buffer);
        if need > room {
            return Err(ExchangeError::OverBudget {
                job,
                need,
                budget: room,
            });
        }
        // A job with no consumer here reserves nothing: it never waits (so it cannot hold
        // up, through another node, a job queued here).
        if need == 0 || (self.budget.queue.is_empty() && self.budget.reserved + need <= room) {
            self.budget.reserved += need;
            self.budget.admitted.insert(job, need);
            return Ok(Admission::Admitted);
        }
        self.budget.queue.push_back((job, need, self.now));
        Ok(Admission::Queued)
    }

    /// Whether `job` may open endpoints here.
    pub(super) fn is_admitted(&self, job: JobId) -> bool {
        self.config.memory_budget.is_none() || self.budget.admitted.contains_key(&job)
    }

    /// Releases `job`'s reservation once it has no endpoint left here, and admits what
    /// then fits.
    pub(super) fn release_job_if_idle(&mut self, job: JobId) {
        let busy =
            self.producers.keys().any(|k| k.0 == job) || self.consumers.keys().any(|k| k.0 == job);
        if busy {
            return;
        }
        if let Some(bytes) = self.budget.admitted.remove(&job) {
            self.budget.reserved -= bytes;
            self.admit_waiting();
        }
    }

    /// Admits waiting jobs, in order, while the head fits.
    fn admit_waiting(&mut self) {
        let Some(capacity) = self.config.memory_budget else {
            return;
        };
        let room = capacity.saturating_sub(self.config.send_buffer);
        while let Some(&(job, need, since)) = self.budget.queue.front() {
            if self.budget.reserved + need > room {
                break;
            }
            self.budget.queue.pop_front();
            self.budget.reserved += need;
            self.budget.admitted.insert(job, need);
            let waited = self.now.saturating_duration_since(since);
            self.budget.longest_wait = self.budget.longest_wait.max(waited);
            self.events.push_back(Event::Admitted { job });
        }
    }

    /// Fails the jobs that waited for admission longer than the timeout.
    pub(super) fn expire_admissions(&mut self, now: Instant) {
        let timeout = self.config.admission_timeout;
        let room = self
            .config
            .memory_budget
            .unwrap_or(0)
            .saturating_sub(self.config.send_buffer);
        let mut expired = Vec::new();
        self.budget.queue.retain(|&(job, need, since)| {
            let waited = now.saturating_duration_since(since);
            if waited >= timeout {
                expired.push((job, need, waited));
                false
            } else {
                true
            }
        });
        for (job, need, waited) in expired {
            let error = ExchangeError::AdmissionTimeout {
                job,
                waited,
                need,
                budget: room,
            };
            self.events.push_back(Event::AdmissionFailed {
                job,
                error: error.clone(),
            });
            self.fail_job(job, error);
        }
        self.admit_waiting();
    }

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

    /// Wakes producers refused for send buffer, once it has room again.
    pub(super) fn wake_send_waiters(&mut self) {
        if self.budget.send_waiters.is_empty() || !self.send_room_for(0) {
            return;
        }
        for (job, slot, consumer) in std::mem::take(&mut self.budget.send_waiters) {
            self.events.push_back(Event::ProducerReady {
                job,
                slot,
                consumer,
            });
        }
    }

    /// Records the current buffered bytes in the peak.
    pub(super) fn note_buffered(&mut self) {
        let now = self.send_buffered() + self.granted_outstanding;
        self.peak_buffered = self.peak_buffered.max(now);
    }

    /// The most bytes this node ever had buffered: data queued to send or kept until
    /// acknowledged, plus credit its consumers granted and had not got back.
    pub fn peak_buffered(&self) -> u64 {
        self.peak_buffered
    }

    /// The longest time a job waited for admission here.
    pub fn longest_admission_wait(&self) -> Duration {
        self.budget.longest_wait
    }
}
