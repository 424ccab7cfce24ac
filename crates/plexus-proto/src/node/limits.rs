//! The limits every member keeps to, whatever it sends: how many channels it may have open
//! to this node's consumers (in all, and per job), and how fast it may open and end them
//! (a token bucket per peer, against the "rapid reset" class of attack, where a peer opens
//! and cancels streams as fast as it can to make the receiver do work).
//!
//! Invariant: a frame beyond a limit is not handled; the link closes with `GoAway(Limit)`
//! and a cause that names the limit, and the peer is declared dead here (its jobs, and only
//! its jobs, fail): it cannot keep going with a channel the node refused to open. Parked
//! data is bounded elsewhere (`parking`: channels waiting for their consumer hold only
//! their first request, never data).

use std::time::Instant;

use super::state::Churn;
use super::{LinkCause, NodeCore};
use crate::frame::{Frame, GoAwayCode};
use crate::ids::NodeId;

type LinkError = (GoAwayCode, LinkCause);

fn beyond(reason: String) -> LinkError {
    (
        GoAwayCode::Limit,
        LinkCause::Protocol(format!("beyond a member's limit: {reason}")),
    )
}

impl NodeCore {
    /// Checks `frame`, about to be handled, against `peer`'s limits.
    pub(super) fn check_member_limits(
        &mut self,
        peer: NodeId,
        frame: &Frame,
        now: Instant,
    ) -> Result<(), LinkError> {
        let checked = self.check_limits(peer, frame, now);
        if checked.is_err() {
            self.counters.limits_exceeded += 1;
        }
        checked
    }

    fn check_limits(&mut self, peer: NodeId, frame: &Frame, now: Instant) -> Result<(), LinkError> {
        let job = match frame {
            Frame::Open { job, .. } => Some(*job),
            Frame::Cancel { .. } | Frame::Abort { .. } => None,
            _ => return Ok(()),
        };
        self.spend_churn(peer, now)?;
        let Some(job) = job else {
            return Ok(());
        };
        let open = self.in_channels.count_party(peer.0);
        if open >= self.config.max_channels_per_peer {
            return Err(beyond(format!(
                "{peer} has {open} channels open here, the most a peer may"
            )));
        }
        let in_job = self.in_channels.count_party_job(peer.0, job);
        if in_job >= self.config.max_channels_per_peer_job {
            return Err(beyond(format!(
                "{peer} has {in_job} channels of job {job} open here, the most a peer may"
            )));
        }
        Ok(())
    }

    /// Takes one token from `peer`'s bucket of channel opens and ends.
    fn spend_churn(&mut self, peer: NodeId, now: Instant) -> Result<(), LinkError> {
        let rate = f64::from(self.config.max_channel_churn_per_s);
        let depth = f64::from(self.config.channel_churn_burst);
        let Some(p) = self.peers.get_mut(&peer) else {
            return Ok(());
        };
        let bucket = p.churn.get_or_insert(Churn {
            tokens: depth,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(depth);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(beyond(format!(
                "{peer} opens and ends channels faster than {rate} per second (bursts of {depth})"
            )));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }
}
