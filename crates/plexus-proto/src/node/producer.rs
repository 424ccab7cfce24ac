//! The producer side: opening channels lazily, spending credit, queuing data fairly on the
//! peer's scheduler, and reacting to `Credit` and `Cancel` from consumers.
//!
//! Invariants: a message is queued only once its channel's credit covers it; a channel's
//! `End`/`Abort` is queued behind its data; a finished channel's outcome stays recorded in
//! its producer so a late `send` gets the channel's real fate, not a fresh channel.

use std::collections::VecDeque;

use bytes::Bytes;

use super::error::Role;
use super::state::{
    out_key, wire_of, ChannelSlot, LocalKey, OutChannel, OutItem, OutKey, OutState, Peer,
    PeerState, Producer,
};
use super::{Event, ExchangeError, NodeCore};
use crate::credit::{message_cost, SendCredit};
use crate::frame::{CancelCode, Frame};
use crate::ids::{Endpoint, JobId, NodeId, WireChannel};

/// Why `try_send` did not queue a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrySendError {
    /// The consumer has granted no room for it yet; the message is handed back. A
    /// `ProducerReady` event follows when credit arrives.
    NoCredit(Bytes),
    /// The channel (or the whole producer) can take no more messages; the message is
    /// handed back.
    Failed(ExchangeError, Bytes),
}

impl NodeCore {
    /// Opens producer `slot` of `job`, which may send to `consumers`.
    pub fn open_producer(
        &mut self,
        job: JobId,
        slot: u32,
        consumers: impl IntoIterator<Item = Endpoint>,
    ) -> Result<(), ExchangeError> {
        self.may_start(job)?;
        if !self.is_admitted(job) {
            return Err(ExchangeError::NotAdmitted { job });
        }
        if self.producers.contains_key(&(job, slot)) {
            return Err(ExchangeError::SlotInUse {
                job,
                slot,
                role: Role::Producer,
            });
        }
        let mut consumers: Vec<Endpoint> = consumers.into_iter().collect();
        consumers.sort_unstable();
        consumers.dedup();
        self.register_job(job, consumers.iter().map(|c| c.node));
        if let Some(error) = self.job_failure(job) {
            return Err(error);
        }
        self.producers.insert(
            (job, slot),
            Producer {
                consumers,
                channels: Default::default(),
                closed: false,
                ends_unacked: 0,
            },
        );
        Ok(())
    }

    /// Queues `payload` for `consumer` if its channel has credit for it.
    pub fn try_send(
        &mut self,
        job: JobId,
        slot: u32,
        consumer: Endpoint,
        payload: Bytes,
    ) -> Result<(), TrySendError> {
        self.queue_message(job, slot, consumer, payload)?;
        self.note_buffered();
        Ok(())
    }

    /// `try_send` without updating the peak of buffered bytes, which only grows while
    /// messages are queued: a caller queuing many notes it once, after them.
    fn queue_message(
        &mut self,
        job: JobId,
        slot: u32,
        consumer: Endpoint,
        payload: Bytes,
    ) -> Result<(), TrySendError> {
        let cost = message_cost(payload.len());
        let key = match self.sendable_channel(job, slot, consumer, payload.len()) {
            Ok(Some(key)) => key,
            Ok(None) => return Err(TrySendError::NoCredit(payload)),
            Err(e) => return Err(TrySendError::Failed(e, payload)),
        };
        let policy = self.send_policy;
        let now = self.now;
        let Some(ch) = self.out_channels.get_mut(&key) else {
            return Err(TrySendError::Failed(ExchangeError::Closed, payload));
        };
        let (spent, request) = ch.credit.try_spend(cost, policy);
        let wire = wire_of(key);
        let unblocked = if spent {
            ch.sent += cost;
            ch.blocked_since.take()
        } else {
            ch.blocked_since.get_or_insert(now);
            None
        };
        if let Some(since) = unblocked {
            let waited = now.saturating_duration_since(since);
            self.counters.producers_blocked += waited;
            if let Some(state) = self.jobs.get_mut(&job) {
                state.producers_blocked += waited;
            }
        }

        let peer = consumer.node;
        let mut refused = None;
        if let Some(p) = self.peers.get_mut(&peer) {
            if let Some(r) = request {
                p.control.push_back(Frame::Backlog {
                    channel: wire,
                    need: r.need,
                    want: r.want,
                });
            }
            if spent {
                p.change_buffered(&mut self.send_buffered, |p| {
                    p.data.push(key, OutItem::Data(payload));
                });
            } else {
                refused = Some(payload);
            }
        }
        self.wake_peer(peer);
        match refused {
            None => Ok(()),
            Some(payload) => Err(TrySendError::NoCredit(payload)),
        }
    }

