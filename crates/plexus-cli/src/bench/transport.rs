//! What the baselines (`--baseline`) and the latency mode (`--latency`) run on: a
//! [`Transport`] hands out one [`Sink`] per producer and one [`Source`] per consumer of a
//! shape, and [`drive`] runs every endpoint as a task with the role it is given and
//! gathers how each one ended.
//!
//! Invariants: every consumer is open before any producer starts; [`drive`] drops its
//! handle on the transport once every task is spawned, and each producer task drops its
//! own as soon as it holds its sink, so a transport whose streams end when its last handle
//! goes (raw-tcp's link writers) can end them; every endpoint sends exactly one outcome;
//! at the deadline the endpoints that did not report are aborted and the run records a
//! timeout, and the outcomes gathered so far are still returned.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use plexus::Endpoint;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::roles::{wall_us, EndpointError, EndpointOutcome, Moved, Role};
use super::shape::Shape;

/// What a role's task returns: what it moved, and its first error.
pub type RoleFuture = Pin<Box<dyn Future<Output = (Moved, Option<EndpointError>)> + Send>>;

/// Runs a producer: its sink, its job index and its endpoint.
pub type ProduceFn<S> = Arc<dyn Fn(S, u32, Endpoint) -> RoleFuture + Send + Sync>;

/// Runs a consumer: its source, its job index and its endpoint.
pub type ConsumeFn<R> = Arc<dyn Fn(R, u32, Endpoint) -> RoleFuture + Send + Sync>;

/// Faults that belong to no endpoint (a link's reader or writer failing), reported by
/// the transport's own tasks.
#[derive(Clone, Debug)]
pub struct Faults(mpsc::UnboundedSender<String>);

/// Faults listed at most; the rest are counted.
const MAX_FAULTS: usize = 8;

impl Faults {
    /// A fault reporter and the log it feeds.
    pub fn new() -> (Faults, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Faults(tx), rx)
    }

    /// Reports a fault (dropped if nobody listens any more).
    pub fn report(&self, fault: String) {
        let _ = self.0.send(fault);
    }

    /// The faults reported so far, the first few listed and the rest counted.
    pub fn drain(log: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
        let mut faults = Vec::new();
        let mut more = 0;
        while let Ok(fault) = log.try_recv() {
            if faults.len() < MAX_FAULTS {
                faults.push(fault);
            } else {
                more += 1;
            }
        }
        if more > 0 {
            faults.push(format!("{more} more faults"));
        }
        faults
    }
}

/// A producer's way out.
pub trait Sink: Send + 'static {
    /// Sends `message` to consumer `to` (workload id `to_id`), waiting as the transport
    /// makes it wait.
    fn send(
        &mut self,
        to: Endpoint,
        to_id: u32,
        message: Bytes,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Ends the producer's streams after everything it sent.
    fn finish(self) -> impl Future<Output = Result<(), String>> + Send;

    /// Splits the sink into parts that may send at the same time, each to some of the
    /// consumers `to` (workload ids), every one of them in exactly one part, so that a
    /// producer can serve every consumer that can take a message while another cannot.
    /// By default, one part for all.
    fn split(self, to: &[u32]) -> Vec<(Vec<u32>, Self)>
    where
        Self: Sized,
    {
        vec![(to.to_vec(), self)]
    }
}

/// A consumer's way in.
pub trait Source: Send + 'static {
    /// The next message with its producer's workload id, an error, or `None` once every
    /// producer's stream has ended.
    fn recv(&mut self) -> impl Future<Output = Option<Result<(u32, Bytes), String>>> + Send;
}

