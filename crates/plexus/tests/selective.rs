//! Selective receive over real sockets: a consumer merges sorted streams by reading the
//! producer with the smallest key next, or reads one side of a join to its end before
//! the other, with a pool of a few messages and far more data than it holds; the run
//! completes in order, and what the consumer holds stays within its pool.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::start_nodes;
use plexus::{Endpoint, JobId, NodeId, Topology};

const BOUND: Duration = Duration::from_secs(60);
const MESSAGE: usize = 4096;
const PER_PRODUCER: u64 = 500;

fn keyed(key: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(MESSAGE);
    b.put_u64_le(key);
    b.resize(MESSAGE, (key % 251) as u8);
    b.freeze()
}

fn key_of(m: &[u8]) -> u64 {
    u64::from_le_bytes(m[..8].try_into().expect("8 bytes"))
}

/// Four producers (two per node) and one consumer on node 1, whose pool holds three
/// messages; producer `i` sends the keys `i, i + 4, i + 8, …`.
async fn setup(subnet: u8) -> (Vec<plexus::Node>, plexus::Consumer, Vec<Endpoint>) {
    let nodes = start_nodes(subnet, 2, |c| {
        c.max_message = MESSAGE as u32;
        c.credit_pool = 3 * plexus::message_cost(MESSAGE);
        c.max_grant = c.credit_pool;
    })
    .await;
    let producers: Vec<Endpoint> = (0..2)
        .flat_map(|n| (0..2).map(move |s| Endpoint::new(NodeId(n), s)))
        .collect();
    let consumer = Endpoint::new(NodeId(1), 0);
    let topology = Topology::new(producers.clone(), [consumer]);
    let rx = nodes[1]
        .job(JobId(1), topology.clone())
        .consumer(0)
        .await
        .expect("the consumer opens");
    for (i, p) in producers.iter().enumerate() {
        let mut tx = nodes[p.node.0 as usize]
            .job(JobId(1), topology.clone())
            .producer(p.slot)
            .await
            .expect("the producer opens");
        tokio::spawn(async move {
            for k in 0..PER_PRODUCER {
                tx.send(consumer, keyed(k * 4 + i as u64)).await?;
            }
            tx.finish().await
        });
    }
    (nodes, rx, producers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_of_sorted_streams_reads_one_producer_at_a_time() {
    tokio::time::timeout(BOUND, async {
        let (nodes, mut rx, producers) = setup(91).await;
        let mut heads = Vec::new();
        for p in &producers {
            let m = rx.recv_from(*p).await.expect("a head").expect("no error");
            heads.push(Some(key_of(&m)));
        }
        let mut merged = Vec::new();
        while let Some((i, key)) = heads
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.map(|k| (i, k)))
            .min_by_key(|&(_, k)| k)
        {
            merged.push(key);
            heads[i] = rx
                .recv_from(producers[i])
                .await
                .map(|m| key_of(&m.expect("no error")));
        }
        assert_eq!(merged, (0..4 * PER_PRODUCER).collect::<Vec<_>>());
        let credit = nodes[1].consumer_credit(JobId(1), 0).unwrap();
        assert!(credit.peak <= credit.capacity, "{credit:?}");
        assert!(rx.recv().await.is_none(), "the stream ended");
    })
    .await
    .expect("bounded: no deadlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_side_is_read_to_its_end_before_the_probe_side() {
    tokio::time::timeout(BOUND, async {
        let (_nodes, mut rx, producers) = setup(92).await;
        let (build, probe) = producers.split_at(2);
        let mut count = 0;
        while let Some(item) = rx.recv_from_any(build).await {
            let (from, _) = item.expect("no error");
            assert!(build.contains(&from));
            count += 1;
        }
        assert_eq!(count, 2 * PER_PRODUCER, "the whole build side");
        let mut count = 0;
        while let Some(item) = rx.recv_from_any(probe).await {
            let (from, _) = item.expect("no error");
            assert!(probe.contains(&from));
            count += 1;
        }
        assert_eq!(count, 2 * PER_PRODUCER, "the whole probe side");
    })
    .await
    .expect("bounded: no deadlock");
}
