//! Pacing of outgoing dials: which peers wait for a dial, and which dials are in flight.
//!
//! A dial is in flight from its [`Event::Dial`] until its outcome is known: the runtime
//! reports that connecting failed, or that the connection is no longer wanted, or the
//! connection it made leaves its handshake (chosen, refused or closed). A node keeps at most
//! [`crate::Config::max_dials_in_flight`] dials in flight; peers that need one meanwhile
//! wait their turn, first come first served. A node that must reach hundreds of peers at
//! once (a job spanning the cluster starts, or the node's own network came back) thus adds
//! a bounded number of half-open connections and handshakes to the machines' queues at a
//! time, instead of all of them, which would make handshakes time out while merely queued
//! and come back as redials.
//!
//! Invariants: at most `max_dials_in_flight` peers are in flight, each at most once, so a
//! node never has two dials to one peer under way (a redial waits for the outcome of the
//! dial before it); a peer waiting for its turn has no connection of ours on the wire, so
//! a connection it dials to us is accepted whatever the ids (there is no simultaneous dial
//! to break a tie with).

use std::collections::VecDeque;

use super::state::PeerState;
use super::{Event, NodeCore};
use crate::ids::NodeId;
use crate::map::Set;

/// The dials of one node: in flight, and waiting for a slot.
#[derive(Debug, Default)]
pub(crate) struct Dials {
    /// Peers with a dial in flight.
    in_flight: Set<NodeId>,
    /// Peers waiting for a slot, oldest first. An entry whose peer no longer wants a dial
    /// when its turn comes (it was reached meanwhile) is dropped then.
    queue: VecDeque<NodeId>,
    /// The peers in `queue`.
    queued: Set<NodeId>,
}

impl Dials {
    /// Whether a dial to `peer` is in flight.
    pub fn in_flight(&self, peer: NodeId) -> bool {
        self.in_flight.contains(&peer)
    }

    /// Dials in flight.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }
}

impl NodeCore {
    /// `peer` needs a link and has none: dial it as soon as a slot is free.
    pub(super) fn request_dial(&mut self, peer: NodeId) {
        if self.shutting_down {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.state = PeerState::Dialing;
        p.redial_at = None;
        if self.dials.queued.insert(peer) {
            self.dials.queue.push_back(peer);
        }
        self.pump_dials();
    }

    /// The dial to `peer` has an outcome: its slot goes to the next peer waiting.
    pub(super) fn dial_settled(&mut self, peer: NodeId) {
        if self.dials.in_flight.remove(&peer) {
            self.pump_dials();
        }
    }

    /// Starts the dials waiting for a slot, in order, while slots are free.
    fn pump_dials(&mut self) {
        while self.dials.in_flight.len() < self.config.max_dials_in_flight {
            let Some(peer) = self.dials.queue.pop_front() else {
                return;
            };
            self.dials.queued.remove(&peer);
            let wanted = self
                .peers
                .get(&peer)
                .is_some_and(|p| p.state == PeerState::Dialing && p.redial_at.is_none());
            // A dial in flight already serves the peer: its outcome either links it or
            // schedules the next attempt.
            if wanted && self.dials.in_flight.insert(peer) {
                self.events.push_back(Event::Dial { peer });
            }
        }
    }
}
