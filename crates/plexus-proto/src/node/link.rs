//! Connections: dialling and accepting, decoding of incoming bytes, assembly of outgoing
//! bytes (resent frames first, then control, then data), liveness (ping, idle timeout),
//! acknowledgements, and what happens when a connection is lost.
//!
//! Invariants: a connection carries a peer's channel traffic only once the handshake
//! (see `handshake`) has chosen it (`Phase::Up`, and the peer's state names it); a peer has
//! at most one such connection. Losing it does not fail anything: the peer is redialled, with
//! backoff and jitter, through the node's dial pacing (see `dial`), and the session resumes.
//! Only a peer unreachable for the grace period, refusing connections (no process listens),
//! restarted, or breaking the protocol is declared dead, which fails the jobs that touch it.
//! Time during which this node itself was stalled counts against no peer and no connection.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::state::{wire_of, Auth, Link, LinkId, OutItem, PeerState, Phase};
use super::transmit::Transmit;
use super::{Event, LinkCause, NodeCore};
use crate::frame::{Frame, GoAwayCode};
use crate::ids::NodeId;

/// Why a dial failed, as far as the core cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialFailure {
    /// The peer's address answered that nothing listens there: its process is gone.
    Refused,
    /// Anything else (timeout, unreachable network, reset): it may come back.
    Other,
}

impl NodeCore {
    /// A connection we dialled to `peer` is established. Returns the link to drive, or
    /// `None` when the connection is no longer wanted (the runtime then drops it).
    pub fn handle_dialed(&mut self, peer: NodeId, now: Instant) -> Option<LinkId> {
        self.now = now;
        let wanted = self
            .peers
            .get(&peer)
            .is_some_and(|p| matches!(p.state, PeerState::Dialing | PeerState::AwaitingInbound));
        if !wanted {
            self.dial_settled(peer);
            return None;
        }
        let link = self.new_link(Some(peer), now);
        // Our `Hello` follows once the acceptor proved it holds the secret (see `proof`).
        let ours = self.fresh_claim();
        let challenge = self.challenge(&ours);
        if let Some(l) = self.links.get_mut(&link) {
            l.auth = Auth::AwaitAcceptorChallenge { ours };
            l.control.push_back(challenge);
        }
        self.wake_link(link);
        Some(link)
    }

