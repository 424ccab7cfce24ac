//! Jobs and their endpoints: [`Producer`] sends to consumers under per-channel credit,
//! [`Consumer`] is a stream of messages from every producer of its job.
//!
//! Invariants: `Producer::send` waits only for the credit of the consumer it sends to;
//! `try_send` never waits; a consumer's stream ends only after every producer of the job
//! closed its channel and every message was read, and reports any failure before that.
//! Dropping a producer without `close` aborts its channels; dropping a consumer cancels them.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use plexus_proto::node::{Admission, Arrival, ExchangeError, Recv, TrySendError};
use plexus_proto::{Endpoint, JobId};

use crate::error::Error;
use crate::shared::{ProducerWake, Shared};
use crate::topology::Topology;

/// One job as seen from one node. While a handle (or an endpoint) of the job is open, the
/// node keeps the job's record; once all are gone, the job is over here and its id cannot
/// be used again on this node.
#[derive(Debug)]
pub struct Job {
    shared: Arc<Shared>,
    id: JobId,
    topology: Topology,
    /// Whether the node took the handle: refused when the job finished here already or
    /// is live with another topology (then every call returns that error).
    opened: Result<(), ExchangeError>,
}

impl Job {
    pub(crate) fn new(shared: Arc<Shared>, id: JobId, topology: Topology) -> Self {
        let fingerprint = topology.fingerprint();
        let nodes = topology.nodes();
        let opened = shared.op(|st| st.core.open_job(id, fingerprint, nodes));
        Self {
            shared,
            id,
            topology,
            opened,
        }
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
        let job = self.id;
        let plan = self.topology.consumers_per_node();
        poll_fn(|cx| {
            if let Err(e) = &self.opened {
                return Poll::Ready(Err(e.clone().into()));
            }
            self.shared.op(|st| match st.core.admit_job(job, &plan) {
                Ok(Admission::Admitted) => Poll::Ready(Ok(())),
                Err(e) => Poll::Ready(Err(e.into())),
                Ok(Admission::Queued) => {
                    // Asking again is harmless: the core keeps the job's place.
                    let waiting = st.admissions.entry(job).or_default();
                    if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                        waiting.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// Asks for admission without waiting: `true` if the job is admitted here; `false` if
    /// it waits (for its turn or for room), and [`Job::admit`] waits for the outcome.
    pub fn try_admit(&self) -> Result<bool, Error> {
        self.opened.clone()?;
        let plan = self.topology.consumers_per_node();
        let admission = self.shared.op(|st| st.core.admit_job(self.id, &plan))?;
        Ok(admission == Admission::Admitted)
    }

    /// Opens producer `slot` of this node (once the job is admitted here).
    pub async fn producer(&self, slot: u32) -> Result<Producer, Error> {
        self.admit().await?;
        let me = Endpoint::new(self.shared.node, slot);
        if !self.topology.producers().contains(&me) {
            return Err(self.not_in_topology(slot, "producer"));
        }
        let consumers = self.topology.consumers().iter().copied();
        self.shared.op(|st| {
            st.core.open_producer(self.id, slot, consumers)?;
            st.producers
                .insert((self.id, slot), ProducerWake::default());
            Ok::<_, ExchangeError>(())
        })?;
        Ok(Producer {
            shared: self.shared.clone(),
            job: self.id,
            slot,
        })
    }

    /// Opens consumer `slot` of this node (once the job is admitted here).
    pub async fn consumer(&self, slot: u32) -> Result<Consumer, Error> {
        self.admit().await?;
        let me = Endpoint::new(self.shared.node, slot);
        if !self.topology.consumers().contains(&me) {
            return Err(self.not_in_topology(slot, "consumer"));
        }
        let producers = self.topology.producers().iter().copied();
        self.shared
            .op(|st| st.core.open_consumer(self.id, slot, producers))?;
        Ok(Consumer {
            shared: self.shared.clone(),
            job: self.id,
            slot,
            arrivals: VecDeque::new(),
            error: None,
            finished: false,
        })
    }

    /// Cancels the job: its endpoints on every node it spans fail with
    /// [`crate::ExchangeError::JobCancelled`], and their buffers are released.
    pub fn cancel(&self) {
        if self.opened.is_ok() {
            self.shared.op(|st| st.core.cancel_job(self.id));
        }
    }

    fn not_in_topology(&self, slot: u32, role: &'static str) -> Error {
        Error::NotInTopology {
            job: self.id.0,
            node: self.shared.node.0,
            slot,
            role,
        }
    }
}

impl Clone for Job {
    fn clone(&self) -> Self {
        Self::new(self.shared.clone(), self.id, self.topology.clone())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.opened.is_ok() {
            let job = self.id;
            self.shared.op(|st| st.core.close_job(job));
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
    shared: Arc<Shared>,
    job: JobId,
    slot: u32,
}

impl Producer {
    /// This producer's endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.shared.node, self.slot)
    }

    /// Queues `message` for `consumer` if that consumer's channel has credit for it.
    pub fn try_send(&mut self, consumer: Endpoint, message: Bytes) -> Result<(), TrySend> {
        let (job, slot) = (self.job, self.slot);
        self.shared
            .op(|st| st.core.try_send(job, slot, consumer, message))
            .map_err(|e| match e {
                TrySendError::NoCredit(m) => TrySend::NoCredit(m),
                TrySendError::Failed(e, m) => TrySend::Failed(e.into(), m),
            })
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
        let (job, slot) = (self.job, self.slot);
        Ok(self
            .shared
            .op(|st| st.core.try_send_many(job, slot, consumer, messages))?)
    }

    /// Whether a message of `len` bytes to `consumer` would be taken now. If not, credit
    /// is asked for and [`Producer::ready`] later returns `consumer`. Lets a producer
    /// build (or fetch) a message only once it can go.
    pub fn has_credit(&mut self, consumer: Endpoint, len: usize) -> Result<bool, Error> {
        let (job, slot) = (self.job, self.slot);
        Ok(self
            .shared
            .op(|st| st.core.has_credit(job, slot, consumer, len))?)
    }

    /// Sends `message` to `consumer`, waiting while that consumer has no credit for it.
    /// Readiness of other consumers is left for [`Producer::ready`].
    pub async fn send(&mut self, consumer: Endpoint, message: Bytes) -> Result<(), Error> {
        let mut message = message;
        loop {
            match self.try_send(consumer, message) {
                Ok(()) => return Ok(()),
                Err(TrySend::Failed(e, _)) => return Err(e),
                Err(TrySend::NoCredit(m)) => {
                    message = m;
                    self.wait_ready(Some(consumer)).await;
                }
            }
        }
    }

    /// Waits until at least one consumer refused by `try_send` can make progress (credit
    /// arrived, or its channel failed, which the next `try_send` reports), and returns
    /// those consumers. Lets one producer serve whichever consumers can take data.
    pub async fn ready(&mut self) -> Vec<Endpoint> {
        self.wait_ready(None).await
    }

    /// Waits for `only` (or, with `None`, for anyone) to be ready; takes what it waited for.
    async fn wait_ready(&mut self, only: Option<Endpoint>) -> Vec<Endpoint> {
        let key = (self.job, self.slot);
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            let wake = st.producers.entry(key).or_default();
            let taken: Vec<Endpoint> = match only {
                None => std::mem::take(&mut wake.ready),
                Some(c) => match wake.ready.iter().position(|e| *e == c) {
                    Some(i) => vec![wake.ready.swap_remove(i)],
                    None => Vec::new(),
                },
            };
            if taken.is_empty() {
                wake.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(taken)
            }
        })
        .await
    }

    /// Closes every channel of the producer after the data already queued. Returns once
    /// the ends are queued; [`Producer::finish`] also waits for their delivery.
    pub async fn close(self) -> Result<(), Error> {
        let (job, slot) = (self.job, self.slot);
        self.shared.op(|st| st.core.close_producer(job, slot))?;
        Ok(())
    }

    /// Closes every channel of the producer, then waits until every consumer's node has
    /// acknowledged everything sent to it (its data and the end of the stream: it sits
    /// in that consumer's queue, and no link failure can lose it any more). Fails with the
    /// error of any channel that failed or was cancelled, or of the job. Bounded: a
    /// consumer's node that stops answering is declared dead within the grace period,
    /// which fails the job.
    pub async fn finish(self) -> Result<(), Error> {
        let key = (self.job, self.slot);
        self.shared.op(|st| st.core.close_producer(key.0, key.1))?;
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            match st.core.producer_delivered(key.0, key.1) {
                Ok(true) => Poll::Ready(Ok(())),
                Err(e) => Poll::Ready(Err(e.into())),
                Ok(false) => {
                    let wake = st.producers.entry(key).or_default();
                    wake.ready.clear();
                    wake.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let (job, slot) = (self.job, self.slot);
        self.shared.op(|st| {
            st.core.drop_producer(job, slot);
            st.producers.remove(&(job, slot));
        });
    }
}

/// Credit worth of messages a consumer takes from the core per lock (whole arrivals, so a
/// little more, or one large message).
const RECV_BATCH_COST: u64 = 256 * 1024;

/// A consumer endpoint: a stream of `(producer, message)`.
#[derive(Debug)]
pub struct Consumer {
    shared: Arc<Shared>,
    job: JobId,
    slot: u32,
    /// Messages taken from the core and not yet returned (about [`RECV_BATCH_COST`]).
    arrivals: VecDeque<(Endpoint, Arrival)>,
    /// A failure the core reported after the messages before it: returned once
    /// `arrivals` is drained.
    error: Option<ExchangeError>,
    /// The core said the stream is over: it ends once `arrivals` is drained.
    finished: bool,
}

impl Consumer {
    /// This consumer's endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.shared.node, self.slot)
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
        if self.arrivals.is_empty() && self.error.is_none() && !self.finished {
            self.fill(cx);
        }
        if let Some(message) = self.next_message() {
            return Poll::Ready(Some(Ok(message)));
        }
        if let Some(error) = self.error.take() {
            return Poll::Ready(Some(Err(error.into())));
        }
        if self.finished {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
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
        let kept = self
            .error
            .as_ref()
            .is_some_and(|e| producers.iter().any(|p| e.concerns(*p)));
        if kept {
            if let Some(error) = self.error.take() {
                return Poll::Ready(Some(Err(error.into())));
            }
        }
        if self.finished {
            return Poll::Ready(None);
        }
        let key = (self.job, self.slot);
        let arrivals = &mut self.arrivals;
        self.shared.op(|st| {
            if !arrivals.is_empty() {
                st.core.give_back(key.0, key.1, arrivals);
            }
            st.core.finished_reading(key.0, key.1);
            match st.core.poll_recv_from(key.0, key.1, producers) {
                Recv::Message(from, message) => Poll::Ready(Some(Ok((from, message)))),
                Recv::Error(e) => Poll::Ready(Some(Err(e.into()))),
                Recv::Finished => Poll::Ready(None),
                Recv::Pending => {
                    st.consumers.insert(key, cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }

    /// The first message of the arrivals taken, if any.
    fn next_message(&mut self) -> Option<(Endpoint, Bytes)> {
        let (from, arrival) = self.arrivals.front_mut()?;
        let from = *from;
        match arrival {
            Arrival::Batch(batch) => {
                let message = batch.pop_front();
                if batch.is_empty() {
                    self.arrivals.pop_front();
                }
                message.map(|m| (from, m))
            }
            Arrival::Message(_) => match self.arrivals.pop_front() {
                Some((from, Arrival::Message(m))) => Some((from, m)),
                _ => None,
            },
        }
    }

    /// Returns the credit of the messages handed out since the last fill (all of them: it
    /// fills only when empty), then takes about [`RECV_BATCH_COST`] of messages from the
    /// core under one lock; with none there, the failure or end that comes next, or
    /// registers for a wake-up. So the messages buffered here count against the
    /// consumer's pool until the application has them.
    fn fill(&mut self, cx: &mut Context<'_>) {
        let key = (self.job, self.slot);
        let (arrivals, error, finished) = (&mut self.arrivals, &mut self.error, &mut self.finished);
        self.shared.op(|st| {
            // Everything taken before was handed out: its credit goes back now.
            st.core.finished_reading(key.0, key.1);
            if st
                .core
                .take_arrivals(key.0, key.1, RECV_BATCH_COST, arrivals)
                > 0
            {
                return;
            }
            match st.core.poll_recv(key.0, key.1) {
                Recv::Message(from, payload) => {
                    arrivals.push_back((from, Arrival::Message(payload)));
                }
                Recv::Error(e) => *error = Some(e),
                Recv::Finished => *finished = true,
                Recv::Pending => {
                    st.consumers.insert(key, cx.waker().clone());
                }
            }
        });
    }
}

impl futures_core::Stream for Consumer {
    type Item = Result<(Endpoint, Bytes), Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let (job, slot) = (self.job, self.slot);
        self.shared.op(|st| {
            st.core.drop_consumer(job, slot);
            st.consumers.remove(&(job, slot));
        });
    }
}
