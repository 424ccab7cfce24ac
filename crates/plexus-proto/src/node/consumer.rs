//! The consumer side: attaching incoming channels (or parking them until their consumer
//! exists), granting credit from the consumer's pool, queuing arriving messages, and
//! reporting ends and errors.
//!
//! Invariants: a channel never receives more payload than it was granted (a peer that
//! exceeds its credit breaks the protocol and loses the link); every byte granted is
//! released exactly once, when the application reads it or when the channel ends, fails or
//! is cancelled; a parked channel holds no data, only its record.

use std::collections::VecDeque;

use bytes::Bytes;

use super::consumers::{Consumer, Wanted};
use super::error::Role;
use super::state::{InChannel, InKey, LocalKey, Parked};
use super::{Event, ExchangeError, NodeCore};
use crate::batch::MessageBatch;
use crate::credit::{message_cost, CreditPool};
use crate::frame::{CancelCode, Frame};
use crate::ids::{Endpoint, JobId, NodeId, WireChannel};

/// Messages that arrived in one frame, as a consumer takes them in bulk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// One message.
    Message(Bytes),
    /// Several small messages, in order.
    Batch(MessageBatch),
}

impl Arrival {
    /// The credit its messages cost.
    pub fn cost(&self) -> u64 {
        match self {
            Arrival::Message(m) => message_cost(m.len()),
            Arrival::Batch(b) => b.cost(),
        }
    }
}

/// What became of a parked channel when its consumer opened.
enum Attach {
    /// It ended (or aborted) while parked: only its outcome was kept.
    EndedWhileParked,
    /// Its consumer does not take it.
    Refused,
    /// It is part of its consumer now.
    Attached,
}

/// What a consumer gets when it polls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recv {
    /// The next message, and the producer that sent it.
    Message(Endpoint, Bytes),
    /// A failure affecting some of the consumer's producers; others may still deliver.
    Error(ExchangeError),
    /// Every producer has closed and every message was read.
    Finished,
    /// Nothing yet; a `ConsumerReady` event follows when there is.
    Pending,
}

impl Recv {
    /// `Finished` if every producer ended, else `Pending`.
    fn from_end(all_ended: bool) -> Self {
        if all_ended {
            Recv::Finished
        } else {
            Recv::Pending
        }
    }
}

impl NodeCore {
    /// Opens consumer `slot` of `job`, which receives from `producers`.
    pub fn open_consumer(
        &mut self,
        job: JobId,
        slot: u32,
        producers: impl IntoIterator<Item = Endpoint>,
    ) -> Result<(), ExchangeError> {
        let key = (job, slot);
        self.may_start(job)?;
        if !self.is_admitted(job) {
            return Err(ExchangeError::NotAdmitted { job });
        }
        if self.consumers.contains_key(&key) || self.consumer_closed(key) {
            return Err(ExchangeError::SlotInUse {
                job,
                slot,
                role: Role::Consumer,
            });
        }
        let mut expected: Vec<Endpoint> = producers.into_iter().collect();
        expected.sort_unstable();
        expected.dedup();
        self.register_job(job, expected.iter().map(|p| p.node));
        if let Some(error) = self.job_failure(job) {
            return Err(error);
        }
        let pool = CreditPool::new(
            self.config.credit_pool,
            self.config.max_message_cost(),
            self.config.max_grant,
        );
        let mut consumer = Consumer::new(pool, expected);
        for producer in self.expired.remove(&key).unwrap_or_default() {
            if consumer.remaining.remove(&producer) {
                consumer
                    .errors
                    .push_back(ExchangeError::ParkExpired { producer });
            }
        }
        self.consumers.insert(key, consumer);
        for in_key in self.parked.take(key) {
            self.attach(key, in_key);
        }
        self.grant(key);
        self.events.push_back(Event::ConsumerReady { job, slot });
        // Every node with a producer for us must be reachable, or the job must fail: make
        // sure a link to each is (or will be) there, so a dead one is noticed.
        let nodes: crate::map::Set<NodeId> = self
            .consumers
            .get(&key)
            .map(|c| c.remaining.iter().map(|p| p.node).collect())
            .unwrap_or_default();
        for node in nodes {
            if node != self.config.node {
                self.ensure_peer(node);
            }
        }
        Ok(())
    }

    /// Takes the next thing for consumer `slot` of `job` to read, from any producer, in
    /// arrival order. Every channel of the consumer is wanted from now on (see
    /// [`NodeCore::poll_recv_from`]).
    pub fn poll_recv(&mut self, job: JobId, slot: u32) -> Recv {
        self.poll_recv_among((job, slot), None)
    }

