//! Batches of small messages: several messages of one channel carried by one `Batch` frame,
//! so that small messages cost one frame header, one sequence number and one receive-side
//! allocation per batch instead of per message.
//!
//! Layout of a batch body: one or more messages, each `len: u16 LE` then `len` bytes.
//!
//! Invariants: a [`MessageBatch`] always holds at least one message (until popped empty),
//! and its body is exactly a sequence of whole messages, each shorter than
//! [`BATCH_MESSAGE_BELOW`]: [`MessageBatch::parse`] checks this once, so walking a batch
//! never fails and never reads past it. Messages come out in the order they were put in,
//! as slices of the body (no copy).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::credit::message_cost;

/// Messages shorter than this are batched.
pub const BATCH_MESSAGE_BELOW: usize = 1024;

/// Most bytes a sender puts in one batch body: below [`crate::codec::COPY_OUT_BELOW`], so
/// a receiver copies a batch out of its read buffer whole, in one allocation.
pub const BATCH_BODY_MAX: usize = 15 * 1024;

/// Bytes in front of each message in a batch body.
pub const MESSAGE_PREFIX: usize = 2;

/// Why bytes are not a valid batch body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A batch with no message.
    #[error("empty batch")]
    Empty,
    /// A message's length runs past the end of the body.
    #[error("batch message of {len} bytes runs past the end of the batch")]
    Truncated {
        /// The declared length.
        len: usize,
    },
    /// A message too large to be batched.
    #[error("batch message of {len} bytes is not below the batching limit of {limit}")]
    TooLarge {
        /// The declared length.
        len: usize,
        /// [`BATCH_MESSAGE_BELOW`].
        limit: usize,
    },
}

/// A validated batch: the encoded body, how many messages are left in it and their credit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageBatch {
    body: Bytes,
    count: u32,
    payload: u64,
}

impl MessageBatch {
    /// Checks that `body` is a sequence of whole messages, each below the batching limit.
    pub fn parse(body: Bytes) -> Result<Self, BatchError> {
        let mut rest: &[u8] = &body;
        let mut count = 0u32;
        let mut payload = 0u64;
        while !rest.is_empty() {
            if rest.len() < MESSAGE_PREFIX {
                return Err(BatchError::Truncated { len: rest.len() });
            }
            let len = rest.get_u16_le() as usize;
            if len >= BATCH_MESSAGE_BELOW {
                return Err(BatchError::TooLarge {
                    len,
                    limit: BATCH_MESSAGE_BELOW,
                });
            }
            if rest.len() < len {
                return Err(BatchError::Truncated { len });
            }
            rest.advance(len);
            count += 1;
            payload += len as u64;
        }
        if count == 0 {
            return Err(BatchError::Empty);
        }
        Ok(Self {
            body,
            count,
            payload,
        })
    }

    /// Messages left.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether every message was taken.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Payload bytes of the messages left.
    pub fn payload_bytes(&self) -> u64 {
        self.payload
    }

    /// The credit the messages left cost, as many `Data` frames would.
    pub fn cost(&self) -> u64 {
        self.payload + message_cost(0) * u64::from(self.count)
    }

    /// The encoded body of the messages left.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Takes the next message, a slice of the body.
    pub fn pop_front(&mut self) -> Option<Bytes> {
        if self.count == 0 {
            return None;
        }
        // `parse` checked that the body is whole messages.
        let len = u16::from_le_bytes([self.body[0], self.body[1]]) as usize;
        self.body.advance(MESSAGE_PREFIX);
        let message = self.body.split_to(len);
        self.count -= 1;
        self.payload -= len as u64;
        Some(message)
    }
}

impl Iterator for MessageBatch {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        self.pop_front()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len(), Some(self.len()))
    }
}

/// Bytes of each buffer batch bodies are carved from: one allocation serves many batches.
pub const BATCH_ARENA: usize = 64 * 1024;

/// Builds batch bodies from messages, carving them one after another out of a shared
/// buffer of [`BATCH_ARENA`] bytes, so that packing small messages costs an allocation
/// per buffer, not per batch. A buffer is freed once every batch cut from it is dropped.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    body: BytesMut,
    count: u32,
    payload: u64,
}

