//! One channel's Arrow IPC stream, encoded into plexus messages.
//!
//! Invariants: the first message starts with the schema; every message holds whole IPC
//! messages (continuation marker, length, flatbuffer, body) and is at most `max_message`
//! bytes; a dictionary batch always goes before the first record batch that uses it, and
//! is never dropped once the tracker counts it as sent (only an oversized record batch is
//! re-encoded, in halves, and halves of a batch share its dictionaries); the rows of a
//! batch leave in order, whatever the splits.

use std::collections::VecDeque;

use arrow_array::RecordBatch;
use arrow_ipc::writer::{
    write_message, DictionaryTracker, EncodedData, IpcDataGenerator, IpcWriteContext,
    IpcWriteOptions,
};
use arrow_schema::SchemaRef;
use bytes::Bytes;

use crate::Error;

/// Encodes the batches of one channel; see the module docs.
pub struct ChannelEncoder {
    schema: SchemaRef,
    max_message: usize,
    generator: IpcDataGenerator,
    tracker: DictionaryTracker,
    options: IpcWriteOptions,
    context: IpcWriteContext,
    schema_sent: bool,
}

impl ChannelEncoder {
    /// An encoder of batches of `schema` into messages of at most `max_message` bytes.
    pub fn new(schema: SchemaRef, max_message: usize) -> ChannelEncoder {
        ChannelEncoder {
            schema,
            max_message,
            generator: IpcDataGenerator::default(),
            tracker: DictionaryTracker::new(false),
            options: IpcWriteOptions::default(),
            context: IpcWriteContext::default(),
            schema_sent: false,
        }
    }

    /// The channel's schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The messages that carry `batch` (after the schema, the first time), in order.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<Bytes>, Error> {
        if batch.schema_ref().fields() != self.schema.fields() {
            return Err(Error::SchemaMismatch {
                expected: self.schema.to_string(),
                got: batch.schema().to_string(),
            });
        }
        let mut packer = Packer::new(self.max_message);
        if !self.schema_sent {
            let schema = self.generator.schema_to_bytes_with_dictionary_tracker(
                &self.schema,
                &mut self.tracker,
                &self.options,
            );
            packer.add(self.frame(schema)?, "the schema")?;
            self.schema_sent = true;
        }
        let mut pending: VecDeque<RecordBatch> = first_split(batch, self.max_message).into();
        while let Some(part) = pending.pop_front() {
            let (dictionaries, encoded) = self.generator.encode(
                &part,
                &mut self.tracker,
                &self.options,
                &mut self.context,
            )?;
            for dictionary in dictionaries {
                packer.add(self.frame(dictionary)?, "a dictionary")?;
            }
            let framed = self.frame(encoded)?;
            if framed.len() <= self.max_message {
                packer.add(framed, "a batch")?;
            } else if part.num_rows() > 1 {
                let half = part.num_rows() / 2;
                pending.push_front(part.slice(half, part.num_rows() - half));
                pending.push_front(part.slice(0, half));
            } else {
                return Err(Error::TooLarge {
                    what: "one row",
                    len: framed.len(),
                    max: self.max_message,
                });
            }
        }
        Ok(packer.finish())
    }

    /// The end of the channel's stream (the IPC end-of-stream marker), if anything was
    /// sent on it. It also lets the decoder complete a last message whose body is empty
    /// (a batch without rows): its push decoder finishes such a message only when more
    /// bytes follow.
    pub fn finish(&self) -> Option<Bytes> {
        if !self.schema_sent {
            return None;
        }
        // The continuation marker, then a message length of zero.
        Some(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]))
    }

    /// `encoded` as the bytes of one IPC stream message.
    fn frame(&self, encoded: EncodedData) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(encoded.ipc_message.len() + encoded.arrow_data.len() + 16);
        write_message(&mut out, encoded, &self.options)?;
        Ok(out)
    }
}

/// `batch` in slices whose in-memory size is about a quarter of `max_message` each (a
/// guess that saves re-encoding; the encoder still halves any slice that does not fit).
fn first_split(batch: &RecordBatch, max_message: usize) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    let bytes = batch.get_array_memory_size().max(1);
    let target = (max_message / 4).max(1);
    if rows <= 1 || bytes <= target {
        return vec![batch.clone()];
    }
    let per_part = (rows * target / bytes).clamp(1, rows);
    (0..rows)
        .step_by(per_part)
        .map(|start| batch.slice(start, per_part.min(rows - start)))
        .collect()
}

/// Gathers framed IPC messages into plexus messages of at most `max` bytes.
struct Packer {
    max: usize,
    current: Vec<u8>,
    done: Vec<Bytes>,
}

impl Packer {
    fn new(max: usize) -> Packer {
        Packer {
            max,
            current: Vec::new(),
            done: Vec::new(),
        }
    }

    fn add(&mut self, framed: Vec<u8>, what: &'static str) -> Result<(), Error> {
        if framed.len() > self.max {
            return Err(Error::TooLarge {
                what,
                len: framed.len(),
                max: self.max,
            });
        }
        if self.current.len() + framed.len() > self.max {
            self.done
                .push(Bytes::from(std::mem::take(&mut self.current)));
        }
        if self.current.is_empty() {
            self.current = framed;
        } else {
            self.current.extend_from_slice(&framed);
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.done.push(Bytes::from(self.current));
        }
        self.done
    }
}
