//! Jobs and their endpoints, as applications use them: [`Producer`] sends to consumers
//! under per-channel credit, [`Consumer`] reads messages from every producer of its job,
//! or from the producers it chooses. The same types serve a node embedded in the process
//! ([`crate::Node`]) and a process attached to its machine's agent
//! ([`crate::Node::attach`]); each wraps a backend (see `port`).
//!
//! Invariants: `Producer::send` waits only for the credit of the consumer it sends to;
//! `try_send` never waits; a consumer's stream ends only after every producer of the job
//! closed its channel and every message was read, and reports any failure before that.
//! Dropping a producer without `close` aborts its channels; dropping a consumer cancels them.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use plexus_proto::{Endpoint, JobId};

use crate::error::Error;
use crate::port::{ConsumerPort, JobPort, ProducerPort};
use crate::topology::Topology;

/// One job as seen from one node. While a handle (or an endpoint) of the job is open, the
/// node keeps the job's record; once all are gone, the job is over there and its id
/// cannot be used again on that node.
#[derive(Debug)]
pub struct Job {
    port: Box<dyn JobPort>,
    id: JobId,
    topology: Topology,
}

impl Job {
    pub(crate) fn new(port: Box<dyn JobPort>, id: JobId, topology: Topology) -> Self {
        Self { port, id, topology }
    }

    /// Its backend.
    pub(crate) fn into_port(self) -> Box<dyn JobPort> {
        self.port
    }

    /// The job id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Waits until the job is admitted on this node: with a memory budget, until the
    /// credit pools of all its consumers here fit, its turn in the cluster-wide order
    /// having come (see the core's `admission` module: jobs reach the nodes in any order
    /// without deadlock). Ends with the job's failure if it fails anywhere meanwhile (an
    /// admission timeout or a refusal on any of its nodes, a cancel, a dead peer). Every
    /// task waiting for the same job gets the outcome. Opening an endpoint does this first.
    pub async fn admit(&self) -> Result<(), Error> {
        poll_fn(|cx| self.port.poll_admit(cx)).await
    }

    /// Asks for admission without waiting: `true` if the job is admitted here; `false` if
    /// it waits (for its turn or for room), and [`Job::admit`] waits for the outcome.
    pub fn try_admit(&self) -> Result<bool, Error> {
        self.port.try_admit()
    }

    /// Opens producer `slot` of this node (once the job is admitted here).
    pub async fn producer(&self, slot: u32) -> Result<Producer, Error> {
        Ok(Producer {
            port: self.port.open_producer(slot).await?,
        })
    }

    /// Opens consumer `slot` of this node (once the job is admitted here).
    pub async fn consumer(&self, slot: u32) -> Result<Consumer, Error> {
        Ok(Consumer {
            port: self.port.open_consumer(slot).await?,
        })
    }

    /// Cancels the job: its endpoints on every node it spans fail with
    /// [`crate::ExchangeError::JobCancelled`], and their buffers are released.
    pub fn cancel(&self) {
        self.port.cancel();
    }
}

impl Clone for Job {
    fn clone(&self) -> Self {
        Self {
            port: self.port.reopen(),
            id: self.id,
            topology: self.topology.clone(),
        }
    }
}

/// Why [`Producer::try_send`] did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum TrySend {
    /// The consumer has no room for it now; the message is handed back.
    #[error("no credit from the consumer yet")]
    NoCredit(Bytes),
    /// The channel cannot take messages any more; the message is handed back.
    #[error("{0}")]
    Failed(Error, Bytes),
}

/// A producer endpoint.
#[derive(Debug)]
pub struct Producer {
    port: Box<dyn ProducerPort>,
}

impl Producer {
    /// This producer's endpoint.
    pub fn endpoint(&self) -> Endpoint {
        self.port.endpoint()
    }

    /// Queues `message` for `consumer` if that consumer's channel has credit for it.
    pub fn try_send(&mut self, consumer: Endpoint, message: Bytes) -> Result<(), TrySend> {
        self.port.try_send(consumer, message)
    }

    /// Queues messages from the front of `messages` for `consumer` while its channel has
    /// credit for them, all under one lock; returns how many it took (removed from
    /// `messages`). With some left, [`Producer::ready`] later returns `consumer`. A failure
    /// of the channel is returned when it took nothing; otherwise by the next call.
    /// Messages not taken stay in `messages`.
    pub fn try_send_many(
        &mut self,
        consumer: Endpoint,
        messages: &mut VecDeque<Bytes>,
    ) -> Result<usize, Error> {
        self.port.try_send_many(consumer, messages)
    }

    /// Whether a message of `len` bytes to `consumer` would be taken now. If not, credit
    /// is asked for and [`Producer::ready`] later returns `consumer`. Lets a producer
    /// build (or fetch) a message only once it can go.
    pub fn has_credit(&mut self, consumer: Endpoint, len: usize) -> Result<bool, Error> {
        self.port.has_credit(consumer, len)
    }

