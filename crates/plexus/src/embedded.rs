//! Jobs and endpoints on the node embedded in this process: every call goes to the
//! protocol core under the node's lock ([`Shared::op`]), and waits are wakers the core's
//! events wake.
//!
//! Invariants: a producer's readiness entry lives from its opening to its drop; a
//! consumer's taken arrivals keep their credit until the next fill (the application has
//! read them all) or until they are handed back to the core; dropping a producer that was
//! not closed aborts its channels, dropping a consumer cancels them.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use plexus_proto::node::{Admission, Arrival, ConsumerCredit, ExchangeError, Recv, TrySendError};
use plexus_proto::{Endpoint, JobId};

use crate::error::Error;
use crate::job::TrySend;
use crate::port::{BoxFuture, ConsumerPort, JobPort, ProducerPort};
use crate::shared::{ProducerWake, Shared};
use crate::topology::Topology;

/// A handle on a job of the embedded node.
#[derive(Debug)]
pub(crate) struct EmbeddedJob {
    shared: Arc<Shared>,
    id: JobId,
    topology: Topology,
    /// Whether the node took the handle: refused when the job finished here already or
    /// is live with another topology (then every call returns that error).
    opened: Result<(), ExchangeError>,
}

impl EmbeddedJob {
    pub fn new(shared: Arc<Shared>, id: JobId, topology: Topology) -> Self {
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

    /// Whether the node took the handle (see `opened`).
    pub fn opened(&self) -> Result<(), Error> {
        self.opened.clone().map_err(Error::from)
    }

    /// The job's topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Another handle on the same job.
    pub fn another(&self) -> Self {
        Self::new(self.shared.clone(), self.id, self.topology.clone())
    }

    /// Waits for the job's admission here.
    pub async fn admit(&self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_admit(cx)).await
    }

    /// Opens producer `slot` here, once admitted.
    pub async fn producer(&self, slot: u32) -> Result<EmbeddedProducer, Error> {
        self.admitted_slot(slot, self.topology.producers(), "producer")
            .await?;
        let consumers = self.topology.consumers().iter().copied();
        self.shared.op(|st| {
            st.core.open_producer(self.id, slot, consumers)?;
            st.producers
                .insert((self.id, slot), ProducerWake::default());
            Ok::<_, ExchangeError>(())
        })?;
        Ok(EmbeddedProducer {
            shared: self.shared.clone(),
            job: self.id,
            slot,
        })
    }

    /// Opens consumer `slot` here, once admitted.
    pub async fn consumer(&self, slot: u32) -> Result<EmbeddedConsumer, Error> {
        self.admitted_slot(slot, self.topology.consumers(), "consumer")
            .await?;
        let producers = self.topology.producers().iter().copied();
        self.shared
            .op(|st| st.core.open_consumer(self.id, slot, producers))?;
        Ok(EmbeddedConsumer {
            shared: self.shared.clone(),
            job: self.id,
            slot,
            arrivals: VecDeque::new(),
            error: None,
            finished: false,
        })
    }

    /// Waits for admission, then checks that `slot` of this node is one of `endpoints`
    /// (the job's producers or consumers, as `role` says).
    async fn admitted_slot(
        &self,
        slot: u32,
        endpoints: &[Endpoint],
        role: &'static str,
    ) -> Result<(), Error> {
        self.admit().await?;
        if endpoints.contains(&Endpoint::new(self.shared.node, slot)) {
            return Ok(());
        }
        Err(Error::NotInTopology {
            job: self.id.0,
            node: self.shared.node.0,
            slot,
            role,
        })
    }
}

impl JobPort for EmbeddedJob {
    fn poll_admit(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if let Err(e) = &self.opened {
            return Poll::Ready(Err(e.clone().into()));
        }
        let job = self.id;
        let plan = self.topology.consumers_per_node();
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
    }

    fn try_admit(&self) -> Result<bool, Error> {
        self.opened.clone()?;
        let plan = self.topology.consumers_per_node();
        let admission = self.shared.op(|st| st.core.admit_job(self.id, &plan))?;
        Ok(admission == Admission::Admitted)
    }