    /// Dialling `peer` failed. Retries with exponential backoff and jitter until the peer
    /// is declared dead: refused repeatedly, or unreachable for the grace period.
    pub fn handle_dial_failed(
        &mut self,
        peer: NodeId,
        failure: DialFailure,
        error: &str,
        now: Instant,
    ) {
        self.now = now;
        self.discount_stall(now);
        self.dial_settled(peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !matches!(p.state, PeerState::Dialing | PeerState::AwaitingInbound) {
            return;
        }
        p.dial_failures += 1;
        p.last_failure = Some(error.to_string());
        p.refusals = match failure {
            DialFailure::Refused => p.refusals + 1,
            DialFailure::Other => 0,
        };
        let down_since = *p.session.down_since.get_or_insert(now);
        let down = now
            .saturating_duration_since(down_since)
            .saturating_sub(p.down_stalled);
        if p.refusals >= self.config.dead_after_refusals {
            let cause = LinkCause::Unreachable(format!(
                "connection refused {} times in a row: no process listens at its address",
                p.refusals
            ));
            self.declare_dead(peer, cause);
        } else if down >= self.config.grace_period {
            let cause = LinkCause::Unreachable(format!(
                "not reachable for {:?}: {error}",
                self.config.grace_period
            ));
            self.declare_dead(peer, cause);
        } else {
            let exponent = (p.dial_failures - 1).min(16);
            let backoff =
                (self.config.dial_backoff * (1u32 << exponent)).min(self.config.dial_backoff_max);
            // Full jitter on the upper half: spreads redials of many nodes apart.
            let jitter = backoff.mul_f64(0.5 * self.rng.next_unit());
            if let Some(p) = self.peers.get_mut(&peer) {
                p.redial_at = Some(now + backoff / 2 + jitter);
                self.timer_changed = true;
            }
        }
    }

    /// A connection was accepted from an unknown peer; its `Challenge` will say who it
    /// claims to be, its `Proof` whether it belongs.
    pub fn handle_accepted(&mut self, now: Instant) -> LinkId {
        self.now = now;
        self.new_link(None, now)
    }

    /// Bytes arrived on `link`. Consumes every complete frame at the front of `buf`; a
    /// partial frame stays for the next call.
    pub fn handle_bytes(&mut self, link: LinkId, buf: &mut BytesMut, now: Instant) {
        self.now = now;
        let arrived = buf.len();
        self.decode_link_bytes(link, buf, now);
        let consumed = (arrived - buf.len()) as u64;
        let peer = self
            .links
            .get(&link)
            .filter(|l| matches!(l.auth, Auth::Proved { .. }))
            .and_then(|l| l.peer);
        if let Some(peer) = peer {
            self.counters.peer(peer).bytes_received += consumed;
        }
    }

    fn decode_link_bytes(&mut self, link: LinkId, buf: &mut BytesMut, now: Instant) {
        loop {
            let Some(l) = self.links.get_mut(&link) else {
                buf.clear();
                return;
            };
            if l.phase == Phase::Closing {
                buf.clear();
                return;
            }
            l.last_rx = now;
            if !matches!(l.auth, Auth::Proved { .. }) {
                if let Some(len) = crate::codec::declared_len(buf) {
                    if len > super::proof::MAX_UNPROVED_FRAME {
                        self.close_link(
                            link,
                            GoAwayCode::Unauthenticated,
                            LinkCause::Unauthenticated(format!(
                                "a frame of {len} bytes before proving membership"
                            )),
                        );
                        return;
                    }
                }
            }
            let frame = match self.decoder.decode(buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.close_link(
                        link,
                        GoAwayCode::ProtocolError,
                        LinkCause::Protocol(e.to_string()),
                    );
                    return;
                }
            };
            if let Err((code, cause)) = self.handle_link_frame(link, frame, now) {
                self.close_link(link, code, cause);
                return;
            }
        }
        self.wake_send_waiters();
        let peer = self.links.get(&link).and_then(|l| l.peer);
        let urgent = peer
            .and_then(|peer| self.peers.get(&peer))
            .is_some_and(|p| p.session.ack_urgent(now, self.config.ack_delay));
        if urgent {
            self.wake_link(link);
        }
    }