    /// Sends `message` to `consumer`, waiting while that consumer has no credit for it.
    /// Readiness of other consumers is left for [`Producer::ready`].
    pub async fn send(&mut self, consumer: Endpoint, message: Bytes) -> Result<(), Error> {
        let mut message = message;
        loop {
            match self.port.try_send(consumer, message) {
                Ok(()) => return Ok(()),
                Err(TrySend::Failed(e, _)) => return Err(e),
                Err(TrySend::NoCredit(m)) => {
                    message = m;
                    poll_fn(|cx| self.port.poll_ready(cx, Some(consumer))).await;
                }
            }
        }
    }

    /// Waits until at least one consumer refused by `try_send` can make progress (credit
    /// arrived, or its channel failed, which the next `try_send` reports), and returns
    /// those consumers. Lets one producer serve whichever consumers can take data.
    pub async fn ready(&mut self) -> Vec<Endpoint> {
        poll_fn(|cx| self.port.poll_ready(cx, None)).await
    }

    /// Closes every channel of the producer after the data already queued. Returns once
    /// the ends are queued; [`Producer::finish`] also waits for their delivery.
    pub async fn close(mut self) -> Result<(), Error> {
        self.port.close(false).await
    }

    /// Closes every channel of the producer, then waits until every consumer's node has
    /// acknowledged everything sent to it (its data and the end of the stream: it sits
    /// in that consumer's queue, and no link failure can lose it any more). Fails with the
    /// error of any channel that failed or was cancelled, or of the job. Bounded: a
    /// consumer's node that stops answering is declared dead within the grace period,
    /// which fails the job.
    pub async fn finish(mut self) -> Result<(), Error> {
        self.port.close(true).await
    }
}

/// A consumer endpoint: a stream of `(producer, message)`.
#[derive(Debug)]
pub struct Consumer {
    port: Box<dyn ConsumerPort>,
}

impl Consumer {
    /// This consumer's endpoint.
    pub fn endpoint(&self) -> Endpoint {
        self.port.endpoint()
    }

    /// The next message, an error, or `None` once every producer has closed.
    ///
    /// An error concerns some of the job's producers only (a channel aborted or refused,
    /// a link to their node failed) or the whole job (cancelled, refused, a node gone):
    /// one producer's error does not end the stream of the others — keep calling `recv`
    /// to read what they still send, until `None`. After a job-wide error, `None` follows.
    pub async fn recv(&mut self) -> Option<Result<(Endpoint, Bytes), Error>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message; see [`Consumer::recv`].
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<(Endpoint, Bytes), Error>>> {
        self.port.poll_recv(cx, None)
    }

    /// This consumer's credit figures on its node: its pool, the credit granted and not
    /// back (what its channels hold anywhere, messages taken and not yet read included),
    /// and the most that ever was. Through an agent, what the agent and this process hold
    /// together.
    pub async fn credit(&self) -> Result<crate::ConsumerCredit, Error> {
        self.port.credit().await
    }

    /// The next message of `producer`, an error that concerns it (its channel aborted,
    /// its node failed, the job failed), or `None` once it has ended and every message
    /// of it was read. See [`Consumer::recv_from_any`].
    pub async fn recv_from(&mut self, producer: Endpoint) -> Option<Result<Bytes, Error>> {
        self.recv_from_any(&[producer])
            .await
            .map(|item| item.map(|(_, message)| message))
    }

    /// The next message of any of `producers` (the oldest of theirs first), an error that
    /// concerns one of them, or `None` once all of them have ended and every message of
    /// theirs was read. Lets an application read producers in the order it needs: a merge
    /// of sorted streams takes the next message of the producer with the smallest key; a
    /// hash join reads its build side's producers to their end before its probe side.
    ///
    /// Why it cannot deadlock, whatever the credit pool (as long as it holds one message):
    /// while the consumer reads only some producers, its other channels may be granted
    /// credit only from the room of its pool above one message, so they never hold more
    /// than that between them, unread; and the room of the last message is granted only
    /// to a channel this call waits for. The wait here depends on that channel's producer
    /// alone, never on the consumer reading another channel. Messages of producers not
    /// read wait in their channel's credit window (sender queue, wire, or this node), not
    /// in unbounded memory.
    ///
    /// Mixing with [`Consumer::recv`] is defined: messages `recv` took into this handle
    /// and did not return go back to the node first (in order), and `recv` afterwards
    /// reads every producer again, oldest first.
    pub async fn recv_from_any(
        &mut self,
        producers: &[Endpoint],
    ) -> Option<Result<(Endpoint, Bytes), Error>> {
        poll_fn(|cx| self.poll_recv_from_any(cx, producers)).await
    }

    /// Polls for the next message of any of `producers`; see [`Consumer::recv_from_any`].
    pub fn poll_recv_from_any(
        &mut self,
        cx: &mut Context<'_>,
        producers: &[Endpoint],
    ) -> Poll<Option<Result<(Endpoint, Bytes), Error>>> {
        self.port.poll_recv(cx, Some(producers))
    }
}

impl futures_core::Stream for Consumer {
    type Item = Result<(Endpoint, Bytes), Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}
