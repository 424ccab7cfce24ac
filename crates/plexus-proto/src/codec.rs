//! Byte layout of frames: encoding into buffers and incremental, bounded decoding.
//!
//! Layout: `len: u32 LE` (bytes after this field), `kind: u8`, then the kind's fields in
//! little endian. `Data` carries its payload as the rest of the frame, `Batch` its messages
//! (see [`crate::batch`]).
//!
//! Invariants: decoding never panics on any input, never allocates more than the frame it
//! has fully received, and refuses any frame whose declared length exceeds the decoder's
//! limit *before* buffering it. Payloads are handed out as [`Bytes`] sharing the receive
//! buffer only when large; see [`Decoder::decode`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::auth::{NONCE_LEN, PROOF_LEN};
use crate::batch::{BatchError, MessageBatch};
use crate::frame::{CancelCode, Frame, GoAwayCode, RefuseCode};
use crate::ids::{JobId, NodeId, WireChannel};

/// Bytes before a frame's body: the length field.
pub const LEN_FIELD: usize = 4;
/// Bytes of a `Data` frame that precede the payload: length, kind, channel.
pub const DATA_HEADER_LEN: usize = LEN_FIELD + 1 + 4;

/// Payloads smaller than this are copied out of the receive buffer into their own
/// allocation, so that a small message held by a slow consumer does not pin a large
/// receive buffer. Larger payloads are sliced without copying.
pub const COPY_OUT_BELOW: usize = 16 * 1024;

const KIND_HELLO: u8 = 1;
const KIND_GOAWAY: u8 = 2;
const KIND_OPEN: u8 = 3;
const KIND_DATA: u8 = 4;
const KIND_BACKLOG: u8 = 5;
const KIND_CREDIT: u8 = 6;
const KIND_END: u8 = 7;
const KIND_CANCEL: u8 = 8;
const KIND_PING: u8 = 9;
const KIND_PONG: u8 = 10;
const KIND_ABORT: u8 = 11;
const KIND_ACK: u8 = 12;
const KIND_CANCEL_JOB: u8 = 13;
const KIND_JOB_FAILED: u8 = 14;
const KIND_BATCH: u8 = 15;
const KIND_RESERVED: u8 = 16;
const KIND_JOB_REFUSED: u8 = 17;
const KIND_CHALLENGE: u8 = 18;
const KIND_PROOF: u8 = 19;

/// A frame that could not be decoded. Any of these closes the link.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The declared length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLong {
        /// Declared body length.
        len: usize,
        /// The decoder's limit.
        limit: usize,
    },
    /// The frame kind byte is not one this build knows.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The body is shorter or longer than its kind requires.
    #[error("frame kind {kind} has a body of {len} bytes, which is malformed")]
    BadLength {
        /// Frame kind.
        kind: u8,
        /// Body length found.
        len: usize,
    },
    /// A frame with an empty body (no kind byte).
    #[error("empty frame")]
    Empty,
    /// A `Batch` frame whose messages are malformed.
    #[error("malformed batch: {0}")]
    BadBatch(#[from] BatchError),
}

/// The body length the frame at the front of `buf` declares, once its length field has
/// arrived.
pub fn declared_len(buf: &[u8]) -> Option<usize> {
    let field = buf.get(..LEN_FIELD)?;
    Some(u32::from_le_bytes([field[0], field[1], field[2], field[3]]) as usize)
}

