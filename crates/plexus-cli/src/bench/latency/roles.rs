//! The latency workload's roles, over any [`Transport`](super::super::transport): producers
//! send 128-byte messages on a fixed schedule, each carrying the time it was sent, and
//! consumers verify them like any bench message and record how long each took.
//!
//! A message is a bench message ([`workload`](super::super::workload) format: header, CRC
//! of the body) whose body starts with the send time, in ns since the run's origin, a
//! `std::time::Instant` every endpoint of this process shares. Producer number `p` of `P`
//! (over the whole run) sends its `i`-th message at `origin + (p / P + i) / r`, r being its
//! rate, to its job's consumers in turn; it stamps the message just before handing it to
//! the transport, so a wait for the transport (plexus's credit, a full queue) counts, and
//! the timer's coarseness does not. Consumers record `now - stamp` in an HDR histogram.
//!
//! Invariants: every channel carries exactly its plan's messages, in sequence order, and
//! every consumer checks them with a [`ChannelVerifier`](super::super::workload::ChannelVerifier) (order, completeness, CRC); a
//! consumer merges its histogram into the run's when its stream ends, failed or not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use plexus::Endpoint;

use super::super::delivered::Delivered;
use super::super::roles::{EndpointError, Moved};
use super::super::shape::Shape;
use super::super::transport::{ConsumeFn, ProduceFn, Sink, Source};
use super::super::workload::{Header, HEADER_LEN};

/// Size of every latency message, header included.
pub const MESSAGE_LEN: u32 = 128;

/// Body bytes of a latency message.
const BODY_LEN: usize = MESSAGE_LEN as usize - HEADER_LEN;

/// Significant digits the latency histograms keep.
const SIGNIFICANT_DIGITS: u8 = 3;

/// The largest latency the histograms tell apart, in ns (longer ones count as this).
const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// An empty latency histogram: 1 ns to a minute, 3 significant digits.
fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, SIGNIFICANT_DIGITS).map_err(|e| e.to_string())
}

/// What every endpoint of a latency run shares: the schedule and what was measured.
pub struct Timing {
    /// The run's shape (128-byte messages, the plan's count per channel).
    pub shape: Shape,
    /// Time zero of the schedule and of every stamp.
    pub origin: Instant,
    /// Seconds between two messages of one producer.
    interval_s: f64,
    /// Producers in the run.
    producers: u32,
    /// One-way latencies in ns, merged from every consumer.
    latencies: Mutex<Histogram<u64>>,
    /// The most any producer sent behind its schedule, in ns.
    lag_max_ns: AtomicU64,
    /// When the last message arrived, in ns since the origin.
    last_arrival_ns: AtomicU64,
    /// Payload bytes received, for progress.
    delivered: Arc<Delivered>,
}

impl Timing {
    /// A run of `shape` at `rate` messages per second in all, starting at `origin`.
    pub fn new(
        shape: Shape,
        rate: f64,
        origin: Instant,
        delivered: Arc<Delivered>,
    ) -> Result<Timing, String> {
        let producers = (0..shape.jobs())
            .map(|j| shape.job_nodes(j).len() as u32 * shape.producers())
            .sum::<u32>()
            .max(1);
        let latencies = histogram()?;
        Ok(Timing {
            shape,
            origin,
            interval_s: f64::from(producers) / rate,
            producers,
            latencies: Mutex::new(latencies),
            lag_max_ns: AtomicU64::new(0),
            last_arrival_ns: AtomicU64::new(0),
            delivered,
        })
    }

    /// Producers in the run.
    pub fn producers(&self) -> u32 {
        self.producers
    }

    /// When producer number `p` sends its `i`-th message.
    fn due(&self, p: u32, i: u64) -> Instant {
        let at = (f64::from(p) / f64::from(self.producers) + i as f64) * self.interval_s;
        self.origin + Duration::from_secs_f64(at)
    }