    /// Queues messages from the front of `messages` for `consumer` while its channel has
    /// credit for them; returns how many it took (removed from `messages`). When it stops
    /// for lack of credit, a `ProducerReady` event follows as for `try_send`. A failure of
    /// the channel is returned if it took nothing; otherwise it stops there and the next
    /// call returns the failure. Messages not taken stay in `messages`.
    pub fn try_send_many(
        &mut self,
        job: JobId,
        slot: u32,
        consumer: Endpoint,
        messages: &mut VecDeque<Bytes>,
    ) -> Result<usize, ExchangeError> {
        let mut taken = 0;
        while let Some(message) = messages.pop_front() {
            match self.queue_message(job, slot, consumer, message) {
                Ok(()) => taken += 1,
                Err(TrySendError::NoCredit(message)) => {
                    messages.push_front(message);
                    break;
                }
                Err(TrySendError::Failed(e, message)) if taken == 0 => {
                    messages.push_front(message);
                    return Err(e);
                }
                Err(TrySendError::Failed(_, message)) => {
                    messages.push_front(message);
                    break;
                }
            }
        }
        if taken > 0 {
            self.note_buffered();
        }
        Ok(taken)
    }

    /// Whether a message of `len` bytes to `consumer` would be taken now. When it would
    /// not, the channel asks for credit as a refused `try_send` does, and a
    /// `ProducerReady` event follows. Lets a producer build a message only once it can go.
    pub fn has_credit(
        &mut self,
        job: JobId,
        slot: u32,
        consumer: Endpoint,
        len: usize,
    ) -> Result<bool, ExchangeError> {
        let Some(key) = self.sendable_channel(job, slot, consumer, len)? else {
            return Ok(false);
        };
        let policy = self.send_policy;
        let Some(ch) = self.out_channels.get_mut(&key) else {
            return Err(ExchangeError::Closed);
        };
        let (ok, request) = ch.credit.check(message_cost(len), policy);
        if !ok {
            ch.blocked_since.get_or_insert(self.now);
        }
        if let Some(r) = request {
            let wire = wire_of(key);
            self.push_control(
                consumer.node,
                Frame::Backlog {
                    channel: wire,
                    need: r.need,
                    want: r.want,
                },
            );
        }
        Ok(ok)
    }

    /// The credit the channel from producer `(job, slot)` to `consumer` holds and has not
    /// spent (opening the channel if it is not yet): how much may be queued on it now
    /// without waiting. 0 while the node's send share is full.
    pub fn credit_available(
        &mut self,
        job: JobId,
        slot: u32,
        consumer: Endpoint,
    ) -> Result<u64, ExchangeError> {
        let Some(key) = self.sendable_channel(job, slot, consumer, 0)? else {
            return Ok(0);
        };
        Ok(self
            .out_channels
            .get(&key)
            .map_or(0, |ch| ch.credit.available()))
    }

    /// The open channel from producer `(job, slot)` to `consumer` that a message of `len`
    /// bytes may go on, as far as everything but its credit goes: `Ok(None)` while the
    /// node's send buffer is full (the producer is woken when it drains), an error when
    /// the message or the channel cannot go at all.
    fn sendable_channel(
        &mut self,
        job: JobId,
        slot: u32,
        consumer: Endpoint,
        len: usize,
    ) -> Result<Option<OutKey>, ExchangeError> {
        if len > self.config.max_message as usize {
            return Err(ExchangeError::MessageTooLarge {
                len,
                max: self.config.max_message,
            });
        }
        let key = self.live_channel((job, slot), consumer)?;
        match self.out_channels.get(&key).map(|ch| &ch.state) {
            None | Some(OutState::Finishing) => return Err(ExchangeError::Closed),
            Some(OutState::Failed(e)) => return Err((**e).clone()),
            Some(OutState::Open) => {}
        }
        if !self.send_room_for(message_cost(len)) {
            self.wait_for_send_room(job, slot, consumer);
            return Ok(None);
        }
        Ok(Some(key))
    }

