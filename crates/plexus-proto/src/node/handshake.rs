//! The handshake of a new connection: identity checks, the tie-break of simultaneous dials,
//! and the session check that decides between resuming and starting afresh.
//!
//! It begins once both sides proved they hold the cluster's secret (see `proof`); a
//! `Hello` must name the node and incarnation proved. Both sides send `Hello`: the dialler at once, the acceptor once it keeps the connection.
//! Each `Hello` says who the sender is (node, incarnation) and what session it holds with the
//! receiver *before* this handshake (the receiver's incarnation, or 0, and how many frames it
//! received). On receiving the other's `Hello`, a side:
//! 1. declares the peer dead if it comes back with another incarnation (it restarted and lost
//!    its state): the jobs that touch it fail, and a fresh session starts;
//! 2. resumes if both sides hold the session (resending from the count the peer received);
//! 3. drops its session if only it holds one (the peer lost it: jobs touching it fail), and
//!    starts afresh if neither does.
//!
//! A dialler's `Hello` leaves when its connection is made, but the acceptor may read it much
//! later (a busy or hung machine). If meanwhile the dialler's session with the acceptor moved
//! on (another connection carried frames, or the dialler dropped the session), the acceptor
//! settles the session on out-of-date claims: the dialler, seeing its claims changed when the
//! answer comes, closes the connection (`Superseded`) and dials again; an acceptor told of
//! fewer frames than the dialler already acknowledged does the same. Neither is an error of
//! the peer.
//!
//! Invariants: of two connections dialled at once between the same nodes, both sides keep
//! the one dialled by the lower node id, unless the lower id's dial was only waiting for its
//! turn (see `dial`); both sides settle a session on the same claims (both resume from the
//! same counts, or both start afresh); frames of a session are delivered once, in order,
//! whatever connections carry them.

use std::time::{Duration, Instant};

use super::state::{Auth, Claims, LinkId, Peer, PeerState, Phase};
use super::{session, LinkCause, NodeCore};
use crate::frame::{Frame, GoAwayCode, PROTOCOL_VERSION};
use crate::ids::NodeId;

/// The identity and session claims of a `Hello`.
struct Hello {
    version: u16,
    cluster: u64,
    node: NodeId,
    incarnation: u64,
    peer_incarnation: u64,
    received: u64,
    max_message: u32,
}

type LinkError = (GoAwayCode, LinkCause);

impl NodeCore {
    /// What our `Hello` to `peer` says about the session we hold with it, now.
    pub(super) fn claims_for(&self, peer: NodeId) -> Claims {
        let session = self.peers.get(&peer).map(|p| &p.session);
        Claims {
            peer_incarnation: session.and_then(|s| s.peer_incarnation).unwrap_or(0),
            received: session.map_or(0, |s| s.rx_count),
        }
    }

