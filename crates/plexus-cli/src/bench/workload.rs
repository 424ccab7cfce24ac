//! The bench's message format, traffic plan and end-to-end verification,
//! independent of any transport.
//!
//! # What is sent
//!
//! Every ordered pair (producer `p`, consumer `c`) is one *channel*. Over a
//! channel the producer sends `plan.messages()` messages with sequence
//! numbers `0, 1, …, messages - 1`, in that order. Message `seq` is
//!
//! ```text
//! offset  size  field
//!      0     4  producer global id, u32 little-endian
//!      4     4  consumer global id, u32 little-endian
//!      8     4  seq, u32 little-endian
//!     12     4  body_len, u32 little-endian (= plan.body_len(seq))
//!     16     4  CRC-32 (IEEE, as computed by crc32fast) of the body, LE
//!     20     4  reserved, always zero
//!     24     …  body_len bytes of body
//! ```
//!
//! so its total length is `HEADER_LEN + body_len` = [`Plan::message_len`].
//! Every message but the last is exactly `message_size` bytes; the last one
//! carries the remainder of `per_channel_bytes`, but never less than the
//! 24-byte header (see [`Plan`]).
//!
//! The body is deterministic: a [`MessageFactory`] pre-generates one 64 KiB
//! pseudo-random block from its seed, and the body of `(p, c, seq)` is the
//! bytes of that block starting at an offset derived from `(seed, p, c,
//! seq)`, wrapping around to the block's start as often as needed.
//!
//! # Verification
//!
//! A [`ChannelVerifier`] belongs to one consumer and checks every message it
//! receives (addressing, per-channel order, lengths, CRC) and, at the end,
//! that every expected producer delivered its whole channel. The verifier
//! trusts the CRC for body integrity; it does not regenerate bodies, so it
//! needs no seed.
//!
//! Invariants: `message_size >= HEADER_LEN`; a channel has between 1 and
//! `u32::MAX` messages; a rejected message never changes a verifier's state.

use std::collections::HashMap;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Length of the message header in bytes.
pub const HEADER_LEN: usize = 24;

/// [`HEADER_LEN`] as a `u32`, for arithmetic on message sizes.
const HEADER_LEN_U32: u32 = HEADER_LEN as u32;

/// Length of a [`MessageFactory`]'s pseudo-random block in bytes.
pub const BLOCK_LEN: usize = 64 * 1024;

/// Byte offset of the CRC field inside the header.
const CRC_OFFSET: usize = 16;

/// A decoded message header (see the module docs for the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Global id of the node that produced the message.
    pub producer: u32,
    /// Global id of the node the message is addressed to.
    pub consumer: u32,
    /// Position of the message in its channel, starting at 0.
    pub seq: u32,
    /// Number of body bytes following the header.
    pub body_len: u32,
    /// CRC-32 of the body.
    pub crc: u32,
    /// Reserved word; zero in every well-formed message.
    pub reserved: u32,
}

impl Header {
    /// Decodes the first [`HEADER_LEN`] bytes of `msg`, or returns `None` if
    /// `msg` is shorter than that. No field is validated.
    pub fn parse(msg: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = msg.get(..HEADER_LEN)?.try_into().ok()?;
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        Some(Header {
            producer: word(0),
            consumer: word(4),
            seq: word(8),
            body_len: word(12),
            crc: word(16),
            reserved: word(20),
        })
    }

    /// Encodes the header into its 24-byte wire form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let words = [
            self.producer,
            self.consumer,
            self.seq,
            self.body_len,
            self.crc,
            self.reserved,
        ];
        for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }
}

/// Why a [`Plan`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    /// `message_size` cannot even hold the header.
    #[error("message size {0} bytes is smaller than the {HEADER_LEN}-byte message header")]
    MessageSizeTooSmall(u32),
    /// The channel would need more messages than 32-bit sequence numbers allow.
    #[error("{per_channel_bytes} bytes per channel in messages of {message_size} bytes needs {messages} messages, more than the {max} that 32-bit sequence numbers allow", max = u32::MAX)]
    TooManyMessages {
        /// Requested bytes per channel.
        per_channel_bytes: u64,
        /// Requested message size.
        message_size: u32,
        /// Messages that would be needed.
        messages: u64,
    },
}