    /// Closes the producer: every channel to the job's consumers ends after its data.
    pub fn close_producer(&mut self, job: JobId, slot: u32) -> Result<(), ExchangeError> {
        self.finish_producer((job, slot), OutItem::End)
    }

    /// Removes the producer. If it was not closed, its channels are aborted: consumers see
    /// an error instead of a silently short stream.
    pub fn drop_producer(&mut self, job: JobId, slot: u32) {
        let key = (job, slot);
        let closed = self.producers.get(&key).is_none_or(|p| p.closed);
        if !closed {
            // The producer exists, so this cannot fail with NoSuchEndpoint.
            let _ = self.finish_producer(key, OutItem::Abort);
        }
        self.producers.remove(&key);
        self.release_job_if_idle(job);
    }

    fn finish_producer(&mut self, producer: LocalKey, last: OutItem) -> Result<(), ExchangeError> {
        let consumers = match self.producers.get_mut(&producer) {
            None => {
                return Err(ExchangeError::NoSuchEndpoint {
                    job: producer.0,
                    slot: producer.1,
                    role: Role::Producer,
                })
            }
            Some(p) if p.closed => return Ok(()),
            Some(p) => p.consumers.clone(),
        };
        for consumer in consumers {
            let Ok(key) = self.live_channel(producer, consumer) else {
                continue;
            };
            let Some(ch) = self.out_channels.get_mut(&key) else {
                continue;
            };
            if ch.state != OutState::Open {
                continue;
            }
            ch.state = OutState::Finishing;
            let item = match last {
                OutItem::Abort => OutItem::Abort,
                _ => OutItem::End,
            };
            if let Some(p) = self.peers.get_mut(&consumer.node) {
                p.change_buffered(&mut self.send_buffered, |p| p.data.push(key, item));
            }
            self.wake_peer(consumer.node);
        }
        if let Some(p) = self.producers.get_mut(&producer) {
            p.closed = true;
        }
        Ok(())
    }

    /// The live channel from `producer` to `consumer`, opened on first use.
    fn live_channel(
        &mut self,
        producer: LocalKey,
        consumer: Endpoint,
    ) -> Result<OutKey, ExchangeError> {
        let (job, slot) = producer;
        let Some(p) = self.producers.get(&producer) else {
            return Err(ExchangeError::NoSuchEndpoint {
                job,
                slot,
                role: Role::Producer,
            });
        };
        match p.channels.get(&consumer) {
            Some(ChannelSlot::Live(key)) => return Ok(*key),
            Some(ChannelSlot::Done(None)) => return Err(ExchangeError::Closed),
            Some(ChannelSlot::Done(Some(e))) => return Err((**e).clone()),
            None => {}
        }
        if p.closed {
            return Err(ExchangeError::Closed);
        }
        if p.consumers.binary_search(&consumer).is_err() {
            return Err(ExchangeError::NotInJob {
                job,
                endpoint: consumer,
                role: Role::Consumer,
            });
        }
        let quantum = self.config.quantum;
        let peer = self
            .peers
            .entry(consumer.node)
            .or_insert_with(|| Peer::new(PeerState::Idle, quantum));
        let wire = WireChannel(peer.next_wire);
        peer.next_wire = peer.next_wire.wrapping_add(1);
        let key = out_key(consumer.node, wire);
        peer.control.push_back(Frame::Open {
            channel: wire,
            job,
            producer: slot,
            consumer: consumer.slot,
        });
        self.out_channels.insert(
            key,
            OutChannel {
                producer,
                consumer,
                credit: SendCredit::default(),
                sent: 0,
                state: OutState::Open,
                blocked_since: None,
            },
        );
        if let Some(p) = self.producers.get_mut(&producer) {
            p.channels.insert(consumer, ChannelSlot::Live(key));
        }
        self.wake_peer(consumer.node);
        Ok(key)
    }

