//! Jobs as the core sees them: which nodes each job spans, failing a job as a whole (a node
//! it spans is declared dead, an endpoint cancels it, a node refuses to admit it), and
//! retiring a job once it is over here. Also the expiry of channels parked for consumers
//! that never appear.
//!
//! A job's record lives while anything of the job is here: application handles
//! ([`NodeCore::open_job`]), endpoints, channels (parked ones included), or an admission
//! in progress. When the last of them goes, the record is retired: its reservation goes
//! back to the budget and only its id stays, in a bounded ring of recently finished jobs,
//! so that late frames for it are dropped and the id is not reused by mistake. Records a
//! peer's frame created for a job the application here never named (a cancel or an
//! admission turn that came first) are kept for `park_timeout`, then dropped unless the
//! application took them up.
//!
//! Invariants: a failed job stays failed while its record lives (its endpoints, and
//! endpoints opened later, get its error); failing a job releases everything its endpoints
//! held here — queued data, credit, channel records, its reservation — and wakes every
//! waiter with the error; jobs that do not span a dead node are untouched, and finished
//! jobs are never failed again. Memory held per job ends with the job, except its id in the
//! ring of `Config::finished_jobs_kept` entries.

use std::collections::VecDeque;
use std::time::Instant;

use super::admission::JobAdmission;
use super::state::{
    ChannelSlot, InChannel, InKey, LocalKey, OutChannel, OutKey, OutState, Peer, PeerState,
};
use super::{Event, ExchangeError, LinkCause, NodeCore};
use crate::frame::{CancelCode, Frame, RefuseCode};
use crate::ids::{JobId, NodeId};
use crate::map::Set;

/// What the core knows of one live job.
#[derive(Debug, Default)]
pub(crate) struct JobState {
    /// Every node with an endpoint of the job.
    pub nodes: Set<NodeId>,
    /// Why the job failed, once it has.
    pub failed: Option<ExchangeError>,
    /// The application here named the job (a handle or an endpoint): when the record
    /// retires, the id is remembered as finished.
    pub known: bool,
    /// Application handles open on the job here.
    pub handles: u32,
    /// A fingerprint of the topology the first handle was opened with.
    pub topology: Option<u64>,
    /// Consumer slots that were open and are closed: a late channel for one is refused.
    pub closed_consumers: Vec<u32>,
    /// Where the job's admission stands here.
    pub admission: JobAdmission,
    /// Bytes (payload and per-message overhead) its producers here queued to send on
    /// channels that are over (a live channel counts its own: see `job_summaries`).
    pub bytes_sent: u64,
    /// The same, that its consumers here received.
    pub bytes_received: u64,
    /// Time its producers here waited for credit, for waits that ended.
    pub producers_blocked: std::time::Duration,
}

/// The ids of the most recently finished jobs, oldest first.
#[derive(Debug, Default)]
pub(crate) struct RecentJobs {
    ids: Set<JobId>,
    order: VecDeque<JobId>,
}

