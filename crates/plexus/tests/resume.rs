//! Links killed from outside the process mid-transfer (`ss -K`, as an operator or a flaky
//! network would) resume without losing or duplicating anything; a node that dies fails
//! exactly the jobs that span it, on every other node, quickly.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{drain, message, start_node, start_nodes};
use plexus::{Config, ExchangeError, JobId, Membership, Node, NodeId, Scope, Topology};

/// Small messages and pools, so that credit round trips interleave with the kills.
fn tune(config: &mut Config) {
    config.max_message = 64 * 1024;
    config.credit_pool = 512 * 1024;
}

const BOUND: Duration = Duration::from_secs(60);

/// Links killed during the transfer before producers may stop sending: the transfer
/// lasts until then, however fast the machine or slow `ss` is.
const MIN_KILLS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_killed_mid_transfer_resume_with_nothing_lost_or_duplicated() {
    tokio::time::timeout(BOUND, async {
        let (subnet, n, m, per_channel) = (51u8, 4u32, 2u32, 600u32);
        let nodes = start_nodes(subnet, n, tune).await;
        let ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
        let topology = Topology::all_to_all(&ids, m, m);
        let done = Arc::new(AtomicBool::new(false));
        let kills = Arc::new(AtomicUsize::new(0));
        let mut consumers = Vec::new();
        let mut producers = Vec::new();
        for node in &nodes {
            let job = node.job(JobId(1), topology.clone());
            for slot in 0..m {
                consumers.push(tokio::spawn(drain(job.consumer(slot).await.unwrap())));
            }
            for slot in 0..m {
                let mut tx = job.producer(slot).await.unwrap();
                let targets = topology.consumers().to_vec();
                let kills = kills.clone();
                producers.push(tokio::spawn(async move {
                    let me = tx.endpoint();
                    let mut seq = 0u32;
                    while seq < per_channel || kills.load(Ordering::Relaxed) < MIN_KILLS {
                        for &c in &targets {
                            tx.send(c, message(me, seq, 2000 + (seq as usize % 7) * 1000))
                                .await?;
                        }
                        if seq.is_multiple_of(20) {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        seq += 1;
                    }
                    tx.close().await?;
                    Ok::<_, plexus::Error>((me, seq))
                }));
            }
        }
        // Kill a live link every 10 ms while the transfer runs.
        let chaos = common::kill_links_until(
            subnet,
            n,
            Duration::from_millis(10),
            done.clone(),
            kills.clone(),
        );
        let mut sent = std::collections::HashMap::new();
        for p in producers {
            let (me, count) = p.await.unwrap().expect("no producer sees an error");
            sent.insert(me, count);
        }
        for c in consumers {
            let got = c.await.unwrap().expect("no consumer sees an error");
            assert_eq!(got, sent, "every message of every producer, once");
        }
        done.store(true, Ordering::Relaxed);
        chaos.join().unwrap();
        let kills = kills.load(Ordering::Relaxed);
        assert!(kills >= MIN_KILLS, "{kills} kills");
        let resumes: usize = nodes.iter().map(|n| n.resume_times().len()).sum();
        assert!(resumes >= 1, "{kills} kills but no resumed link");
        for node in &nodes {
            node.shutdown().await;
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_fails_only_the_jobs_that_span_it_everywhere_and_fast() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(52, 3, tune).await;
        let all: Vec<NodeId> = nodes.iter().map(Node::id).collect();
        let spanning = Topology::all_to_all(&all, 1, 1);
        let sparing = Topology::all_to_all(&all[..2], 1, 1);
        // Job 1 spans nodes 0, 1, 2; job 2 only nodes 0 and 1.
        let mut rx = Vec::new();
        for node in &nodes[..2] {
            rx.push(
                node.job(JobId(1), spanning.clone())
                    .consumer(0)
                    .await
                    .unwrap(),
            );
        }
        let mut spared_rx = Vec::new();
        for node in &nodes[..2] {
            spared_rx.push(tokio::spawn(drain(
                node.job(JobId(2), sparing.clone())
                    .consumer(0)
                    .await
                    .unwrap(),
            )));
        }
        let _victim_rx = nodes[2]
            .job(JobId(1), spanning.clone())
            .consumer(0)
            .await
            .unwrap();
        let mut tx0 = nodes[0]
            .job(JobId(1), spanning.clone())
            .producer(0)
            .await
            .unwrap();
        tx0.send(rx[1].endpoint(), message(tx0.endpoint(), 0, 100))
            .await
            .unwrap();
        let first = rx[1].recv().await.unwrap().unwrap();
        assert_eq!(first.0, tx0.endpoint());

        let killed_at = Instant::now();
        nodes[2].abort();
        for consumer in &mut rx {
            let err = consumer
                .recv()
                .await
                .expect("an item")
                .expect_err("an error");
            assert_eq!(
                err.exchange().and_then(ExchangeError::peer),
                Some(NodeId(2)),
                "the error names the dead node: {err}"
            );
            assert_eq!(err.exchange().map(ExchangeError::scope), Some(Scope::Link));
            assert!(
                consumer.recv().await.is_none(),
                "the stream ends after the error"
            );
        }
        let detected = killed_at.elapsed();
        assert!(detected < Duration::from_secs(3), "took {detected:?}");
        // The producer of the failed job is told too.
        let err = loop {
            match tx0
                .send(rx[1].endpoint(), message(tx0.endpoint(), 1, 100))
                .await
            {
                Err(e) => break e,
                Ok(()) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        assert_eq!(
            err.exchange().and_then(ExchangeError::peer),
            Some(NodeId(2))
        );

        // Job 2 never touched node 2: it completes.
        for node in &nodes[..2] {
            let job = node.job(JobId(2), sparing.clone());
            let mut tx = job.producer(0).await.unwrap();
            for c in sparing.consumers() {
                tx.send(*c, message(tx.endpoint(), 0, 50)).await.unwrap();
            }
            tx.close().await.unwrap();
        }
        for handle in spared_rx {
            let got = handle.await.unwrap().expect("job 2 is unaffected");
            assert_eq!(got.values().sum::<u32>(), 2);
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_fails_the_old_jobs_and_serves_new_ones() {
    tokio::time::timeout(BOUND, async {
        let membership = Membership::new();
        let node0 = start_node(&membership, 53, 0, &tune).await;
        let node1 = start_node(&membership, 53, 1, &tune).await;
        let ids = [NodeId(0), NodeId(1)];
        let topology = Topology::all_to_all(&ids, 1, 1);
        let mut old_rx = node0
            .job(JobId(1), topology.clone())
            .consumer(0)
            .await
            .unwrap();
        let mut old_tx = node1
            .job(JobId(1), topology.clone())
            .producer(0)
            .await
            .unwrap();
        old_tx
            .send(old_rx.endpoint(), message(old_tx.endpoint(), 0, 10))
            .await
            .unwrap();
        assert!(old_rx.recv().await.unwrap().is_ok());

        node1.abort();
        let node1 = start_node(&membership, 53, 1, &tune).await;
        let err = old_rx
            .recv()
            .await
            .expect("an item")
            .expect_err("the old job fails");
        assert_eq!(
            err.exchange().and_then(ExchangeError::peer),
            Some(NodeId(1)),
            "{err}"
        );

        let mut rx = node0
            .job(JobId(2), topology.clone())
            .consumer(0)
            .await
            .unwrap();
        let _rx1 = node1
            .job(JobId(2), topology.clone())
            .consumer(0)
            .await
            .unwrap();
        let job = node1.job(JobId(2), topology.clone());
        let mut tx = job.producer(0).await.unwrap();
        tx.send(rx.endpoint(), message(tx.endpoint(), 0, 10))
            .await
            .unwrap();
        let (from, _) = rx.recv().await.unwrap().expect("the new job works");
        assert_eq!(from, tx.endpoint());
        drop(old_tx);
    })
    .await
    .expect("bounded");
}