    fn open_producer(&self, slot: u32) -> BoxFuture<'_, Result<Box<dyn ProducerPort>, Error>> {
        Box::pin(async move {
            let producer = self.producer(slot).await?;
            Ok(Box::new(producer) as Box<dyn ProducerPort>)
        })
    }

    fn open_consumer(&self, slot: u32) -> BoxFuture<'_, Result<Box<dyn ConsumerPort>, Error>> {
        Box::pin(async move {
            let consumer = self.consumer(slot).await?;
            Ok(Box::new(consumer) as Box<dyn ConsumerPort>)
        })
    }

    fn cancel(&self) {
        if self.opened.is_ok() {
            self.shared.op(|st| st.core.cancel_job(self.id));
        }
    }

    fn reopen(&self) -> Box<dyn JobPort> {
        Box::new(self.another())
    }
}

impl Drop for EmbeddedJob {
    fn drop(&mut self) {
        if self.opened.is_ok() {
            let job = self.id;
            self.shared.op(|st| st.core.close_job(job));
        }
    }
}

/// A producer on the embedded node.
#[derive(Debug)]
pub(crate) struct EmbeddedProducer {
    shared: Arc<Shared>,
    job: JobId,
    slot: u32,
}

impl EmbeddedProducer {
    /// Its job and slot.
    pub fn key(&self) -> (JobId, u32) {
        (self.job, self.slot)
    }

    /// The credit its channel to `consumer` holds and has not spent: what may be queued on
    /// it now without waiting.
    pub fn credit_available(&mut self, consumer: Endpoint) -> Result<u64, Error> {
        let (job, slot) = (self.job, self.slot);
        Ok(self
            .shared
            .op(|st| st.core.credit_available(job, slot, consumer))?)
    }

    /// Waits for consumers whose channel can make progress.
    pub async fn ready(&mut self) -> Vec<Endpoint> {
        poll_fn(|cx| self.poll_ready(cx, None)).await
    }

    /// Closes the channels; with `finish`, waits until everything was delivered.
    pub async fn close_now(&mut self, finish: bool) -> Result<(), Error> {
        let key = (self.job, self.slot);
        self.shared.op(|st| st.core.close_producer(key.0, key.1))?;
        if !finish {
            return Ok(());
        }
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

impl ProducerPort for EmbeddedProducer {
    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.shared.node, self.slot)
    }

    fn try_send(&mut self, consumer: Endpoint, message: Bytes) -> Result<(), TrySend> {
        let (job, slot) = (self.job, self.slot);
        self.shared
            .op(|st| st.core.try_send(job, slot, consumer, message))
            .map_err(|e| match e {
                TrySendError::NoCredit(m) => TrySend::NoCredit(m),
                TrySendError::Failed(e, m) => TrySend::Failed(e.into(), m),
            })
    }

    fn try_send_many(
        &mut self,
        consumer: Endpoint,
        messages: &mut VecDeque<Bytes>,
    ) -> Result<usize, Error> {
        let (job, slot) = (self.job, self.slot);
        Ok(self
            .shared
            .op(|st| st.core.try_send_many(job, slot, consumer, messages))?)
    }

    fn has_credit(&mut self, consumer: Endpoint, len: usize) -> Result<bool, Error> {
        let (job, slot) = (self.job, self.slot);
        Ok(self
            .shared
            .op(|st| st.core.has_credit(job, slot, consumer, len))?)
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>, only: Option<Endpoint>) -> Poll<Vec<Endpoint>> {
        let key = (self.job, self.slot);
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
    }

    fn close(&mut self, finish: bool) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.close_now(finish))
    }
}

impl Drop for EmbeddedProducer {
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
pub(crate) const RECV_BATCH_COST: u64 = 256 * 1024;

/// A consumer on the embedded node.
#[derive(Debug)]
pub(crate) struct EmbeddedConsumer {
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

/// What a relayed take (see [`EmbeddedConsumer::poll_take`]) came to.
#[derive(Debug)]
pub(crate) enum Taken {
    /// Messages, to hand on; their credit stays out until the next take.
    Messages(Vec<(Endpoint, Bytes)>),
    /// An error of some producers or of the job.
    Error(ExchangeError),
    /// Every producer read from ended.
    Finished,
}

impl EmbeddedConsumer {
    /// Its job and slot.
    pub fn key(&self) -> (JobId, u32) {
        (self.job, self.slot)
    }

