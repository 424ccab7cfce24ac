//! The throughput workload's roles over any [`Transport`](super::super::transport):
//! the same messages ([`MessageFactory`], same seed as the plexus run) and the same
//! checks ([`ChannelVerifier`](super::super::workload::ChannelVerifier)) as plexus's own
//! roles, so every system moves and verifies exactly the same bytes, under the same
//! stalls ([`RunState`]).
//!
//! A producer serves its consumers as plexus's producers do, each as fast as it takes
//! messages: its sink is split into the parts the system lets send at the same time
//! ([`Sink::split`]), each sent by a task of its own, so a consumer that cannot take a
//! message holds up only the part that sends to it, and what the system itself couples.
//!
//! Invariants: every part sends its consumers' whole plan, one message to each per round,
//! in sequence order, then finishes; a consumer reads until its stream ends, stops at the
//! first message its verifier rejects, and passes only if its verifier found every
//! channel complete; a stalled consumer reads nothing before every non-stalled one is
//! done, and every non-stalled one announces exactly once that it is done (complete, or
//! failed), so the stalled ones are always released; the bytes sent to a consumer and not
//! yet read by it are tracked at every send and read, with their peak.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use plexus::Endpoint;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::super::delivered::Delivered;
use super::super::host::BODY_SEED;
use super::super::roles::{EndpointError, EndpointOutcome, Moved, Role};
use super::super::shape::Shape;
use super::super::transport::{ConsumeFn, ProduceFn, Sink, Source};
use super::super::verdict::HealthyTally;
use super::super::workload::{MessageFactory, VerifyError};

/// Bytes sent to one consumer and not yet read by it, and their peak.
#[derive(Debug, Default)]
pub struct Unread {
    now: AtomicI64,
    peak: AtomicU64,
}

impl Unread {
    /// `bytes` were sent to the consumer.
    pub fn sent(&self, bytes: u64) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let now = self.now.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak
            .fetch_max(u64::try_from(now).unwrap_or(0), Ordering::Relaxed);
    }

    /// The consumer read `bytes`.
    pub fn read(&self, bytes: u64) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.now.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// What the endpoints of one run share: progress, the stalled consumers' release, what
/// each consumer had waiting for it, and what the consumers' verifiers saw.
pub struct RunState {
    delivered: Arc<Delivered>,
    /// By `(job index, consumer id)`.
    unread: HashMap<(u32, u32), Unread>,
    healthy: Mutex<HealthyTally>,
    release: watch::Sender<bool>,
    /// Some consumer got a message twice.
    duplicated: AtomicBool,
    /// Some consumer got a message after a gap: messages before it were lost.
    lost: AtomicBool,
}

impl RunState {
    /// The state of a run of `shape` whose consumers add what they get to `delivered`.
    pub fn new(shape: &Shape, delivered: Arc<Delivered>) -> RunState {
        let mut unread = HashMap::new();
        for j in 0..shape.jobs() {
            for (_, id) in shape.addressed_consumers(j) {
                unread.insert((j, id), Unread::default());
            }
        }
        let stalled = shape.stall_consumers() as usize;
        RunState {
            delivered,
            healthy: Mutex::new(HealthyTally::new(unread.len().saturating_sub(stalled))),
            unread,
            release: watch::Sender::new(stalled == 0),
            duplicated: AtomicBool::new(false),
            lost: AtomicBool::new(false),
        }
    }

    /// What consumer `consumer` (workload id) of job index `job` has waiting for it: an
    /// endpoint looks it up once, not per message.
    pub fn unread(&self, job: u32, consumer: u32) -> Option<&Unread> {
        self.unread.get(&(job, consumer))
    }

    /// A consumer, stalled or not, got `bytes` (for progress and the timeline).
    pub fn delivered(&self, stalled: bool, bytes: u64) {
        self.delivered.add(stalled, bytes);
    }