    /// Whether everything producer `slot` of `job` sent was delivered: it is closed, and
    /// every consumer's node acknowledged the channel's `End` (and so all its data). A
    /// channel that failed or was cancelled returns its error. When it says `false`, a
    /// `ProducerReady` event follows each acknowledgement or failure.
    pub fn producer_delivered(&self, job: JobId, slot: u32) -> Result<bool, ExchangeError> {
        let Some(p) = self.producers.get(&(job, slot)) else {
            return Err(ExchangeError::NoSuchEndpoint {
                job,
                slot,
                role: Role::Producer,
            });
        };
        let mut all_ended = p.closed;
        for slot in p.channels.values() {
            match slot {
                ChannelSlot::Done(Some(e)) => return Err((**e).clone()),
                ChannelSlot::Done(None) => {}
                ChannelSlot::Live(_) => all_ended = false,
            }
        }
        Ok(all_ended && p.ends_unacked == 0)
    }

    /// The `End` of `producer`'s channel to `consumer` is written next to its node: wait
    /// for the acknowledgement of that frame.
    pub(super) fn await_end_ack(&mut self, producer: LocalKey, consumer: Endpoint) {
        let Some(peer) = self.peers.get_mut(&consumer.node) else {
            return;
        };
        let seq = peer.session.tx_seq();
        peer.ends_unacked.push_back((seq, producer, consumer));
        if let Some(p) = self.producers.get_mut(&producer) {
            p.ends_unacked += 1;
        }
    }

    /// `peer` acknowledged frames: the producers whose `End` it now has are woken.
    pub(super) fn ends_acknowledged(&mut self, peer: NodeId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let acked = p.session.acked_by_peer();
        while let Some(&(seq, producer, consumer)) = p.ends_unacked.front() {
            if seq >= acked {
                break;
            }
            p.ends_unacked.pop_front();
            if let Some(prod) = self.producers.get_mut(&producer) {
                // (A producer reopened in the slot of a dropped one may see the old one's
                // acknowledgements: it never counts below nothing.)
                prod.ends_unacked = prod.ends_unacked.saturating_sub(1);
            }
            self.events.push_back(Event::ProducerReady {
                job: producer.0,
                slot: producer.1,
                consumer,
            });
        }
    }

    /// A `Credit` from `peer` for our channel `wire`.
    pub(super) fn on_credit(&mut self, peer: NodeId, wire: WireChannel, bytes: u32) {
        let key = out_key(peer, wire);
        let policy = self.send_policy;
        let Some(ch) = self.out_channels.get_mut(&key) else {
            return; // the channel already finished; a late grant is harmless
        };
        let (ready, request) = ch.credit.on_grant(bytes, policy);
        let (job, slot) = ch.producer;
        let consumer = ch.consumer;
        if let Some(r) = request {
            self.push_control(
                peer,
                Frame::Backlog {
                    channel: wire,
                    need: r.need,
                    want: r.want,
                },
            );
        }
        if ready {
            self.events.push_back(Event::ProducerReady {
                job,
                slot,
                consumer,
            });
        }
    }

    /// A `Cancel` from `peer` for our channel `wire`: drop its queued data and tell the
    /// consumer side we are done with `Abort`, which retires the channel on both sides.
    pub(super) fn on_cancel(&mut self, peer: NodeId, wire: WireChannel, code: CancelCode) {
        let key = out_key(peer, wire);
        let Some(ch) = self.out_channels.get_mut(&key) else {
            return;
        };
        ch.state = OutState::Failed(Box::new(ExchangeError::Cancelled {
            consumer: ch.consumer,
            code,
        }));
        let (job, slot) = ch.producer;
        let consumer = ch.consumer;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.change_buffered(&mut self.send_buffered, |p| {
                p.data.remove(key);
                p.data.push(key, OutItem::Abort);
            });
        }
        self.wake_peer(peer);
        self.events.push_back(Event::ProducerReady {
            job,
            slot,
            consumer,
        });
    }

    /// Forgets outgoing channel `key`, recording its outcome with its producer.
    pub(super) fn retire_out_channel(&mut self, key: OutKey) {
        let Some(ch) = self.remove_out_channel(key) else {
            return;
        };
        let outcome = match ch.state {
            OutState::Failed(e) => Some(e),
            OutState::Open | OutState::Finishing => None,
        };
        if let Some(p) = self.producers.get_mut(&ch.producer) {
            p.channels.insert(ch.consumer, ChannelSlot::Done(outcome));
        }
        self.retire_if_over(ch.producer.0);
    }
}