/// How much each channel carries and in which message sizes.
///
/// A channel carries `messages()` messages: `ceil(per_channel_bytes /
/// message_size)`, but at least one. All messages except the last are
/// exactly `message_size` bytes (header included). The last one is the
/// remainder `per_channel_bytes - (messages - 1) * message_size`, raised to
/// [`HEADER_LEN`] if smaller (then it has an empty body). So the bytes
/// actually sent per channel, [`Plan::channel_bytes`], equal
/// `per_channel_bytes` unless the remainder is between 1 and 23 bytes or
/// `per_channel_bytes < HEADER_LEN`, in which case they are rounded up to
/// the next whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    per_channel_bytes: u64,
    message_size: u32,
}

impl Plan {
    /// Builds a plan sending `per_channel_bytes` per channel in messages of
    /// at most `message_size` bytes (header included).
    ///
    /// Fails if `message_size < HEADER_LEN` or the channel would need more
    /// than `u32::MAX` messages.
    pub fn new(per_channel_bytes: u64, message_size: u32) -> Result<Plan, PlanError> {
        if message_size < HEADER_LEN_U32 {
            return Err(PlanError::MessageSizeTooSmall(message_size));
        }
        let messages = per_channel_bytes.div_ceil(u64::from(message_size)).max(1);
        if messages > u64::from(u32::MAX) {
            return Err(PlanError::TooManyMessages {
                per_channel_bytes,
                message_size,
                messages,
            });
        }
        Ok(Plan {
            per_channel_bytes,
            message_size,
        })
    }

    /// The size of every message but the last, header included.
    pub fn message_size(&self) -> u32 {
        self.message_size
    }

    /// Number of messages per channel; at least 1.
    pub fn messages(&self) -> u32 {
        let messages = self
            .per_channel_bytes
            .div_ceil(u64::from(self.message_size))
            .max(1);
        // `new` guarantees the count fits.
        u32::try_from(messages).unwrap_or(u32::MAX)
    }

    /// Total length (header + body) of message `seq`, or 0 if `seq` is not
    /// below [`Plan::messages`].
    pub fn message_len(&self, seq: u32) -> u32 {
        let messages = self.messages();
        if seq >= messages {
            return 0;
        }
        if seq + 1 < messages {
            return self.message_size;
        }
        let before = u64::from(messages - 1) * u64::from(self.message_size);
        // The remainder is at most `message_size`, so it fits in a u32.
        let last = u32::try_from(self.per_channel_bytes - before).unwrap_or(self.message_size);
        last.max(HEADER_LEN_U32)
    }

    /// Body length of message `seq`, or 0 if `seq` is not below
    /// [`Plan::messages`].
    pub fn body_len(&self, seq: u32) -> u32 {
        self.message_len(seq).saturating_sub(HEADER_LEN_U32)
    }

    /// Bytes actually sent per channel, headers included: the sum of
    /// [`Plan::message_len`] over all messages.
    pub fn channel_bytes(&self) -> u64 {
        let messages = self.messages();
        u64::from(messages - 1) * u64::from(self.message_size)
            + u64::from(self.message_len(messages - 1))
    }
}

/// SplitMix64 step: a tiny, good-quality 64-bit mixer (and pseudo-random generator:
/// each call advances `state` and returns the next number).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Builds bench messages with deterministic pseudo-random bodies.
///
/// Holds one 64 KiB block generated from the seed; each body is a
/// (wrapping) slice of it, so building a message costs one allocation, one
/// copy of the body and one CRC pass.
#[derive(Clone)]
pub struct MessageFactory {
    seed: u64,
    block: Box<[u8]>,
}

