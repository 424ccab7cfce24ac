//! Integration tests over real loopback sockets: nodes in this process, each on its own
//! loopback address, exchanging data through the public API.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{drain, message, start_nodes, Exchange};
use plexus::{Endpoint, ExchangeError, JobId, Node, NodeId, Topology, TrySend};

/// Every test is bounded: a hang fails the test instead of blocking the suite.
const BOUND: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_to_all_delivers_everything_once_in_order_over_one_link_per_pair() {
    tokio::time::timeout(BOUND, async {
        let (n, m, k, per_channel) = (4u32, 2u32, 2u32, 40u32);
        // A small pool forces many credit round trips.
        let nodes = start_nodes(31, n, |c| {
            c.credit_pool = 64 * 1024;
            c.max_message = 16 * 1024;
        })
        .await;
        let ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
        let topology = Topology::all_to_all(&ids, m, m);
        let mut exchange = Exchange::default();
        for job in 1..=k {
            let len = |seq| 16 + (seq as usize * 997) % 9000;
            exchange
                .open(
                    &nodes,
                    JobId(u64::from(job)),
                    &topology,
                    m,
                    per_channel,
                    len,
                )
                .await;
        }
        let Exchange {
            consumers,
            producers,
        } = exchange;
        let mut peak_links = 0;
        for p in producers {
            p.await.unwrap().unwrap();
            peak_links = peak_links.max(max_links(31, n));
        }
        for c in consumers {
            let got = c.await.unwrap().unwrap();
            assert_eq!(got.len(), (n * m) as usize, "a producer is missing");
            assert!(got.values().all(|&count| count == per_channel), "{got:?}");
        }
        assert!(
            peak_links <= (n - 1) as usize,
            "a node held {peak_links} links"
        );
        assert!(peak_links >= 1, "the OS shows no link at all");
        for node in &nodes {
            node.shutdown().await;
        }
    })
    .await
    .expect("bounded");
}