impl BatchBuilder {
    /// Starts a batch that will hold at most `max_body` bytes.
    pub fn start(&mut self, max_body: usize) {
        debug_assert!(self.body.is_empty(), "the previous batch was finished");
        if self.body.capacity() < max_body {
            self.body = BytesMut::with_capacity(BATCH_ARENA.max(max_body));
        }
        self.count = 0;
        self.payload = 0;
    }

    /// Appends `message` to the batch being built.
    ///
    /// # Panics
    /// If `message` is not shorter than [`BATCH_MESSAGE_BELOW`]: callers check with
    /// [`is_batchable`] first.
    pub fn push(&mut self, message: &[u8]) {
        assert!(is_batchable(message.len()), "message too large to batch");
        self.body.put_u16_le(message.len() as u16);
        self.body.put_slice(message);
        self.count += 1;
        self.payload += message.len() as u64;
    }

    /// Body bytes of the batch being built.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// The batch built; the builder is ready for the next one.
    pub fn finish(&mut self) -> MessageBatch {
        MessageBatch {
            body: self.body.split().freeze(),
            count: std::mem::take(&mut self.count),
            payload: std::mem::take(&mut self.payload),
        }
    }
}

/// Whether a message of `len` bytes goes into batches.
pub const fn is_batchable(len: usize) -> bool {
    len < BATCH_MESSAGE_BELOW
}

/// Body bytes a message of `len` bytes takes in a batch.
pub const fn batched_len(len: usize) -> usize {
    MESSAGE_PREFIX + len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(messages: &[&[u8]]) -> MessageBatch {
        let mut b = BatchBuilder::default();
        b.start(BATCH_BODY_MAX);
        for m in messages {
            b.push(m);
        }
        b.finish()
    }

    #[test]
    fn messages_come_out_in_order_and_whole() {
        let mut batch = batch_of(&[b"one", b"", b"three"]);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.payload_bytes(), 8);
        assert_eq!(batch.cost(), 8 + 3 * message_cost(0));
        let reparsed = MessageBatch::parse(batch.body().clone()).unwrap();
        assert_eq!(reparsed, batch);
        assert_eq!(batch.pop_front().as_deref(), Some(&b"one"[..]));
        assert_eq!(batch.cost(), 5 + 2 * message_cost(0));
        let rest: Vec<Bytes> = batch.collect();
        assert_eq!(rest, vec![Bytes::new(), Bytes::from_static(b"three")]);
    }

    #[test]
    fn batches_are_carved_from_one_buffer() {
        let mut b = BatchBuilder::default();
        let mut batches = Vec::new();
        for i in 0..4u8 {
            b.start(BATCH_BODY_MAX);
            b.push(&[i; 10]);
            b.push(&[i; 3]);
            batches.push(b.finish());
        }
        let first = batches[0].body().as_ptr() as usize;
        for (i, batch) in batches.iter().enumerate() {
            assert_eq!(batch.body().as_ptr() as usize, first + i * 17, "batch {i}");
            let messages: Vec<Bytes> = batch.clone().collect();
            assert_eq!(
                messages,
                vec![
                    Bytes::from(vec![i as u8; 10]),
                    Bytes::from(vec![i as u8; 3])
                ]
            );
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert_eq!(MessageBatch::parse(Bytes::new()), Err(BatchError::Empty));
        assert_eq!(
            MessageBatch::parse(Bytes::from_static(&[1])),
            Err(BatchError::Truncated { len: 1 })
        );
        assert_eq!(
            MessageBatch::parse(Bytes::from_static(&[3, 0, b'a', b'b'])),
            Err(BatchError::Truncated { len: 3 })
        );
        let big = (BATCH_MESSAGE_BELOW as u16).to_le_bytes();
        assert!(matches!(
            MessageBatch::parse(Bytes::copy_from_slice(&big)),
            Err(BatchError::TooLarge { .. })
        ));
    }
}