impl fmt::Debug for MessageFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageFactory")
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl MessageFactory {
    /// Creates a factory whose bodies are derived from `seed`.
    pub fn new(seed: u64) -> MessageFactory {
        let mut state = seed;
        let mut block = Vec::with_capacity(BLOCK_LEN);
        while block.len() < BLOCK_LEN {
            block.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        MessageFactory {
            seed,
            block: block.into_boxed_slice(),
        }
    }

    /// Offset into the block where the body of `(producer, consumer, seq)`
    /// starts.
    fn body_offset(&self, producer: u32, consumer: u32, seq: u32) -> usize {
        let mut state = self.seed ^ (u64::from(producer) << 32 | u64::from(consumer));
        let channel = splitmix64(&mut state);
        let mut state = channel ^ u64::from(seq);
        // BLOCK_LEN is a power of two, so masking is a uniform modulo.
        (splitmix64(&mut state) as usize) & (BLOCK_LEN - 1)
    }

    /// Builds the message `seq` of channel `producer -> consumer` with a
    /// body of `body_len` bytes, in one allocation of exactly
    /// `HEADER_LEN + body_len` bytes.
    ///
    /// To follow a [`Plan`], pass `plan.body_len(seq)` or use
    /// [`MessageFactory::message`].
    pub fn build(&self, producer: u32, consumer: u32, seq: u32, body_len: u32) -> Bytes {
        let body_len_usize = body_len as usize;
        let mut buf = BytesMut::with_capacity(HEADER_LEN.saturating_add(body_len_usize));
        buf.put_slice(
            &Header {
                producer,
                consumer,
                seq,
                body_len,
                crc: 0, // patched below once the body is in place
                reserved: 0,
            }
            .encode(),
        );
        let mut offset = self.body_offset(producer, consumer, seq);
        let mut remaining = body_len_usize;
        while remaining > 0 {
            let n = remaining.min(BLOCK_LEN - offset);
            buf.put_slice(&self.block[offset..offset + n]);
            remaining -= n;
            offset = 0;
        }
        let crc = crc32fast::hash(&buf[HEADER_LEN..]);
        buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        buf.freeze()
    }

    /// Builds message `seq` of channel `producer -> consumer` as `plan`
    /// prescribes (body length `plan.body_len(seq)`).
    pub fn message(&self, plan: &Plan, producer: u32, consumer: u32, seq: u32) -> Bytes {
        self.build(producer, consumer, seq, plan.body_len(seq))
    }
}

/// Why a [`ChannelVerifier`] rejected a message or an incomplete run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The message is shorter than the header.
    #[error("consumer {consumer}: message from producer {producer} is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    Truncated {
        /// The verifying consumer.
        consumer: u32,
        /// The sender claimed by the transport.
        producer: u32,
        /// Length of the received message.
        len: usize,
    },
    /// The header names another consumer.
    #[error("consumer {consumer}: message from producer {producer} (seq {seq}) is addressed to consumer {got}")]
    WrongConsumer {
        /// The verifying consumer (the expected addressee).
        consumer: u32,
        /// The sender claimed by the transport.
        producer: u32,
        /// Sequence number in the header.
        seq: u32,
        /// Consumer id found in the header.
        got: u32,
    },
    /// The header's producer differs from the sender the transport reported.
    #[error("consumer {consumer}: transport says the message came from producer {transport}, but its header says producer {header}")]
    ProducerMismatch {
        /// The verifying consumer.
        consumer: u32,
        /// The sender claimed by the transport.
        transport: u32,
        /// The producer id found in the header.
        header: u32,
    },
    /// The producer is not one this consumer expects messages from.
    #[error("consumer {consumer}: message from unexpected producer {producer}")]
    UnexpectedProducer {
        /// The verifying consumer.
        consumer: u32,
        /// The unexpected producer.
        producer: u32,
    },
    /// The sequence number is past the end of the channel.
    #[error("consumer {consumer}: producer {producer} sent seq {seq}, but the channel has only {messages} messages (0..{messages})")]
    BeyondPlan {
        /// The verifying consumer.
        consumer: u32,
        /// The producer.
        producer: u32,
        /// The received sequence number.
        seq: u32,
        /// Messages per channel in the plan.
        messages: u32,
    },
    /// A sequence number already accepted was received again.
    #[error("consumer {consumer}: duplicate message from producer {producer}: got seq {got} again, expected seq {expected}")]
    Duplicate {
        /// The verifying consumer.
        consumer: u32,
        /// The producer.
        producer: u32,
        /// The next sequence number expected.
        expected: u32,
        /// The (already seen) sequence number received.
        got: u32,
    },
    /// A sequence number arrived before its predecessors (gap or reorder).
    #[error("consumer {consumer}: out-of-order message from producer {producer}: expected seq {expected}, got seq {got}")]
    OutOfOrder {
        /// The verifying consumer.
        consumer: u32,
        /// The producer.
        producer: u32,
        /// The next sequence number expected.
        expected: u32,
        /// The (later) sequence number received.
        got: u32,
    },
    /// The header's body length differs from the plan's.
    #[error("consumer {consumer}: producer {producer} seq {seq}: header says body_len {got}, the plan says {expected}")]
    BodyLenMismatch {
        /// The verifying consumer.
        consumer: u32,
        /// The producer.
        producer: u32,
        /// The sequence number.
        seq: u32,
        /// Body length the plan prescribes.
        expected: u32,
        /// Body length in the header.
        got: u32,
    },
    /// The received body is not as long as the header says.
    #[error("consumer {consumer}: producer {producer} seq {seq}: header says body_len {expected}, but {got} body bytes arrived")]
    LengthMismatch {
        /// The verifying consumer.
        consumer: u32,
        /// The producer.
        producer: u32,
        /// The sequence number.
        seq: u32,
        /// Body length in the header.
        expected: u32,
        /// Body bytes actually received.
        got: usize,
    },
    /// The body's CRC differs from the header's.
    #[error("consumer {consumer}: producer {producer} seq {seq}: body CRC is {got:#010x}, header says {expected:#010x}")]
    CrcMismatch {
        /// The verifying consumer.
        consumer: u32,
        /// The producer.
        producer: u32,
        /// The sequence number.
        seq: u32,
        /// CRC in the header.
        expected: u32,
        /// CRC computed over the received body.
        got: u32,
    },
    /// The reserved header word is not zero.
    #[error("consumer {consumer}: producer {producer} seq {seq}: reserved header word is {got:#010x}, expected 0")]
    ReservedNotZero {
        /// The verifying consumer.
        consumer: u32,
        /// The producer.
        producer: u32,
        /// The sequence number.
        seq: u32,
        /// The reserved word received.
        got: u32,
    },
    /// At the end of the run a producer had not delivered its whole channel.
    #[error("consumer {consumer}: producer {producer} delivered {got} of {expected} messages ({incomplete} producer(s) incomplete in total)")]
    Incomplete {
        /// The verifying consumer.
        consumer: u32,
        /// The lowest-numbered incomplete producer.
        producer: u32,
        /// Messages per channel in the plan.
        expected: u32,
        /// Messages that producer delivered.
        got: u32,
        /// How many producers are incomplete.
        incomplete: usize,
    },
}