    /// Our `Hello` to `peer`, describing the session we hold with it.
    pub(super) fn hello_for(&self, peer: NodeId) -> Frame {
        let claims = self.claims_for(peer);
        Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster: self.config.cluster,
            node: self.config.node,
            incarnation: self.config.incarnation,
            peer_incarnation: claims.peer_incarnation,
            received: claims.received,
            max_message: self.config.max_message,
        }
    }

    /// Handles one frame read from `link`.
    pub(super) fn handle_link_frame(
        &mut self,
        link: LinkId,
        frame: Frame,
        now: Instant,
    ) -> Result<(), LinkError> {
        let Some(l) = self.links.get_mut(&link) else {
            return Ok(());
        };
        let proved = match l.auth {
            Auth::Proved { node, incarnation } => Some((node, incarnation)),
            _ => None,
        };
        match (l.phase, frame) {
            (Phase::Handshake, frame) if proved.is_none() => {
                self.handle_unproved_frame(link, frame)
            }
            (Phase::Handshake, Frame::Hello { node, incarnation, .. })
                if proved != Some((node, incarnation)) =>
            {
                Err((
                    GoAwayCode::Unauthenticated,
                    LinkCause::Unauthenticated(format!(
                        "its Hello claims {node} (incarnation {incarnation:#x}), not the node it proved to be"
                    )),
                ))
            }
            (
                Phase::Handshake,
                Frame::Hello {
                    version,
                    cluster,
                    node,
                    incarnation,
                    peer_incarnation,
                    received,
                    max_message,
                },
            ) => self.handle_hello(
                link,
                Hello {
                    version,
                    cluster,
                    node,
                    incarnation,
                    peer_incarnation,
                    received,
                    max_message,
                },
                now,
            ),
            (Phase::Handshake | Phase::Up, Frame::GoAway { code }) => {
                Err((code, LinkCause::GoAway(code)))
            }
            (Phase::Handshake, other) => {
                Err(protocol(format!("expected Hello, got {}", other.name())))
            }
            (Phase::Up, Frame::Hello { .. }) => Err(protocol("Hello after handshake".into())),
            (Phase::Up, Frame::Ping { nonce }) => {
                l.control.push_back(Frame::Pong { nonce });
                self.wake_link(link);
                Ok(())
            }
            (Phase::Up, Frame::Pong { nonce }) => {
                // The answer to our latest ping times the round trip (queueing included).
                if nonce == l.next_ping {
                    if let (Some(sent), Some(peer)) = (l.ping_sent_at.take(), l.peer) {
                        self.counters.peer(peer).rtt = Some(now.saturating_duration_since(sent));
                    }
                }
                Ok(())
            }
            (Phase::Up, frame) => {
                let Some(peer) = l.peer else {
                    return Err(protocol("channel frame on an anonymous link".into()));
                };
                if !matches!(frame, Frame::Ack { .. }) {
                    l.last_traffic = now;
                }
                let Some(p) = self.peers.get_mut(&peer) else {
                    return Ok(());
                };
                if let Frame::Ack { received } = frame {
                    p.change_buffered(&mut self.send_buffered, |p| p.session.on_ack(received))
                        .map_err(protocol)?;
                    self.ends_acknowledged(peer);
                    return Ok(());
                }
                p.session.on_received(now, session::payload_len(&frame));
                let messages = super::metrics::messages_in(&frame);
                if messages > 0 {
                    self.counters.peer(peer).messages_received += messages;
                }
                self.check_member_limits(peer, &frame, now)?;
                self.handle_frame(peer, frame).map_err(protocol)
            }
            (Phase::Closing, _) => Ok(()),
        }
    }

    fn handle_hello(&mut self, link: LinkId, hello: Hello, now: Instant) -> Result<(), LinkError> {
        if self.shutting_down {
            return Err((GoAwayCode::Shutdown, LinkCause::Shutdown));
        }
        if hello.version != PROTOCOL_VERSION {
            return Err((
                GoAwayCode::VersionMismatch,
                LinkCause::Protocol(format!(
                    "peer speaks protocol version {}, we speak {PROTOCOL_VERSION}",
                    hello.version
                )),
            ));
        }
        if hello.cluster != self.config.cluster {
            return Err((
                GoAwayCode::WrongCluster,
                LinkCause::Protocol(format!("peer belongs to cluster {:#x}", hello.cluster)),
            ));
        }
        if hello.max_message != self.config.max_message {
            // A producer there could send messages a consumer here refuses, or the other
            // way round: refuse the link rather than fail channels later.
            return Err((
                GoAwayCode::ConfigMismatch,
                LinkCause::Protocol(format!(
                    "peer's max_message is {} bytes, ours is {}",
                    hello.max_message, self.config.max_message
                )),
            ));
        }
        let node = hello.node;
        if node == self.config.node {
            return Err((
                GoAwayCode::UnexpectedNode,
                LinkCause::Protocol("peer claims our own node id".into()),
            ));
        }
        let (dialled, claims) = self
            .links
            .get(&link)
            .map_or((None, None), |l| (l.dialled, l.claims));
        let quantum = self.config.quantum;
        let state = self
            .peers
            .entry(node)
            .or_insert_with(|| Peer::new(PeerState::Idle, quantum))
            .state
            .clone();
        match dialled {
            Some(expected) if expected != node => Err((
                GoAwayCode::UnexpectedNode,
                LinkCause::Protocol(format!("dialled {expected}, but {node} answered")),
            )),
            Some(_) => {
                if !matches!(state, PeerState::Dialing | PeerState::AwaitingInbound) {
                    // Another connection won meanwhile; this one is surplus.
                    return Err((
                        GoAwayCode::Duplicate,
                        LinkCause::GoAway(GoAwayCode::Duplicate),
                    ));
                }
                if claims != Some(self.claims_for(node)) {
                    // The peer settled the session on what our Hello said, which no longer
                    // holds.
                    return Err((GoAwayCode::Duplicate, LinkCause::Superseded));
                }
                self.establish(link, &hello, now)?;
                Ok(())
            }
            None => {
                let accept = match state {
                    PeerState::Up(_) => false,
                    // A dial of ours that is only waiting for its turn is not on the wire:
                    // there is no tie to break.
                    PeerState::Dialing => node < self.config.node || !self.dials.in_flight(node),
                    PeerState::Idle | PeerState::AwaitingInbound | PeerState::Local => true,
                };
                if !accept {
                    let code = if matches!(state, PeerState::Up(_)) {
                        GoAwayCode::Duplicate
                    } else {
                        GoAwayCode::SimultaneousDial
                    };
                    return Err((code, LinkCause::GoAway(code)));
                }
                if let Some(l) = self.links.get_mut(&link) {
                    l.peer = Some(node);
                }
                // Our Hello reports the session as it stood before this handshake.
                let reply = self.establish(link, &hello, now)?;
                if let Some(l) = self.links.get_mut(&link) {
                    l.control.push_front(reply);
                }
                Ok(())
            }
        }
    }

    /// Settles the session with the peer of `hello` and makes `link` carry its traffic.
    /// Returns the `Hello` an acceptor answers with.
    fn establish(&mut self, link: LinkId, hello: &Hello, now: Instant) -> Result<Frame, LinkError> {
        let node = hello.node;
        let known = self
            .peers
            .get(&node)
            .and_then(|p| p.session.peer_incarnation);
        if known.is_some_and(|k| k != hello.incarnation) {
            self.declare_dead(
                node,
                LinkCause::Restarted(format!(
                    "came back as incarnation {:#x}: its state is lost",
                    hello.incarnation
                )),
            );
        }
        let we_hold = self
            .peers
            .get(&node)
            .is_some_and(|p| p.session.peer_incarnation == Some(hello.incarnation));
        let they_hold =
            hello.peer_incarnation != 0 && hello.peer_incarnation == self.config.incarnation;
        // A session in which nothing arrived from the peer and nothing of ours was
        // acknowledged lost nothing if the peer never saw it (a cut during the first
        // handshake): it resumes from 0 rather than failing anything.
        let untouched = self
            .peers
            .get(&node)
            .is_some_and(|p| p.session.rx_count == 0 && p.session.acked_by_peer() == 0);
        let resumed = we_hold && (they_hold || untouched);
        let mut reply = self.hello_for(node);
        if resumed {
            let p = self
                .peers
                .get_mut(&node)
                .ok_or_else(|| protocol("peer vanished".into()))?;
            let received = if they_hold { hello.received } else { 0 };
            if received < p.session.acked_by_peer() {
                // The peer acknowledged more than that on another connection since it
                // wrote this Hello.
                return Err((GoAwayCode::Duplicate, LinkCause::Superseded));
            }
            p.change_buffered(&mut self.send_buffered, |p| p.session.resume(received))
                .map_err(protocol)?;
        } else {
            if we_hold {
                self.declare_dead(
                    node,
                    LinkCause::Restarted("it lost the session with us".into()),
                );
            }
            // Neither side holds a session now: the reply says so.
            if let Frame::Hello {
                peer_incarnation,
                received,
                ..
            } = &mut reply
            {
                *peer_incarnation = 0;
                *received = 0;
            }
        }
        let quantum = self.config.quantum;
        let p = self
            .peers
            .entry(node)
            .or_insert_with(|| Peer::new(PeerState::Idle, quantum));
        p.session.peer_incarnation = Some(hello.incarnation);
        p.state = PeerState::Up(link);
        p.dial_failures = 0;
        p.last_failure = None;
        p.refusals = 0;
        p.redial_at = None;
        let outage = p.session.down_since.take();
        p.down_stalled = Duration::ZERO;
        let resumed_after = match (outage, resumed) {
            (Some(since), true) => Some(now.saturating_duration_since(since)),
            _ => None,
        };
        if let Some(down) = resumed_after {
            self.record_resume(node, down);
        }
        self.events.push_back(super::Event::LinkUp {
            peer: node,
            link,
            resumed_after,
        });
        let mut dialled = None;
        if let Some(l) = self.links.get_mut(&link) {
            l.phase = Phase::Up;
            l.peer = Some(node);
            l.last_rx = now;
            dialled = l.dialled;
        }
        if let Some(peer) = dialled {
            self.dial_settled(peer);
        }
        // A losing dial of ours may still be in its handshake: it will be refused by the
        // peer or find the peer up when its Hello arrives.
        self.wake_link(link);
        Ok(reply)
    }
}

fn protocol(reason: String) -> LinkError {
    (GoAwayCode::ProtocolError, LinkCause::Protocol(reason))
}
