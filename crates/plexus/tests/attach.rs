//! Processes attached to their machine's agent, over real Unix sockets: the same job API
//! as an embedded node, every message delivered once and in order across nodes, credit
//! kept end to end (a consumer that stops reading holds at most its pool), a producer
//! dropped without closing is reported to its consumers, an agent that goes away ends the
//! attached processes' waits at once, and a user the policy does not name is refused.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{drain, message, start_nodes};
use plexus::{
    AttachPolicy, AttachedNode, Endpoint, Error, ExchangeError, JobId, Node, NodeId, Topology,
};

const BOUND: Duration = Duration::from_secs(60);

fn socket(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("plexus-attach-{name}-{}.sock", std::process::id()))
}

/// Two nodes, each serving its local socket; returns them and their sockets.
async fn agents(
    subnet: u8,
    name: &str,
    tune: impl Fn(&mut plexus::Config),
) -> (Vec<Node>, Vec<PathBuf>) {
    let nodes = start_nodes(subnet, 2, tune).await;
    let mut sockets = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let path = socket(&format!("{name}{i}"));
        node.serve_local(&path, AttachPolicy::owner_only().expect("own uid"))
            .expect("serve the local socket");
        sockets.push(path);
    }
    (nodes, sockets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_endpoints_exchange_everything_once_in_order() {
    tokio::time::timeout(BOUND, async {
        let (nodes, sockets) = agents(101, "all", |_| {}).await;
        let ids = [NodeId(0), NodeId(1)];
        let topology = Topology::all_to_all(&ids, 2, 2);
        let per_channel = 200u32;
        let mut tasks = Vec::new();
        for (n, path) in sockets.iter().enumerate() {
            for slot in 0..2 {
                // Every endpoint attaches on its own, as a process of its own would.
                let attached = Node::attach(path).await.expect("attach");
                assert_eq!(attached.id(), NodeId(n as u32));
                let job = attached.job(JobId(1), topology.clone());
                let consumers = topology.consumers().to_vec();
                tasks.push(tokio::spawn(async move {
                    let mut tx = job.producer(slot).await?;
                    let me = tx.endpoint();
                    for seq in 0..per_channel {
                        for &c in &consumers {
                            tx.send(c, message(me, seq, 3000)).await?;
                        }
                    }
                    tx.finish().await?;
                    drop(attached);
                    Ok::<_, Error>(())
                }));
                let attached = Node::attach(path).await.expect("attach");
                let job = attached.job(JobId(1), topology.clone());
                tasks.push(tokio::spawn(async move {
                    let got = drain(job.consumer(slot).await?).await?;
                    assert_eq!(got.len(), 4, "{got:?}");
                    assert!(got.values().all(|&n| n == per_channel), "{got:?}");
                    Ok(())
                }));
            }
        }
        for task in tasks {
            task.await.unwrap().expect("every endpoint succeeds");
        }
        // The processes dropped their handles: the agents keep nothing of the job.
        let mut retired = false;
        for _ in 0..500 {
            if nodes.iter().all(|n| n.stats().jobs == 0) {
                retired = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            retired,
            "{:?}",
            nodes.iter().map(Node::stats).collect::<Vec<_>>()
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_attached_consumer_holds_at_most_its_pool_and_slows_nobody() {
    const POOL: u64 = 256 * 1024;
    tokio::time::timeout(BOUND, async {
        let (nodes, sockets) = agents(102, "stall", |c| {
            c.max_message = 16 * 1024;
            c.credit_pool = POOL;
            c.max_grant = POOL;
        })
        .await;
        let producer = Endpoint::new(NodeId(0), 0);
        let (busy, stalled) = (Endpoint::new(NodeId(1), 0), Endpoint::new(NodeId(1), 1));
        let topology = Topology::new([producer], [busy, stalled]);
        let rx_side = Node::attach(&sockets[1]).await.unwrap();
        let rx_job = rx_side.job(JobId(1), topology.clone());
        let busy_rx = rx_job.consumer(0).await.unwrap();
        let mut stalled_rx = rx_job.consumer(1).await.unwrap();
        let tx_side = Node::attach(&sockets[0]).await.unwrap();
        let mut tx = tx_side.job(JobId(1), topology).producer(0).await.unwrap();
        let count = 2000u32;
        let reader = tokio::spawn(drain(busy_rx));
        // The stalled consumer reads one message, then nothing.
        let mut sent_to_stalled = 0u32;
        for seq in 0..count {
            tx.send(busy, message(producer, seq, 8000)).await.unwrap();
            if tx
                .try_send(stalled, message(producer, sent_to_stalled, 8000))
                .is_ok()
            {
                sent_to_stalled += 1;
            }
        }
        assert!(stalled_rx.recv().await.unwrap().is_ok());
        // What the agent and this process hold together, as the process sees it: the
        // same as the agent's own figures.
        let seen = stalled_rx.credit().await.expect("credit through the agent");
        let own = nodes[1]
            .consumer_credit(JobId(1), 1)
            .expect("open on the agent");
        assert_eq!(seen.capacity, POOL);
        assert_eq!(seen.peak, own.peak);
        assert!(seen.peak <= POOL && seen.peak > 0, "{seen:?}");
        tx.close().await.unwrap();
        let got = reader.await.unwrap().unwrap();
        assert_eq!(
            got.get(&producer),
            Some(&count),
            "the busy consumer got everything"
        );
        let credit = nodes[1]
            .consumer_credit(JobId(1), 1)
            .expect("open on the agent");
        assert!(credit.peak <= POOL, "{credit:?}");
        assert!(
            u64::from(sent_to_stalled) * plexus::message_cost(8000)
                <= POOL + plexus::message_cost(8000),
            "{sent_to_stalled} messages accepted for a consumer that read one"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_dropped_unclosed_is_reported_and_a_gone_agent_ends_every_wait() {
    tokio::time::timeout(BOUND, async {
        let (nodes, sockets) = agents(103, "gone", |_| {}).await;
        let p = Endpoint::new(NodeId(0), 0);
        let c = Endpoint::new(NodeId(1), 0);
        let topology = Topology::new([p], [c]);
        let rx_side = Node::attach(&sockets[1]).await.unwrap();
        let mut rx = rx_side.job(JobId(1), topology.clone()).consumer(0).await.unwrap();
        let tx_side = Node::attach(&sockets[0]).await.unwrap();
        let mut tx = tx_side.job(JobId(1), topology.clone()).producer(0).await.unwrap();
        tx.send(c, message(p, 0, 100)).await.unwrap();
        assert!(rx.recv().await.unwrap().is_ok());
        drop(tx);
        let err = rx.recv().await.expect("an item").expect_err("an abort");
        assert!(
            matches!(err.exchange(), Some(ExchangeError::ProducerAborted { producer }) if *producer == p),
            "{err}"
        );
        // A second job, waiting on the agent of node 1 when it goes away.
        let mut rx = rx_side.job(JobId(2), topology).consumer(0).await.unwrap();
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        nodes[1].abort();
        // The agent's node says it shut down, or the connection is found lost: either way
        // the wait ends at once with a clear error.
        let outcome = waiting.await.unwrap().expect("an item");
        assert!(
            matches!(
                outcome,
                Err(Error::AgentLost(_))
                    | Err(Error::Exchange(ExchangeError::NodeShutdown { node: NodeId(1) }))
            ),
            "{outcome:?}"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_the_policy_does_not_name_is_refused() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(104, 1, |_| {}).await;
        let path = socket("refused");
        let own = AttachPolicy::owner_only().unwrap();
        let others = AttachPolicy {
            uids: own.uids.iter().map(|u| u + 1).collect(),
            gid: None,
        };
        nodes[0].serve_local(&path, others).unwrap();
        let err = AttachedNode::connect(&path).await.expect_err("refused");
        assert!(matches!(err, Error::AgentLost(_)), "{err}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the socket is the owner's only");
    })
    .await
    .expect("bounded");
}

/// `ready` names a consumer only when a send to it was refused (or its channel failed),
/// as for an embedded producer: credit topped up while sending wakes nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_only_consumers_a_send_waited_for() {
    tokio::time::timeout(BOUND, async {
        let (_nodes, sockets) = agents(106, "ready", |_| {}).await;
        let me = Endpoint::new(NodeId(0), 0);
        let topology = Topology::new([me], [me]);
        let attached = Node::attach(&sockets[0]).await.unwrap();
        let job = attached.job(JobId(1), topology);
        let mut rx = job.consumer(0).await.unwrap();
        let mut tx = job.producer(0).await.unwrap();
        for seq in 0..10 {
            tx.send(me, message(me, seq, 100)).await.unwrap();
        }
        for _ in 0..10 {
            assert!(rx.recv().await.unwrap().is_ok());
        }
        let ready = tokio::time::timeout(Duration::from_millis(300), tx.ready()).await;
        assert!(
            ready.is_err(),
            "ready() named {ready:?} though nothing waited"
        );
    })
    .await
    .expect("bounded");
}
