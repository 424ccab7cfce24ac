//! Assembly of outgoing bytes: control frames and data headers are encoded into one
//! scratch buffer; large payloads are referenced as they are, never copied.
//!
//! Invariant: `chunks` concatenated is exactly the encoding of the frames pushed, in
//! order; `len` is their total length.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec;
use crate::frame::Frame;
use crate::ids::WireChannel;

/// Payloads shorter than this are copied next to their header: an extra I/O vector entry
/// costs more than copying a few hundred bytes.
pub const INLINE_PAYLOAD_BELOW: usize = 512;

/// Bytes ready for one vectored write.
#[derive(Debug, Default)]
pub struct Transmit {
    scratch: BytesMut,
    chunks: Vec<Bytes>,
    len: usize,
}

impl Transmit {
    /// An empty transmit buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Total bytes queued.
    pub fn len(&self) -> usize {
        self.len + self.scratch.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a control frame.
    pub(crate) fn push_control(&mut self, frame: &Frame) {
        codec::encode(frame, &mut self.scratch);
    }

    /// Appends a data frame, referencing large payloads without copying.
    pub(crate) fn push_data(&mut self, channel: WireChannel, payload: Bytes) {
        codec::encode_data_header(channel, payload.len(), &mut self.scratch);
        self.push_payload(payload);
    }

    /// Appends the payload of the frame whose header was just encoded.
    fn push_payload(&mut self, payload: Bytes) {
        if payload.len() < INLINE_PAYLOAD_BELOW {
            self.scratch.put_slice(&payload);
        } else {
            self.seal();
            self.len += payload.len();
            self.chunks.push(payload);
        }
    }

    /// Appends a batch frame with its encoded `body`, referencing large bodies without
    /// copying.
    pub(crate) fn push_batch(&mut self, channel: WireChannel, body: Bytes) {
        codec::encode_batch_header(channel, body.len(), &mut self.scratch);
        self.push_payload(body);
    }

    /// Moves the queued chunks, in order, to the end of `out`, leaving the buffer empty
    /// (and `out`'s allocation reusable for the next write).
    pub fn take_chunks(&mut self, out: &mut Vec<Bytes>) {
        self.seal();
        self.len = 0;
        out.append(&mut self.chunks);
    }

    fn seal(&mut self) {
        if !self.scratch.is_empty() {
            let head = self.scratch.split().freeze();
            self.len += head.len();
            self.chunks.push(head);
        }
    }
}