    /// Takes the next thing for consumer `slot` of `job` to read from the producers
    /// `among` only (the oldest of their messages first): a message, an error that
    /// concerns them (a producer's abort, its node's failure, the job's failure),
    /// `Finished` once all of them ended and their messages were read, or `Pending`.
    ///
    /// From now on only their channels are *wanted*: the consumer's other channels may
    /// read ahead only in the room of its pool above one message (see `credit`), so what
    /// this call waits for always gets room once the messages already taken from `among`
    /// are read — reading one producer, or one group, to its end while the others wait
    /// cannot deadlock, whatever the pool's size.
    pub fn poll_recv_from(&mut self, job: JobId, slot: u32, among: &[Endpoint]) -> Recv {
        self.poll_recv_among((job, slot), Some(among))
    }

    fn poll_recv_among(&mut self, key: LocalKey, among: Option<&[Endpoint]>) -> Recv {
        let read = self.consumers.change(&key, |c| {
            // A new choice of producers lets channels wanted now use room they could not
            // use before, as reading does: either way the pool grants after this.
            let changed = !c.wanted.is(among);
            if changed {
                c.wanted = Wanted::of(among);
            }
            c.waiting = false;
            let outcome = if let Some((from, payload)) = c.read_one(among) {
                Recv::Message(from, payload)
            } else if let Some(error) = c.take_error(among) {
                Recv::Error(error)
            } else {
                let outcome = Recv::from_end(c.ended(among));
                c.waiting = outcome == Recv::Pending;
                outcome
            };
            (changed, outcome)
        });
        let Some((changed, outcome)) = read else {
            return Recv::Error(ExchangeError::NoSuchEndpoint {
                job: key.0,
                slot: key.1,
                role: Role::Consumer,
            });
        };
        if changed || matches!(outcome, Recv::Message(..) | Recv::Pending) {
            // Credit read back goes on to channels waiting for it; a reader that waits
            // now lets what it waits for use the reserve.
            self.grant(key);
        }
        outcome
    }

    /// Puts back at the front of their producers' queues the arrivals the application of
    /// consumer `slot` of `job` took with [`NodeCore::take_arrivals`] and did not read
    /// (in `arrivals`, in the order taken): a reader that turns from reading everything to
    /// reading some producers returns what it holds of the others.
    pub fn give_back(
        &mut self,
        job: JobId,
        slot: u32,
        arrivals: &mut VecDeque<(Endpoint, Arrival)>,
    ) {
        self.consumers
            .change(&(job, slot), |c| c.give_back(arrivals));
    }

    /// Moves what consumer `slot` of `job` received into `out`, whole arrivals in order,
    /// until their credit reaches `max_cost` (at least one arrival when there is any).
    /// Their credit stays taken until [`NodeCore::finished_reading`] says the application
    /// read them, so what sits between the core and the application stays within the
    /// consumer's pool. Returns how many arrivals it moved; with none,
    /// [`NodeCore::poll_recv`] tells what comes next (an error, the end, or nothing).
    pub fn take_arrivals(
        &mut self,
        job: JobId,
        slot: u32,
        max_cost: u64,
        out: &mut VecDeque<(Endpoint, Arrival)>,
    ) -> usize {
        self.consumers
            .change(&(job, slot), |c| {
                c.wanted = Wanted::All;
                c.take(max_cost, out)
            })
            .unwrap_or(0)
    }

    /// The application of consumer `slot` of `job` read every message it took with
    /// [`NodeCore::take_arrivals`]: their credit goes back to the pool, and on to channels
    /// waiting for it.
    pub fn finished_reading(&mut self, job: JobId, slot: u32) {
        let key = (job, slot);
        let released = self.consumers.change(&key, Consumer::finished_reading);
        if released.is_some_and(|bytes| bytes > 0) {
            self.grant(key);
        }
    }

    /// Removes consumer `slot` of `job`. Its open channels are cancelled: their producers
    /// are told, and data still on its way is dropped on arrival.
    pub fn drop_consumer(&mut self, job: JobId, slot: u32) {
        let key = (job, slot);
        let Some(c) = self.consumers.remove(&key) else {
            return;
        };
        if let Some(state) = self.jobs.get_mut(&job) {
            if let Err(at) = state.closed_consumers.binary_search(&slot) {
                state.closed_consumers.insert(at, slot);
            }
        }
        for in_key in c.channels.into_keys() {
            // The record goes now: frames still on their way for it are recognised as
            // belonging to a retired channel and dropped.
            self.remove_in_channel(in_key);
            self.push_control(
                in_key.0,
                Frame::Cancel {
                    channel: in_key.1,
                    code: CancelCode::ConsumerGone,
                },
            );
        }
        self.release_job_if_idle(job);
    }