/// A system that carries a shape's channels.
pub trait Transport: Send + Sync + 'static {
    /// What a producer sends through.
    type Sink: Sink;
    /// What a consumer reads from.
    type Source: Source;

    /// Opens producer `me` of job index `job`.
    fn producer(
        &self,
        job: u32,
        me: Endpoint,
    ) -> impl Future<Output = Result<Self::Sink, String>> + Send;

    /// Opens consumer `me` of job index `job`.
    fn consumer(
        &self,
        job: u32,
        me: Endpoint,
    ) -> impl Future<Output = Result<Self::Source, String>> + Send;
}

/// Opens every endpoint of `shape` on `transport` (consumers first), runs `produce` and
/// `consume` on them and returns their outcomes and the run's own errors (a timeout at
/// `deadline`).
pub async fn drive<T: Transport>(
    transport: T,
    shape: &Shape,
    deadline: Instant,
    produce: ProduceFn<T::Sink>,
    consume: ConsumeFn<T::Source>,
) -> (Vec<EndpointOutcome>, Vec<String>) {
    let transport = Arc::new(transport);
    let (events, mut outcomes_rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    let mut expected = 0;
    for j in 0..shape.jobs() {
        for node in shape.job_nodes(j) {
            for slot in 0..shape.consumers() {
                let me = Endpoint::new(node, slot);
                expected += 1;
                let context = format!("job {} consumer {me}", Shape::job_id(j).0);
                let opened = match timeout_at(deadline, transport.consumer(j, me)).await {
                    Ok(opened) => opened,
                    Err(_) => Err("timed out opening it".to_string()),
                };
                let events = events.clone();
                match opened {
                    Ok(source) => {
                        let role = consume(source, j, me);
                        tasks.spawn(async move {
                            let (moved, error) = role.await;
                            let _ =
                                events.send(endpoint_outcome(j, me, Role::Consumer, moved, error));
                        });
                    }
                    Err(e) => {
                        let error = EndpointError::other(format!("{context}: {e}"));
                        let moved = Moved::default();
                        let _ = events.send(endpoint_outcome(
                            j,
                            me,
                            Role::Consumer,
                            moved,
                            Some(error),
                        ));
                    }
                }
            }
        }
    }
    for j in 0..shape.jobs() {
        for node in shape.job_nodes(j) {
            for slot in 0..shape.producers() {
                let me = Endpoint::new(node, slot);
                expected += 1;
                let (transport, produce, events) =
                    (transport.clone(), produce.clone(), events.clone());
                tasks.spawn(async move {
                    let opened = transport.producer(j, me).await;
                    drop(transport);
                    let (moved, error) = match opened {
                        Ok(sink) => produce(sink, j, me).await,
                        Err(e) => {
                            let context = format!("job {} producer {me}", Shape::job_id(j).0);
                            let error = EndpointError::other(format!("{context}: {e}"));
                            (Moved::default(), Some(error))
                        }
                    };
                    let _ = events.send(endpoint_outcome(j, me, Role::Producer, moved, error));
                });
            }
        }
    }
    drop(transport);
    drop(events);
    let mut outcomes = Vec::with_capacity(expected);
    let mut errors = Vec::new();
    while outcomes.len() < expected {
        tokio::select! {
            event = outcomes_rx.recv() => match event {
                Some(o) => outcomes.push(o),
                None => {
                    errors.push("the endpoint tasks ended without reporting".to_string());
                    break;
                }
            },
            _ = sleep_until(deadline) => {
                errors.push("timed out before every endpoint finished".to_string());
                break;
            }
        }
    }
    tasks.abort_all();
    (outcomes, errors)
}

/// How endpoint `me` (a `role` of job index `job`) ended.
pub fn endpoint_outcome(
    job: u32,
    me: Endpoint,
    role: Role,
    moved: Moved,
    error: Option<EndpointError>,
) -> EndpointOutcome {
    EndpointOutcome {
        job,
        node: me.node.0,
        role,
        slot: me.slot,
        stalled: false,
        bytes: moved.bytes,
        messages: moved.messages,
        peak_buffered: 0,
        error,
        opened_us: None,
        ended_us: wall_us(),
    }
}
