//! Jobs as the core sees them: which nodes each job spans, and failing a job as a whole:
//! when a node it spans is declared dead, or when an endpoint cancels it. Also the expiry
//! of channels parked for consumers that never appear.
//!
//! Invariants: a failed job stays failed (its endpoints, and endpoints opened later, get its
//! error); failing a job releases everything its endpoints held here — queued data, credit,
//! channel records — and wakes every waiter with the error; jobs that do not span a dead
//! node are untouched.

use std::time::Instant;

use super::state::{ChannelSlot, InKey, LocalKey, OutState, Peer, PeerState};
use super::{Event, ExchangeError, LinkCause, NodeCore};
use crate::frame::{CancelCode, Frame};
use crate::ids::{JobId, NodeId};
use crate::map::Set;

/// What the core knows of one job.
#[derive(Debug, Default)]
pub(crate) struct JobState {
    /// Every node with an endpoint of the job.
    pub nodes: Set<NodeId>,
    /// Why the job failed, once it has.
    pub failed: Option<ExchangeError>,
}

impl NodeCore {
    /// Tells the core which nodes job `job` spans (all nodes of its topology), so that the
    /// death of any of them fails the job here. Call before opening its endpoints; calling
    /// again adds nodes.
    pub fn register_job(&mut self, job: JobId, nodes: impl IntoIterator<Item = NodeId>) {
        let state = self.jobs.entry(job).or_default();
        state.nodes.extend(nodes);
        state.nodes.insert(self.config.node);
    }

    /// Why `job` failed, if it did.
    pub(super) fn job_failure(&self, job: JobId) -> Option<ExchangeError> {
        self.jobs.get(&job).and_then(|j| j.failed.clone())
    }

    /// Cancels `job` from this node: its endpoints here fail, and every other node it
    /// spans is told to fail its endpoints too.
    pub fn cancel_job(&mut self, job: JobId) {
        let me = self.config.node;
        let others: Vec<NodeId> = self
            .jobs
            .get(&job)
            .map(|j| j.nodes.iter().copied().filter(|n| *n != me).collect())
            .unwrap_or_default();
        for node in others {
            self.push_control(node, Frame::CancelJob { job });
        }
        self.fail_job(job, ExchangeError::JobCancelled { job, by: me });
    }

    /// A `CancelJob` from `peer`.
    pub(super) fn on_cancel_job(&mut self, peer: NodeId, job: JobId) {
        self.jobs.entry(job).or_default().nodes.insert(peer);
        self.fail_job(job, ExchangeError::JobCancelled { job, by: peer });
    }

    /// A `JobFailed` from `peer`: it declared `dead` dead, so the job fails here too.
    pub(super) fn on_job_failed(&mut self, peer: NodeId, job: JobId, dead: NodeId) {
        let state = self.jobs.entry(job).or_default();
        state.nodes.insert(peer);
        state.nodes.insert(dead);
        let error = ExchangeError::LinkFailed {
            peer: dead,
            cause: LinkCause::ReportedDead { by: peer },
        };
        self.fail_job(job, error);
    }

    /// Declares `peer` dead with `cause`: every job spanning it fails here, and the session
    /// with it is forgotten, so a later job starts afresh with a new link.
    pub(super) fn declare_dead(&mut self, peer: NodeId, cause: LinkCause) {
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
        let me = self.config.node;
        for job in doomed {
            // The other nodes of the job may not notice the death themselves (they may
            // never talk to `peer`): tell them, so every endpoint of the job fails.
            let others: Vec<NodeId> = self.jobs.get(&job).map_or_else(Vec::new, |j| {
                j.nodes
                    .iter()
                    .copied()
                    .filter(|n| *n != me && *n != peer)
                    .collect()
            });
            for node in others {
                self.push_control(node, Frame::JobFailed { job, dead: peer });
            }
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

    /// Fails every endpoint of `job` on this node with `error`.
    pub(super) fn fail_job(&mut self, job: JobId, error: ExchangeError) {
        let state = self.jobs.entry(job).or_default();
        if state.failed.is_some() {
            return;
        }
        state.failed = Some(error.clone());
        let producers: Vec<LocalKey> = self
            .producers
            .keys()
            .filter(|k| k.0 == job)
            .copied()
            .collect();
        for key in producers {
            self.fail_producer(key, &error);
        }
        let consumers: Vec<LocalKey> = self
            .consumers
            .keys()
            .filter(|k| k.0 == job)
            .copied()
            .collect();
        for key in consumers {
            self.fail_consumer(key, &error);
        }
        let parked: Vec<LocalKey> = self.parked.keys().filter(|k| k.0 == job).copied().collect();
        for key in parked {
            for in_key in self.parked.remove(&key).unwrap_or_default() {
                self.parked_count -= 1;
                self.in_channels.remove(&in_key);
            }
        }
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
        let Some(c) = self.consumers.get_mut(&key) else {
            return;
        };
        let channels: Vec<InKey> = c.channels.drain().collect();
        // What it queued or took will not be read: its credit goes back now.
        let queued: u64 =
            c.queue.drain(..).map(|(_, a)| a.cost()).sum::<u64>() + std::mem::take(&mut c.taken);
        c.pool.release(queued);
        self.granted_outstanding -= queued;
        self.recv_queued_bytes -= queued;
        c.remaining.clear();
        c.errors.push_back(error.clone());
        for in_key in channels {
            self.drop_in_channel(in_key);
        }
        self.events.push_back(Event::ConsumerReady {
            job: key.0,
            slot: key.1,
        });
    }

    /// Forgets incoming channel `in_key`, returning its credit to its consumer's pool.
    fn drop_in_channel(&mut self, in_key: InKey) {
        let Some(ch) = self.in_channels.remove(&in_key) else {
            return;
        };
        if let Some(c) = self.consumers.get_mut(&ch.consumer) {
            c.pool.forget(in_key);
            c.pool.release(ch.granted - ch.received);
            self.granted_outstanding -= ch.granted - ch.received;
            c.channels.remove(&in_key);
        }
        if let Some(list) = self.parked.get_mut(&ch.consumer) {
            let before = list.len();
            list.retain(|k| *k != in_key);
            self.parked_count -= before - list.len();
        }
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
    pub(super) fn expire_parked(&mut self, now: Instant) {
        let timeout = self.config.park_timeout;
        while let Some(&(since, in_key)) = self.parked_order.front() {
            if now.saturating_duration_since(since) < timeout {
                break;
            }
            self.parked_order.pop_front();
            let still_parked = self
                .in_channels
                .get(&in_key)
                .is_some_and(|ch| ch.parked.as_ref().is_some_and(|p| p.since == since));
            if still_parked {
                if let Some(ch) = self.in_channels.get(&in_key) {
                    self.remember_expired(ch.consumer, ch.producer);
                }
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
}