    /// A consumer's verifier rejected a message with `error`.
    pub fn rejected(&self, error: &VerifyError) {
        match error {
            VerifyError::Duplicate { .. } => self.duplicated.store(true, Ordering::Relaxed),
            VerifyError::OutOfOrder { .. } => self.lost.store(true, Ordering::Relaxed),
            _ => {}
        }
    }

    /// Waits (blocking the thread) until the stalled consumers are released, or `within`
    /// has passed.
    #[cfg(feature = "zmq")]
    pub fn wait_release_blocking(&self, within: std::time::Duration) {
        let mut release = self.release.subscribe();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build();
        if let Ok(runtime) = runtime {
            runtime.block_on(async {
                let _ = tokio::time::timeout(within, release.wait_for(|released| *released)).await;
            });
        }
    }

    /// A non-stalled consumer is done: the last one releases the stalled ones.
    pub fn healthy_done(&self) {
        let all = self
            .healthy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .done(1);
        if all {
            self.release.send_replace(true);
        }
    }

    /// Seconds from `start` until every non-stalled consumer was done, if they were.
    pub fn healthy_elapsed_since(&self, start: Instant) -> Option<f64> {
        self.healthy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .elapsed_since(start.into_std())
    }

    /// Some consumer got a message twice.
    pub fn duplicated(&self) -> bool {
        self.duplicated.load(Ordering::Relaxed)
    }

    /// Some consumer found messages missing before one it got.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Marks each consumer of `outcomes` stalled or not.
    pub fn annotate(&self, shape: &Shape, outcomes: &mut [EndpointOutcome]) {
        for o in outcomes.iter_mut().filter(|o| o.role == Role::Consumer) {
            let me = Endpoint::new(plexus::NodeId(o.node), o.slot);
            o.stalled = shape.is_stalled(o.job, me);
        }
    }

