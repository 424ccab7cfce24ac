//! The frames of the attach protocol and their byte layout.
//!
//! Layout: `len: u32 LE` (bytes after this field), `kind: u8`, then the body. Control
//! frames ([`ToAgent`], [`ToClient`]) carry JSON: they are rare and small. Data frames are
//! binary: a producer's message on its way to the agent ([`Send`]), and messages on their
//! way to a consumer's process ([`Delivery`]).
//!
//! Invariants: decoding never panics and never buffers a frame whose declared length is
//! above the decoder's limit; a frame that does not parse is an error that ends the
//! connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use plexus_proto::node::ConsumerCredit;
use plexus_proto::{Endpoint, ExchangeError, JobId, NodeId};
use serde::{Deserialize, Serialize};

/// The version of the attach protocol this build speaks.
pub(crate) const VERSION: u16 = 1;

const KIND_CONTROL: u8 = 1;
const KIND_SEND: u8 = 2;
const KIND_DELIVERY: u8 = 3;
const KIND_SEND_MANY: u8 = 4;

/// Bytes of a `Send` frame before its payload: length, kind, job, slot, consumer.
const SEND_HEADER: usize = 4 + 1 + 8 + 4 + 4 + 4;

/// Requests of an attached process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToAgent {
    /// First frame: who attaches.
    Hello { version: u16, pid: u32 },
    /// A handle on a job with this topology (answered with `Done`).
    OpenJob {
        req: u64,
        job: JobId,
        producers: Vec<Endpoint>,
        consumers: Vec<Endpoint>,
    },
    /// A handle on a job is closed.
    CloseJob { job: JobId },
    /// Wait for the job's admission on the node (answered with `Done` once decided).
    Admit { req: u64, job: JobId },
    /// Cancel the job everywhere.
    Cancel { job: JobId },
    /// Open a producer (answered with `Done`).
    OpenProducer { req: u64, job: JobId, slot: u32 },
    /// The producer would send `len` bytes to `consumer`: grant a window when credit
    /// allows (answered with `Window`, or `SendFailed`).
    WantCredit {
        job: JobId,
        slot: u32,
        consumer: Endpoint,
        len: u64,
    },
    /// Close the producer's channels; with `finish`, answer only once every consumer's
    /// node acknowledged them.
    Close {
        req: u64,
        job: JobId,
        slot: u32,
        finish: bool,
    },
    /// The producer is gone (its unclosed channels abort).
    DropProducer { job: JobId, slot: u32 },
    /// Open a consumer (answered with `Done`).
    OpenConsumer { req: u64, job: JobId, slot: u32 },
    /// The consumer read `consumed` messages of the last delivery (the others go back to
    /// the node); deliver what comes next, from `among` only if given.
    Take {
        job: JobId,
        slot: u32,
        consumed: u64,
        among: Option<Vec<Endpoint>>,
    },
    /// The consumer is gone (its channels are cancelled).
    DropConsumer { job: JobId, slot: u32 },
    /// The consumer's credit figures (answered with `Credit`).
    Credit { req: u64, job: JobId, slot: u32 },
    /// The node's status (answered with `Status`).
    Status { req: u64 },
}

/// An error the agent reports to a process: the node's, or one of the agent's own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// An error of the node's core (a channel, a link, a job, a usage).
    Exchange(ExchangeError),
    /// The endpoint is not part of the job's topology on the agent's node.
    NotInTopology {
        job: u64,
        node: u32,
        slot: u32,
        role: String,
    },
    /// Anything else, as text.
    Other(String),
}

/// What a consumer's `Take` came to, besides messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// An error (of some producers, or the job).
    Error(Failure),
    /// Every producer read from ended.
    Finished,
}

