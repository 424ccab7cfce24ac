//! Property and edge-case tests of the frame codec: round trips, incremental decoding,
//! bounded decoding of hostile input and the error for each kind of malformed frame.

use bytes::BytesMut;
use plexus_proto::batch::{
    batched_len, BatchBuilder, BatchError, MessageBatch, BATCH_BODY_MAX, BATCH_MESSAGE_BELOW,
};
use plexus_proto::codec::{
    data_frame_len, encode, encode_data_header, DecodeError, Decoder, COPY_OUT_BELOW,
    DATA_HEADER_LEN, LEN_FIELD,
};
use plexus_proto::frame::{CancelCode, Frame, GoAwayCode, RefuseCode};
use plexus_proto::{Bytes, JobId, NodeId, WireChannel};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

/// Limit used where the frames under test must always fit.
const ROOMY: usize = 64 * 1024;
/// Small limit used when decoding arbitrary bytes.
const SMALL: usize = 1024;

/// Wire kind numbers and the body size after the kind byte of every fixed-size kind.
const FIXED_KINDS: [(u8, usize); 17] = [
    (1, 42),  // Hello
    (2, 2),   // GoAway
    (3, 20),  // Open
    (5, 12),  // Backlog
    (6, 8),   // Credit
    (7, 12),  // End
    (8, 6),   // Cancel
    (9, 8),   // Ping
    (10, 8),  // Pong
    (11, 4),  // Abort
    (12, 8),  // Ack
    (13, 8),  // CancelJob
    (14, 12), // JobFailed
    (16, 8),  // Reserved
    (17, 10), // JobRefused
    (18, 54), // Challenge
    (19, 32), // Proof
];
const KIND_DATA: u8 = 4;
const KIND_BATCH: u8 = 15;
/// Kind numbers this build knows; every other byte is an unknown kind.
const KNOWN_KINDS: std::ops::RangeInclusive<u8> = 1..=19;

