//! The records the node core keeps: peers, links, producers' outgoing channels and
//! consumers' incoming channels. Pure data with small helpers; the logic lives in the
//! sibling modules that handle each side.

use std::collections::VecDeque;

use crate::map::Map;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::{Claim, Transcript};
use crate::batch::{batched_len, is_batchable, BatchBuilder, MessageBatch};
use crate::credit::SendCredit;
use crate::frame::Frame;
use crate::ids::{Endpoint, JobId, NodeId, WireChannel};
use crate::node::error::ExchangeError;
use crate::scheduler::{Scheduler, Weighted};

use super::session::Session;

/// One connection, as the core knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// Key of an outgoing channel in the core's table: the consumer's node and our number for
/// the channel on that peer's session (see [`out_key`]).
pub(crate) type OutKey = u64;

/// The key of our channel numbered `wire` towards `peer`. Numbers are never reused within
/// a session, and a peer's channels are all retired before a new session with it starts,
/// so a key names one channel.
pub(crate) fn out_key(peer: NodeId, wire: WireChannel) -> OutKey {
    (u64::from(peer.0) << 32) | u64::from(wire.0)
}

/// Our number for the channel of `key` on its peer's session.
pub(crate) fn wire_of(key: OutKey) -> WireChannel {
    WireChannel(key as u32)
}
/// Key of an incoming channel: the sending peer and its number for the channel.
pub(crate) type InKey = (NodeId, WireChannel);
/// A producer or consumer on this node: job and slot.
pub(crate) type LocalKey = (JobId, u32);

/// What a channel puts on its link, in order.
#[derive(Debug)]
pub(crate) enum OutItem {
    Data(Bytes),
    /// Queued messages packed on their way out; never queued itself.
    Batch(MessageBatch),
    End,
    Abort,
}

impl Weighted for OutItem {
    fn weight(&self) -> usize {
        match self {
            OutItem::Data(payload) => crate::codec::data_frame_len(payload.len()),
            OutItem::Batch(messages) => crate::codec::data_frame_len(messages.body().len()),
            OutItem::End | OutItem::Abort => 16,
        }
    }
}

/// Where the traffic to one peer node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// This node itself: frames are handed over in memory.
    Local,
    /// No link and none wanted yet.
    Idle,
    /// A dial was requested (or will be retried at `redial_at`).
    Dialing,
    /// Waiting for the peer to dial us: it has the lower id and dials first, or our dial
    /// lost a simultaneous-dial tie-break. We dial (again) at `redial_at`.
    AwaitingInbound,
    /// Traffic flows on this link.
    Up(LinkId),
}

/// Everything queued for one peer, independent of which connection carries it.
#[derive(Debug)]
pub(crate) struct Peer {
    pub state: PeerState,
    /// The peer's bucket of channel opens and ends (see `limits`); `None` while full.
    pub churn: Option<Churn>,
    /// Control frames, sent before any data.
    pub control: VecDeque<Frame>,
    /// Credit-covered data and in-order channel markers.
    pub data: Scheduler<OutKey, OutItem>,
    /// Next number for a channel we open towards this peer.
    pub next_wire: u32,
    /// The number the peer's next `Open` must carry: it numbers its channels in order, so
    /// any lower number is a channel that is gone, and any other is a protocol error.
    pub next_in_wire: u32,
    /// Failed dial attempts since the last working link.
    pub dial_failures: u32,
    /// Consecutive dials refused outright (nothing listening at the peer's address).
    pub refusals: u32,
    /// Why the last dial (or its handshake) failed, for the cause if the peer is declared
    /// dead.
    pub last_failure: Option<String>,
    /// When to dial (again); `None` while `AwaitingInbound` means "set at the next tick".
    pub redial_at: Option<Instant>,
    /// How long this node itself was stalled since the session went down (see
    /// `session.down_since`): that time does not count against the grace period.
    pub down_stalled: Duration,
    /// Numbering, retention and acknowledgement of the frames exchanged with the peer.
    pub session: Session,
    /// Packs small messages for the peer into batches.
    pub batch_builder: BatchBuilder,
    /// Producers' `End` frames sent to the peer and not yet acknowledged: the frame's
    /// number in the session, the producer, the consumer. In sending order.
    pub ends_unacked: VecDeque<(u64, LocalKey, Endpoint)>,
}