/// What a consumer received, once verified complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Messages accepted, over all producers.
    pub messages: u64,
    /// Bytes accepted, headers included.
    pub bytes: u64,
    /// Body bytes accepted (headers excluded).
    pub body_bytes: u64,
}

/// Verifies everything one consumer receives, across all its producers.
///
/// Per producer it tracks the next expected sequence number, so messages of
/// one channel must arrive exactly in order, without duplicates or gaps;
/// messages of different channels may interleave freely.
#[derive(Debug, Clone)]
pub struct ChannelVerifier {
    consumer: u32,
    plan: Plan,
    /// Next expected seq per expected producer.
    next_seq: HashMap<u32, u32>,
    /// Producers whose channel is complete.
    complete: usize,
    summary: Summary,
}

impl ChannelVerifier {
    /// Creates the verifier of `consumer_id`, expecting one channel of
    /// `plan` from each of `producers` (duplicates are ignored).
    pub fn new(consumer_id: u32, producers: impl IntoIterator<Item = u32>, plan: Plan) -> Self {
        ChannelVerifier {
            consumer: consumer_id,
            plan,
            next_seq: producers.into_iter().map(|p| (p, 0)).collect(),
            complete: 0,
            summary: Summary::default(),
        }
    }

    /// Whether every expected producer has delivered its whole channel.
    pub fn is_complete(&self) -> bool {
        self.complete == self.next_seq.len()
    }

    /// Whether `producer` is expected and has delivered its whole channel.
    pub fn is_channel_complete(&self, producer: u32) -> bool {
        self.next_seq.get(&producer) == Some(&self.plan.messages())
    }

    /// Messages accepted so far from `producer` (0 if it is not expected).
    pub fn received_from(&self, producer: u32) -> u32 {
        self.next_seq.get(&producer).copied().unwrap_or(0)
    }

