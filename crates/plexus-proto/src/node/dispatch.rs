//! Dispatch of the channel and job frames a peer (or this node itself) sends, to the
//! module that owns each: channels to `consumer` and `producer`, jobs to `jobs`, turns of
//! admission to `admission`. Link-level frames (handshake, ping, ack, goaway) never get
//! here: `handshake` handles them.
//!
//! Invariant: an `Err` is a protocol violation by the sender and closes its link; frames
//! for channels or jobs that are over are dropped quietly (they may cross a cancel).

use super::consumer::Arrival;
use super::NodeCore;
use crate::credit::message_cost;
use crate::frame::Frame;
use crate::ids::NodeId;

impl NodeCore {
    /// Handles a channel or job frame that arrived from `peer` (or from this node itself).
    pub(super) fn handle_frame(&mut self, peer: NodeId, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Open {
                channel,
                job,
                producer,
                consumer,
            } => self.on_open(peer, channel, job, producer, consumer),
            Frame::Data { channel, payload } => {
                let cost = message_cost(payload.len());
                self.on_data(peer, channel, cost, Arrival::Message(payload))
            }
            Frame::Batch { channel, messages } => {
                self.on_data(peer, channel, messages.cost(), Arrival::Batch(messages))
            }
            Frame::Backlog {
                channel,
                need,
                want,
            } => self.on_backlog(peer, channel, need, want),
            Frame::End { channel, sent } => self.on_finish(peer, channel, Some(sent)),
            Frame::Abort { channel } => self.on_finish(peer, channel, None),
            Frame::Credit { channel, bytes } => {
                self.on_credit(peer, channel, bytes);
                Ok(())
            }
            Frame::Cancel { channel, code } => {
                self.on_cancel(peer, channel, code);
                Ok(())
            }
            Frame::CancelJob { job } => {
                self.on_cancel_job(peer, job);
                Ok(())
            }
            Frame::JobFailed { job, dead } => {
                self.on_job_failed(peer, job, dead);
                Ok(())
            }
            Frame::Reserved { job } => {
                self.on_reserved(peer, job);
                Ok(())
            }
            Frame::JobRefused { job, reason } => {
                self.on_job_refused(peer, job, reason);
                Ok(())
            }
            other => Err(format!("unexpected {} frame", other.name())),
        }
    }
}