impl Peer {
    /// Bytes this peer holds on the send side: queued to send, and kept until
    /// acknowledged.
    pub fn buffered(&self) -> u64 {
        self.data.queued_bytes() as u64 + self.session.retained_bytes()
    }

    /// Runs `change` on this peer's queues or retained frames, keeping `total` (what all
    /// peers hold on the send side) up to date.
    pub fn change_buffered<R>(
        &mut self,
        total: &mut u64,
        change: impl FnOnce(&mut Peer) -> R,
    ) -> R {
        let before = self.buffered();
        let result = change(self);
        *total = *total + self.buffered() - before;
        result
    }

    /// The next data item for the peer in fair order, and for a remote peer the small
    /// messages queued right behind a small message on its channel (as far as the
    /// channel's turn goes), packed with it into one batch of at most `batch_limit` body
    /// bytes (0: no packing).
    pub fn pop_data(&mut self, batch_limit: usize) -> Option<(OutKey, OutItem)> {
        let (key, item) = self.data.pop()?;
        let OutItem::Data(first) = item else {
            return Some((key, item));
        };
        if !is_batchable(first.len()) {
            return Some((key, OutItem::Data(first)));
        }
        let mut started = false;
        let mut body = batched_len(first.len());
        while let Some(OutItem::Data(next)) = self.data.pop_next_of(key, |it| {
            matches!(it, OutItem::Data(m)
                if is_batchable(m.len()) && body + batched_len(m.len()) <= batch_limit)
        }) {
            if !started {
                self.batch_builder.start(batch_limit);
                self.batch_builder.push(&first);
                started = true;
            }
            self.batch_builder.push(&next);
            body = self.batch_builder.body_len();
        }
        let item = if started {
            OutItem::Batch(self.batch_builder.finish())
        } else {
            OutItem::Data(first)
        };
        Some((key, item))
    }

    pub fn new(state: PeerState, quantum: usize) -> Self {
        Self {
            state,
            churn: None,
            control: VecDeque::new(),
            data: Scheduler::new(quantum),
            next_wire: 0,
            next_in_wire: 0,
            dial_failures: 0,
            refusals: 0,
            last_failure: None,
            redial_at: None,
            down_stalled: Duration::ZERO,
            session: Session::default(),
            batch_builder: BatchBuilder::default(),
            ends_unacked: VecDeque::new(),
        }
    }
}

/// A token bucket: what was left at `at`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Churn {
    pub tokens: f64,
    pub at: Instant,
}

/// Handshake progress of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the peer's `Hello`.
    Handshake,
    /// Carrying the peer's traffic.
    Up,
    /// Sending its last control frames (a `GoAway`), then to be shut.
    Closing,
}