/// The wire kind of a frame. The match is exhaustive on purpose: a new `Frame` variant
/// fails to compile here until it is added to this table and to [`frame_with_payload`].
fn kind_of(frame: &Frame) -> u8 {
    match frame {
        Frame::Hello { .. } => 1,
        Frame::GoAway { .. } => 2,
        Frame::Open { .. } => 3,
        Frame::Data { .. } => KIND_DATA,
        Frame::Backlog { .. } => 5,
        Frame::Credit { .. } => 6,
        Frame::End { .. } => 7,
        Frame::Cancel { .. } => 8,
        Frame::Ping { .. } => 9,
        Frame::Pong { .. } => 10,
        Frame::Abort { .. } => 11,
        Frame::Ack { .. } => 12,
        Frame::CancelJob { .. } => 13,
        Frame::JobFailed { .. } => 14,
        Frame::Batch { .. } => KIND_BATCH,
        Frame::Reserved { .. } => 16,
        Frame::JobRefused { .. } => 17,
        Frame::Challenge { .. } => 18,
        Frame::Proof { .. } => 19,
    }
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

fn goaway_code() -> impl Strategy<Value = GoAwayCode> {
    prop_oneof![
        Just(GoAwayCode::ProtocolError),
        Just(GoAwayCode::VersionMismatch),
        Just(GoAwayCode::WrongCluster),
        Just(GoAwayCode::UnexpectedNode),
        Just(GoAwayCode::SimultaneousDial),
        Just(GoAwayCode::Duplicate),
        Just(GoAwayCode::Shutdown),
        Just(GoAwayCode::SessionMismatch),
        Just(GoAwayCode::Timeout),
        Just(GoAwayCode::ConfigMismatch),
        Just(GoAwayCode::Idle),
        Just(GoAwayCode::Unauthenticated),
        Just(GoAwayCode::Limit),
        // Unknown only with values no named code uses, or it would not round trip.
        prop_oneof![Just(0u16), 14u16..=u16::MAX].prop_map(GoAwayCode::Unknown),
    ]
}

fn cancel_code() -> impl Strategy<Value = CancelCode> {
    prop_oneof![
        Just(CancelCode::ConsumerGone),
        Just(CancelCode::UnknownConsumer),
        Just(CancelCode::ConsumerNeverAppeared),
        Just(CancelCode::JobFailed),
        prop_oneof![Just(0u16), 5u16..=u16::MAX].prop_map(CancelCode::Unknown),
    ]
}

fn channel() -> impl Strategy<Value = WireChannel> {
    any::<u32>().prop_map(WireChannel)
}

/// Every frame variant, with `Data` payloads of `0..max_payload` bytes.
fn frame_with_payload(max_payload: usize) -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            (any::<u16>(), any::<u64>(), any::<u32>()),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>())
        )
            .prop_map(
                |(
                    (version, cluster, node),
                    (incarnation, peer_incarnation, received, max_message),
                )| {
                    Frame::Hello {
                        version,
                        cluster,
                        node: NodeId(node),
                        incarnation,
                        peer_incarnation,
                        received,
                        max_message,
                    }
                }
            ),
        (
            (any::<u16>(), any::<u64>(), any::<u32>()),
            (any::<u64>(), any::<[u8; 32]>())
        )
            .prop_map(|((version, cluster, node), (incarnation, nonce))| {
                Frame::Challenge {
                    version,
                    cluster,
                    node: NodeId(node),
                    incarnation,
                    nonce,
                }
            }),
        any::<[u8; 32]>().prop_map(|proof| Frame::Proof { proof }),
        any::<u64>().prop_map(|job| Frame::Reserved { job: JobId(job) }),
        (any::<u64>(), any::<u16>()).prop_map(|(job, reason)| Frame::JobRefused {
            job: JobId(job),
            reason: RefuseCode::from_wire(reason),
        }),
        any::<u64>().prop_map(|received| Frame::Ack { received }),
        any::<u64>().prop_map(|job| Frame::CancelJob { job: JobId(job) }),
        (any::<u64>(), any::<u32>()).prop_map(|(job, dead)| Frame::JobFailed {
            job: JobId(job),
            dead: NodeId(dead)
        }),
        goaway_code().prop_map(|code| Frame::GoAway { code }),
        (channel(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(channel, job, producer, consumer)| Frame::Open {
                channel,
                job: JobId(job),
                producer,
                consumer,
            }
        ),
        (channel(), vec(any::<u8>(), 0..max_payload)).prop_map(|(channel, payload)| {
            Frame::Data {
                channel,
                payload: Bytes::from(payload),
            }
        }),
        (
            channel(),
            vec(
                vec(any::<u8>(), 0..max_payload.min(BATCH_MESSAGE_BELOW)),
                1..6
            )
        )
            .prop_map(|(channel, messages)| Frame::Batch {
                channel,
                messages: batch_of(&messages),
            }),
        (channel(), any::<u32>(), any::<u32>()).prop_map(|(channel, need, want)| {
            Frame::Backlog {
                channel,
                need,
                want,
            }
        }),
        (channel(), any::<u32>()).prop_map(|(channel, bytes)| Frame::Credit { channel, bytes }),
        (channel(), any::<u64>()).prop_map(|(channel, sent)| Frame::End { channel, sent }),
        channel().prop_map(|channel| Frame::Abort { channel }),
        (channel(), cancel_code()).prop_map(|(channel, code)| Frame::Cancel { channel, code }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
    ]
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    frame_with_payload(4096)
}

/// Byte soup that often looks like frames: valid encodings, headers with small (possibly
/// wrong) lengths and arbitrary kinds, and plain random bytes, concatenated.
fn frame_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        frame_with_payload(64).prop_map(|f| encode_one(&f).to_vec()),
        (0u32..48, any::<u8>(), vec(any::<u8>(), 0..48)).prop_map(|(len, kind, body)| {
            let mut v = len.to_le_bytes().to_vec();
            v.push(kind);
            v.extend_from_slice(&body);
            v
        }),
        vec(any::<u8>(), 0..16),
    ];
    vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn batch_of(messages: &[Vec<u8>]) -> MessageBatch {
    let mut b = BatchBuilder::default();
    b.start(BATCH_BODY_MAX);
    for m in messages {
        b.push(m);
    }
    b.finish()
}

