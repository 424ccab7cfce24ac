//! `--latency-load`: bulk traffic on the same links as the latency schedule, so that the
//! light channels' latency is measured while bulk channels share every link (the
//! head-of-line effect of a transport, of its loss recovery and of its send queues).
//!
//! The load is one more job of the run, on the same nodes as the latency jobs (the last
//! job index of the run's shape): each of its producers sends full `--message-size` bench
//! messages to its consumers in turn, each as soon as the transport takes it (plexus:
//! credit), from the moment the endpoints open until every latency producer has sent its
//! last message; then it records how many it sent to each consumer and closes.
//!
//! Invariants: a bulk consumer checks every message (order, header, CRC) as it comes, and
//! once its streams end it checks that it received exactly what each producer says it
//! sent (the counts are recorded before the producer closes, so before the stream ends);
//! the load never outlives the latency producers by more than one message per bulk
//! producer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use plexus::Endpoint;

use super::super::roles::{EndpointError, Moved};
use super::super::shape::Shape;
use super::super::transport::{Sink, Source};
use super::super::workload::{ChannelVerifier, MessageFactory, Plan};

/// The seed of the bulk messages' bodies.
const SEED: u64 = 0x6c6f_6164;

/// What every endpoint of the load shares.
pub struct Load {
    /// The run's shape (its last job is the load).
    shape: Shape,
    /// Full messages of `--message-size`, as many as a channel could ever carry.
    plan: Plan,
    factory: MessageFactory,
    /// Latency producers that have not sent their last message yet.
    light_running: AtomicU32,
    /// Messages each bulk producer sent to each consumer, by (producer id, consumer id),
    /// recorded before it closes.
    sent: Mutex<HashMap<(u32, u32), u32>>,
}

impl Load {
    /// The load of `shape` (its last job), beside `light_producers` latency producers.
    pub fn new(shape: Shape, light_producers: u32) -> Result<Load, String> {
        let size = shape.plan().message_size();
        let plan = Plan::new(u64::from(size) * u64::from(u32::MAX), size)
            .map_err(|e| format!("the load's messages: {e}"))?;
        Ok(Load {
            shape,
            plan,
            factory: MessageFactory::new(SEED),
            light_running: AtomicU32::new(light_producers),
            sent: Mutex::new(HashMap::new()),
        })
    }

    /// The job index of the load in the run's shape.
    pub fn job(&self) -> u32 {
        self.shape.jobs() - 1
    }

