//! Apache Arrow record batches over plexus channels.
//!
//! Every channel (one producer to one consumer) carries one Arrow IPC stream: the schema
//! once, then dictionary batches as they change, then record batches, each plexus message
//! holding whole IPC messages so that a consumer decodes every message as it arrives.
//! A batch whose encoding would exceed the node's largest message is split by rows.
//!
//! The encoding and decoding are pure state machines, [`ChannelEncoder`] and
//! [`ChannelDecoder`], driven by batches and bytes (no sockets, no runtime); [`BatchSender`]
//! and [`BatchReceiver`] move their messages through a [`plexus::Producer`] and a
//! [`plexus::Consumer`].
//!
//! ```no_run
//! # async fn example(producer: plexus::Producer, consumer: plexus::Consumer,
//! #     batch: arrow_array::RecordBatch, to: plexus::Endpoint) -> Result<(), plexus_arrow::Error> {
//! let mut tx = plexus_arrow::BatchSender::new(producer, batch.schema(), 1 << 20);
//! tx.send(to, &batch).await?;          // schema first, then the batch (split by rows if large)
//! tx.finish().await?;
//! let mut rx = plexus_arrow::BatchReceiver::new(consumer);
//! while let Some(item) = rx.recv().await {
//!     let (from, batch) = item?;       // the batches of every producer, each in its order
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod decode;
mod encode;
mod exchange;

pub use decode::ChannelDecoder;
pub use encode::ChannelEncoder;
pub use exchange::{BatchReceiver, BatchSender};

/// Why batches could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The channel failed (see plexus's error for its scope).
    #[error(transparent)]
    Plexus(#[from] plexus::Error),
    /// Arrow could not encode or decode.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A batch's schema is not the channel's.
    #[error("a batch's schema is not the channel's: expected {expected}, got {got}")]
    SchemaMismatch {
        /// The channel's schema.
        expected: String,
        /// The batch's.
        got: String,
    },
    /// One row, or one dictionary, encodes to more than the largest message.
    #[error("{what} encodes to {len} bytes, more than the largest message ({max})")]
    TooLarge {
        /// What did not fit.
        what: &'static str,
        /// Its encoded length.
        len: usize,
        /// The largest message.
        max: usize,
    },
    /// A producer's stream ended inside an IPC message, or before its schema.
    #[error("the stream of producer {0} ended inside an Arrow IPC message")]
    Truncated(plexus::Endpoint),
}
