//! The session with one peer: numbering, acknowledgement, retention and resumption of the
//! channel frames exchanged with it, across however many connections carry them.
//!
//! Frames are numbered implicitly, in the order they are first written: the first channel
//! frame of a session is number 0, the next 1, and so on, in each direction. The receiver
//! counts what it received (`rx_count`) and acknowledges it cumulatively with `Ack`; the
//! sender retains every frame from the oldest unacknowledged one (`tx_base`) on. After a
//! reconnect, each side's `Hello` carries its `rx_count`, and the other side resends its
//! retained frames from that number: nothing is lost, and since the receiver counts from
//! where it stopped, nothing is delivered twice.
//!
//! Invariants: `tx_base <= acknowledged by the peer <= tx_base + retained.len()`;
//! `resend_at <= retained.len()`, and frames before `resend_at` were written on the current
//! connection; retained data is bounded by the credit its channels were granted plus what
//! is in flight before the next `Ack`.

use std::collections::VecDeque;
use std::time::Instant;

use crate::frame::Frame;

/// Acknowledge at once after this many unacknowledged frames...
pub(crate) const ACK_EVERY_FRAMES: u64 = 64;
/// ...or this many unacknowledged payload bytes, so what a sender retains stays small.
pub(crate) const ACK_EVERY_BYTES: u64 = 64 * 1024;

/// Numbering, retention and acknowledgement state of the session with one peer.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// The peer's incarnation, once a handshake told it.
    pub peer_incarnation: Option<u64>,
    /// Frames written and not yet acknowledged, oldest first.
    retained: VecDeque<Frame>,
    /// Data bytes of the retained frames (see [`payload_len`]).
    retained_bytes: u64,
    /// Number of `retained[0]`.
    tx_base: u64,
    /// Index in `retained` of the next frame to write again after a reconnect.
    resend_at: usize,
    /// Channel frames received from the peer in this session.
    pub rx_count: u64,
    /// The `rx_count` last acknowledged to the peer.
    acked: u64,
    /// Payload bytes received since the last acknowledgement.
    unacked_bytes: u64,
    /// When the oldest unacknowledged received frame arrived.
    unacked_since: Option<Instant>,
    /// When the last connection of an established session was lost, while none replaces it.
    pub down_since: Option<Instant>,
}

impl Session {
    /// Number the next new frame will get.
    pub fn tx_seq(&self) -> u64 {
        self.tx_base + self.retained.len() as u64
    }

    /// How many of our frames the peer has acknowledged.
    pub fn acked_by_peer(&self) -> u64 {
        self.tx_base
    }

    /// Payload bytes retained for a possible resend.
    pub fn retained_bytes(&self) -> u64 {
        self.retained_bytes
    }

    /// Records a new frame as written: it is retained until acknowledged.
    pub fn record_sent(&mut self, frame: Frame) {
        self.retained_bytes += payload_len(&frame);
        self.retained.push_back(frame);
        self.resend_at = self.retained.len();
    }

    /// The next retained frame to write again on a new connection, if any.
    pub fn next_resend(&mut self) -> Option<Frame> {
        let frame = self.retained.get(self.resend_at)?.clone();
        self.resend_at += 1;
        Some(frame)
    }

    /// The peer acknowledged its first `received` frames: forget them.
    pub fn on_ack(&mut self, received: u64) -> Result<(), String> {
        if received < self.tx_base || received > self.tx_seq() {
            return Err(format!(
                "acknowledgement of {received} frames outside {}..={}",
                self.tx_base,
                self.tx_seq()
            ));
        }
        while self.tx_base < received {
            if let Some(frame) = self.retained.pop_front() {
                self.retained_bytes -= payload_len(&frame);
            }
            self.tx_base += 1;
            self.resend_at = self.resend_at.saturating_sub(1);
        }
        Ok(())
    }

    /// A new connection resumes the session: the peer has our first `received` frames, so
    /// everything after them is written again, before any new frame.
    pub fn resume(&mut self, received: u64) -> Result<(), String> {
        self.on_ack(received)?;
        self.resend_at = 0;
        Ok(())
    }

    /// Counts one received channel frame carrying `payload` bytes.
    pub fn on_received(&mut self, now: Instant, payload: u64) {
        self.rx_count += 1;
        self.unacked_bytes += payload;
        self.unacked_since.get_or_insert(now);
    }

    /// Whether an `Ack` should go out now rather than ride on the next write.
    pub fn ack_urgent(&self, now: Instant, delay: std::time::Duration) -> bool {
        self.rx_count - self.acked >= ACK_EVERY_FRAMES
            || self.unacked_bytes >= ACK_EVERY_BYTES
            || self.unacked_since.is_some_and(|t| now >= t + delay)
    }

    /// Whether frames were received and not acknowledged yet.
    pub fn ack_pending(&self) -> bool {
        self.rx_count > self.acked
    }

    /// The `Ack` to send, if anything was received since the last one.
    pub fn take_ack(&mut self) -> Option<u64> {
        (self.rx_count > self.acked).then(|| {
            self.acked = self.rx_count;
            self.unacked_bytes = 0;
            self.unacked_since = None;
            self.rx_count
        })
    }
}

/// Bytes of data a frame carries: a `Data` frame's payload, a `Batch` frame's body.
pub(crate) fn payload_len(frame: &Frame) -> u64 {
    match frame {
        Frame::Data { payload, .. } => payload.len() as u64,
        Frame::Batch { messages, .. } => messages.body().len() as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::WireChannel;

    fn data(n: u8) -> Frame {
        Frame::Data {
            channel: WireChannel(0),
            payload: bytes::Bytes::from(vec![n; 10]),
        }
    }

    #[test]
    fn acknowledged_frames_are_forgotten_and_the_rest_resent_in_order() {
        let mut s = Session::default();
        for n in 0..5 {
            s.record_sent(data(n));
        }
        assert_eq!(s.retained_bytes(), 50);
        assert_eq!(
            s.next_resend(),
            None,
            "nothing to resend on the same connection"
        );
        s.on_ack(2).unwrap();
        assert_eq!(s.retained_bytes(), 30);
        s.resume(3).unwrap();
        assert_eq!(s.next_resend(), Some(data(3)));
        assert_eq!(s.next_resend(), Some(data(4)));
        assert_eq!(s.next_resend(), None);
        s.record_sent(data(5));
        assert_eq!(s.tx_seq(), 6);
        assert_eq!(s.next_resend(), None);
    }

    #[test]
    fn acknowledgements_outside_what_was_sent_are_refused() {
        let mut s = Session::default();
        s.record_sent(data(0));
        assert!(s.on_ack(2).is_err());
        s.on_ack(1).unwrap();
        assert!(s.on_ack(0).is_err(), "going backwards");
    }

    #[test]
    fn acks_are_cumulative_and_only_when_something_arrived() {
        let mut s = Session::default();
        let t = Instant::now();
        assert_eq!(s.take_ack(), None);
        s.on_received(t, 10);
        s.on_received(t, 10);
        assert!(!s.ack_urgent(t, std::time::Duration::from_millis(5)));
        assert!(s.ack_urgent(
            t + std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(5)
        ));
        assert_eq!(s.take_ack(), Some(2));
        assert_eq!(s.take_ack(), None);
    }
}