/// Appends a frame to `out`. For `Data` and `Batch`, this copies the payload; use
/// [`encode_data_header`] or [`encode_batch_header`] to avoid that.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Challenge {
            version,
            cluster,
            node,
            incarnation,
            nonce,
        } => {
            put_head(out, KIND_CHALLENGE, 2 + 8 + 4 + 8 + NONCE_LEN);
            out.put_u16_le(*version);
            out.put_u64_le(*cluster);
            out.put_u32_le(node.0);
            out.put_u64_le(*incarnation);
            out.put_slice(nonce);
        }
        Frame::Proof { proof } => {
            put_head(out, KIND_PROOF, PROOF_LEN);
            out.put_slice(proof);
        }
        Frame::Hello {
            version,
            cluster,
            node,
            incarnation,
            peer_incarnation,
            received,
            max_message,
        } => {
            put_head(out, KIND_HELLO, 2 + 8 + 4 + 8 + 8 + 8 + 4);
            out.put_u16_le(*version);
            out.put_u64_le(*cluster);
            out.put_u32_le(node.0);
            out.put_u64_le(*incarnation);
            out.put_u64_le(*peer_incarnation);
            out.put_u64_le(*received);
            out.put_u32_le(*max_message);
        }
        Frame::Ack { received } => {
            put_head(out, KIND_ACK, 8);
            out.put_u64_le(*received);
        }
        Frame::CancelJob { job } => {
            put_head(out, KIND_CANCEL_JOB, 8);
            out.put_u64_le(job.0);
        }
        Frame::JobFailed { job, dead } => {
            put_head(out, KIND_JOB_FAILED, 12);
            out.put_u64_le(job.0);
            out.put_u32_le(dead.0);
        }
        Frame::Reserved { job } => {
            put_head(out, KIND_RESERVED, 8);
            out.put_u64_le(job.0);
        }
        Frame::JobRefused { job, reason } => {
            put_head(out, KIND_JOB_REFUSED, 10);
            out.put_u64_le(job.0);
            out.put_u16_le(reason.to_wire());
        }
        Frame::GoAway { code } => {
            put_head(out, KIND_GOAWAY, 2);
            out.put_u16_le(code.to_wire());
        }
        Frame::Open {
            channel,
            job,
            producer,
            consumer,
        } => {
            put_head(out, KIND_OPEN, 4 + 8 + 4 + 4);
            out.put_u32_le(channel.0);
            out.put_u64_le(job.0);
            out.put_u32_le(*producer);
            out.put_u32_le(*consumer);
        }
        Frame::Data { channel, payload } => {
            encode_data_header(*channel, payload.len(), out);
            out.put_slice(payload);
        }
        Frame::Batch { channel, messages } => {
            encode_batch_header(*channel, messages.body().len(), out);
            out.put_slice(messages.body());
        }
        Frame::Backlog {
            channel,
            need,
            want,
        } => {
            put_head(out, KIND_BACKLOG, 12);
            out.put_u32_le(channel.0);
            out.put_u32_le(*need);
            out.put_u32_le(*want);
        }
        Frame::Credit { channel, bytes } => {
            put_head(out, KIND_CREDIT, 8);
            out.put_u32_le(channel.0);
            out.put_u32_le(*bytes);
        }
        Frame::End { channel, sent } => {
            put_head(out, KIND_END, 12);
            out.put_u32_le(channel.0);
            out.put_u64_le(*sent);
        }
        Frame::Abort { channel } => {
            put_head(out, KIND_ABORT, 4);
            out.put_u32_le(channel.0);
        }
        Frame::Cancel { channel, code } => {
            put_head(out, KIND_CANCEL, 6);
            out.put_u32_le(channel.0);
            out.put_u16_le(code.to_wire());
        }
        Frame::Ping { nonce } => {
            put_head(out, KIND_PING, 8);
            out.put_u64_le(*nonce);
        }
        Frame::Pong { nonce } => {
            put_head(out, KIND_PONG, 8);
            out.put_u64_le(*nonce);
        }
    }
}

/// Appends the header of a `Data` frame whose payload of `payload_len` bytes the caller
/// sends next, by reference.
///
/// # Panics
/// If `payload_len` does not fit the 32-bit length field; callers bound messages far
/// below that.
pub fn encode_data_header(channel: WireChannel, payload_len: usize, out: &mut BytesMut) {
    let body = u32::try_from(1 + 4 + payload_len).expect("payload bounded by the frame limit");
    out.reserve(DATA_HEADER_LEN);
    out.put_u32_le(body);
    out.put_u8(KIND_DATA);
    out.put_u32_le(channel.0);
}

/// Appends the header of a `Batch` frame whose body of `body_len` bytes the caller sends
/// next, by reference.
///
/// # Panics
/// If `body_len` does not fit the 32-bit length field; batches are a few KiB.
pub fn encode_batch_header(channel: WireChannel, body_len: usize, out: &mut BytesMut) {
    let body = u32::try_from(1 + 4 + body_len).expect("batch bounded by the frame limit");
    out.reserve(DATA_HEADER_LEN);
    out.put_u32_le(body);
    out.put_u8(KIND_BATCH);
    out.put_u32_le(channel.0);
}

/// Total encoded size of a `Data` frame with `payload_len` payload bytes.
pub const fn data_frame_len(payload_len: usize) -> usize {
    DATA_HEADER_LEN + payload_len
}

fn put_head(out: &mut BytesMut, kind: u8, body_after_kind: usize) {
    out.reserve(LEN_FIELD + 1 + body_after_kind);
    // Control bodies are a few bytes, far below u32::MAX.
    out.put_u32_le((1 + body_after_kind) as u32);
    out.put_u8(kind);
}

/// Incremental frame decoder with a length limit.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// Largest body (kind byte + fields + payload) accepted.
    max_body: usize,
}

impl Decoder {
    /// A decoder refusing bodies longer than `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        Self { max_body }
    }

    /// The largest body accepted.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Takes one complete frame off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a frame (nothing is consumed), and
    /// an error when the bytes can never form a valid frame; the link must then close.
    /// A frame's declared length is checked against the limit as soon as the length field
    /// has arrived, so a hostile length never makes the caller buffer past the limit.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if buf.len() < LEN_FIELD {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max_body {
            return Err(DecodeError::TooLong {
                len,
                limit: self.max_body,
            });
        }
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        if buf.len() < LEN_FIELD + len {
            return Ok(None);
        }
        buf.advance(LEN_FIELD);
        let mut body = buf.split_to(len);
        let kind = body.get_u8();
        parse_body(kind, &mut body).map(Some)
    }

    /// How many more bytes `buf` needs before [`Decoder::decode`] can return a frame,
    /// if the length field has arrived and is within the limit. Lets a reader size its
    /// next read to the frame in progress.
    pub fn bytes_needed(&self, buf: &BytesMut) -> Option<usize> {
        if buf.len() < LEN_FIELD {
            return None;
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max_body {
            return None;
        }
        Some((LEN_FIELD + len).saturating_sub(buf.len()))
    }
}

