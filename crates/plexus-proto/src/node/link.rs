//! Connections: handshake, tie-break of simultaneous dials, decoding of incoming bytes,
//! assembly of outgoing bytes, liveness (ping, idle timeout) and closing.
//!
//! Invariants: a connection carries a peer's channel traffic only once the handshake has
//! chosen it (`Phase::Up`, and the peer's state names it); a peer has at most one such
//! connection; of two connections dialled at once between the same nodes, both sides keep
//! the one dialled by the lower node id. Any decoding or protocol error closes the link with
//! a `GoAway` and a reason, and fails the channels that crossed it.

use std::time::Instant;

use bytes::BytesMut;

use super::state::{Link, LinkId, OutItem, Peer, PeerState, Phase};
use super::transmit::Transmit;
use super::{Event, LinkCause, NodeCore};
use crate::frame::{Frame, GoAwayCode, PROTOCOL_VERSION};
use crate::ids::NodeId;

impl NodeCore {
    /// A connection we dialled to `peer` is established. Returns the link to drive, or
    /// `None` when the connection is no longer wanted (the runtime then drops it).
    pub fn handle_dialed(&mut self, peer: NodeId, now: Instant) -> Option<LinkId> {
        let p = self.peers.get_mut(&peer)?;
        if !matches!(p.state, PeerState::Dialing | PeerState::AwaitingInbound) {
            return None;
        }
        let link = self.new_link(Some(peer), now);
        let hello = self.hello();
        if let Some(l) = self.links.get_mut(&link) {
            l.control.push_back(hello);
        }
        self.wake_link(link);
        Some(link)
    }

    /// Dialling `peer` failed with `error`. Retries with backoff, then fails the peer.
    pub fn handle_dial_failed(&mut self, peer: NodeId, error: &str, now: Instant) {
        let backoff = self.config.dial_backoff;
        let attempts = self.config.dial_attempts;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !matches!(p.state, PeerState::Dialing | PeerState::AwaitingInbound) {
            return;
        }
        p.dial_failures += 1;
        if p.dial_failures >= attempts {
            self.fail_peer(peer, LinkCause::Unreachable(error.to_owned()));
        } else {
            let factor = 1u32 << (p.dial_failures - 1).min(16);
            p.redial_at = Some(now + backoff * factor);
        }
    }

    /// A connection was accepted from an unknown peer; its `Hello` will tell who it is.
    pub fn handle_accepted(&mut self, now: Instant) -> LinkId {
        self.new_link(None, now)
    }

    /// Bytes arrived on `link`. Consumes every complete frame at the front of `buf`; a
    /// partial frame stays for the next call.
    pub fn handle_bytes(&mut self, link: LinkId, buf: &mut BytesMut, now: Instant) {
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
            let frame = match self.decoder.decode(buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
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
    }

    /// The socket under `link` is gone (EOF, reset, or shut after `Close`).
    pub fn handle_link_closed(&mut self, link: LinkId, cause: LinkCause) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        let carried = l
            .peer
            .filter(|peer| self.peers.get(peer).map(|p| &p.state) == Some(&PeerState::Up(link)));
        if let Some(peer) = carried {
            self.fail_peer(peer, cause);
        } else if let (Some(peer), Phase::Handshake) = (l.dialled, l.phase) {
            self.handle_dial_failed(peer, &cause.to_string(), l.last_rx);
        }
    }

    /// Whether `link` is still open (not closing or closed).
    pub fn link_is_open(&self, link: LinkId) -> bool {
        self.links
            .get(&link)
            .is_some_and(|l| l.phase != Phase::Closing)
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
        let Some(l) = self.links.get_mut(&link) else {
            return false;
        };
        l.wake_pending = false;
        while let Some(frame) = l.control.pop_front() {
            out.push_control(&frame);
        }
        let phase = l.phase;
        let peer = l.peer;
        if phase == Phase::Up {
            if let Some(peer) = peer {
                self.transmit_peer(peer, out, max_bytes);
            }
        }
        if let Some(l) = self.links.get_mut(&link) {
            if !out.is_empty() {
                l.last_tx = now;
            }
        }
        phase != Phase::Closing || !out.is_empty()
    }