fn encode_one(frame: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    encode(frame, &mut out);
    out
}

/// The encoding of all `frames` back to back, and the end offset of each frame.
fn encode_all(frames: &[Frame]) -> (BytesMut, Vec<usize>) {
    let mut out = BytesMut::new();
    let mut ends = Vec::with_capacity(frames.len());
    for f in frames {
        encode(f, &mut out);
        ends.push(out.len());
    }
    (out, ends)
}

fn declared_len(bytes: &[u8]) -> Option<usize> {
    let head: [u8; 4] = bytes.get(..LEN_FIELD)?.try_into().ok()?;
    Some(u32::from_le_bytes(head) as usize)
}

/// Decodes frames off `buf` into `out` until it returns `Ok(None)`, checking that a frame
/// consumes exactly its encoding and `Ok(None)` consumes nothing. Any error fails.
fn drain(dec: &Decoder, buf: &mut BytesMut, out: &mut Vec<Frame>) -> Result<(), TestCaseError> {
    loop {
        let before = buf.len();
        match dec.decode(buf) {
            Ok(Some(frame)) => {
                prop_assert_eq!(before - buf.len(), encode_one(&frame).len());
                out.push(frame);
            }
            Ok(None) => {
                prop_assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
        }
    }
}

/// Feeds `encoded` (the frames, back to back, ending at `ends`) to a decoder in two
/// chunks split at `split` and checks every frame comes out once, in order, and only when
/// complete.
fn feed_in_two_chunks(
    frames: &[Frame],
    encoded: &[u8],
    ends: &[usize],
    split: usize,
) -> Result<(), TestCaseError> {
    let dec = Decoder::new(ROOMY);
    let mut got = Vec::new();

    let mut buf = BytesMut::from(&encoded[..split]);
    drain(&dec, &mut buf, &mut got)?;
    let complete = ends.iter().filter(|&&end| end <= split).count();
    prop_assert_eq!(
        got.len(),
        complete,
        "frames decoded from the first {} bytes",
        split
    );
    prop_assert_eq!(&got[..], &frames[..complete]);
    let consumed = if complete == 0 { 0 } else { ends[complete - 1] };
    // The partial frame at the end of the first chunk is still there, untouched.
    prop_assert_eq!(&buf[..], &encoded[consumed..split]);

    buf.extend_from_slice(&encoded[split..]);
    drain(&dec, &mut buf, &mut got)?;
    prop_assert_eq!(&got[..], frames);
    prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(())
}

/// One decode step on arbitrary bytes with checks of every documented invariant.
/// Returns whether decoding can continue.
fn checked_step(dec: &Decoder, buf: &mut BytesMut) -> Result<bool, TestCaseError> {
    let limit = dec.max_body();
    let snapshot = buf.clone();
    let declared = declared_len(&snapshot);
    let result = dec.decode(buf);
    prop_assert!(
        buf.len() <= snapshot.len(),
        "buffer grew from {} to {}",
        snapshot.len(),
        buf.len()
    );
    let consumed = snapshot.len() - buf.len();
    // Only whole bytes off the front are ever taken.
    prop_assert_eq!(&buf[..], &snapshot[consumed..]);
    match result {
        Ok(Some(frame)) => {
            let declared = declared.ok_or_else(|| TestCaseError::fail("frame without header"))?;
            prop_assert!((1..=limit).contains(&declared), "declared {}", declared);
            prop_assert_eq!(consumed, LEN_FIELD + declared);
            // Decoding is the inverse of a canonical encoding.
            let re = encode_one(&frame);
            prop_assert_eq!(&re[..], &snapshot[..consumed]);
            Ok(true)
        }
        Ok(None) => {
            prop_assert_eq!(consumed, 0, "Ok(None) consumed bytes");
            if let Some(declared) = declared {
                prop_assert!(
                    declared <= limit,
                    "over-limit length {} not refused",
                    declared
                );
                prop_assert!(declared > 0, "zero length not refused");
                prop_assert!(
                    snapshot.len() < LEN_FIELD + declared,
                    "complete frame not decoded"
                );
            }
            Ok(false)
        }
        Err(e) => {
            let declared = declared.ok_or_else(|| TestCaseError::fail("error without header"))?;
            match e {
                DecodeError::TooLong { len, limit: l } => {
                    prop_assert_eq!(len, declared);
                    prop_assert_eq!(l, limit);
                    prop_assert!(declared > limit);
                }
                DecodeError::Empty => prop_assert_eq!(declared, 0),
                DecodeError::UnknownKind(kind) => {
                    prop_assert!(snapshot.len() > LEN_FIELD);
                    prop_assert_eq!(kind, snapshot[LEN_FIELD]);
                    prop_assert!(!KNOWN_KINDS.contains(&kind), "kind {} is known", kind);
                }
                DecodeError::BadLength { kind, len } => {
                    prop_assert!(snapshot.len() > LEN_FIELD);
                    prop_assert_eq!(kind, snapshot[LEN_FIELD]);
                    prop_assert_eq!(len, declared);
                    prop_assert!(KNOWN_KINDS.contains(&kind), "kind {} is unknown", kind);
                }
                DecodeError::BadBatch(_) => {
                    prop_assert_eq!(snapshot[LEN_FIELD], KIND_BATCH);
                    prop_assert_eq!(consumed, LEN_FIELD + declared, "a whole frame is judged");
                }
            }
            Ok(false)
        }
    }
}

/// Decodes `bytes` with a decoder of limit `limit` until it stops, checking each step.
fn decode_until_stuck(limit: usize, bytes: &[u8]) -> Result<(), TestCaseError> {
    let dec = Decoder::new(limit);
    let mut buf = BytesMut::from(bytes);
    // Each frame consumes at least 5 bytes, so this bound is never the reason to stop.
    for _ in 0..=bytes.len() {
        if !checked_step(&dec, &mut buf)? {
            return Ok(());
        }
    }
    Err(TestCaseError::fail("decoder made no progress"))
}

/// A frame header declaring `len` body bytes followed by `kind` and `after_kind` zeros.
fn raw_frame(len: u32, kind: u8, after_kind: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[kind]);
    buf.extend_from_slice(&vec![0u8; after_kind]);
    buf
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn roundtrip_single_frame(frame in arb_frame()) {
        let mut buf = encode_one(&frame);
        let total = buf.len();
        let kind = kind_of(&frame);
        prop_assert_eq!(buf.get(LEN_FIELD).copied(), Some(kind));
        if let Frame::Data { payload, .. } = &frame {
            prop_assert_eq!(total, data_frame_len(payload.len()));
        } else if let Frame::Batch { messages, .. } = &frame {
            let body: usize = messages.clone().map(|m| batched_len(m.len())).sum();
            prop_assert_eq!(total, data_frame_len(body));
        } else {
            let fixed = FIXED_KINDS.iter().find(|(k, _)| *k == kind).map(|(_, size)| *size);
            prop_assert_eq!(Some(total), fixed.map(|size| LEN_FIELD + 1 + size));
        }
        let dec = Decoder::new(ROOMY);
        prop_assert_eq!(dec.bytes_needed(&buf), Some(0));
        let got = dec.decode(&mut buf);
        prop_assert_eq!(got, Ok(Some(frame)));
        prop_assert!(buf.is_empty(), "{} of {} bytes left over", buf.len(), total);
        prop_assert_eq!(dec.decode(&mut buf), Ok(None));
    }

    #[test]
    fn roundtrip_concatenated_frames(frames in vec(arb_frame(), 1..8)) {
        let (mut buf, _) = encode_all(&frames);
        let mut got = Vec::new();
        drain(&Decoder::new(ROOMY), &mut buf, &mut got)?;
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn two_chunks_at_a_random_split(frames in vec(arb_frame(), 1..6), at in any::<Index>()) {
        let (encoded, ends) = encode_all(&frames);
        let split = at.index(encoded.len() + 1);
        feed_in_two_chunks(&frames, &encoded, &ends, split)?;
    }

    #[test]
    fn two_chunks_at_every_split(frames in vec(frame_with_payload(48), 1..5)) {
        let (encoded, ends) = encode_all(&frames);
        for split in 0..=encoded.len() {
            feed_in_two_chunks(&frames, &encoded, &ends, split)?;
        }
    }

    #[test]
    fn data_header_plus_payload_matches_encode(
        channel in channel(),
        payload in vec(any::<u8>(), 0..4096),
    ) {
        let payload = Bytes::from(payload);
        let mut split_form = BytesMut::new();
        encode_data_header(channel, payload.len(), &mut split_form);
        prop_assert_eq!(split_form.len(), DATA_HEADER_LEN);
        split_form.extend_from_slice(&payload);

        let frame = Frame::Data { channel, payload };
        let whole_form = encode_one(&frame);
        prop_assert_eq!(&split_form[..], &whole_form[..]);

        let got = Decoder::new(ROOMY).decode(&mut split_form);
        prop_assert_eq!(got, Ok(Some(frame)));
        prop_assert!(split_form.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048)) {
        decode_until_stuck(SMALL, &bytes)?;
    }

    #[test]
    fn frame_like_bytes_never_panic(bytes in frame_like_bytes()) {
        decode_until_stuck(SMALL, &bytes)?;
    }

    #[test]
    fn length_above_limit_refused_from_length_field_alone(
        limit in 0usize..100_000,
        excess in 1u64..=u64::from(u32::MAX),
        trailing in vec(any::<u8>(), 0..8),
    ) {
        let len = (limit as u64 + excess).min(u64::from(u32::MAX));
        prop_assume!(len > limit as u64);
        let dec = Decoder::new(limit);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(len as u32).to_le_bytes());
        buf.extend_from_slice(&trailing);
        prop_assert_eq!(dec.bytes_needed(&buf), None);
        prop_assert_eq!(
            dec.decode(&mut buf),
            Err(DecodeError::TooLong { len: len as usize, limit })
        );
    }

    #[test]
    fn length_at_limit_waits_for_the_body(limit in 1usize..100_000) {
        let dec = Decoder::new(limit);
        let mut buf = BytesMut::from(&(limit as u32).to_le_bytes()[..]);
        prop_assert_eq!(dec.bytes_needed(&buf), Some(limit));
        prop_assert_eq!(dec.decode(&mut buf), Ok(None));
        prop_assert_eq!(buf.len(), LEN_FIELD);
    }

    #[test]
    fn every_prefix_is_incomplete(frame in arb_frame()) {
        let encoded = encode_one(&frame);
        let dec = Decoder::new(ROOMY);
        for cut in 0..encoded.len() {
            let mut buf = BytesMut::from(&encoded[..cut]);
            let expected_need = (cut >= LEN_FIELD).then(|| encoded.len() - cut);
            prop_assert_eq!(dec.bytes_needed(&buf), expected_need, "prefix of {} bytes", cut);
            prop_assert_eq!(dec.decode(&mut buf), Ok(None), "prefix of {} bytes", cut);
            prop_assert_eq!(&buf[..], &encoded[..cut], "prefix of {} bytes was consumed", cut);
        }
    }

    #[test]
    fn unknown_kind_is_refused(kind in prop_oneof![Just(0u8), 20u8..=255], after in 0usize..64) {
        let mut buf = raw_frame(1 + after as u32, kind, after);
        prop_assert_eq!(Decoder::new(SMALL).decode(&mut buf), Err(DecodeError::UnknownKind(kind)));
    }
}