/// The rest of a frame's body: copied into its own allocation when small (see
/// [`COPY_OUT_BELOW`]), shared with the receive buffer otherwise.
fn take_payload(body: &mut BytesMut) -> Bytes {
    if body.len() < COPY_OUT_BELOW {
        Bytes::copy_from_slice(body)
    } else {
        std::mem::take(body).freeze()
    }
}

fn parse_body(kind: u8, body: &mut BytesMut) -> Result<Frame, DecodeError> {
    let len = body.len();
    let exact = |want: usize| {
        if len == want {
            Ok(())
        } else {
            Err(DecodeError::BadLength { kind, len: len + 1 })
        }
    };
    let frame = match kind {
        KIND_CHALLENGE => {
            exact(2 + 8 + 4 + 8 + NONCE_LEN)?;
            let version = body.get_u16_le();
            let cluster = body.get_u64_le();
            let node = NodeId(body.get_u32_le());
            let incarnation = body.get_u64_le();
            let mut nonce = [0u8; NONCE_LEN];
            body.copy_to_slice(&mut nonce);
            Frame::Challenge {
                version,
                cluster,
                node,
                incarnation,
                nonce,
            }
        }
        KIND_PROOF => {
            exact(PROOF_LEN)?;
            let mut proof = [0u8; PROOF_LEN];
            body.copy_to_slice(&mut proof);
            Frame::Proof { proof }
        }
        KIND_HELLO => {
            exact(42)?;
            Frame::Hello {
                version: body.get_u16_le(),
                cluster: body.get_u64_le(),
                node: NodeId(body.get_u32_le()),
                incarnation: body.get_u64_le(),
                peer_incarnation: body.get_u64_le(),
                received: body.get_u64_le(),
                max_message: body.get_u32_le(),
            }
        }
        KIND_ACK => {
            exact(8)?;
            Frame::Ack {
                received: body.get_u64_le(),
            }
        }
        KIND_CANCEL_JOB => {
            exact(8)?;
            Frame::CancelJob {
                job: JobId(body.get_u64_le()),
            }
        }
        KIND_JOB_FAILED => {
            exact(12)?;
            Frame::JobFailed {
                job: JobId(body.get_u64_le()),
                dead: NodeId(body.get_u32_le()),
            }
        }
        KIND_RESERVED => {
            exact(8)?;
            Frame::Reserved {
                job: JobId(body.get_u64_le()),
            }
        }
        KIND_JOB_REFUSED => {
            exact(10)?;
            Frame::JobRefused {
                job: JobId(body.get_u64_le()),
                reason: RefuseCode::from_wire(body.get_u16_le()),
            }
        }
        KIND_GOAWAY => {
            exact(2)?;
            Frame::GoAway {
                code: GoAwayCode::from_wire(body.get_u16_le()),
            }
        }
        KIND_OPEN => {
            exact(20)?;
            Frame::Open {
                channel: WireChannel(body.get_u32_le()),
                job: JobId(body.get_u64_le()),
                producer: body.get_u32_le(),
                consumer: body.get_u32_le(),
            }
        }
        KIND_DATA => {
            if len < 4 {
                return Err(DecodeError::BadLength { kind, len: len + 1 });
            }
            let channel = WireChannel(body.get_u32_le());
            Frame::Data {
                channel,
                payload: take_payload(body),
            }
        }
        KIND_BATCH => {
            if len < 4 {
                return Err(DecodeError::BadLength { kind, len: len + 1 });
            }
            let channel = WireChannel(body.get_u32_le());
            Frame::Batch {
                channel,
                messages: MessageBatch::parse(take_payload(body))?,
            }
        }
        KIND_BACKLOG => {
            exact(12)?;
            Frame::Backlog {
                channel: WireChannel(body.get_u32_le()),
                need: body.get_u32_le(),
                want: body.get_u32_le(),
            }
        }
        KIND_CREDIT => {
            exact(8)?;
            Frame::Credit {
                channel: WireChannel(body.get_u32_le()),
                bytes: body.get_u32_le(),
            }
        }
        KIND_END => {
            exact(12)?;
            Frame::End {
                channel: WireChannel(body.get_u32_le()),
                sent: body.get_u64_le(),
            }
        }
        KIND_ABORT => {
            exact(4)?;
            Frame::Abort {
                channel: WireChannel(body.get_u32_le()),
            }
        }
        KIND_CANCEL => {
            exact(6)?;
            Frame::Cancel {
                channel: WireChannel(body.get_u32_le()),
                code: CancelCode::from_wire(body.get_u16_le()),
            }
        }
        KIND_PING => {
            exact(8)?;
            Frame::Ping {
                nonce: body.get_u64_le(),
            }
        }
        KIND_PONG => {
            exact(8)?;
            Frame::Pong {
                nonce: body.get_u64_le(),
            }
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(frame)
}
