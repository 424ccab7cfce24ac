//! A node's life over real sockets: a clean shutdown fails the jobs touching the node on
//! its peers at once (cause `Shutdown`) and leaves other jobs alone; dropping the last
//! handle does the same; `Producer::finish` returns once everything was delivered; job ids
//! are not reused; calls from threads outside the runtime work; idle links close and
//! reopen on demand.

mod common;

use std::time::{Duration, Instant};

use common::{drain, message, start_nodes};
use plexus::{Endpoint, ExchangeError, JobId, LinkCause, NodeId, Topology};
use plexus_proto::frame::GoAwayCode;

const BOUND: Duration = Duration::from_secs(60);

fn ep(node: u32, slot: u32) -> Endpoint {
    Endpoint::new(NodeId(node), slot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_fails_the_jobs_touching_the_node_at_once_and_no_others() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(81, 3, |_| {}).await;
        // Job 1 spans nodes 0 and 1; job 2 spans nodes 0 and 2.
        let t1 = Topology::new([ep(1, 0)], [ep(0, 0)]);
        let t2 = Topology::new([ep(2, 0)], [ep(0, 0)]);
        let mut rx1 = nodes[0]
            .job(JobId(1), t1.clone())
            .consumer(0)
            .await
            .unwrap();
        let mut rx2 = nodes[0]
            .job(JobId(2), t2.clone())
            .consumer(0)
            .await
            .unwrap();
        let mut tx1 = nodes[1].job(JobId(1), t1).producer(0).await.unwrap();
        let mut tx2 = nodes[2].job(JobId(2), t2).producer(0).await.unwrap();
        tx1.send(ep(0, 0), message(ep(1, 0), 0, 100)).await.unwrap();
        tx2.send(ep(0, 0), message(ep(2, 0), 0, 100)).await.unwrap();
        assert!(rx1.recv().await.unwrap().is_ok());
        assert!(rx2.recv().await.unwrap().is_ok());

        let start = Instant::now();
        let leaving = nodes[1].clone();
        let shutdown = tokio::spawn(async move { leaving.shutdown().await });
        let err = rx1.recv().await.expect("an item").expect_err("job 1 fails");
        let took = start.elapsed();
        shutdown.await.unwrap();
        assert!(
            matches!(
                err.exchange(),
                Some(ExchangeError::LinkFailed {
                    peer: NodeId(1),
                    cause: LinkCause::GoAway(GoAwayCode::Shutdown)
                })
            ),
            "{err}"
        );
        assert!(took < Duration::from_millis(100), "took {took:?}");
        // The node itself refuses new work, and its own endpoints say why.
        let err = tx1
            .send(ep(0, 0), message(ep(1, 0), 1, 100))
            .await
            .unwrap_err();
        assert!(
            matches!(err.exchange(), Some(ExchangeError::NodeShutdown { .. })),
            "{err}"
        );
        // Job 2 goes on.
        tx2.send(ep(0, 0), message(ep(2, 0), 1, 100)).await.unwrap();
        tx2.finish().await.unwrap();
        let (from, _) = rx2.recv().await.expect("a message").expect("job 2 is fine");
        assert_eq!(from, ep(2, 0));
        assert!(rx2.recv().await.is_none(), "job 2 ends normally");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_node_handle_stops_it_and_tells_its_peers() {
    tokio::time::timeout(BOUND, async {
        let mut nodes = start_nodes(82, 2, |_| {}).await;
        let t = Topology::new([ep(1, 0)], [ep(0, 0)]);
        let mut rx = nodes[0].job(JobId(1), t.clone()).consumer(0).await.unwrap();
        let job1 = nodes[1].job(JobId(1), t);
        let mut tx = job1.producer(0).await.unwrap();
        tx.send(ep(0, 0), message(ep(1, 0), 0, 100)).await.unwrap();
        assert!(rx.recv().await.unwrap().is_ok());
        let addr = nodes[1].local_addr();
        let start = Instant::now();
        drop(nodes.pop());
        let err = rx
            .recv()
            .await
            .expect("an item")
            .expect_err("the job fails");
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        assert!(
            matches!(
                err.exchange(),
                Some(ExchangeError::LinkFailed {
                    cause: LinkCause::GoAway(GoAwayCode::Shutdown),
                    ..
                })
            ),
            "{err}"
        );
        // Its listener goes with its tasks.
        let mut refused = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "the dropped node still accepts connections");
        drop((tx, job1));
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_returns_once_the_consumers_node_has_everything() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(83, 2, |_| {}).await;
        let t = Topology::new([ep(1, 0)], [ep(0, 0), ep(0, 1)]);
        let rx0 = nodes[0].job(JobId(1), t.clone()).consumer(0).await.unwrap();
        let rx1 = nodes[0].job(JobId(1), t.clone()).consumer(1).await.unwrap();
        let mut tx = nodes[1].job(JobId(1), t).producer(0).await.unwrap();
        for seq in 0..20 {
            for c in [ep(0, 0), ep(0, 1)] {
                tx.send(c, message(ep(1, 0), seq, 1000)).await.unwrap();
            }
        }
        // Nobody has read yet: the data sits in the consumers' queues, within credit.
        tx.finish().await.expect("delivered");
        for rx in [rx0, rx1] {
            let got = drain(rx).await.unwrap();
            assert_eq!(got.get(&ep(1, 0)), Some(&20));
        }

        // A consumer that goes away before the end: finish reports it.
        let t = Topology::new([ep(1, 0)], [ep(0, 0)]);
        let rx = nodes[0].job(JobId(2), t.clone()).consumer(0).await.unwrap();
        let mut tx = nodes[1].job(JobId(2), t).producer(0).await.unwrap();
        tx.send(ep(0, 0), message(ep(1, 0), 0, 10)).await.unwrap();
        drop(rx);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = tx.finish().await.expect_err("the consumer is gone");
        assert!(
            matches!(err.exchange(), Some(ExchangeError::Cancelled { .. })),
            "{err}"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ids_are_not_reused_and_one_id_has_one_topology() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(84, 1, |_| {}).await;
        let t = Topology::all_to_all(&[NodeId(0)], 1, 1);
        {
            let job = nodes[0].job(JobId(1), t.clone());
            let other = nodes[0].job(JobId(1), Topology::all_to_all(&[NodeId(0)], 2, 1));
            let err = other.producer(0).await.unwrap_err();
            assert!(
                matches!(err.exchange(), Some(ExchangeError::TopologyMismatch { .. })),
                "{err}"
            );
            let rx = job.consumer(0).await.unwrap();
            let tx = job.producer(0).await.unwrap();
            tx.finish().await.unwrap();
            assert!(drain(rx).await.unwrap().is_empty());
        }
        let err = nodes[0].job(JobId(1), t).producer(0).await.unwrap_err();
        assert!(
            matches!(err.exchange(), Some(ExchangeError::JobFinished { .. })),
            "{err}"
        );
        let stats = nodes[0].stats();
        assert_eq!((stats.jobs, stats.finished_jobs), (0, 1), "{stats:?}");
    })
    .await
    .expect("bounded");
}

/// `try_send` to a peer with no link yet starts a dial: from a thread outside the
/// runtime, that works instead of panicking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_threads_outside_the_runtime_work() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(85, 2, |_| {}).await;
        let t = Topology::new([ep(1, 0)], [ep(0, 0)]);
        let mut tx = nodes[1].job(JobId(1), t.clone()).producer(0).await.unwrap();
        let outside = std::thread::spawn(move || {
            let outcome = tx.has_credit(ep(0, 0), 10);
            (tx, outcome.is_ok())
        });
        let (mut tx, ok) = outside.join().expect("no panic outside the runtime");
        assert!(ok);
        let rx = nodes[0].job(JobId(1), t).consumer(0).await.unwrap();
        tx.send(ep(0, 0), message(ep(1, 0), 0, 10)).await.unwrap();
        tx.finish().await.unwrap();
        assert_eq!(drain(rx).await.unwrap().get(&ep(1, 0)), Some(&1));
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_links_close_and_reopen_on_demand() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(86, 2, |c| {
            c.link_idle_close = Some(Duration::from_millis(300));
        })
        .await;
        for job in 1..=2u64 {
            let t = Topology::new([ep(1, 0)], [ep(0, 0)]);
            let rx = nodes[0]
                .job(JobId(job), t.clone())
                .consumer(0)
                .await
                .unwrap();
            let mut tx = nodes[1].job(JobId(job), t).producer(0).await.unwrap();
            tx.send(ep(0, 0), message(ep(1, 0), 0, 10)).await.unwrap();
            tx.finish().await.unwrap();
            assert_eq!(drain(rx).await.unwrap().get(&ep(1, 0)), Some(&1));
            assert_eq!(nodes[0].stats().links_up, 1);
            let mut closed = false;
            for _ in 0..300 {
                if nodes.iter().all(|n| n.stats().links_up == 0) {
                    closed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(closed, "the idle link stayed open: {:?}", nodes[0].stats());
        }
        // The second job resumed the session: nothing was declared dead.
        assert!(nodes.iter().all(|n| n.resume_times().len() <= 2));
    })
    .await
    .expect("bounded");
}

/// A peer (a member: it proves it holds the secret) that takes credit, then stops
/// reading: the link's writer blocks in a socket
/// write. When the link closes (the peer went silent past the idle timeout), the blocked
/// writer gives up after a short grace, so the connection's tasks end and the core hears
/// that it is gone, instead of a writer waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_blocked_on_a_peer_that_stopped_reading_ends_when_the_link_closes() {
    use bytes::BytesMut;
    use plexus_proto::auth::{Claim, Role, Transcript};
    use plexus_proto::codec::{encode, Decoder};
    use plexus_proto::frame::{Frame, PROTOCOL_VERSION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    tokio::time::timeout(BOUND, async {
        let membership = plexus::Membership::new();
        let tune = |c: &mut plexus::Config| {
            c.idle_timeout = Duration::from_millis(500);
            c.ping_interval = Duration::from_millis(100);
        };
        let node = common::start_node(&membership, 87, 0, &tune).await;
        // Node 1 is a raw socket speaking just enough of the protocol.
        let listener = tokio::net::TcpListener::bind("127.0.87.2:0").await.unwrap();
        membership.insert(NodeId(1), listener.local_addr().unwrap());
        let t = Topology::new([ep(0, 0)], [ep(1, 0)]);
        let mut tx = node.job(JobId(1), t).producer(0).await.unwrap();
        assert!(matches!(
            tx.try_send(ep(1, 0), bytes::Bytes::from(vec![0u8; 60_000])),
            Err(plexus::TrySend::NoCredit(_))
        ));
        let (mut raw, _) = listener.accept().await.unwrap();
        let decoder = Decoder::new(1 << 21);
        let mut inbox = BytesMut::new();
        let mut reply = BytesMut::new();
        let mut asked = false;
        while !asked {
            raw.read_buf(&mut inbox).await.unwrap();
            while let Some(frame) = decoder.decode(&mut inbox).unwrap() {
                match frame {
                    Frame::Challenge {
                        version,
                        cluster,
                        node,
                        incarnation,
                        nonce,
                    } => {
                        let ours = Claim {
                            node: NodeId(1),
                            incarnation: 77,
                            nonce: [9; 32],
                        };
                        let transcript = Transcript {
                            version,
                            cluster,
                            dialler: Claim {
                                node,
                                incarnation,
                                nonce,
                            },
                            acceptor: ours,
                        };
                        encode(
                            &Frame::Challenge {
                                version,
                                cluster,
                                node: ours.node,
                                incarnation: ours.incarnation,
                                nonce: ours.nonce,
                            },
                            &mut reply,
                        );
                        let proof = common::secret().prove(Role::Acceptor, &transcript);
                        encode(&Frame::Proof { proof }, &mut reply);
                    }
                    Frame::Hello { max_message, .. } => encode(
                        &Frame::Hello {
                            version: PROTOCOL_VERSION,
                            cluster: common::CLUSTER,
                            node: NodeId(1),
                            incarnation: 77,
                            peer_incarnation: 0,
                            received: 0,
                            max_message,
                        },
                        &mut reply,
                    ),
                    Frame::Backlog { channel, .. } => {
                        encode(
                            &Frame::Credit {
                                channel,
                                bytes: 64 << 20,
                            },
                            &mut reply,
                        );
                        asked = true;
                    }
                    _ => {}
                }
            }
            raw.write_all(&reply.split()).await.unwrap();
        }
        // Far more than the sockets' buffers hold, to a peer that reads no more.
        let mut queued = 0;
        while queued < 48 << 20 {
            match tx.try_send(ep(1, 0), bytes::Bytes::from(vec![1u8; 60_000])) {
                Ok(()) => queued += 60_000,
                Err(plexus::TrySend::NoCredit(_)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let mut ended = false;
        for _ in 0..500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if node.stats().closing_connections == 0 && node.stats().links_up == 0 {
                ended = true;
                break;
            }
        }
        assert!(
            ended,
            "the closed link's writer is still blocked: {:?}",
            node.stats()
        );
        drop(raw);
    })
    .await
    .expect("bounded");
}