// ---------------------------------------------------------------------------------------
// Edge cases
// ---------------------------------------------------------------------------------------

#[test]
fn max_length_field_refused_with_four_bytes() {
    let dec = Decoder::new(SMALL);
    let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF][..]);
    assert_eq!(dec.bytes_needed(&buf), None);
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::TooLong {
            len: 0xFFFF_FFFF,
            limit: SMALL
        })
    );
}

#[test]
fn one_past_limit_refused_with_four_bytes() {
    let dec = Decoder::new(SMALL);
    let mut buf = BytesMut::from(&(SMALL as u32 + 1).to_le_bytes()[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::TooLong {
            len: SMALL + 1,
            limit: SMALL
        })
    );
}

#[test]
fn data_frame_exactly_at_limit_is_accepted_and_one_over_refused() {
    let payload = Bytes::from(vec![0xA5u8; 100]);
    let frame = Frame::Data {
        channel: WireChannel(7),
        payload: payload.clone(),
    };
    let encoded = encode_one(&frame);
    let body = encoded.len() - LEN_FIELD;
    assert_eq!(body, 1 + 4 + payload.len());

    let mut buf = encoded.clone();
    assert_eq!(Decoder::new(body).decode(&mut buf), Ok(Some(frame)));
    assert!(buf.is_empty());

    let mut buf = encoded.clone();
    assert_eq!(
        Decoder::new(body - 1).decode(&mut buf),
        Err(DecodeError::TooLong {
            len: body,
            limit: body - 1
        })
    );
}

