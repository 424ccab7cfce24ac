//! Links under mutual TLS 1.3, over real loopback sockets: an all-to-all exchange with
//! links killed mid-transfer resumes over new TLS connections with nothing lost or
//! duplicated, and a node whose certificate names another node never gets a link.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{drain, message, start_tls_node, tls_identities};
use plexus::{Endpoint, Error, JobId, Membership, Node, NodeId, Topology};

const BOUND: Duration = Duration::from_secs(60);

fn tune(c: &mut plexus::Config) {
    c.credit_pool = 256 * 1024;
    c.max_message = 16 * 1024;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_under_tls_deliver_and_resume_after_cuts() {
    tokio::time::timeout(BOUND, async {
        let (subnet, n, m, per_channel) = (95u8, 3u32, 2u32, 300u32);
        let membership = Membership::new();
        let mut nodes = Vec::new();
        for (i, identity) in tls_identities(n, &[]).into_iter().enumerate() {
            nodes.push(start_tls_node(&membership, subnet, i as u32, identity, &tune).await);
        }
        let ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
        let topology = Topology::all_to_all(&ids, m, m);
        let kills = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
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
                    while seq < per_channel || kills.load(Ordering::Relaxed) < 3 {
                        for &c in &targets {
                            tx.send(c, message(me, seq, 3000)).await?;
                        }
                        if seq.is_multiple_of(20) {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        seq += 1;
                    }
                    tx.close().await?;
                    Ok::<_, Error>((me, seq))
                }));
            }
        }
        let chaos = common::kill_links_until(
            subnet,
            n,
            Duration::from_millis(15),
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
        let resumes: usize = nodes.iter().map(|n| n.resume_times().len()).sum();
        assert!(resumes >= 1, "no link resumed over TLS");
        for node in &nodes {
            node.shutdown().await;
        }
    })
    .await
    .expect("bounded");
}

/// Node 2 holds a certificate (from the cluster's authority) that names node 1: whoever
/// dials whom, it gets no link to node 0, and a job between them fails with the link,
/// while node 0 and node 1 exchange as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_another_node_gets_no_link() {
    tokio::time::timeout(BOUND, async {
        let membership = Membership::new();
        let short = |c: &mut plexus::Config| {
            tune(c);
            c.grace_period = Duration::from_secs(2);
        };
        let mut nodes = Vec::new();
        for (i, identity) in tls_identities(3, &[(2, 1)]).into_iter().enumerate() {
            nodes.push(start_tls_node(&membership, 96, i as u32, identity, &short).await);
        }
        let (p0, c1, c2) = (
            Endpoint::new(NodeId(0), 0),
            Endpoint::new(NodeId(1), 0),
            Endpoint::new(NodeId(2), 0),
        );
        let good = Topology::new([p0], [c1]);
        let rx = nodes[1]
            .job(JobId(1), good.clone())
            .consumer(0)
            .await
            .unwrap();
        let mut tx = nodes[0].job(JobId(1), good).producer(0).await.unwrap();
        tx.send(c1, message(p0, 0, 100)).await.unwrap();
        tx.close().await.unwrap();
        assert_eq!(drain(rx).await.expect("delivered").get(&p0), Some(&1));

        let bad = Topology::new([p0], [c2]);
        let _rx = nodes[2]
            .job(JobId(2), bad.clone())
            .consumer(0)
            .await
            .unwrap();
        let mut tx = nodes[0].job(JobId(2), bad).producer(0).await.unwrap();
        let sent = async {
            tx.send(c2, message(p0, 0, 100)).await?;
            tx.finish().await
        };
        let err = sent
            .await
            .expect_err("no link to a node whose certificate names another");
        assert!(err.to_string().contains("node 2"), "{err}");
        assert_eq!(nodes[2].stats().links_up, 0, "{:?}", nodes[2].stats());
        for node in &nodes {
            node.shutdown().await;
        }
    })
    .await
    .expect("bounded");
}