    /// Nanoseconds since the origin.
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The merged latencies (ns), the worst schedule lag (ns) and the last arrival (ns
    /// since the origin).
    pub fn results(&self) -> (Option<Histogram<u64>>, u64, u64) {
        let latencies = self.latencies.lock().ok().map(|h| h.clone());
        let lag = self.lag_max_ns.load(Ordering::Relaxed);
        (latencies, lag, self.last_arrival_ns.load(Ordering::Relaxed))
    }
}

/// The producer and consumer roles of a latency run.
pub fn roles<S: Sink, R: Source>(timing: Arc<Timing>) -> (ProduceFn<S>, ConsumeFn<R>) {
    let for_consumers = timing.clone();
    let produce: ProduceFn<S> =
        Arc::new(move |sink, job, me| Box::pin(produce(sink, timing.clone(), job, me)));
    let consume: ConsumeFn<R> =
        Arc::new(move |source, job, me| Box::pin(consume(source, for_consumers.clone(), job, me)));
    (produce, consume)
}

/// A latency message: a bench message whose body starts with `sent_ns`.
pub fn timed_message(producer: u32, consumer: u32, seq: u32, sent_ns: u64) -> Bytes {
    let mut body = [0u8; BODY_LEN];
    body[..8].copy_from_slice(&sent_ns.to_le_bytes());
    let header = Header {
        producer,
        consumer,
        seq,
        body_len: BODY_LEN as u32,
        crc: crc32fast::hash(&body),
        reserved: 0,
    };
    let mut message = BytesMut::with_capacity(MESSAGE_LEN as usize);
    message.put_slice(&header.encode());
    message.put_slice(&body);
    message.freeze()
}

/// The send time a latency message carries.
fn stamp(message: &[u8]) -> Option<u64> {
    let bytes = message.get(HEADER_LEN..HEADER_LEN + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Producer `me`'s number among all producers of the run.
fn producer_number(shape: &Shape, job: u32, me: Endpoint) -> u32 {
    let per_job = shape.nodes_per_job() * shape.producers();
    let position = shape
        .job_nodes(job)
        .iter()
        .position(|&n| n == me.node)
        .unwrap_or(0) as u32;
    job * per_job + position * shape.producers() + me.slot
}

async fn produce<S: Sink>(
    mut sink: S,
    timing: Arc<Timing>,
    job: u32,
    me: Endpoint,
) -> (Moved, Option<EndpointError>) {
    let shape = &timing.shape;
    let my_id = shape.producer_id(me);
    let number = producer_number(shape, job, me);
    let consumers = shape.addressed_consumers(job);
    let fail = |e: String| {
        EndpointError::other(format!("job {} producer {me}: {e}", Shape::job_id(job).0))
    };
    let per_consumer = u64::from(shape.plan().messages());
    let mut moved = Moved::default();
    let mut lag_max = 0;
    for i in 0..per_consumer * consumers.len() as u64 {
        let (consumer, id) = consumers[(i % consumers.len() as u64) as usize];
        let seq = u32::try_from(i / consumers.len() as u64).unwrap_or(u32::MAX);
        let due = timing.due(number, i);
        tokio::time::sleep_until(due.into()).await;
        let now = timing.now_ns();
        let due_ns = u64::try_from(due.saturating_duration_since(timing.origin).as_nanos())
            .unwrap_or(u64::MAX);
        lag_max = lag_max.max(now.saturating_sub(due_ns));
        if let Err(e) = sink
            .send(consumer, id, timed_message(my_id, id, seq, now))
            .await
        {
            timing.lag_max_ns.fetch_max(lag_max, Ordering::Relaxed);
            return (moved, Some(fail(e)));
        }
        moved.bytes += u64::from(MESSAGE_LEN);
        moved.messages += 1;
    }
    timing.lag_max_ns.fetch_max(lag_max, Ordering::Relaxed);
    (moved, sink.finish().await.err().map(fail))
}

async fn consume<R: Source>(
    mut source: R,
    timing: Arc<Timing>,
    job: u32,
    me: Endpoint,
) -> (Moved, Option<EndpointError>) {
    let shape = &timing.shape;
    let context = format!("job {} consumer {me}", Shape::job_id(job).0);
    let fail = |e: String| Some(EndpointError::other(format!("{context}: {e}")));
    let mut verifier = shape.consumer_verifier(job, me);
    let mut latencies = match histogram() {
        Ok(h) => h,
        Err(e) => return (Moved::default(), fail(e)),
    };
    let mut moved = Moved::default();
    let mut error = None;
    while let Some(item) = source.recv().await {
        let now = timing.now_ns();
        let (from, message) = match item {
            Ok(item) => item,
            Err(e) => {
                error = fail(e);
                break;
            }
        };
        if let Err(e) = verifier.accept(from, &message) {
            error = fail(e.to_string());
            break;
        }
        let Some(sent) = stamp(&message) else {
            error = fail("a message without its send time".into());
            break;
        };
        latencies.saturating_record(now.saturating_sub(sent).max(1));
        timing.last_arrival_ns.fetch_max(now, Ordering::Relaxed);
        moved.bytes += message.len() as u64;
        moved.messages += 1;
        timing.delivered.add(false, message.len() as u64);
    }
    if error.is_none() {
        if let Err(e) = verifier.finish() {
            error = fail(e.to_string());
        }
    }
    let merged = timing
        .latencies
        .lock()
        .map_err(|_| "a poisoned lock".to_string())
        .and_then(|mut all| all.add(&latencies).map_err(|e| e.to_string()));
    if let (Err(e), None) = (merged, &error) {
        error = fail(format!("merging latencies: {e}"));
    }
    (moved, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::{ChannelVerifier, Plan};

    #[test]
    fn histograms_keep_microseconds_apart_and_merge() {
        let mut a = histogram().expect("histogram");
        let mut b = histogram().expect("histogram");
        for us in 1..=1000u64 {
            a.saturating_record(us * 1000);
        }
        b.saturating_record(u64::MAX);
        a.add(&b).expect("merge");
        let p50 = a.value_at_quantile(0.5) as f64 / 1000.0;
        assert!((499.0..=502.0).contains(&p50), "p50 {p50} µs");
        assert!(a.max() >= LATENCY_MAX_NS - LATENCY_MAX_NS / 1000);
    }

    #[test]
    fn timed_messages_verify_and_carry_their_stamp() {
        let plan = Plan::new(3 * u64::from(MESSAGE_LEN), MESSAGE_LEN).expect("plan");
        let mut verifier = ChannelVerifier::new(5, [2], plan);
        for seq in 0..3 {
            let m = timed_message(2, 5, seq, 1_000 + u64::from(seq));
            assert_eq!(m.len(), MESSAGE_LEN as usize);
            assert_eq!(stamp(&m), Some(1_000 + u64::from(seq)));
            verifier.accept(2, &m).expect("valid");
        }
        assert!(verifier.finish().is_ok());
    }
}