    /// The socket under `link` is gone (EOF, reset, or shut after `Close`).
    pub fn handle_link_closed(&mut self, link: LinkId, cause: LinkCause) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        if l.phase != Phase::Closing && matches!(cause, LinkCause::Unauthenticated(_)) {
            // Refused by the runtime (TLS) before the core saw anything.
            self.counters.unauthenticated += 1;
        }
        let carried = l
            .peer
            .filter(|peer| self.peers.get(peer).map(|p| &p.state) == Some(&PeerState::Up(link)));
        if let Some(peer) = carried {
            self.link_lost(peer, cause);
        } else if let (Some(peer), Phase::Handshake) = (l.dialled, l.phase) {
            // `handle_dial_failed` also gives the dial's slot to the next peer.
            let now = self.now;
            self.handle_dial_failed(peer, DialFailure::Other, &cause.to_string(), now);
        }
    }

    /// The runtime checked the TLS certificate of accepted connection `link`: it names
    /// `node`, so the peer may claim to be no other node.
    pub fn certify_link(&mut self, link: LinkId, node: NodeId) {
        if let Some(l) = self.links.get_mut(&link) {
            l.certified = Some(node);
        }
    }

    /// Whether the other side of `link` proved it holds the cluster's secret.
    pub fn link_is_proved(&self, link: LinkId) -> bool {
        self.links
            .get(&link)
            .is_some_and(|l| matches!(l.auth, Auth::Proved { .. }))
    }

    /// Whether `link` is still open (not closing or closed).
    pub fn link_is_open(&self, link: LinkId) -> bool {
        self.links
            .get(&link)
            .is_some_and(|l| l.phase != Phase::Closing)
    }

    /// About how many bytes `link` has waiting to be sent: queued data of the peer it
    /// carries, plus an estimate of its control frames. Lets a writer that would send only
    /// a little wait a moment while this grows, so small messages of a channel leave
    /// packed into one frame.
    pub fn queued_bytes(&self, link: LinkId) -> usize {
        const CONTROL_FRAME_ESTIMATE: usize = 16;
        let Some(l) = self.links.get(&link) else {
            return 0;
        };
        let mut bytes = l.control.len() * CONTROL_FRAME_ESTIMATE;
        if l.phase == Phase::Up {
            if let Some(p) = l.peer.and_then(|peer| self.peers.get(&peer)) {
                bytes += p.data.queued_bytes() + p.control.len() * CONTROL_FRAME_ESTIMATE;
            }
        }
        bytes
    }

    /// Fills `out` with up to about `max_bytes` of bytes to send on `link`. Returns `false`
    /// when the link is closing and has nothing more to send: shut the socket.
    pub fn poll_transmit(
        &mut self,
        link: LinkId,
        now: Instant,
        out: &mut Transmit,
        max_bytes: usize,
    ) -> bool {
        self.now = now;
        let Some(l) = self.links.get_mut(&link) else {
            return false;
        };
        l.wake_pending = false;
        let before = out.len();
        while let Some(frame) = l.control.pop_front() {
            out.push_control(&frame);
        }
        let phase = l.phase;
        let peer = l.peer;
        let mut carried = false;
        if phase == Phase::Up {
            if let Some(peer) = peer {
                carried = self.transmit_peer(peer, out, max_bytes);
            }
        }
        if let Some(l) = self.links.get_mut(&link) {
            if !out.is_empty() {
                l.last_tx = now;
            }
            if carried {
                l.last_traffic = now;
            }
        }
        if let (Some(peer), Phase::Up) = (peer, phase) {
            self.counters.peer(peer).bytes_sent += (out.len() - before) as u64;
        }
        phase != Phase::Closing || !out.is_empty()
    }

    /// Writes the peer's frames: an `Ack` for what arrived, then frames to resend after a
    /// reconnect, then control frames, then data in fair order. New channel frames are
    /// retained until the peer acknowledges them. Returns whether it wrote a channel frame.
    fn transmit_peer(&mut self, peer: NodeId, out: &mut Transmit, max_bytes: usize) -> bool {
        if let Some(received) = self.peers.get_mut(&peer).and_then(|p| p.session.take_ack()) {
            out.push_control(&Frame::Ack { received });
        }
        let mut wrote = false;
        // Counted once the batch is written, not per frame.
        let mut messages = 0;
        while out.len() < max_bytes {
            let Some(p) = self.peers.get_mut(&peer) else {
                break;
            };
            if let Some(frame) = p.session.next_resend() {
                push_frame(out, frame);
                wrote = true;
                continue;
            }
            let Some(frame) = self.next_outgoing(peer) else {
                break;
            };
            wrote = true;
            messages += super::metrics::messages_in(&frame);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.change_buffered(&mut self.send_buffered, |p| {
                    p.session.record_sent(frame.clone());
                });
            }
            push_frame(out, frame);
        }
        if messages > 0 {
            self.counters.peer(peer).messages_sent += messages;
        }
        wrote
    }

    /// Pings quiet links, closes silent ones and stuck handshakes, acknowledges, redials,
    /// declares dead the peers unreachable past the grace period, and expires parked
    /// channels whose consumer never appeared.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.discount_stall(now);
        let mut to_close = Vec::new();
        let mut to_wake = Vec::new();
        for (&id, l) in &mut self.links {
            match l.phase {
                Phase::Handshake => {
                    if now.saturating_duration_since(l.opened_at) > self.config.handshake_timeout {
                        to_close.push((id, LinkCause::HandshakeTimeout));
                    }
                }
                Phase::Up => {
                    if now.saturating_duration_since(l.last_rx) > self.config.idle_timeout {
                        to_close.push((id, LinkCause::Silent));
                    } else if now.saturating_duration_since(l.last_tx) >= self.config.ping_interval
                    {
                        l.next_ping += 1;
                        l.control.push_back(Frame::Ping { nonce: l.next_ping });
                        l.ping_sent_at = Some(now);
                        l.last_tx = now;
                        to_wake.push(id);
                    }
                }
                Phase::Closing => {}
            }
        }
        for (id, cause) in to_close {
            self.close_link(id, GoAwayCode::Timeout, cause);
        }
        let mut dead = Vec::new();
        let mut redial = Vec::new();
        let defer = self.config.dial_defer;
        let grace = self.config.grace_period;
        for (&peer, p) in &mut self.peers {
            match p.state {
                PeerState::Up(link) => {
                    if p.session.ack_urgent(now, self.config.ack_delay) {
                        to_wake.push(link);
                    }
                }
                PeerState::Dialing | PeerState::AwaitingInbound => {
                    let down_since = *p.session.down_since.get_or_insert(now);
                    let down = now.saturating_duration_since(down_since);
                    if down.saturating_sub(p.down_stalled) >= grace {
                        dead.push((peer, p.last_failure.take()));
                        continue;
                    }
                    if p.state == PeerState::AwaitingInbound && p.redial_at.is_none() {
                        p.redial_at = Some(now + defer);
                    }
                    if p.redial_at.is_some_and(|at| at <= now) {
                        redial.push(peer);
                    }
                }
                PeerState::Local | PeerState::Idle => {}
            }
        }
        for id in to_wake {
            self.wake_link(id);
        }
        for peer in redial {
            self.request_dial(peer);
        }
        for (peer, last_failure) in dead {
            let cause = LinkCause::Unreachable(match last_failure {
                Some(why) => format!("no link for {grace:?}; the last attempt: {why}"),
                None => format!("no link for {grace:?}"),
            });
            self.declare_dead(peer, cause);
        }
        self.expire_parked(now);
        self.expire_admissions(now);
        self.expire_orphans(now);
        self.close_idle_links(now);
    }

    /// If this node was stalled since liveness was last judged (`handle_timeout` came later
    /// than its `tick` allows: the process was stopped, starved of CPU, or too busy to run
    /// its timer), the stall does not count against peers and connections: the bytes they
    /// sent meanwhile wait unread in the sockets, and a reader that did not run heard
    /// nothing. Idle and handshake timeouts and the grace period are pushed back by the
    /// stall (the outage a resume reports is not: it is what the jobs saw).
    fn discount_stall(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last_judged);
        self.last_judged = now;
        let stall = gap.saturating_sub(2 * self.tick());
        if stall.is_zero() {
            return;
        }
        for l in self.links.values_mut() {
            l.last_rx = (l.last_rx + stall).min(now);
            l.opened_at = (l.opened_at + stall).min(now);
        }
        for p in self.peers.values_mut() {
            if p.session.down_since.is_some() {
                p.down_stalled += stall;
            }
        }
    }

    fn new_link(&mut self, dialled: Option<NodeId>, now: Instant) -> LinkId {
        let id = LinkId(self.next_link);
        self.next_link += 1;
        self.links.insert(
            id,
            Link {
                dialled,
                auth: Auth::AwaitDiallerChallenge,
                certified: None,
                claims: None,
                peer: dialled,
                phase: Phase::Handshake,
                control: Default::default(),
                opened_at: now,
                last_rx: now,
                last_tx: now,
                last_traffic: now,
                idle_judged: now,
                wake_pending: false,
                next_ping: 0,
                ping_sent_at: None,
            },
        );
        id
    }

    /// The connection carrying `peer` is gone. Transient causes start a reconnect within
    /// the grace period; a broken protocol or a peer going away on purpose is fatal.
    fn link_lost(&mut self, peer: NodeId, cause: LinkCause) {
        let fatal = matches!(
            cause,
            LinkCause::Protocol(_)
                | LinkCause::GoAway(
                    GoAwayCode::ProtocolError
                        | GoAwayCode::Limit
                        | GoAwayCode::Shutdown
                        | GoAwayCode::SessionMismatch
                        | GoAwayCode::VersionMismatch
                        | GoAwayCode::WrongCluster
                        | GoAwayCode::UnexpectedNode
                )
        );
        if fatal {
            self.declare_dead(peer, cause);
            return;
        }
        let idle = matches!(
            cause,
            LinkCause::Idle(_) | LinkCause::GoAway(GoAwayCode::Idle)
        );
        if idle && self.went_idle(peer) {
            return;
        }
        let now = self.now;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.dial_failures = 0;
            p.refusals = 0;
            p.session.down_since = Some(now);
            p.down_stalled = Duration::ZERO;
            self.request_dial(peer);
        }
    }

    /// Closes `link`: queues a `GoAway` with `code`; the peer it carried reconnects or is
    /// declared dead, depending on `cause`.
    pub(super) fn close_link(&mut self, link: LinkId, code: GoAwayCode, cause: LinkCause) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.phase == Phase::Closing {
            return;
        }
        let was_up = l.phase == Phase::Up;
        let was_handshake = l.phase == Phase::Handshake;
        if matches!(cause, LinkCause::Unauthenticated(_)) {
            self.counters.unauthenticated += 1;
        }
        l.phase = Phase::Closing;
        l.control.clear();
        l.control.push_back(Frame::GoAway { code });
        let peer = l.peer;
        let dialled = l.dialled;
        self.events.push_back(Event::Close {
            link,
            cause: cause.clone(),
        });
        self.wake_link(link);
        let now = self.now;
        match peer {
            Some(peer)
                if was_up
                    && self.peers.get(&peer).map(|p| &p.state) == Some(&PeerState::Up(link)) =>
            {
                self.link_lost(peer, cause);
            }
            _ => {
                let Some(peer) = dialled else {
                    return;
                };
                if was_handshake {
                    self.dial_settled(peer);
                }
                match cause {
                    LinkCause::GoAway(GoAwayCode::SimultaneousDial) => {
                        // The peer's own dial wins; wait for it (and dial again if it
                        // never comes).
                        let retry = self.config.handshake_timeout;
                        if let Some(p) = self.peers.get_mut(&peer) {
                            if p.state == PeerState::Dialing {
                                p.state = PeerState::AwaitingInbound;
                                p.redial_at = Some(now + retry);
                            }
                        }
                    }
                    LinkCause::Protocol(_)
                    | LinkCause::GoAway(
                        GoAwayCode::VersionMismatch
                        | GoAwayCode::WrongCluster
                        | GoAwayCode::UnexpectedNode
                        | GoAwayCode::ProtocolError
                        | GoAwayCode::SessionMismatch
                        | GoAwayCode::ConfigMismatch,
                    ) => {
                        // Only while no other connection carries the peer: a surplus dial
                        // that goes wrong says nothing about the link in use.
                        let unlinked = self.peers.get(&peer).is_some_and(|p| {
                            matches!(p.state, PeerState::Dialing | PeerState::AwaitingInbound)
                        });
                        if unlinked {
                            self.declare_dead(peer, cause);
                        }
                    }
                    _ => self.handle_dial_failed(peer, DialFailure::Other, &cause.to_string(), now),
                }
            }
        }
    }

    /// Turns a queued item of outgoing channel `key` into its frame, retiring the channel
    /// record once its last frame leaves.
    pub(super) fn item_to_frame(&mut self, key: u64, item: OutItem) -> Option<Frame> {
        let ch = self.out_channels.get(&key)?;
        let channel = wire_of(key);
        Some(match item {
            OutItem::Data(payload) => Frame::Data { channel, payload },
            OutItem::Batch(messages) => Frame::Batch { channel, messages },
            OutItem::End => {
                let (sent, producer, consumer) = (ch.sent, ch.producer, ch.consumer);
                if consumer.node != self.config.node {
                    // Written next, under the session's next number (see `transmit_peer`).
                    self.await_end_ack(producer, consumer);
                }
                self.retire_out_channel(key);
                Frame::End { channel, sent }
            }
            OutItem::Abort => {
                self.retire_out_channel(key);
                Frame::Abort { channel }
            }
        })
    }
}

fn push_frame(out: &mut Transmit, frame: Frame) {
    match frame {
        Frame::Data { channel, payload } => out.push_data(channel, payload),
        Frame::Batch { channel, messages } => out.push_batch(channel, messages.body().clone()),
        other => out.push_control(&other),
    }
}