/// Most established connections any node of `127.0.<subnet>.1..=n` holds, per the OS.
fn max_links(subnet: u8, n: u32) -> usize {
    (1..=n)
        .map(|i| common::established_at(Ipv4Addr::new(127, 0, subnet, i as u8)))
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_does_not_hold_up_its_neighbour_on_the_same_link() {
    tokio::time::timeout(BOUND, async {
        let pool = 256 * 1024;
        let nodes = start_nodes(32, 2, |c| {
            c.credit_pool = pool;
            c.max_message = 64 * 1024;
        })
        .await;
        let producer = Endpoint::new(NodeId(0), 0);
        let (healthy, stalled) = (Endpoint::new(NodeId(1), 0), Endpoint::new(NodeId(1), 1));
        let topology = Topology::new([producer], [healthy, stalled]);
        let job_on = |node: &Node| node.job(JobId(9), topology.clone());
        let rx_healthy = job_on(&nodes[1]).consumer(0).await.unwrap();
        let rx_stalled = job_on(&nodes[1]).consumer(1).await.unwrap();
        let mut tx = job_on(&nodes[0]).producer(0).await.unwrap();
        let reader = tokio::spawn(drain(rx_healthy));

        // 16 MiB to the healthy consumer: 64 times the stalled consumer's pool.
        let count = 256u32;
        let mut stalled_sent = 0u32;
        let mut stalled_refused = false;
        for seq in 0..count {
            tx.send(healthy, message(producer, seq, 64 * 1024))
                .await
                .unwrap();
            match tx.try_send(stalled, message(producer, stalled_sent, 64 * 1024)) {
                Ok(()) => stalled_sent += 1,
                Err(TrySend::NoCredit(_)) => stalled_refused = true,
                Err(TrySend::Failed(e, _)) => panic!("stalled channel failed: {e}"),
            }
        }
        assert!(
            stalled_refused,
            "the stalled consumer's channel never ran out of credit"
        );
        let credit = nodes[1].consumer_credit(JobId(9), 1).unwrap();
        assert_eq!(
            rx_stalled.credit().await.unwrap(),
            credit,
            "the consumer reads its own figures"
        );
        assert!(
            credit.peak <= pool,
            "stalled channel held {} > pool {pool}",
            credit.peak
        );
        assert!(
            u64::from(stalled_sent) * 64 * 1024 <= pool,
            "{stalled_sent} messages accepted for a consumer that reads nothing"
        );
        tx.close().await.unwrap();
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got.get(&producer), Some(&count));
        // The stalled consumer now reads and gets exactly what was accepted for it.
        let got = drain(rx_stalled).await.unwrap();
        assert_eq!(got.get(&producer).copied().unwrap_or(0), stalled_sent);
        for node in &nodes {
            node.shutdown().await;
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_producer_is_reported_as_aborted() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(33, 2, |_| {}).await;
        let (p0, p1) = (Endpoint::new(NodeId(0), 0), Endpoint::new(NodeId(0), 1));
        let c = Endpoint::new(NodeId(1), 0);
        let topology = Topology::new([p0, p1], [c]);
        let mut rx = nodes[1]
            .job(JobId(1), topology.clone())
            .consumer(0)
            .await
            .unwrap();
        let job = nodes[0].job(JobId(1), topology);
        let mut good = job.producer(0).await.unwrap();
        let mut bad = job.producer(1).await.unwrap();
        bad.send(c, message(p1, 0, 100)).await.unwrap();
        drop(bad);
        good.send(c, message(p0, 0, 100)).await.unwrap();
        good.close().await.unwrap();
        let mut aborted = false;
        let mut from_good = 0;
        while let Some(item) = rx.recv().await {
            match item {
                Ok((from, _)) if from == p0 => from_good += 1,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(
                        e.exchange(),
                        Some(&ExchangeError::ProducerAborted { producer: p1 })
                    );
                    aborted = true;
                }
            }
        }
        assert!(aborted, "the abort was not reported");
        assert_eq!(from_good, 1);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_goes_away_fails_its_channels_instead_of_hanging() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(34, 3, |_| {}).await;
        let ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
        let topology = Topology::all_to_all(&ids, 1, 1);
        let job = |i: usize| nodes[i].job(JobId(5), topology.clone());
        let mut rx0 = job(0).consumer(0).await.unwrap();
        let mut tx2 = job(2).producer(0).await.unwrap();
        let c0 = Endpoint::new(NodeId(0), 0);
        tx2.send(c0, message(tx2.endpoint(), 0, 10)).await.unwrap();
        let first = rx0.recv().await.unwrap().unwrap();
        assert_eq!(first.0, tx2.endpoint());
        nodes[2].abort();
        // Node 0 must report the loss of node 2 (and, since node 1 never produced, keep
        // waiting for node 1 only; so the first thing it sees is node 2's failure).
        let err = rx0.recv().await.expect("an item").expect_err("an error");
        match err.exchange() {
            Some(ExchangeError::LinkFailed { peer, .. }) => assert_eq!(*peer, NodeId(2)),
            other => panic!("expected LinkFailed for node 2, got {other:?}"),
        }
    })
    .await
    .expect("bounded");
}

/// While a node's accept loop cannot run (its runtime's only thread is busy), a burst of
/// more connections than a default listen backlog holds (128) waits in its backlog instead
/// of having SYNs dropped, which the kernel would retry only after 1 s, 3 s, 7 s...
#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_connections_waits_in_the_backlog() {
    const BURST: usize = 300;
    let nodes = start_nodes(91, 1, |_| {}).await;
    let addr = nodes[0].local_addr();
    let streams: Vec<std::net::TcpStream> = (0..BURST)
        .map(|i| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                .unwrap_or_else(|e| panic!("connection {i} of {BURST}: {e}"))
        })
        .collect();
    drop(streams);
    nodes[0].shutdown().await;
}