    /// Checks one message that the transport says came from
    /// `from_producer`, and records it if valid.
    ///
    /// Checks, in order: length covers the header; the header's consumer is
    /// ours; the header's producer equals `from_producer` and is expected;
    /// seq is within the plan and exactly the next one for that producer;
    /// the header's body_len matches the plan and the bytes received; the
    /// CRC matches; the reserved word is zero. On error nothing is recorded.
    pub fn accept(&mut self, from_producer: u32, msg: &[u8]) -> Result<(), VerifyError> {
        let consumer = self.consumer;
        let header = Header::parse(msg).ok_or(VerifyError::Truncated {
            consumer,
            producer: from_producer,
            len: msg.len(),
        })?;
        let seq = header.seq;
        if header.consumer != consumer {
            return Err(VerifyError::WrongConsumer {
                consumer,
                producer: from_producer,
                seq,
                got: header.consumer,
            });
        }
        if header.producer != from_producer {
            return Err(VerifyError::ProducerMismatch {
                consumer,
                transport: from_producer,
                header: header.producer,
            });
        }
        let producer = from_producer;
        let messages = self.plan.messages();
        let expected = *self
            .next_seq
            .get(&producer)
            .ok_or(VerifyError::UnexpectedProducer { consumer, producer })?;
        if seq >= messages {
            return Err(VerifyError::BeyondPlan {
                consumer,
                producer,
                seq,
                messages,
            });
        }
        if seq < expected {
            return Err(VerifyError::Duplicate {
                consumer,
                producer,
                expected,
                got: seq,
            });
        }
        if seq > expected {
            return Err(VerifyError::OutOfOrder {
                consumer,
                producer,
                expected,
                got: seq,
            });
        }
        let planned = self.plan.body_len(seq);
        if header.body_len != planned {
            return Err(VerifyError::BodyLenMismatch {
                consumer,
                producer,
                seq,
                expected: planned,
                got: header.body_len,
            });
        }
        let body = &msg[HEADER_LEN..];
        if body.len() != header.body_len as usize {
            return Err(VerifyError::LengthMismatch {
                consumer,
                producer,
                seq,
                expected: header.body_len,
                got: body.len(),
            });
        }
        let crc = crc32fast::hash(body);
        if crc != header.crc {
            return Err(VerifyError::CrcMismatch {
                consumer,
                producer,
                seq,
                expected: header.crc,
                got: crc,
            });
        }
        if header.reserved != 0 {
            return Err(VerifyError::ReservedNotZero {
                consumer,
                producer,
                seq,
                got: header.reserved,
            });
        }

        self.next_seq.insert(producer, seq + 1);
        if seq + 1 == messages {
            self.complete += 1;
        }
        self.summary.messages += 1;
        self.summary.bytes += msg.len() as u64;
        self.summary.body_bytes += body.len() as u64;
        Ok(())
    }