/// Answers and news of the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToClient {
    /// Answer to `Hello`: the node attached to.
    Welcome { node: NodeId, version: u16 },
    /// Answer to a request.
    Done {
        req: u64,
        outcome: Result<(), Failure>,
    },
    /// The producer may send `bytes` more to `consumer`.
    Window {
        job: JobId,
        slot: u32,
        consumer: Endpoint,
        bytes: u64,
    },
    /// The producer's channel to `consumer` takes no more messages.
    SendFailed {
        job: JobId,
        slot: u32,
        consumer: Endpoint,
        error: Failure,
    },
    /// Answer to `Status`.
    Status {
        req: u64,
        status: Box<crate::Status>,
    },
    /// Answer to `Credit`.
    Credit {
        req: u64,
        figures: Result<ConsumerCredit, Failure>,
    },
    /// A consumer's `Take` ended without messages.
    Taken {
        job: JobId,
        slot: u32,
        outcome: Outcome,
    },
}

/// A producer's message for a consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Send {
    pub job: JobId,
    pub slot: u32,
    pub consumer: Endpoint,
    pub payload: Bytes,
}

/// Small messages of a producer for one consumer, in order, in one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SendMany {
    pub job: JobId,
    pub slot: u32,
    pub consumer: Endpoint,
    pub messages: Vec<Bytes>,
}

/// Messages for a consumer: the answer to its `Take`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub job: JobId,
    pub slot: u32,
    pub messages: Vec<(Endpoint, Bytes)>,
}

/// A frame read from the agent's side of a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FromClient {
    Control(ToAgent),
    Send(Send),
    SendMany(SendMany),
}

/// A frame read from the client's side of a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FromAgent {
    Control(ToClient),
    Delivery(Delivery),
}

/// Why bytes on a local connection could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("malformed frame of kind {kind}: {reason}")]
    Malformed { kind: u8, reason: String },
}

/// Appends a control frame.
pub(crate) fn encode_control<T: Serialize>(frame: &T, out: &mut BytesMut) {
    // Serialising these enums of plain data into a vector cannot fail.
    let body = serde_json::to_vec(frame).unwrap_or_default();
    out.put_u32_le((1 + body.len()) as u32);
    out.put_u8(KIND_CONTROL);
    out.put_slice(&body);
}

/// Appends the header of a `Send` frame; its payload follows, sent as it is.
pub(crate) fn encode_send_header(send: &Send, out: &mut BytesMut) {
    out.reserve(SEND_HEADER);
    out.put_u32_le((SEND_HEADER - 4 + send.payload.len()) as u32);
    out.put_u8(KIND_SEND);
    out.put_u64_le(send.job.0);
    out.put_u32_le(send.slot);
    out.put_u32_le(send.consumer.node.0);
    out.put_u32_le(send.consumer.slot);
}

/// Payloads at least this long travel by reference in a vectored write; shorter ones are
/// copied next to their header.
const BY_REFERENCE: usize = 512;

/// Appends a delivery as chunks for a vectored write: headers in `scratch`, large messages
/// by reference.
pub(crate) fn encode_delivery_chunks(
    delivery: &Delivery,
    scratch: &mut BytesMut,
    chunks: &mut Vec<Bytes>,
) {
    let body: usize = 1
        + 8
        + 4
        + delivery
            .messages
            .iter()
            .map(|(_, m)| 12 + m.len())
            .sum::<usize>();
    scratch.put_u32_le(body as u32);
    scratch.put_u8(KIND_DELIVERY);
    scratch.put_u64_le(delivery.job.0);
    scratch.put_u32_le(delivery.slot);
    for (from, message) in &delivery.messages {
        scratch.put_u32_le(from.node.0);
        scratch.put_u32_le(from.slot);
        scratch.put_u32_le(message.len() as u32);
        put_payload(message, scratch, chunks);
    }
}

/// Appends small messages of one producer for one consumer as one frame.
pub(crate) fn encode_send_many(many: &SendMany, out: &mut BytesMut) {
    let body = 1 + 8 + 4 + 4 + 4 + many.messages.iter().map(|m| 4 + m.len()).sum::<usize>();
    out.reserve(4 + body);
    out.put_u32_le(body as u32);
    out.put_u8(KIND_SEND_MANY);
    out.put_u64_le(many.job.0);
    out.put_u32_le(many.slot);
    out.put_u32_le(many.consumer.node.0);
    out.put_u32_le(many.consumer.slot);
    for message in &many.messages {
        out.put_u32_le(message.len() as u32);
        out.put_slice(message);
    }
}

