//! What a job handle and its endpoints run on: the node embedded in this process
//! (`embedded`), or the machine's agent this process is attached to (`local::client`).
//! The public [`crate::Job`], [`crate::Producer`] and [`crate::Consumer`] are the same
//! whichever it is; each wraps one of these ports.
//!
//! Contracts every implementation keeps (the public types document them to users):
//! `try_send` never waits, and a refused message is handed back; `poll_ready` returns
//! consumers whose channel can make progress, each once per change; `poll_recv` returns
//! each producer's messages once, in order, and ends only after every producer read from
//! ended; every wait ends with the outcome (a message, an error, the end), never by
//! hanging on another channel.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use plexus_proto::node::ConsumerCredit;
use plexus_proto::Endpoint;

use crate::error::Error;
use crate::job::TrySend;

/// A boxed future, for the ports' occasional waits (admission, opening, closing).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A job handle's backend.
pub(crate) trait JobPort: Send + Sync + Debug {
    /// Polls the job's admission on that node.
    fn poll_admit(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>>;
    /// Asks for admission without waiting.
    fn try_admit(&self) -> Result<bool, Error>;
    /// Opens a producer of the job (once admitted).
    fn open_producer(&self, slot: u32) -> BoxFuture<'_, Result<Box<dyn ProducerPort>, Error>>;
    /// Opens a consumer of the job (once admitted).
    fn open_consumer(&self, slot: u32) -> BoxFuture<'_, Result<Box<dyn ConsumerPort>, Error>>;
    /// Cancels the job everywhere.
    fn cancel(&self);
    /// Another handle on the same job.
    fn reopen(&self) -> Box<dyn JobPort>;
}

/// A producer's backend.
pub(crate) trait ProducerPort: Send + Debug {
    fn endpoint(&self) -> Endpoint;
    fn try_send(&mut self, consumer: Endpoint, message: Bytes) -> Result<(), TrySend>;
    fn try_send_many(
        &mut self,
        consumer: Endpoint,
        messages: &mut VecDeque<Bytes>,
    ) -> Result<usize, Error>;
    fn has_credit(&mut self, consumer: Endpoint, len: usize) -> Result<bool, Error>;
    /// Consumers that can make progress (`only`: that one, if it can); pending if none.
    fn poll_ready(&mut self, cx: &mut Context<'_>, only: Option<Endpoint>) -> Poll<Vec<Endpoint>>;
    /// Closes every channel after its data; with `finish`, resolves once every
    /// consumer's node acknowledged it all.
    fn close(&mut self, finish: bool) -> BoxFuture<'_, Result<(), Error>>;
}

/// A consumer's backend.
pub(crate) trait ConsumerPort: Send + Debug {
    fn endpoint(&self) -> Endpoint;
    /// The next message of every producer (`among`: of those only), an error, or the end.
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        among: Option<&[Endpoint]>,
    ) -> Poll<Option<Result<(Endpoint, Bytes), Error>>>;
    /// The consumer's credit figures on its node.
    fn credit(&self) -> BoxFuture<'_, Result<ConsumerCredit, Error>>;
}