#[test]
fn zero_length_is_empty() {
    let dec = Decoder::new(SMALL);
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(dec.decode(&mut buf), Err(DecodeError::Empty));
    // Also when more bytes follow the empty frame.
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 9, 1, 2, 3][..]);
    assert_eq!(dec.decode(&mut buf), Err(DecodeError::Empty));
}

#[test]
fn wrong_body_length_for_fixed_kinds_is_bad_length() {
    let dec = Decoder::new(SMALL);
    for (kind, size) in FIXED_KINDS {
        // The right size decodes, so the table above matches the codec.
        let mut buf = raw_frame(1 + size as u32, kind, size);
        assert!(
            matches!(dec.decode(&mut buf), Ok(Some(_))),
            "kind {kind} with {size} bytes after the kind should decode"
        );
        assert!(buf.is_empty());

        for after in (0..=40).filter(|&n| n != size) {
            let declared = 1 + after;
            let mut buf = raw_frame(declared as u32, kind, after);
            assert_eq!(
                dec.decode(&mut buf),
                Err(DecodeError::BadLength {
                    kind,
                    len: declared
                }),
                "kind {kind} with {after} bytes after the kind"
            );
        }
    }
}

#[test]
fn data_without_a_whole_channel_is_bad_length() {
    let dec = Decoder::new(SMALL);
    for after in 0..4 {
        let declared = 1 + after;
        let mut buf = raw_frame(declared as u32, KIND_DATA, after);
        assert_eq!(
            dec.decode(&mut buf),
            Err(DecodeError::BadLength {
                kind: KIND_DATA,
                len: declared
            }),
            "data with {after} bytes after the kind"
        );
    }
    // Exactly a channel and no payload is a valid, empty message.
    let mut buf = raw_frame(5, KIND_DATA, 4);
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Frame::Data {
            channel: WireChannel(0),
            payload: Bytes::new()
        }))
    );
}