    fn transmit_peer(&mut self, peer: NodeId, out: &mut Transmit, max_bytes: usize) {
        while out.len() < max_bytes {
            let Some(p) = self.peers.get_mut(&peer) else {
                return;
            };
            if let Some(frame) = p.control.pop_front() {
                out.push_control(&frame);
                continue;
            }
            let Some((key, item)) = p.data.pop() else {
                return;
            };
            if let Some(frame) = self.item_to_frame(key, item) {
                match frame {
                    Frame::Data { channel, payload } => out.push_data(channel, payload),
                    other => out.push_control(&other),
                }
            }
        }
    }

    /// Sends pings on quiet links, closes silent ones and stuck handshakes, and redials.
    pub fn handle_timeout(&mut self, now: Instant) {
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
                        l.last_tx = now;
                        to_wake.push(id);
                    }
                }
                Phase::Closing => {}
            }
        }
        for (id, cause) in to_close {
            self.close_link(id, GoAwayCode::ProtocolError, cause);
        }
        for id in to_wake {
            self.wake_link(id);
        }
        let defer = self.config.dial_defer;
        for (&peer, p) in &mut self.peers {
            if p.state == PeerState::AwaitingInbound && p.redial_at.is_none() {
                p.redial_at = Some(now + defer);
            }
            if p.redial_at.is_some_and(|at| at <= now) {
                p.redial_at = None;
                p.state = PeerState::Dialing;
                self.events.push_back(Event::Dial { peer });
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
                peer: dialled,
                phase: Phase::Handshake,
                control: Default::default(),
                opened_at: now,
                last_rx: now,
                last_tx: now,
                wake_pending: false,
                next_ping: 0,
            },
        );
        id
    }

    fn hello(&self) -> Frame {
        Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster: self.config.cluster,
            node: self.config.node,
        }
    }

    /// Closes `link`: queues a `GoAway` with `code`, fails the peer it carried with `cause`.
    pub(super) fn close_link(&mut self, link: LinkId, code: GoAwayCode, cause: LinkCause) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.phase == Phase::Closing {
            return;
        }
        let was_up = l.phase == Phase::Up;
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
        match peer {
            Some(peer)
                if was_up
                    && self.peers.get(&peer).map(|p| &p.state) == Some(&PeerState::Up(link)) =>
            {
                self.fail_peer(peer, cause);
            }
            _ => {
                if let Some(peer) = dialled {
                    if code == GoAwayCode::SimultaneousDial {
                        let retry = self.config.handshake_timeout;
                        let at = self.links.get(&link).map(|l| l.last_rx + retry);
                        if let Some(p) = self.peers.get_mut(&peer) {
                            if p.state == PeerState::Dialing {
                                p.state = PeerState::AwaitingInbound;
                                p.redial_at = at;
                            }
                        }
                    } else {
                        let at = self.links.get(&link).map(|l| l.last_rx);
                        if let Some(at) = at {
                            self.handle_dial_failed(peer, &cause.to_string(), at);
                        }
                    }
                }
            }
        }
    }

    fn handle_link_frame(
        &mut self,
        link: LinkId,
        frame: Frame,
        now: Instant,
    ) -> Result<(), (GoAwayCode, LinkCause)> {
        let Some(l) = self.links.get_mut(&link) else {
            return Ok(());
        };
        match (l.phase, frame) {
            (
                Phase::Handshake,
                Frame::Hello {
                    version,
                    cluster,
                    node,
                },
            ) => self.handle_hello(link, version, cluster, node, now),
            (Phase::Handshake, Frame::GoAway { code }) => Err((code, LinkCause::GoAway(code))),
            (Phase::Handshake, other) => {
                Err(protocol(format!("expected Hello, got {}", other.name())))
            }
            (Phase::Up, Frame::Hello { .. }) => Err(protocol("Hello after handshake".into())),
            (Phase::Up, Frame::GoAway { code }) => Err((code, LinkCause::GoAway(code))),
            (Phase::Up, Frame::Ping { nonce }) => {
                l.control.push_back(Frame::Pong { nonce });
                self.wake_link(link);
                Ok(())
            }
            (Phase::Up, Frame::Pong { .. }) => Ok(()),
            (Phase::Up, frame) => {
                let Some(peer) = l.peer else {
                    return Err(protocol("channel frame on an anonymous link".into()));
                };
                self.handle_frame(peer, frame).map_err(protocol)
            }
            (Phase::Closing, _) => Ok(()),
        }
    }

    fn handle_hello(
        &mut self,
        link: LinkId,
        version: u16,
        cluster: u64,
        node: NodeId,
        now: Instant,
    ) -> Result<(), (GoAwayCode, LinkCause)> {
        if version != PROTOCOL_VERSION {
            return Err((
                GoAwayCode::VersionMismatch,
                LinkCause::Protocol(format!(
                    "peer speaks protocol version {version}, we speak {PROTOCOL_VERSION}"
                )),
            ));
        }
        if cluster != self.config.cluster {
            return Err((
                GoAwayCode::WrongCluster,
                LinkCause::Protocol(format!("peer belongs to cluster {cluster:#x}")),
            ));
        }
        if node == self.config.node {
            return Err((
                GoAwayCode::UnexpectedNode,
                LinkCause::Protocol("peer claims our own node id".into()),
            ));
        }
        let dialled = self.links.get(&link).and_then(|l| l.dialled);
        let quantum = self.config.quantum;
        let peer = self
            .peers
            .entry(node)
            .or_insert_with(|| Peer::new(PeerState::Idle, quantum));
        match dialled {
            Some(expected) if expected != node => Err((
                GoAwayCode::UnexpectedNode,
                LinkCause::Protocol(format!("dialled {expected}, but {node} answered")),
            )),
            Some(_) => {
                if !matches!(peer.state, PeerState::Dialing | PeerState::AwaitingInbound) {
                    // Another connection won meanwhile; this one is surplus.
                    return Err((
                        GoAwayCode::Duplicate,
                        LinkCause::GoAway(GoAwayCode::Duplicate),
                    ));
                }
                self.adopt_link(link, node, now);
                Ok(())
            }
            None => {
                let accept = match peer.state {
                    PeerState::Up(_) => false,
                    PeerState::Dialing => node < self.config.node,
                    PeerState::Idle | PeerState::AwaitingInbound | PeerState::Local => true,
                };
                if !accept {
                    let code = if matches!(peer.state, PeerState::Up(_)) {
                        GoAwayCode::Duplicate
                    } else {
                        GoAwayCode::SimultaneousDial
                    };
                    return Err((code, LinkCause::GoAway(code)));
                }
                let hello = self.hello();
                if let Some(l) = self.links.get_mut(&link) {
                    l.peer = Some(node);
                    l.control.push_back(hello);
                }
                self.adopt_link(link, node, now);
                Ok(())
            }
        }
    }

    /// Makes `link` the carrier of `peer`'s traffic.
    fn adopt_link(&mut self, link: LinkId, peer: NodeId, now: Instant) {
        if let Some(l) = self.links.get_mut(&link) {
            l.phase = Phase::Up;
            l.last_rx = now;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.state = PeerState::Up(link);
            p.dial_failures = 0;
            p.redial_at = None;
        }
        // A losing dial of ours may still be in its handshake: it will be refused by the
        // peer or find the peer up when its Hello arrives.
        self.wake_link(link);
    }

    /// Turns a queued item of outgoing channel `key` into its frame, retiring the channel
    /// record once its last frame leaves.
    pub(super) fn item_to_frame(&mut self, key: u64, item: OutItem) -> Option<Frame> {
        let ch = self.out_channels.get(&key)?;
        let channel = ch.wire;
        Some(match item {
            OutItem::Data(payload) => Frame::Data { channel, payload },
            OutItem::End => {
                let sent = ch.sent;
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

fn protocol(reason: String) -> (GoAwayCode, LinkCause) {
    (GoAwayCode::ProtocolError, LinkCause::Protocol(reason))
}
