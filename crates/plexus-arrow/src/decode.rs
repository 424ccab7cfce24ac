//! One channel's Arrow IPC stream, decoded from plexus messages as they arrive.
//!
//! Invariants: batches come out in the order they were encoded (a batch whose message has
//! an empty body, one without rows, comes out when the next bytes of the stream arrive:
//! the next message, or the stream's end marker); bytes that do not make a valid IPC
//! stream are an error, never a panic; a stream that ends inside an IPC message is
//! reported by [`ChannelDecoder::finish`].

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use bytes::Bytes;

use crate::Error;

/// Decodes the messages of one channel; see the module docs.
#[derive(Debug, Default)]
pub struct ChannelDecoder {
    decoder: StreamDecoder,
}

impl ChannelDecoder {
    /// A decoder waiting for the channel's schema.
    pub fn new() -> ChannelDecoder {
        ChannelDecoder::default()
    }

    /// The batches `message` completes, in order.
    pub fn decode(&mut self, message: Bytes) -> Result<Vec<RecordBatch>, Error> {
        let mut buffer = Buffer::from(message);
        let mut batches = Vec::new();
        while !buffer.is_empty() {
            match self.decoder.decode(&mut buffer)? {
                Some(batch) => batches.push(batch),
                None => break,
            }
        }
        Ok(batches)
    }

    /// Checks that the stream did not end inside an IPC message.
    pub fn finish(&mut self) -> Result<(), Error> {
        Ok(self.decoder.finish()?)
    }
}