    /// Its credit figures now.
    pub fn credit_now(&self) -> Result<ConsumerCredit, Error> {
        self.shared
            .lock()
            .core
            .consumer_credit(self.job, self.slot)
            .ok_or_else(|| {
                ExchangeError::NoSuchEndpoint {
                    job: self.job,
                    slot: self.slot,
                    role: plexus_proto::node::Role::Consumer,
                }
                .into()
            })
    }

    /// For a process attached through the agent: it read the first `consumed` messages
    /// of the last take.
    pub fn mark_read(&mut self, consumed: u64) {
        for _ in 0..consumed {
            if self.next_message().is_none() {
                break;
            }
        }
    }

    /// For a process attached through the agent: the messages of the last take it did
    /// not read (see [`EmbeddedConsumer::mark_read`]) go back to the core, the others'
    /// credit is released, then the next messages (of `among` only, if given) are taken,
    /// their credit kept out until the next take, or the error or end that comes next.
    pub fn poll_take(&mut self, cx: &mut Context<'_>, among: Option<&[Endpoint]>) -> Poll<Taken> {
        let key = (self.job, self.slot);
        let arrivals = &mut self.arrivals;
        self.shared.op(|st| {
            if !arrivals.is_empty() {
                st.core.give_back(key.0, key.1, arrivals);
            }
            st.core.finished_reading(key.0, key.1);
            if among.is_none()
                && st
                    .core
                    .take_arrivals(key.0, key.1, RECV_BATCH_COST, arrivals)
                    > 0
            {
                return Poll::Ready(Taken::Messages(flatten(arrivals)));
            }
            let recv = match among {
                None => st.core.poll_recv(key.0, key.1),
                Some(among) => st.core.poll_recv_from(key.0, key.1, among),
            };
            match recv {
                Recv::Message(from, message) => Poll::Ready(Taken::Messages(vec![(from, message)])),
                Recv::Error(e) => Poll::Ready(Taken::Error(e)),
                Recv::Finished => Poll::Ready(Taken::Finished),
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

    fn poll_recv_all(
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

    fn poll_recv_among(
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
        // What `recv` took and did not hand out goes back first: the same step as an
        // attached process's selective take.
        self.poll_take(cx, Some(producers))
            .map(|taken| match taken {
                Taken::Messages(mut one) => one.pop().map(Ok),
                Taken::Error(e) => Some(Err(e.into())),
                Taken::Finished => None,
            })
    }
}

/// The messages of `arrivals`, in order (batches split; the arrivals stay as they are).
fn flatten(arrivals: &VecDeque<(Endpoint, Arrival)>) -> Vec<(Endpoint, Bytes)> {
    let mut out = Vec::new();
    for (from, arrival) in arrivals {
        match arrival {
            Arrival::Message(m) => out.push((*from, m.clone())),
            Arrival::Batch(batch) => out.extend(batch.clone().map(|m| (*from, m))),
        }
    }
    out
}

impl ConsumerPort for EmbeddedConsumer {
    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.shared.node, self.slot)
    }

    fn credit(&self) -> BoxFuture<'_, Result<ConsumerCredit, Error>> {
        let credit = self.credit_now();
        Box::pin(std::future::ready(credit))
    }

    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        among: Option<&[Endpoint]>,
    ) -> Poll<Option<Result<(Endpoint, Bytes), Error>>> {
        match among {
            None => self.poll_recv_all(cx),
            Some(producers) => self.poll_recv_among(cx, producers),
        }
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        let (job, slot) = (self.job, self.slot);
        self.shared.op(|st| {
            st.core.drop_consumer(job, slot);
            st.consumers.remove(&(job, slot));
        });
    }
}