impl RecentJobs {
    /// Remembers `job`, forgetting the oldest beyond `keep`.
    fn insert(&mut self, job: JobId, keep: usize) {
        if keep == 0 || !self.ids.insert(job) {
            return;
        }
        self.order.push_back(job);
        while self.order.len() > keep {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    pub fn contains(&self, job: JobId) -> bool {
        self.ids.contains(&job)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }
}

impl NodeCore {
    /// Tells the core which nodes job `job` spans (all nodes of its topology), so that the
    /// death of any of them fails the job here. Calling again adds nodes. Does nothing for
    /// a job that finished here (opening its endpoints says so).
    pub fn register_job(&mut self, job: JobId, nodes: impl IntoIterator<Item = NodeId>) {
        if self.finished.contains(job) {
            return;
        }
        let me = self.config.node;
        let state = self.jobs.entry(job).or_default();
        state.known = true;
        state.nodes.extend(nodes);
        state.nodes.insert(me);
    }

    /// The application opens a handle on job `job`, whose topology spans `nodes` and has
    /// the given fingerprint: the job's record lives at least until
    /// [`NodeCore::close_job`] is called as often. Fails if the job finished here (ids are
    /// not reused) or is live with another topology.
    pub fn open_job(
        &mut self,
        job: JobId,
        topology: u64,
        nodes: impl IntoIterator<Item = NodeId>,
    ) -> Result<(), ExchangeError> {
        self.may_start(job)?;
        self.register_job(job, nodes);
        let state = self.job_entry(job);
        match state.topology {
            Some(known) if known != topology => {
                return Err(ExchangeError::TopologyMismatch { job });
            }
            _ => state.topology = Some(topology),
        }
        state.handles += 1;
        Ok(())
    }

    /// The application closes a handle opened by [`NodeCore::open_job`].
    pub fn close_job(&mut self, job: JobId) {
        if let Some(state) = self.jobs.get_mut(&job) {
            state.handles = state.handles.saturating_sub(1);
        }
        self.retire_if_over(job);
    }

    /// The record of `job`, created if missing (then timed out as an orphan unless the
    /// application names the job).
    pub(super) fn job_entry(&mut self, job: JobId) -> &mut JobState {
        if !self.jobs.contains_key(&job) {
            self.orphans.push_back((self.now, job));
            // Entries of jobs named since, or gone, go as soon as they are at the front:
            // the list holds the orphans, not a history of every job.
            while let Some(&(_, front)) = self.orphans.front() {
                if front != job && self.jobs.get(&front).is_none_or(|j| j.known) {
                    self.orphans.pop_front();
                } else {
                    break;
                }
            }
        }
        self.jobs.entry(job).or_default()
    }

    /// Why `job` failed, if it did.
    pub(super) fn job_failure(&self, job: JobId) -> Option<ExchangeError> {
        self.jobs.get(&job).and_then(|j| j.failed.clone())
    }

    /// Whether the application may start something of `job` here: not on a node that is
    /// shutting down, nor for a job that finished here (ids are not reused).
    pub(super) fn may_start(&self, job: JobId) -> Result<(), ExchangeError> {
        self.refuse_if_shutting_down()?;
        if self.job_finished(job) {
            return Err(ExchangeError::JobFinished { job });
        }
        Ok(())
    }

    /// Whether a peer's frame about `job` is taken: not for a finished job, and for a job
    /// unknown here only while fewer than `max_parked_channels` such records wait for the
    /// application (a peer naming job ids at random cannot grow the node's memory).
    pub(super) fn peer_may_name(&self, job: JobId) -> bool {
        if self.job_finished(job) {
            return false;
        }
        self.jobs.contains_key(&job) || self.orphans.len() < self.config.max_parked_channels
    }

    /// Whether `job` is over here: its id is in the ring of finished jobs.
    pub(super) fn job_finished(&self, job: JobId) -> bool {
        self.finished.contains(job)
    }

    /// Live job records, and the finished ids remembered.
    pub fn job_counts(&self) -> (usize, usize) {
        (self.jobs.len(), self.finished.len())
    }

    /// Removes incoming channel `key`, keeping what it received in its job's count.
    pub(super) fn remove_in_channel(&mut self, key: InKey) -> Option<InChannel> {
        let ch = self.in_channels.remove(&key)?;
        if let Some(state) = self.jobs.get_mut(&ch.consumer.0) {
            state.bytes_received += ch.received;
        }
        Some(ch)
    }

    /// Removes outgoing channel `key`, keeping what it sent in its job's count.
    pub(super) fn remove_out_channel(&mut self, key: OutKey) -> Option<OutChannel> {
        let ch = self.out_channels.remove(&key)?;
        if let Some(state) = self.jobs.get_mut(&ch.producer.0) {
            state.bytes_sent += ch.sent;
        }
        Some(ch)
    }

    /// Retires `job`'s record if nothing of the job is left here: no application handle,
    /// endpoint, channel or admission in progress. Records of jobs the application never
    /// named wait for their orphan timeout instead.
    pub(super) fn retire_if_over(&mut self, job: JobId) {
        let Some(state) = self.jobs.get(&job) else {
            return;
        };
        if !state.known || state.handles > 0 || state.admission.is_pending() {
            return;
        }
        self.drop_job_if_empty(job, true);
    }

    /// Drops `job`'s record if it has no endpoint or channel here, remembering its id as
    /// finished if `finished`.
    fn drop_job_if_empty(&mut self, job: JobId, finished: bool) {
        let busy = self.producers.count(job)
            + self.consumers.count(job)
            + self.out_channels.count(job)
            + self.in_channels.count(job);
        if busy > 0 {
            return;
        }
        self.release_reservation(job);
        if let Some(state) = self.jobs.remove(&job) {
            if finished {
                self.counters.job_ended(state.failed.as_ref());
                self.finished.insert(job, self.config.finished_jobs_kept);
                self.events.push_back(Event::JobEnded {
                    job,
                    failure: state.failed,
                });
            }
        }
    }

    /// Drops the records peers' frames created for jobs the application here did not name
    /// within `park_timeout`.
    pub(super) fn expire_orphans(&mut self, now: Instant) {
        let timeout = self.config.park_timeout;
        while let Some(&(since, job)) = self.orphans.front() {
            if now.saturating_duration_since(since) < timeout {
                break;
            }
            self.orphans.pop_front();
            let orphan = self
                .jobs
                .get(&job)
                .is_some_and(|j| !j.known && !j.admission.is_pending());
            if orphan {
                self.drop_job_if_empty(job, false);
            }
        }
    }

    /// Cancels `job` from this node: its endpoints here fail, and every other node it
    /// spans is told to fail its endpoints too.
    pub fn cancel_job(&mut self, job: JobId) {
        if self.job_finished(job) {
            return;
        }
        let me = self.config.node;
        self.tell_others(job, &[me], Frame::CancelJob { job });
        self.fail_job(job, ExchangeError::JobCancelled { job, by: me });
    }

    /// Sends `frame` to every node `job` spans but those in `except`.
    pub(super) fn tell_others(&mut self, job: JobId, except: &[NodeId], frame: Frame) {
        let me = self.config.node;
        let others: Vec<NodeId> = self.jobs.get(&job).map_or_else(Vec::new, |j| {
            j.nodes
                .iter()
                .copied()
                .filter(|n| *n != me && !except.contains(n))
                .collect()
        });
        for node in others {
            self.push_control(node, frame.clone());
        }
    }

    /// Fails `job` here and on every node it spans: this node refuses it for `reason`.
    pub(super) fn refuse_job(&mut self, job: JobId, reason: RefuseCode, error: ExchangeError) {
        self.tell_others(job, &[], Frame::JobRefused { job, reason });
        self.fail_job(job, error);
    }

    /// A `CancelJob` from `peer`.
    pub(super) fn on_cancel_job(&mut self, peer: NodeId, job: JobId) {
        if !self.peer_may_name(job) {
            return;
        }
        self.job_entry(job).nodes.insert(peer);
        self.fail_job(job, ExchangeError::JobCancelled { job, by: peer });
    }

    /// A `JobRefused` from `peer`: it could not admit the job, which fails here too.
    pub(super) fn on_job_refused(&mut self, peer: NodeId, job: JobId, reason: RefuseCode) {
        if !self.peer_may_name(job) {
            return;
        }
        self.job_entry(job).nodes.insert(peer);
        self.fail_job(
            job,
            ExchangeError::JobRefused {
                job,
                node: peer,
                reason,
            },
        );
    }

    /// A `JobFailed` from `peer`: it declared `dead` dead, so the job fails here too.
    pub(super) fn on_job_failed(&mut self, peer: NodeId, job: JobId, dead: NodeId) {
        if !self.peer_may_name(job) {
            return;
        }
        let state = self.job_entry(job);
        state.nodes.insert(peer);
        state.nodes.insert(dead);
        let error = ExchangeError::LinkFailed {
            peer: dead,
            cause: LinkCause::ReportedDead { by: peer },
        };
        self.fail_job(job, error);
    }

    /// Declares `peer` dead with `cause`: every live job spanning it fails here, and the
    /// session with it is forgotten, so a later job starts afresh with a new link.
    pub(super) fn declare_dead(&mut self, peer: NodeId, cause: LinkCause) {
        self.counters.peer_dead(&cause);
        let doomed: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.failed.is_none() && j.nodes.contains(&peer))
            .map(|(id, _)| *id)
            .collect();
        self.events.push_back(Event::PeerDead {
            peer,
            cause: cause.clone(),
            jobs_failed: doomed.clone(),
        });
        let error = ExchangeError::LinkFailed { peer, cause };
        for job in doomed {
            // The other nodes of the job may not notice the death themselves (they may
            // never talk to `peer`): tell them, so every endpoint of the job fails.
            self.tell_others(job, &[peer], Frame::JobFailed { job, dead: peer });
            self.fail_job(job, error.clone());
        }
        // Channels of jobs not registered here (parked for consumers not open yet).
        let orphans: Vec<InKey> = self
            .in_channels
            .keys()
            .filter(|(node, _)| *node == peer)
            .copied()
            .collect();
        for in_key in orphans {
            self.drop_in_channel(in_key);
        }
        let quantum = self.config.quantum;
        if let Some(p) = self.peers.get_mut(&peer) {
            let link = match p.state {
                PeerState::Up(link) => Some(link),
                _ => None,
            };
            self.send_buffered -= p.buffered();
            *p = Peer::new(PeerState::Idle, quantum);
            if let Some(link) = link {
                // Whatever still carries the old session must not carry a new one.
                if let Some(l) = self.links.get_mut(&link) {
                    l.peer = None;
                }
            }
        }
    }

    /// Fails every endpoint of `job` on this node with `error`, ends its admission here
    /// (waiters get the error) and releases its reservation.
    pub(super) fn fail_job(&mut self, job: JobId, error: ExchangeError) {
        if self.job_finished(job) {
            return;
        }
        let state = self.job_entry(job);
        if state.failed.is_some() {
            return;
        }
        state.failed = Some(error.clone());
        self.abandon_admission(job, &error);
        for key in self.producers.keys_of(job) {
            self.fail_producer(key, &error);
        }
        for key in self.consumers.keys_of(job) {
            self.fail_consumer(key, &error);
        }
        for in_key in self.parked.take_job(job) {
            self.remove_in_channel(in_key);
        }
        self.release_reservation(job);
        self.retire_if_over(job);
    }

    /// Fails every channel of producer `key`, dropping its queued data.
    fn fail_producer(&mut self, key: LocalKey, error: &ExchangeError) {
        let Some(p) = self.producers.get(&key) else {
            return;
        };
        let consumers = p.consumers.clone();
        let live: Vec<u64> = p
            .channels
            .values()
            .filter_map(|slot| match slot {
                ChannelSlot::Live(k) => Some(*k),
                ChannelSlot::Done(_) => None,
            })
            .collect();
        for out in live {
            if let Some(ch) = self.out_channels.get_mut(&out) {
                ch.state = OutState::Failed(Box::new(error.clone()));
                let node = ch.consumer.node;
                if let Some(peer) = self.peers.get_mut(&node) {
                    peer.change_buffered(&mut self.send_buffered, |p| p.data.remove(out));
                }
            }
            self.retire_out_channel(out);
        }
        if let Some(p) = self.producers.get_mut(&key) {
            for consumer in &consumers {
                p.channels
                    .insert(*consumer, ChannelSlot::Done(Some(Box::new(error.clone()))));
            }
        }
        for consumer in consumers {
            self.events.push_back(Event::ProducerReady {
                job: key.0,
                slot: key.1,
                consumer,
            });
        }
    }

    /// Fails consumer `key`: it gets `error`, then its stream ends; its channels and the
    /// credit they held are released.
    fn fail_consumer(&mut self, key: LocalKey, error: &ExchangeError) {
        let Some(channels) = self.consumers.change(&key, |c| {
            // What it queued or took will not be read: its credit goes back now.
            c.discard_unread();
            c.remaining.clear();
            c.errors.push_back(error.clone());
            c.channels.drain().map(|(k, _)| k).collect::<Vec<InKey>>()
        }) else {
            return;
        };
        for in_key in channels {
            self.drop_in_channel(in_key);
        }
        self.events.push_back(Event::ConsumerReady {
            job: key.0,
            slot: key.1,
        });
    }

    /// Forgets incoming channel `in_key`, returning its credit to its consumer's pool.
    pub(super) fn drop_in_channel(&mut self, in_key: InKey) {
        let Some(ch) = self.remove_in_channel(in_key) else {
            return;
        };
        self.consumers.change(&ch.consumer, |c| {
            c.pool.forget(in_key);
            c.pool.release(ch.granted - ch.received);
            c.channels.remove(&in_key);
        });
        self.parked.unpark(ch.consumer, in_key);
        self.retire_if_over(ch.consumer.0);
    }

    /// Remembers that `producer`'s channel to the not-yet-open consumer `consumer` expired,
    /// so that the consumer, if it opens later, is told instead of waiting for it. The
    /// most recent `max_parked_channels` such outcomes are kept.
    fn remember_expired(&mut self, consumer: LocalKey, producer: crate::ids::Endpoint) {
        if self.expired_order.len() >= self.config.max_parked_channels {
            if let Some((old, _)) = self.expired_order.pop_front() {
                self.expired.remove(&old);
            }
        }
        self.expired.entry(consumer).or_default().push(producer);
        self.expired_order.push_back((consumer, producer));
    }

    /// Refuses parked channels whose consumer did not appear within the parking timeout.
    /// A channel whose job is waiting for admission here is not expired: its consumer
    /// opens once the job is admitted, and the admission timeout bounds that wait.
    pub(super) fn expire_parked(&mut self, now: Instant) {
        let Some(cutoff) = now.checked_sub(self.config.park_timeout) else {
            return;
        };
        while let Some(in_key) = self.parked.pop_parked_by(cutoff) {
            let Some(ch) = self.in_channels.get_mut(&in_key) else {
                continue;
            };
            if ch.parked.is_none() {
                continue;
            }
            let job = ch.consumer.0;
            if self
                .jobs
                .get(&job)
                .is_some_and(|j| j.admission.is_pending())
            {
                self.parked.repark(in_key, now);
                continue;
            }
            let (consumer, producer) = (ch.consumer, ch.producer);
            self.remember_expired(consumer, producer);
            self.drop_in_channel(in_key);
            self.push_control(
                in_key.0,
                Frame::Cancel {
                    channel: in_key.1,
                    code: CancelCode::ConsumerNeverAppeared,
                },
            );
        }
    }
}