#[test]
fn batch_needs_whole_messages_below_the_batching_limit() {
    let dec = Decoder::new(ROOMY);
    let batch = |body: &[u8]| {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(5 + body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&[KIND_BATCH, 7, 0, 0, 0]);
        buf.extend_from_slice(body);
        buf
    };
    assert_eq!(
        dec.decode(&mut batch(&[])),
        Err(DecodeError::BadBatch(BatchError::Empty))
    );
    assert_eq!(
        dec.decode(&mut batch(&[2, 0, b'a'])),
        Err(DecodeError::BadBatch(BatchError::Truncated { len: 2 }))
    );
    assert_eq!(
        dec.decode(&mut batch(&[0, 0, 9])),
        Err(DecodeError::BadBatch(BatchError::Truncated { len: 1 }))
    );
    let too_large = (BATCH_MESSAGE_BELOW as u16).to_le_bytes();
    assert!(matches!(
        dec.decode(&mut batch(&too_large)),
        Err(DecodeError::BadBatch(BatchError::TooLarge { .. }))
    ));
    assert_eq!(
        dec.decode(&mut raw_frame(4, KIND_BATCH, 3)),
        Err(DecodeError::BadLength {
            kind: KIND_BATCH,
            len: 4
        })
    );
    let Ok(Some(Frame::Batch { channel, messages })) = dec.decode(&mut batch(&[1, 0, b'x', 0, 0]))
    else {
        panic!("a valid batch of two messages was refused");
    };
    assert_eq!(channel, WireChannel(7));
    let got: Vec<Bytes> = messages.collect();
    assert_eq!(got, vec![Bytes::from_static(b"x"), Bytes::new()]);
}