    /// The most bytes sent to any stalled consumer and not yet read by it.
    pub fn stalled_unread_max(&self, shape: &Shape) -> u64 {
        (0..shape.jobs())
            .flat_map(|j| {
                shape
                    .addressed_consumers(j)
                    .into_iter()
                    .map(move |c| (j, c))
            })
            .filter(|&(j, (c, _))| shape.is_stalled(j, c))
            .filter_map(|(j, (_, id))| self.unread(j, id))
            .map(|u| u.peak.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}

/// The producer and consumer roles of the throughput workload of `shape`, sharing
/// `state`.
pub fn throughput<S: Sink, R: Source>(
    shape: &Shape,
    state: Arc<RunState>,
) -> (ProduceFn<S>, ConsumeFn<R>) {
    let factory = Arc::new(MessageFactory::new(BODY_SEED));
    let (for_producers, for_consumers) = (Arc::new(shape.clone()), Arc::new(shape.clone()));
    let producers_state = state.clone();
    let produce: ProduceFn<S> = Arc::new(move |sink, job, me| {
        Box::pin(produce(
            sink,
            for_producers.clone(),
            job,
            me,
            factory.clone(),
            producers_state.clone(),
        ))
    });
    let consume: ConsumeFn<R> = Arc::new(move |source, job, me| {
        Box::pin(consume(
            source,
            for_consumers.clone(),
            job,
            me,
            state.clone(),
        ))
    });
    (produce, consume)
}

async fn produce<S: Sink>(
    sink: S,
    shape: Arc<Shape>,
    job: u32,
    me: Endpoint,
    factory: Arc<MessageFactory>,
    state: Arc<RunState>,
) -> (Moved, Option<EndpointError>) {
    let consumers = shape.addressed_consumers(job);
    let ids: Vec<u32> = consumers.iter().map(|&(_, id)| id).collect();
    let mut parts = JoinSet::new();
    for (ids, part) in sink.split(&ids) {
        let to: Vec<(Endpoint, u32)> = consumers
            .iter()
            .filter(|(_, id)| ids.contains(id))
            .copied()
            .collect();
        let sending = send_part(
            part,
            to,
            shape.clone(),
            job,
            me,
            factory.clone(),
            state.clone(),
        );
        parts.spawn(sending);
    }
    let mut moved = Moved::default();
    let mut first_error = None;
    while let Some(joined) = parts.join_next().await {
        let (part_moved, error) = joined.unwrap_or_else(|e| {
            let error = Some(format!("a sending task failed: {e}"));
            (Moved::default(), error)
        });
        moved.bytes += part_moved.bytes;
        moved.messages += part_moved.messages;
        if first_error.is_none() {
            first_error = error;
        }
    }
    let fail = |e: String| {
        EndpointError::other(format!("job {} producer {me}: {e}", Shape::job_id(job).0))
    };
    (moved, first_error.map(fail))
}

/// Sends the whole plan of producer `me` of job index `job` to consumers `to` through
/// `sink`, then finishes it.
async fn send_part<S: Sink>(
    mut sink: S,
    to: Vec<(Endpoint, u32)>,
    shape: Arc<Shape>,
    job: u32,
    me: Endpoint,
    factory: Arc<MessageFactory>,
    state: Arc<RunState>,
) -> (Moved, Option<String>) {
    let plan = shape.plan();
    let my_id = shape.producer_id(me);
    let unread: Vec<Option<&Unread>> = to.iter().map(|&(_, id)| state.unread(job, id)).collect();
    let mut moved = Moved::default();
    for seq in 0..plan.messages() {
        for (&(consumer, id), unread) in to.iter().zip(&unread) {
            let message = factory.message(&plan, my_id, id, seq);
            let len = message.len() as u64;
            if let Err(e) = sink.send(consumer, id, message).await {
                return (moved, Some(e));
            }
            if let Some(unread) = unread {
                unread.sent(len);
            }
            moved.bytes += len;
            moved.messages += 1;
        }
        tokio::task::yield_now().await;
    }
    (moved, sink.finish().await.err())
}

async fn consume<R: Source>(
    mut source: R,
    shape: Arc<Shape>,
    job: u32,
    me: Endpoint,
    state: Arc<RunState>,
) -> (Moved, Option<EndpointError>) {
    let stalled = shape.is_stalled(job, me);
    if stalled {
        let mut release = state.release.subscribe();
        let _ = release.wait_for(|released| *released).await;
    }
    // A stalled consumer never announces itself.
    let mut announced = stalled;
    let read = read(&mut source, &shape, job, me, &state, &mut announced).await;
    if !announced {
        // Done, complete or not: the stalled consumers must not wait on a failure.
        state.healthy_done();
    }
    read
}

/// Reads and verifies consumer `me`'s stream to its end; unless `announced` already, it
/// announces itself done as soon as it has everything.
async fn read<R: Source>(
    source: &mut R,
    shape: &Shape,
    job: u32,
    me: Endpoint,
    state: &RunState,
    announced: &mut bool,
) -> (Moved, Option<EndpointError>) {
    let stalled = shape.is_stalled(job, me);
    let context = format!("job {} consumer {me}", Shape::job_id(job).0);
    let fail = |e: String| Some(EndpointError::other(format!("{context}: {e}")));
    let mut verifier = shape.consumer_verifier(job, me);
    let unread = state.unread(job, shape.consumer_id(me));
    let mut moved = Moved::default();
    while let Some(item) = source.recv().await {
        let (from, message) = match item {
            Ok(item) => item,
            Err(e) => return (moved, fail(e)),
        };
        let len = message.len() as u64;
        if let Some(unread) = unread {
            unread.read(len);
        }
        state.delivered(stalled, len);
        if let Err(e) = verifier.accept(from, &message) {
            state.rejected(&e);
            return (moved, fail(e.to_string()));
        }
        moved.bytes += len;
        moved.messages += 1;
        if !*announced && verifier.is_complete() {
            *announced = true;
            state.healthy_done();
        }
    }
    match verifier.finish() {
        Ok(_) => (moved, None),
        Err(e) => (moved, fail(e.to_string())),
    }
}