    pub(super) fn on_open(
        &mut self,
        peer: NodeId,
        wire: WireChannel,
        job: JobId,
        producer: u32,
        consumer: u32,
    ) -> Result<(), String> {
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err("channel from an unknown peer".into());
        };
        if wire.0 != p.next_in_wire {
            return Err(format!(
                "channel {} opened out of order (expected {})",
                wire.0, p.next_in_wire
            ));
        }
        p.next_in_wire = p.next_in_wire.wrapping_add(1);
        let in_key = (peer, wire);
        let local = (job, consumer);
        let record = InChannel {
            consumer: local,
            producer: Endpoint::new(peer, producer),
            granted: 0,
            received: 0,
            parked: Some(Box::new(Parked {
                request: None,
                finish: None,
            })),
        };
        if self.job_failure(job).is_some() {
            // The job failed here: its channels are refused, and the producer learns why.
            self.refuse(in_key, CancelCode::JobFailed);
        } else if self.consumers.contains_key(&local) {
            self.in_channels.insert(in_key, record);
            self.attach(local, in_key);
        } else if self.job_finished(job)
            || self.consumer_closed(local)
            || self.parked.len() >= self.config.max_parked_channels
        {
            // Refused without a record: what still arrives for it is dropped as retired.
            self.refuse(in_key, CancelCode::ConsumerGone);
        } else {
            self.in_channels.insert(in_key, record);
            self.parked.park(local, in_key, self.now);
        }
        Ok(())
    }

    /// Whether consumer `key` was open here and is closed.
    fn consumer_closed(&self, key: LocalKey) -> bool {
        self.jobs
            .get(&key.0)
            .is_some_and(|j| j.closed_consumers.binary_search(&key.1).is_ok())
    }

    /// Whether `wire` from `peer` is a channel that was opened and is now gone (ended,
    /// refused or cancelled), rather than one never opened.
    fn is_retired(&self, peer: NodeId, wire: WireChannel) -> bool {
        self.peers.get(&peer).is_some_and(|p| {
            let behind = p.next_in_wire.wrapping_sub(wire.0);
            behind > 0 && behind <= u32::MAX / 2
        })
    }

    /// The record of channel `in_key`, or `Ok(None)` if it is retired (its frames are
    /// dropped), or an error if it was never opened.
    fn in_channel(&mut self, in_key: InKey, what: &str) -> Result<Option<&mut InChannel>, String> {
        if self.in_channels.contains_key(&in_key) {
            return Ok(self.in_channels.get_mut(&in_key));
        }
        if self.is_retired(in_key.0, in_key.1) {
            Ok(None)
        } else {
            Err(format!("{what} on unknown channel {}", in_key.1 .0))
        }
    }

    /// Joins a channel to its (now existing) consumer, applying what happened while parked.
    fn attach(&mut self, local: LocalKey, in_key: InKey) {
        if !self.consumers.contains_key(&local) {
            return;
        }
        let Some(ch) = self.in_channels.get_mut(&in_key) else {
            return;
        };
        let producer = ch.producer;
        let parked = ch.parked.take();
        let outcome = self.consumers.change(&local, |c| {
            let welcome =
                c.expected.binary_search(&producer).is_ok() && c.attached_from.insert(producer);
            if let Some(finish) = parked.as_ref().and_then(|p| p.finish.clone()) {
                // It ended while parked, so it never held data: only its outcome is left.
                if welcome {
                    c.remaining.remove(&producer);
                    if let Some(error) = finish {
                        c.errors.push_back(*error);
                    }
                }
                return Attach::EndedWhileParked;
            }
            if !welcome {
                // Not a producer of this consumer, or a second channel from the same one.
                return Attach::Refused;
            }
            if let Some((need, want)) = parked.as_ref().and_then(|p| p.request) {
                // A need above the reserve cannot be honoured: refuse the channel.
                if c.pool.request(in_key, need, want).is_err() {
                    c.remaining.remove(&producer);
                    return Attach::Refused;
                }
            }
            c.channels.insert(in_key, producer);
            Attach::Attached
        });
        match outcome {
            Some(Attach::EndedWhileParked) => {
                self.remove_in_channel(in_key);
            }
            Some(Attach::Refused) => {
                self.remove_in_channel(in_key);
                self.refuse(in_key, CancelCode::UnknownConsumer);
            }
            Some(Attach::Attached) | None => {}
        }
    }

    /// Tells the producer side that channel `in_key` is refused.
    fn refuse(&mut self, in_key: InKey, code: CancelCode) {
        self.push_control(
            in_key.0,
            Frame::Cancel {
                channel: in_key.1,
                code,
            },
        );
    }

    /// Messages (one `Data` frame or a `Batch`) costing `cost` arrived on a channel.
    pub(super) fn on_data(
        &mut self,
        peer: NodeId,
        wire: WireChannel,
        cost: u64,
        arrival: Arrival,
    ) -> Result<(), String> {
        let in_key = (peer, wire);
        let Some(ch) = self.in_channel(in_key, "data")? else {
            return Ok(()); // a retired channel: dropped on arrival
        };
        if ch.received + cost > ch.granted {
            return Err(format!(
                "channel {} sent {} bytes beyond its credit",
                wire.0,
                ch.received + cost - ch.granted
            ));
        }
        ch.received += cost;
        let local = ch.consumer;
        let producer = ch.producer;

        // A consumer that found nothing of what it reads waits for this; one that did is
        // still reading.
        let wake = self.consumers.change(&local, |c| c.push(producer, arrival));
        if wake == Some(true) {
            self.events.push_back(Event::ConsumerReady {
                job: local.0,
                slot: local.1,
            });
        }
        Ok(())
    }

    pub(super) fn on_backlog(
        &mut self,
        peer: NodeId,
        wire: WireChannel,
        need: u32,
        want: u32,
    ) -> Result<(), String> {
        let in_key = (peer, wire);
        let Some(ch) = self.in_channel(in_key, "backlog")? else {
            return Ok(());
        };
        if let Some(parked) = &mut ch.parked {
            if parked.request.replace((need, want)).is_some() {
                return Err("second credit request before an answer".into());
            }
            return Ok(());
        }
        let local = ch.consumer;
        if let Some(request) = self
            .consumers
            .change(&local, |c| c.pool.request(in_key, need, want))
        {
            request.map_err(|e| e.to_string())?;
        }
        self.grant(local);
        Ok(())
    }

    /// `End` (with the producer's count of bytes sent) or `Abort` (`sent: None`).
    pub(super) fn on_finish(
        &mut self,
        peer: NodeId,
        wire: WireChannel,
        sent: Option<u64>,
    ) -> Result<(), String> {
        let in_key = (peer, wire);
        let Some(ch) = self.in_channel(in_key, "end")? else {
            return Ok(());
        };
        if let Some(sent) = sent {
            if sent != ch.received {
                return Err(format!(
                    "channel {} ended after {} bytes but {} arrived",
                    wire.0, sent, ch.received
                ));
            }
        }
        let outcome = match sent {
            Some(_) => None,
            None => Some(ExchangeError::ProducerAborted {
                producer: ch.producer,
            }),
        };
        if let Some(parked) = &mut ch.parked {
            parked.finish = Some(outcome.map(Box::new));
            return Ok(());
        }
        let unused = ch.granted - ch.received;
        let local = ch.consumer;
        let producer = ch.producer;
        self.remove_in_channel(in_key);
        self.consumers.change(&local, |c| {
            c.pool.forget(in_key);
            c.pool.release(unused);
            c.channels.remove(&in_key);
            c.remaining.remove(&producer);
            if let Some(error) = outcome {
                c.errors.push_back(error);
            }
        });
        self.grant(local);
        self.events.push_back(Event::ConsumerReady {
            job: local.0,
            slot: local.1,
        });
        Ok(())
    }

    /// Answers what the consumer's pool can answer now with `Credit` frames.
    fn grant(&mut self, local: LocalKey) {
        let mut grants = std::mem::take(&mut self.grant_scratch);
        self.consumers.change(&local, |c| {
            let Consumer {
                pool,
                channels,
                wanted,
                waiting,
                ..
            } = c;
            pool.poll_grants_for(&mut grants, |k| {
                channels
                    .get(k)
                    .is_some_and(|p| wanted.may_use_reserve(*waiting, p))
            });
        });
        let granted_any = !grants.is_empty();
        for (in_key, bytes) in grants.drain(..) {
            if let Some(ch) = self.in_channels.get_mut(&in_key) {
                ch.granted += u64::from(bytes);
            }
            self.push_control(
                in_key.0,
                Frame::Credit {
                    channel: in_key.1,
                    bytes,
                },
            );
        }
        self.grant_scratch = grants;
        if granted_any {
            self.note_buffered();
        }
    }
}