    /// Checks that every expected producer delivered exactly
    /// `plan.messages()` messages and returns the totals.
    ///
    /// If some did not, reports the lowest-numbered incomplete producer and
    /// how many are incomplete.
    pub fn finish(&self) -> Result<Summary, VerifyError> {
        let expected = self.plan.messages();
        let mut incomplete = self
            .next_seq
            .iter()
            .filter(|&(_, &next)| next != expected)
            .map(|(&producer, &got)| (producer, got))
            .collect::<Vec<_>>();
        incomplete.sort_unstable();
        match incomplete.first() {
            None => Ok(self.summary),
            Some(&(producer, got)) => Err(VerifyError::Incomplete {
                consumer: self.consumer,
                producer,
                expected,
                got,
                incomplete: incomplete.len(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All messages of channel `producer -> consumer` under `plan`, in order.
    fn channel(
        f: &MessageFactory,
        plan: Plan,
        producer: u32,
        consumer: u32,
    ) -> impl Iterator<Item = Bytes> + '_ {
        (0..plan.messages()).map(move |seq| f.message(&plan, producer, consumer, seq))
    }

    const CONSUMER: u32 = 7;
    const PRODUCERS: [u32; 3] = [1, 2, 3];

    fn plan(per_channel_bytes: u64, message_size: u32) -> Plan {
        Plan::new(per_channel_bytes, message_size).expect("valid plan")
    }

    /// 10 full messages of 100 bytes and a header-only 11th (remainder 10).
    fn test_plan() -> Plan {
        plan(1010, 100)
    }

    fn verifier(plan: Plan) -> ChannelVerifier {
        ChannelVerifier::new(CONSUMER, PRODUCERS, plan)
    }

    /// Flips one bit at `at` in a copy of `msg`.
    fn flipped(msg: &[u8], at: usize) -> Vec<u8> {
        let mut out = msg.to_vec();
        out[at] ^= 0x01;
        out
    }

    #[test]
    fn plan_rounding() {
        // Exact multiple.
        let p = plan(1000, 100);
        assert_eq!(p.messages(), 10);
        assert_eq!(p.body_len(9), 76);
        assert_eq!(p.channel_bytes(), 1000);
        // Remainder >= header: last message is the remainder.
        let p = plan(1050, 100);
        assert_eq!(p.messages(), 11);
        assert_eq!(p.message_len(10), 50);
        assert_eq!(p.body_len(10), 26);
        assert_eq!(p.channel_bytes(), 1050);
        // Remainder < header: last message is header-only, total rounds up.
        let p = test_plan();
        assert_eq!(p.messages(), 11);
        assert_eq!(p.message_len(10), 24);
        assert_eq!(p.body_len(10), 0);
        assert_eq!(p.channel_bytes(), 1024);
        // Less than a header (including zero): one empty message.
        for bytes in [0, 1, 23, 24] {
            let p = plan(bytes, 100);
            assert_eq!(p.messages(), 1, "{bytes}");
            assert_eq!(p.body_len(0), 0, "{bytes}");
            assert_eq!(p.channel_bytes(), 24, "{bytes}");
        }
        // One message smaller than message_size.
        let p = plan(60, 100);
        assert_eq!((p.messages(), p.body_len(0)), (1, 36));
        // Header-only messages.
        let p = plan(100, 24);
        assert_eq!(p.messages(), 5);
        assert!((0..5).all(|s| p.body_len(s) == 0));
        // Out-of-range seq.
        assert_eq!(p.message_len(5), 0);
        assert_eq!(p.body_len(u32::MAX), 0);
    }

    #[test]
    fn plan_sum_matches_channel_bytes() {
        for (bytes, size) in [(0, 24), (1, 24), (999, 24), (12345, 100), (1 << 20, 4096)] {
            let p = plan(bytes, size);
            let sum: u64 = (0..p.messages()).map(|s| u64::from(p.message_len(s))).sum();
            assert_eq!(sum, p.channel_bytes(), "{bytes}/{size}");
            assert!(
                sum >= bytes && sum < bytes.max(1) + 24,
                "{bytes}/{size}: {sum}"
            );
            assert!((0..p.messages()).all(|s| p.message_len(s) >= 24 && p.message_len(s) <= size));
        }
    }

    #[test]
    fn plan_rejects_bad_parameters() {
        assert_eq!(Plan::new(100, 23), Err(PlanError::MessageSizeTooSmall(23)));
        assert!(matches!(
            Plan::new(u64::MAX, 24),
            Err(PlanError::TooManyMessages { .. })
        ));
        let max = u64::from(u32::MAX) * 24;
        assert_eq!(plan(max, 24).messages(), u32::MAX);
        assert!(Plan::new(max + 1, 24).is_err());
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            producer: 1,
            consumer: 2,
            seq: 3,
            body_len: 4,
            crc: 0xDEAD_BEEF,
            reserved: 0,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..4], &[1, 0, 0, 0]);
        assert_eq!(&bytes[16..20], &[0xEF, 0xBE, 0xAD, 0xDE]);
        assert_eq!(Header::parse(&bytes), Some(h));
        assert_eq!(Header::parse(&bytes[..23]), None);
    }

    #[test]
    fn messages_are_well_formed_and_deterministic() {
        let f = MessageFactory::new(42);
        // Longer than the block, so the body wraps around at least twice.
        let len = 3 * BLOCK_LEN as u32 + 17;
        let m = f.build(5, 6, 7, len);
        assert_eq!(m.len(), HEADER_LEN + len as usize);
        let h = Header::parse(&m).expect("header");
        assert_eq!(
            (h.producer, h.consumer, h.seq, h.body_len, h.reserved),
            (5, 6, 7, len, 0)
        );
        assert_eq!(h.crc, crc32fast::hash(&m[HEADER_LEN..]));
        // Same inputs, same bytes; same seed, same bytes.
        assert_eq!(m, f.build(5, 6, 7, len));
        assert_eq!(m, MessageFactory::new(42).build(5, 6, 7, len));
        // Different channel, seq or seed: different body.
        let body = |m: &Bytes| m[HEADER_LEN..HEADER_LEN + 64].to_vec();
        assert_ne!(body(&m), body(&f.build(5, 6, 8, len)));
        assert_ne!(body(&m), body(&f.build(6, 5, 7, len)));
        assert_ne!(body(&m), body(&MessageFactory::new(43).build(5, 6, 7, len)));
        // Empty body.
        let e = f.build(1, 2, 3, 0);
        assert_eq!(e.len(), HEADER_LEN);
        assert_eq!(Header::parse(&e).map(|h| h.crc), Some(crc32fast::hash(&[])));
    }

    #[test]
    fn full_channels_verify() {
        let p = test_plan();
        let f = MessageFactory::new(1);
        let mut v = verifier(p);
        // Interleave the producers' channels; each stays in order.
        let mut channels: Vec<_> = PRODUCERS
            .iter()
            .map(|&prod| (prod, channel(&f, p, prod, CONSUMER)))
            .collect();
        for _ in 0..p.messages() {
            assert!(!v.is_complete());
            for (prod, msgs) in channels.iter_mut().rev() {
                let msg = msgs.next().expect("message");
                v.accept(*prod, &msg).expect("valid message");
            }
        }
        assert!(channels.iter_mut().all(|(_, msgs)| msgs.next().is_none()));
        assert!(v.is_complete());
        assert!(PRODUCERS.iter().all(|&prod| v.is_channel_complete(prod)));
        assert!(!v.is_channel_complete(CONSUMER));
        let s = v.finish().expect("complete");
        let n = PRODUCERS.len() as u64;
        assert_eq!(s.messages, n * u64::from(p.messages()));
        assert_eq!(s.bytes, n * p.channel_bytes());
        assert_eq!(s.body_bytes, s.bytes - s.messages * HEADER_LEN as u64);
    }

    #[test]
    fn rejects_duplicate() {
        let p = test_plan();
        let f = MessageFactory::new(1);
        let mut v = verifier(p);
        v.accept(2, &f.message(&p, 2, CONSUMER, 0)).expect("seq 0");
        v.accept(2, &f.message(&p, 2, CONSUMER, 1)).expect("seq 1");
        let err = v.accept(2, &f.message(&p, 2, CONSUMER, 1));
        assert_eq!(
            err,
            Err(VerifyError::Duplicate {
                consumer: CONSUMER,
                producer: 2,
                expected: 2,
                got: 1
            })
        );
        // The rejection changed nothing: seq 2 is still next.
        v.accept(2, &f.message(&p, 2, CONSUMER, 2)).expect("seq 2");
    }

    #[test]
    fn rejects_reordered_pair() {
        let p = test_plan();
        let f = MessageFactory::new(1);
        let mut v = verifier(p);
        v.accept(1, &f.message(&p, 1, CONSUMER, 0)).expect("seq 0");
        let err = v.accept(1, &f.message(&p, 1, CONSUMER, 2));
        assert_eq!(
            err,
            Err(VerifyError::OutOfOrder {
                consumer: CONSUMER,
                producer: 1,
                expected: 1,
                got: 2
            })
        );
    }

    #[test]
    fn rejects_flipped_body_byte() {
        let p = test_plan();
        let f = MessageFactory::new(1);
        let mut v = verifier(p);
        let msg = f.message(&p, 3, CONSUMER, 0);
        let bad = flipped(&msg, HEADER_LEN + 10);
        assert!(matches!(
            v.accept(3, &bad),
            Err(VerifyError::CrcMismatch { producer: 3, seq: 0, expected, got, .. })
                if expected == crc32fast::hash(&msg[HEADER_LEN..]) && got != expected
        ));
        v.accept(3, &msg).expect("intact copy still accepted");
    }

    #[test]
    fn rejects_missing_last_message() {
        let p = test_plan();
        let f = MessageFactory::new(1);
        let mut v = verifier(p);
        for prod in PRODUCERS {
            let mut msgs: Vec<Bytes> = channel(&f, p, prod, CONSUMER).collect();
            if prod == 2 {
                msgs.pop();
            }
            for m in msgs {
                v.accept(prod, &m).expect("valid message");
            }
        }
        assert!(!v.is_complete());
        assert!(v.is_channel_complete(1) && !v.is_channel_complete(2));
        assert_eq!(
            v.finish(),
            Err(VerifyError::Incomplete {
                consumer: CONSUMER,
                producer: 2,
                expected: 11,
                got: 10,
                incomplete: 1
            })
        );
    }

    #[test]
    fn rejects_message_for_another_consumer() {
        let p = test_plan();
        let mut v = verifier(p);
        let msg = MessageFactory::new(1).message(&p, 1, CONSUMER + 1, 0);
        assert_eq!(
            v.accept(1, &msg),
            Err(VerifyError::WrongConsumer {
                consumer: CONSUMER,
                producer: 1,
                seq: 0,
                got: CONSUMER + 1
            })
        );
    }

    #[test]
    fn rejects_unexpected_producer() {
        let p = test_plan();
        let mut v = verifier(p);
        let msg = MessageFactory::new(1).message(&p, 9, CONSUMER, 0);
        assert_eq!(
            v.accept(9, &msg),
            Err(VerifyError::UnexpectedProducer {
                consumer: CONSUMER,
                producer: 9
            })
        );
    }

    #[test]
    fn rejects_producer_mismatch() {
        let p = test_plan();
        let mut v = verifier(p);
        let msg = MessageFactory::new(1).message(&p, 1, CONSUMER, 0);
        assert_eq!(
            v.accept(2, &msg),
            Err(VerifyError::ProducerMismatch {
                consumer: CONSUMER,
                transport: 2,
                header: 1
            })
        );
    }

    #[test]
    fn rejects_bad_lengths_and_fields() {
        let p = test_plan();
        let f = MessageFactory::new(1);
        let mut v = verifier(p);
        let msg = f.message(&p, 1, CONSUMER, 0);
        // Truncated header.
        assert!(matches!(
            v.accept(1, &msg[..HEADER_LEN - 1]),
            Err(VerifyError::Truncated { len: 23, .. })
        ));
        // Body shorter than the header says.
        assert!(matches!(
            v.accept(1, &msg[..msg.len() - 1]),
            Err(VerifyError::LengthMismatch {
                expected: 76,
                got: 75,
                ..
            })
        ));
        // Header body_len disagrees with the plan.
        let mut h = Header::parse(&msg).expect("header");
        h.body_len += 1;
        let mut longer = h.encode().to_vec();
        longer.extend_from_slice(&msg[HEADER_LEN..]);
        longer.push(0);
        assert!(matches!(
            v.accept(1, &longer),
            Err(VerifyError::BodyLenMismatch {
                expected: 76,
                got: 77,
                ..
            })
        ));
        // Reserved word set.
        assert!(matches!(
            v.accept(1, &flipped(&msg, 20)),
            Err(VerifyError::ReservedNotZero { got: 1, .. })
        ));
        // Past the end of the channel.
        let beyond = f.build(1, CONSUMER, p.messages(), 0);
        assert!(matches!(
            v.accept(1, &beyond),
            Err(VerifyError::BeyondPlan {
                seq: 11,
                messages: 11,
                ..
            })
        ));
        // None of that was recorded.
        v.accept(1, &msg).expect("seq 0 still next");
    }

    #[test]
    fn extra_message_after_complete_channel_is_rejected() {
        let p = plan(100, 100);
        let f = MessageFactory::new(1);
        let mut v = ChannelVerifier::new(CONSUMER, [1], p);
        let msg = f.message(&p, 1, CONSUMER, 0);
        v.accept(1, &msg).expect("only message");
        assert!(v.is_complete());
        assert!(matches!(
            v.accept(1, &msg),
            Err(VerifyError::Duplicate { .. })
        ));
        assert!(matches!(
            v.accept(1, &f.build(1, CONSUMER, 1, 0)),
            Err(VerifyError::BeyondPlan { .. })
        ));
        assert_eq!(
            v.finish(),
            Ok(Summary {
                messages: 1,
                bytes: 100,
                body_bytes: 76
            })
        );
    }

    #[test]
    fn error_messages_name_producer_and_values() {
        let e = VerifyError::OutOfOrder {
            consumer: 7,
            producer: 3,
            expected: 4,
            got: 6,
        };
        assert_eq!(
            e.to_string(),
            "consumer 7: out-of-order message from producer 3: expected seq 4, got seq 6"
        );
    }
}