/// Appends a `Send` as chunks for a vectored write.
pub(crate) fn encode_send_chunks(send: &Send, scratch: &mut BytesMut, chunks: &mut Vec<Bytes>) {
    encode_send_header(send, scratch);
    put_payload(&send.payload, scratch, chunks);
}

fn put_payload(payload: &Bytes, scratch: &mut BytesMut, chunks: &mut Vec<Bytes>) {
    if payload.len() < BY_REFERENCE {
        scratch.put_slice(payload);
    } else {
        chunks.push(scratch.split().freeze());
        chunks.push(payload.clone());
    }
}

/// Bytes still missing from the frame `buf` starts with (its length field first), with
/// room made for exactly them. Reading no more than that leaves every frame in a buffer of
/// its own: a frame's body is never moved to make room for the next one.
pub(crate) fn room_for_rest_of_frame(buf: &mut BytesMut, limit: usize) -> usize {
    if buf.len() < 4 {
        buf.reserve(4 - buf.len());
        return 4 - buf.len();
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let whole = 4 + len.min(limit);
    if buf.capacity() < whole {
        // A buffer of the frame's size, rather than growing this one (which would copy
        // all it ever held).
        let mut fresh = BytesMut::with_capacity(whole);
        fresh.extend_from_slice(buf);
        *buf = fresh;
    }
    whole.saturating_sub(buf.len()).max(1)
}

/// Takes the next whole frame's kind and body off `buf`, if it has arrived.
fn next_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<(u8, BytesMut)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > limit {
        return Err(FrameError::TooLong { len, limit });
    }
    if len == 0 {
        return Err(FrameError::Malformed {
            kind: 0,
            reason: "empty frame".into(),
        });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let mut body = buf.split_to(len);
    let kind = body.get_u8();
    Ok(Some((kind, body)))
}

fn malformed(kind: u8, reason: impl ToString) -> FrameError {
    FrameError::Malformed {
        kind,
        reason: reason.to_string(),
    }
}

/// Reads the next frame an attached process sent, if whole.
pub(crate) fn decode_from_client(
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Option<FromClient>, FrameError> {
    let Some((kind, mut body)) = next_frame(buf, limit)? else {
        return Ok(None);
    };
    match kind {
        KIND_CONTROL => serde_json::from_slice(&body)
            .map(|c| Some(FromClient::Control(c)))
            .map_err(|e| malformed(kind, e)),
        KIND_SEND => {
            if body.len() < SEND_HEADER - 5 {
                return Err(malformed(kind, "short header"));
            }
            let job = JobId(body.get_u64_le());
            let slot = body.get_u32_le();
            let consumer = Endpoint::new(NodeId(body.get_u32_le()), body.get_u32_le());
            Ok(Some(FromClient::Send(Send {
                job,
                slot,
                consumer,
                payload: body.freeze(),
            })))
        }
        KIND_SEND_MANY => {
            if body.len() < SEND_HEADER - 5 {
                return Err(malformed(kind, "short header"));
            }
            let job = JobId(body.get_u64_le());
            let slot = body.get_u32_le();
            let consumer = Endpoint::new(NodeId(body.get_u32_le()), body.get_u32_le());
            let mut body = body.freeze();
            let mut messages = Vec::new();
            while !body.is_empty() {
                if body.len() < 4 {
                    return Err(malformed(kind, "short message header"));
                }
                let len = body.get_u32_le() as usize;
                if body.len() < len {
                    return Err(malformed(kind, "message beyond the frame"));
                }
                messages.push(body.split_to(len));
            }
            Ok(Some(FromClient::SendMany(SendMany {
                job,
                slot,
                consumer,
                messages,
            })))
        }
        other => Err(malformed(other, "unknown kind")),
    }
}

/// Reads the next frame the agent sent, if whole.
pub(crate) fn decode_from_agent(
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Option<FromAgent>, FrameError> {
    let Some((kind, mut body)) = next_frame(buf, limit)? else {
        return Ok(None);
    };
    match kind {
        KIND_CONTROL => serde_json::from_slice(&body)
            .map(|c| Some(FromAgent::Control(c)))
            .map_err(|e| malformed(kind, e)),
        KIND_DELIVERY => {
            if body.len() < 12 {
                return Err(malformed(kind, "short header"));
            }
            let job = JobId(body.get_u64_le());
            let slot = body.get_u32_le();
            let mut messages = Vec::new();
            while !body.is_empty() {
                if body.len() < 12 {
                    return Err(malformed(kind, "short message header"));
                }
                let from = Endpoint::new(NodeId(body.get_u32_le()), body.get_u32_le());
                let len = body.get_u32_le() as usize;
                if body.len() < len {
                    return Err(malformed(kind, "message beyond the frame"));
                }
                messages.push((from, body.split_to(len).freeze()));
            }
            Ok(Some(FromAgent::Delivery(Delivery {
                job,
                slot,
                messages,
            })))
        }
        other => Err(malformed(other, "unknown kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    #[test]
    fn every_frame_reads_back_as_written_whatever_the_chunks() {
        let ep = Endpoint::new(NodeId(3), 1);
        let mut wire = BytesMut::new();
        let control = ToAgent::Take {
            job: JobId(9),
            slot: 2,
            consumed: 5,
            among: Some(vec![ep]),
        };
        encode_control(&control, &mut wire);
        let send = Send {
            job: JobId(9),
            slot: 0,
            consumer: ep,
            payload: Bytes::from_static(b"payload"),
        };
        let mut chunks = Vec::new();
        encode_send_chunks(&send, &mut wire, &mut chunks);
        assert!(
            chunks.is_empty(),
            "a small payload is copied beside its header"
        );
        // Fed a byte at a time, the frames still come out whole and in order.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(frame) = decode_from_client(&mut buf, LIMIT).expect("valid") {
                got.push(frame);
            }
        }
        assert_eq!(
            got,
            vec![FromClient::Control(control), FromClient::Send(send)]
        );

        let delivery = Delivery {
            job: JobId(1),
            slot: 4,
            messages: vec![(ep, Bytes::from_static(b"a")), (ep, Bytes::new())],
        };
        let big = Bytes::from(vec![7u8; 2 * BY_REFERENCE]);
        let mut delivery = delivery;
        delivery.messages.push((ep, big));
        let mut scratch = BytesMut::new();
        let mut chunks = Vec::new();
        encode_delivery_chunks(&delivery, &mut scratch, &mut chunks);
        chunks.push(scratch.split().freeze());
        let mut wire = BytesMut::new();
        for chunk in chunks {
            wire.extend_from_slice(&chunk);
        }
        let taken = ToClient::Taken {
            job: JobId(1),
            slot: 4,
            outcome: Outcome::Error(Failure::Exchange(ExchangeError::Closed)),
        };
        encode_control(&taken, &mut wire);
        assert_eq!(
            decode_from_agent(&mut wire, LIMIT).expect("valid"),
            Some(FromAgent::Delivery(delivery))
        );
        assert_eq!(
            decode_from_agent(&mut wire, LIMIT).expect("valid"),
            Some(FromAgent::Control(taken))
        );
    }

    #[test]
    fn oversized_or_malformed_frames_are_errors_not_panics() {
        let mut huge = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0x7F, KIND_SEND][..]);
        assert!(matches!(
            decode_from_client(&mut huge, LIMIT),
            Err(FrameError::TooLong { .. })
        ));
        for bytes in [
            &[1, 0, 0, 0, 9][..],
            &[3, 0, 0, 0, KIND_CONTROL, b'{', b'}'],
            &[2, 0, 0, 0, KIND_SEND, 1],
            &[0, 0, 0, 0],
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(decode_from_client(&mut buf, LIMIT).is_err(), "{bytes:?}");
        }
        let mut short = BytesMut::new();
        short.put_u32_le(1 + 12 + 12);
        short.put_u8(KIND_DELIVERY);
        short.put_u64_le(1);
        short.put_u32_le(0);
        short.put_u32_le(0);
        short.put_u32_le(0);
        short.put_u32_le(1000);
        assert!(decode_from_agent(&mut short, LIMIT).is_err());
    }
}