    /// A latency producer sent its last message (or gave up).
    pub fn light_finished(&self) {
        let _ = self
            .light_running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Runs bulk producer `me` on `sink`.
    pub async fn produce<S: Sink>(
        self: Arc<Self>,
        mut sink: S,
        me: Endpoint,
    ) -> (Moved, Option<EndpointError>) {
        let job = self.job();
        let my_id = self.shape.producer_id(me);
        let consumers = self.shape.addressed_consumers(job);
        let fail = |e: String| EndpointError::other(format!("load job producer {me}: {e}"));
        let mut counts = vec![0u32; consumers.len()];
        let mut moved = Moved::default();
        for (i, &(consumer, id)) in consumers.iter().enumerate().cycle() {
            if self.light_running.load(Ordering::Acquire) == 0 {
                break;
            }
            let message = self.factory.message(&self.plan, my_id, id, counts[i]);
            let len = message.len() as u64;
            if let Err(e) = sink.send(consumer, id, message).await {
                self.record(my_id, &consumers, &counts);
                return (moved, Some(fail(e)));
            }
            counts[i] += 1;
            moved.bytes += len;
            moved.messages += 1;
        }
        self.record(my_id, &consumers, &counts);
        (moved, sink.finish().await.err().map(fail))
    }

    fn record(&self, producer: u32, consumers: &[(Endpoint, u32)], counts: &[u32]) {
        if let Ok(mut sent) = self.sent.lock() {
            for (&(_, consumer), &count) in consumers.iter().zip(counts) {
                sent.insert((producer, consumer), count);
            }
        }
    }

    /// Runs bulk consumer `me` on `source`.
    pub async fn consume<R: Source>(
        self: Arc<Self>,
        mut source: R,
        me: Endpoint,
    ) -> (Moved, Option<EndpointError>) {
        let job = self.job();
        let my_id = self.shape.consumer_id(me);
        let fail = |e: String| Some(EndpointError::other(format!("load job consumer {me}: {e}")));
        let producers: Vec<u32> = self
            .shape
            .topology(job)
            .producers()
            .iter()
            .map(|&p| self.shape.producer_id(p))
            .collect();
        let mut verifier = ChannelVerifier::new(my_id, producers.iter().copied(), self.plan);
        let mut moved = Moved::default();
        while let Some(item) = source.recv().await {
            let (from, message) = match item {
                Ok(item) => item,
                Err(e) => return (moved, fail(e)),
            };
            if let Err(e) = verifier.accept(from, &message) {
                return (moved, fail(e.to_string()));
            }
            moved.bytes += message.len() as u64;
            moved.messages += 1;
        }
        let Ok(sent) = self.sent.lock() else {
            return (moved, fail("a poisoned lock".into()));
        };
        for producer in producers {
            let expected = sent.get(&(producer, my_id)).copied();
            let got = verifier.received_from(producer);
            if expected != Some(got) {
                let expected = expected.map_or("an unknown number".into(), |n| n.to_string());
                return (
                    moved,
                    fail(format!(
                        "received {got} messages from producer {producer}, which sent {expected}"
                    )),
                );
            }
        }
        (moved, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::shape::tests::spec;
    use bytes::Bytes;

    /// What a fake producer handed over: (consumer, consumer id, message).
    type Sent = Arc<Mutex<Vec<(Endpoint, u32, Bytes)>>>;

    /// A sink that takes every message at once and, after `last` of them, says the latency
    /// producers are through.
    struct Recording {
        sent: Sent,
        load: Arc<Load>,
        last: usize,
    }

    impl Sink for Recording {
        async fn send(&mut self, to: Endpoint, to_id: u32, message: Bytes) -> Result<(), String> {
            let mut sent = self.sent.lock().map_err(|_| "poisoned")?;
            sent.push((to, to_id, message));
            if sent.len() == self.last {
                self.load.light_finished();
            }
            Ok(())
        }

        async fn finish(self) -> Result<(), String> {
            Ok(())
        }
    }

    /// A source replaying messages from one producer.
    struct Replay(std::vec::IntoIter<(u32, Bytes)>);

    impl Source for Replay {
        async fn recv(&mut self) -> Option<Result<(u32, Bytes), String>> {
            self.0.next().map(Ok)
        }
    }

    /// A load on a shape of 1 node and 1 job (2 producers, 3 consumers), and the
    /// messages its producer 0 sent until the one latency producer finished after `last`.
    async fn one_producer(last: usize) -> (Arc<Load>, Vec<(Endpoint, u32, Bytes)>) {
        let shape = Shape::new(spec(1, None, 1)).expect("shape");
        let load = Arc::new(Load::new(shape, 1).expect("load"));
        let sent = Sent::default();
        let sink = Recording {
            sent: sent.clone(),
            load: load.clone(),
            last,
        };
        let producer = Endpoint::new(plexus::NodeId(0), 0);
        let (moved, error) = load.clone().produce(sink, producer).await;
        assert!(error.is_none(), "{error:?}");
        let sent = sent.lock().expect("sent").clone();
        assert_eq!(moved.messages, sent.len() as u64);
        (load, sent)
    }

    /// What producer 0 sent to `consumer`, as its source would deliver it.
    fn to(sent: &[(Endpoint, u32, Bytes)], consumer: u32) -> Vec<(u32, Bytes)> {
        sent.iter()
            .filter(|(_, id, _)| *id == consumer)
            .map(|(_, _, m)| (0, m.clone()))
            .collect()
    }

    #[tokio::test]
    async fn the_load_stops_with_the_latency_producers_and_counts_what_it_sent() {
        let (load, sent) = one_producer(7).await;
        // It stopped right after the message that ended the latency schedule.
        assert_eq!(sent.len(), 7);
        // In turn to the 3 consumers: 3, 2 and 2 messages, full size.
        let per_consumer: Vec<usize> = (0..3).map(|c| to(&sent, c).len()).collect();
        assert_eq!(per_consumer, [3, 2, 2]);
        assert!(sent.iter().all(|(_, _, m)| m.len() == 4096));
        let recorded = load.sent.lock().expect("sent").clone();
        assert_eq!(recorded.get(&(0, 0)), Some(&3));
        assert_eq!(recorded.get(&(0, 2)), Some(&2));
    }

    #[tokio::test]
    async fn a_consumer_fails_on_a_lost_message_and_passes_on_all() {
        let (load, sent) = one_producer(9).await;
        let consumer = Endpoint::new(plexus::NodeId(0), 1);
        // Producer 1 of the job sent nothing: record that, as its close would.
        load.record(1, &load.shape.addressed_consumers(0), &[0, 0, 0]);
        let all = to(&sent, 1);
        assert_eq!(all.len(), 3);
        let (moved, error) = load
            .clone()
            .consume(Replay(all.clone().into_iter()), consumer)
            .await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(moved.messages, 3);
        // The last message lost: every message that came is in order, yet it must fail.
        let short = all[..2].to_vec();
        let (_, error) = load
            .clone()
            .consume(Replay(short.into_iter()), consumer)
            .await;
        let message = error.expect("a lost message is an error").message;
        assert!(
            message.contains("received 2 messages from producer 0, which sent 3"),
            "{message}"
        );
        // A gap is caught as it comes.
        let gap = vec![all[0].clone(), all[2].clone()];
        let (_, error) = load.consume(Replay(gap.into_iter()), consumer).await;
        assert!(error.is_some());
    }
}
