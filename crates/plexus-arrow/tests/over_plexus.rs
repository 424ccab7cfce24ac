//! Batches through real plexus nodes on loopback: every consumer gets every producer's
//! batches, in order, equal to what was sent (split by rows where they were large).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use plexus::{Config, Endpoint, JobId, Membership, Node, NodeId, Topology};
use plexus_arrow::{BatchReceiver, BatchSender};

const MAX_MESSAGE: usize = 64 * 1024;

async fn start_nodes(subnet: u8, n: u32) -> Vec<Node> {
    let membership = Membership::new();
    let secret = plexus::Secret::new(*b"the arrow adapter's test secret").expect("long enough");
    let mut nodes = Vec::new();
    for id in 0..n {
        let mut config = Config::new(NodeId(id), 7, secret.clone());
        config.max_message = MAX_MESSAGE as u32;
        let ip = Ipv4Addr::new(127, 0, subnet, (id + 1) as u8);
        let node = Node::builder()
            .config(config)
            .listen(SocketAddr::new(IpAddr::V4(ip), 0))
            .membership(membership.clone())
            .start()
            .await
            .expect("node starts");
        nodes.push(node);
    }
    nodes
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]))
}

/// Batch `i` from producer `p` to consumer `c`: 2000 rows whose keys say where they are.
fn batch(p: u32, c: u32, i: i64) -> RecordBatch {
    let base = (i64::from(p) << 40) | (i64::from(c) << 32) | (i << 16);
    let keys = Int64Array::from_iter_values((0..2000).map(|r| base + r));
    let text =
        StringArray::from_iter((0..2000).map(|r| (r % 7 != 0).then(|| format!("row {r} of {i}"))));
    RecordBatch::try_new(schema(), vec![Arc::new(keys), Arc::new(text)]).expect("batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_gets_every_producers_batches_in_order() {
    let nodes = start_nodes(91, 2).await;
    let ids = [NodeId(0), NodeId(1)];
    let topology = Topology::all_to_all(&ids, 1, 2);
    let jobs: Vec<_> = nodes
        .iter()
        .map(|n| n.job(JobId(1), topology.clone()))
        .collect();
    let consumers: Vec<Endpoint> = topology.consumers().to_vec();
    let mut receivers = Vec::new();
    for job in &jobs {
        for slot in 0..2 {
            receivers.push(BatchReceiver::new(
                job.consumer(slot).await.expect("consumer"),
            ));
        }
    }
    let mut senders = Vec::new();
    for job in &jobs {
        let producer = job.producer(0).await.expect("producer");
        senders.push(BatchSender::new(producer, schema(), MAX_MESSAGE));
    }
    let sending: Vec<_> = senders
        .into_iter()
        .map(|mut tx| {
            let consumers = consumers.clone();
            tokio::spawn(async move {
                let p = tx.producer().endpoint().node.0;
                for i in 0..10 {
                    for (c, &to) in consumers.iter().enumerate() {
                        tx.queue(to, &batch(p, c as u32, i)).expect("queue");
                    }
                    tx.push().expect("push");
                }
                tx.finish().await.expect("finish");
            })
        })
        .collect();
    for (c, mut rx) in receivers.into_iter().enumerate() {
        let mut next = [0i64; 2];
        while let Some(item) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("no hang")
        {
            let (from, got) = item.expect("a batch");
            let p = from.node.0;
            // A batch may arrive split by rows: match the rows it carries.
            let keys = got
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("keys");
            let first = keys.value(0);
            let i = (first >> 16) & 0xffff;
            let whole = batch(p, c as u32, i);
            let offset = (first & 0xffff) as usize;
            assert_eq!(
                got,
                whole.slice(offset, got.num_rows()),
                "producer {p}, consumer {c}"
            );
            if offset + got.num_rows() == whole.num_rows() {
                assert_eq!(i, next[p as usize], "batches of producer {p} out of order");
                next[p as usize] += 1;
            }
        }
        assert_eq!(
            next,
            [10, 10],
            "consumer {c} got every batch of both producers"
        );
    }
    for s in sending {
        s.await.expect("sender");
    }
}