#[test]
fn unknown_kind_with_kind_byte_only() {
    let dec = Decoder::new(SMALL);
    for kind in [0u8, 20, 200, 255] {
        let mut buf = raw_frame(1, kind, 0);
        assert_eq!(dec.decode(&mut buf), Err(DecodeError::UnknownKind(kind)));
    }
}

#[test]
fn large_payloads_round_trip_around_copy_threshold() {
    let dec = Decoder::new(1 << 20);
    for len in [
        COPY_OUT_BELOW - 1,
        COPY_OUT_BELOW,
        COPY_OUT_BELOW + 1,
        4 * COPY_OUT_BELOW,
    ] {
        let payload = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let data = Frame::Data {
            channel: WireChannel(len as u32),
            payload,
        };
        let ping = Frame::Ping { nonce: len as u64 };
        let (mut buf, _) = encode_all(&[data.clone(), ping.clone()]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Some(data)),
            "payload of {len} bytes"
        );
        // The payload slice must not have taken the next frame with it.
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Some(ping)),
            "after payload of {len} bytes"
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn unknown_codes_round_trip_and_known_numbers_map_to_named_codes() {
    let dec = Decoder::new(SMALL);
    for code in [
        GoAwayCode::Unknown(0),
        GoAwayCode::Unknown(14),
        GoAwayCode::Unknown(u16::MAX),
    ] {
        let frame = Frame::GoAway { code };
        let mut buf = encode_one(&frame);
        assert_eq!(dec.decode(&mut buf), Ok(Some(frame)));
    }
    // A named code's number sent as Unknown comes back as the named code.
    let mut buf = encode_one(&Frame::GoAway {
        code: GoAwayCode::Unknown(7),
    });
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Frame::GoAway {
            code: GoAwayCode::Shutdown
        }))
    );
    let mut buf = encode_one(&Frame::GoAway {
        code: GoAwayCode::Unknown(8),
    });
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Frame::GoAway {
            code: GoAwayCode::SessionMismatch
        }))
    );
    let mut buf = encode_one(&Frame::Cancel {
        channel: WireChannel(3),
        code: CancelCode::Unknown(3),
    });
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Frame::Cancel {
            channel: WireChannel(3),
            code: CancelCode::ConsumerNeverAppeared
        }))
    );
    let mut buf = encode_one(&Frame::Cancel {
        channel: WireChannel(3),
        code: CancelCode::Unknown(2),
    });
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Frame::Cancel {
            channel: WireChannel(3),
            code: CancelCode::UnknownConsumer
        }))
    );
}
