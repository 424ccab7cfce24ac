//! The node's own lifecycle: shutting down, and closing links that carry nothing.
//!
//! Shutting down tells every peer at once: each link sends `GoAway(Shutdown)` as its last
//! frame, so peers fail the jobs spanning this node with that cause now, instead of after
//! the grace period; the jobs live here fail with `NodeShutdown`, which wakes every
//! waiter. Afterwards the node dials nobody and refuses every handshake and every new job.
//!
//! A link is closed when idle (`Config::link_idle_close`): nothing queued, nothing
//! waiting for acknowledgement, no channel frame either way for that long, and no live job
//! spanning the peer (a job's consumers must hear of the peer's death, which needs the
//! link). It sends `GoAway(Idle)`; both sides keep the session, go idle without
//! redialling, and the next frame for the peer dials again and resumes the session. A side
//! that still has something for the peer when the `GoAway(Idle)` arrives redials at once.
//!
//! Invariants: after `begin_shutdown`, no link is up, no dial is requested and no job is
//! live; an idle close loses nothing (only a link with nothing in flight is closed, and
//! whatever crosses the close is resent on resume).

use std::time::Instant;

use super::state::{LinkId, PeerState, Phase};
use super::{Event, ExchangeError, LinkCause, NodeCore};
use crate::frame::{Frame, GoAwayCode};
use crate::ids::{JobId, NodeId};

impl NodeCore {
    /// Starts shutting the node down: every link sends `GoAway(Shutdown)` and closes (the
    /// runtime writes what `poll_transmit` still returns, then shuts the sockets), and
    /// every live job fails here with [`ExchangeError::NodeShutdown`].
    pub fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let error = ExchangeError::NodeShutdown {
            node: self.config.node,
        };
        let live: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.failed.is_none())
            .map(|(id, _)| *id)
            .collect();
        for job in live {
            self.fail_job(job, error.clone());
        }
        for p in self.peers.values_mut() {
            if p.state != PeerState::Local {
                p.state = PeerState::Idle;
                p.redial_at = None;
            }
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            if let Some(l) = self.links.get_mut(&link) {
                if l.phase == Phase::Closing {
                    continue;
                }
                l.phase = Phase::Closing;
                l.control.clear();
                l.control.push_back(Frame::GoAway {
                    code: GoAwayCode::Shutdown,
                });
            }
            self.events.push_back(Event::Close {
                link,
                cause: LinkCause::Shutdown,
            });
            self.wake_link(link);
        }
    }

    /// Whether the node is shutting down (see [`NodeCore::begin_shutdown`]).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The error for anything asked of a node that is shutting down.
    pub(super) fn refuse_if_shutting_down(&self) -> Result<(), ExchangeError> {
        if self.shutting_down {
            return Err(ExchangeError::NodeShutdown {
                node: self.config.node,
            });
        }
        Ok(())
    }

    /// Whether the link with `peer` may go: nothing queued or unacknowledged either way,
    /// and no live job spans the peer.
    pub(super) fn peer_is_quiet(&self, peer: NodeId) -> bool {
        let Some(p) = self.peers.get(&peer) else {
            return true;
        };
        p.control.is_empty()
            && p.data.is_empty()
            && p.session.retained_bytes() == 0
            && p.session.tx_seq() == p.session.acked_by_peer()
            && !p.session.ack_pending()
            && !self.jobs.values().any(|j| j.nodes.contains(&peer))
    }

    /// Closes the links that carried no channel frame for `link_idle_close` and whose peer
    /// is quiet. A link is judged at most once per quarter of that time.
    pub(super) fn close_idle_links(&mut self, now: Instant) {
        let Some(after) = self.config.link_idle_close else {
            return;
        };
        let candidates: Vec<(LinkId, NodeId)> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.phase == Phase::Up
                    && now.saturating_duration_since(l.last_traffic) >= after
                    && now.saturating_duration_since(l.idle_judged) >= after / 4
            })
            .filter_map(|(&id, l)| l.peer.map(|peer| (id, peer)))
            .collect();
        for (link, peer) in candidates {
            if let Some(l) = self.links.get_mut(&link) {
                l.idle_judged = now;
            }
            if self.peer_is_quiet(peer) {
                self.close_link(link, GoAwayCode::Idle, LinkCause::Idle(after));
            }
        }
    }

    /// The link with `peer` closed because it was idle (on either side): go idle without
    /// redialling if nothing is left for the peer; otherwise the caller reconnects.
    pub(super) fn went_idle(&mut self, peer: NodeId) -> bool {
        if !self.peer_is_quiet(peer) {
            return false;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.state = PeerState::Idle;
            p.redial_at = None;
            p.session.down_since = None;
        }
        true
    }
}
