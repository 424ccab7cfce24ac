//! The throughput workload's roles over any [`Transport`](super::super::transport):
//! the same messages ([`MessageFactory`], same seed as the plexus run) and the same
//! checks ([`ChannelVerifier`](super::super::workload::ChannelVerifier)) as plexus's own roles, so every system moves and verifies
//! exactly the same bytes.
//!
//! Invariants: a producer sends its whole plan, one message to each consumer of its job
//! per round, in sequence order, then finishes its sink; a consumer reads until its stream
//! ends, stops at the first message its verifier rejects, and passes only if its verifier
//! found every channel complete.

use std::sync::Arc;

use plexus::Endpoint;

use super::super::delivered::Delivered;
use super::super::host::BODY_SEED;
use super::super::roles::{EndpointError, Moved};
use super::super::shape::Shape;
use super::super::transport::{ConsumeFn, ProduceFn, Sink, Source};
use super::super::workload::MessageFactory;

/// The producer and consumer roles of the throughput workload of `shape`; consumers add
/// what they receive to `delivered`.
pub fn throughput<S: Sink, R: Source>(
    shape: &Shape,
    delivered: Arc<Delivered>,
) -> (ProduceFn<S>, ConsumeFn<R>) {
    let factory = Arc::new(MessageFactory::new(BODY_SEED));
    let (for_producers, for_consumers) = (Arc::new(shape.clone()), Arc::new(shape.clone()));
    let produce: ProduceFn<S> = Arc::new(move |sink, job, me| {
        Box::pin(produce(
            sink,
            for_producers.clone(),
            job,
            me,
            factory.clone(),
        ))
    });
    let consume: ConsumeFn<R> = Arc::new(move |source, job, me| {
        Box::pin(consume(
            source,
            for_consumers.clone(),
            job,
            me,
            delivered.clone(),
        ))
    });
    (produce, consume)
}

async fn produce<S: Sink>(
    mut sink: S,
    shape: Arc<Shape>,
    job: u32,
    me: Endpoint,
    factory: Arc<MessageFactory>,
) -> (Moved, Option<EndpointError>) {
    let plan = shape.plan();
    let my_id = shape.producer_id(me);
    let consumers = shape.addressed_consumers(job);
    let fail = |e: String| {
        EndpointError::other(format!("job {} producer {me}: {e}", Shape::job_id(job).0))
    };
    let mut moved = Moved::default();
    for seq in 0..plan.messages() {
        for &(consumer, id) in &consumers {
            let message = factory.message(&plan, my_id, id, seq);
            let len = message.len() as u64;
            if let Err(e) = sink.send(consumer, id, message).await {
                return (moved, Some(fail(e)));
            }
            moved.bytes += len;
            moved.messages += 1;
        }
        tokio::task::yield_now().await;
    }
    (moved, sink.finish().await.err().map(fail))
}

async fn consume<R: Source>(
    mut source: R,
    shape: Arc<Shape>,
    job: u32,
    me: Endpoint,
    delivered: Arc<Delivered>,
) -> (Moved, Option<EndpointError>) {
    let context = format!("job {} consumer {me}", Shape::job_id(job).0);
    let mut verifier = shape.consumer_verifier(job, me);
    let mut moved = Moved::default();
    while let Some(item) = source.recv().await {
        let (from, message) = match item {
            Ok(item) => item,
            Err(e) => return (moved, Some(EndpointError::other(format!("{context}: {e}")))),
        };
        if let Err(e) = verifier.accept(from, &message) {
            return (moved, Some(EndpointError::other(format!("{context}: {e}"))));
        }
        moved.bytes += message.len() as u64;
        moved.messages += 1;
        delivered.add(false, message.len() as u64);
    }
    match verifier.finish() {
        Ok(_) => (moved, None),
        Err(e) => (moved, Some(EndpointError::other(format!("{context}: {e}")))),
    }
}