/// What a `Hello` says about the session with its receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claims {
    /// The receiver's incarnation the sender holds a session with, or 0 for none.
    pub peer_incarnation: u64,
    /// Channel frames the sender received in that session.
    pub received: u64,
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Link {
    /// The peer we dialled, or `None` for an accepted connection before its `Hello`.
    pub dialled: Option<NodeId>,
    /// How far the two sides are in proving membership; nothing else is read before it
    /// is [`Auth::Proved`].
    pub auth: Auth,
    /// The node the connection's TLS certificate names, if the runtime checked one: the
    /// peer may claim no other.
    pub certified: Option<NodeId>,
    /// On a dialled connection, what our `Hello` claimed. The peer settles the session on
    /// these claims; if ours differ when its answer comes, the answer is out of date.
    pub claims: Option<Claims>,
    /// The peer, once known.
    pub peer: Option<NodeId>,
    pub phase: Phase,
    /// Link-level frames (handshake, ping, goaway), sent before the peer's queues.
    pub control: VecDeque<Frame>,
    pub opened_at: Instant,
    pub last_rx: Instant,
    pub last_tx: Instant,
    /// When a channel or job frame last crossed the link, either way.
    pub last_traffic: Instant,
    /// When the link was last judged for an idle close.
    pub idle_judged: Instant,
    /// A `Transmit` event was emitted and not yet followed by a `poll_transmit`.
    pub wake_pending: bool,
    pub next_ping: u64,
    /// When ping `next_ping` left (queued), until its pong comes back.
    pub ping_sent_at: Option<Instant>,
}

/// Where a connection is in proving membership (see `proof`).
#[derive(Clone, Debug)]
pub(crate) enum Auth {
    /// Dialled: our `Challenge` is out, the acceptor's is awaited.
    AwaitAcceptorChallenge { ours: Claim },
    /// Accepted: the dialler's `Challenge` is awaited.
    AwaitDiallerChallenge,
    /// Dialled: the acceptor's `Challenge` came, its `Proof` is awaited.
    AwaitAcceptorProof { transcript: Transcript },
    /// Accepted: our `Challenge` and `Proof` are out, the dialler's `Proof` is awaited.
    AwaitDiallerProof { transcript: Transcript },
    /// Both proofs checked: the peer is this node, in this incarnation.
    Proved { node: NodeId, incarnation: u64 },
}

/// A producer's channel to one consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ChannelSlot {
    /// The channel is open (or finishing) under this key.
    Live(OutKey),
    /// The channel is over: ended normally (`None`) or failed.
    Done(Option<Box<ExchangeError>>),
}

/// A producer on this node.
#[derive(Debug)]
pub(crate) struct Producer {
    /// The consumers of the job, sorted (a set without a hash table's slack): the only
    /// destinations allowed.
    pub consumers: Vec<Endpoint>,
    pub channels: Map<Endpoint, ChannelSlot>,
    pub closed: bool,
    /// Channels whose `End` was sent and not yet acknowledged by their consumer's node
    /// (each is listed with its peer, in `Peer::ends_unacked`).
    pub ends_unacked: usize,
}

/// Where an outgoing channel stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OutState {
    Open,
    /// `End` or `Abort` queued; the record goes once it is sent.
    Finishing,
    Failed(Box<ExchangeError>),
}

/// One outgoing channel (its wire number is part of its key: see [`wire_of`]).
#[derive(Debug)]
pub(crate) struct OutChannel {
    pub producer: LocalKey,
    pub consumer: Endpoint,
    pub credit: SendCredit,
    /// Payload bytes queued or sent so far.
    pub sent: u64,
    pub state: OutState,
    /// Since when its producer has been waiting for credit to send (see `starving`).
    pub blocked_since: Option<Instant>,
}

/// One incoming channel.
#[derive(Debug)]
pub(crate) struct InChannel {
    pub consumer: LocalKey,
    pub producer: Endpoint,
    /// Credit granted to the channel so far.
    pub granted: u64,
    /// Credit its messages used so far.
    pub received: u64,
    /// While its consumer does not exist yet: what happened meanwhile. `None` once the
    /// channel is part of its consumer (kept apart, so attached channels stay small).
    pub parked: Option<Box<Parked>>,
}

/// What a channel whose consumer does not exist yet went through.
#[derive(Debug)]
pub(crate) struct Parked {
    /// A `Backlog` that arrived, with its need and want.
    pub request: Option<(u32, u32)>,
    /// The producer ended (`Some(None)`) or aborted (`Some(Some(_))`).
    pub finish: Option<Option<Box<ExchangeError>>>,
}
