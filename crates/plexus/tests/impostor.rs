//! Peers that do not hold the cluster's secret, over real loopback sockets: impostors that
//! claim to be members (restarted, with a new incarnation) while the members exchange are
//! refused before they change anything, and connections that never prove anything are
//! capped per source address.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::{drain, message, start_nodes, Exchange};
use plexus::{JobId, Node, NodeId, Secret, Topology};
use plexus_proto::auth::{Claim, Role, Transcript};
use plexus_proto::codec::{encode, Decoder};
use plexus_proto::frame::{Frame, GoAwayCode, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const BOUND: Duration = Duration::from_secs(60);

/// Connects to `to` from `from`.
async fn connect(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.into(), 0))?;
    socket.connect(to).await
}

/// Reads frames until the node closes the connection; whether it said `Unauthenticated`.
async fn refused(stream: &mut TcpStream, inbox: &mut BytesMut) -> bool {
    let decoder = Decoder::new(1 << 16);
    let mut unauthenticated = false;
    loop {
        while let Ok(Some(frame)) = decoder.decode(inbox) {
            if frame
                == (Frame::GoAway {
                    code: GoAwayCode::Unauthenticated,
                })
            {
                unauthenticated = true;
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read_buf(inbox)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return unauthenticated,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// One impostor attempt on `to`: claims to be `claimed` just restarted, proves with
/// `secret` (a wrong one) or skips the proof (`None`), and says `Hello` anyway. Whether the
/// node refused it.
async fn impersonate(to: SocketAddr, claimed: NodeId, secret: Option<&Secret>) -> bool {
    let Ok(mut stream) = connect(Ipv4Addr::new(127, 0, 93, 99), to).await else {
        return false;
    };
    let incarnation = 0xBAD0_0000 + u64::from(claimed.0);
    let ours = Claim {
        node: claimed,
        incarnation,
        nonce: [3; 32],
    };
    let mut out = BytesMut::new();
    let mut inbox = BytesMut::new();
    if let Some(secret) = secret {
        encode(
            &Frame::Challenge {
                version: PROTOCOL_VERSION,
                cluster: common::CLUSTER,
                node: claimed,
                incarnation,
                nonce: ours.nonce,
            },
            &mut out,
        );
        if stream.write_all(&out.split()).await.is_err() {
            return false;
        }
        let decoder = Decoder::new(1 << 16);
        let acceptor = loop {
            if let Ok(Some(Frame::Challenge {
                node,
                incarnation,
                nonce,
                ..
            })) = decoder.decode(&mut inbox)
            {
                break Claim {
                    node,
                    incarnation,
                    nonce,
                };
            }
            match stream.read_buf(&mut inbox).await {
                Ok(n) if n > 0 => {}
                _ => return false,
            }
        };
        let transcript = Transcript {
            version: PROTOCOL_VERSION,
            cluster: common::CLUSTER,
            dialler: ours,
            acceptor,
        };
        let proof = secret.prove(Role::Dialler, &transcript);
        encode(&Frame::Proof { proof }, &mut out);
    }
    encode(
        &Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster: common::CLUSTER,
            node: claimed,
            incarnation,
            peer_incarnation: 0,
            received: 0,
            max_message: 1 << 20,
        },
        &mut out,
    );
    // A write may fail once the node has closed: it refused.
    let _ = stream.write_all(&out).await;
    refused(&mut stream, &mut inbox).await
}

/// Three nodes exchange all to all while impostors, with a wrong secret or none, keep
/// claiming to be each of them (restarted) to each of the others: every attempt is
/// refused as unauthenticated, and the exchange delivers everything without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostors_dialling_every_node_change_nothing() {
    tokio::time::timeout(BOUND, async {
        let (n, m, per_channel) = (3u32, 2u32, 200u32);
        let nodes = start_nodes(93, n, |c| {
            c.credit_pool = 64 * 1024;
            c.max_message = 16 * 1024;
        })
        .await;
        let ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
        let addrs: Vec<SocketAddr> = nodes.iter().map(Node::local_addr).collect();
        let topology = Topology::all_to_all(&ids, m, m);
        let mut exchange = Exchange::default();
        exchange
            .open(&nodes, JobId(1), &topology, m, per_channel, |_| 2000)
            .await;
        let Exchange {
            consumers,
            producers,
        } = exchange;
        let wrong = Secret::new(*b"a guess at the cluster's secret").expect("long enough");
        let attempts = Arc::new(AtomicUsize::new(0));
        let refusals = Arc::new(AtomicUsize::new(0));
        let impostors = tokio::spawn({
            let (attempts, refusals) = (attempts.clone(), refusals.clone());
            async move {
                for round in 0.. {
                    for (i, &to) in addrs.iter().enumerate() {
                        for &claimed in &ids {
                            if claimed.0 as usize == i {
                                continue;
                            }
                            let secret = (round % 2 == 0).then_some(&wrong);
                            attempts.fetch_add(1, Ordering::Relaxed);
                            if impersonate(to, claimed, secret).await {
                                refusals.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        });
        for p in producers {
            p.await.unwrap().expect("every producer delivers");
        }
        for c in consumers {
            let got = c.await.unwrap().expect("no consumer sees an error");
            assert_eq!(got.len(), (n * m) as usize, "a producer is missing");
            assert!(got.values().all(|&count| count == per_channel), "{got:?}");
        }
        impostors.abort();
        let (attempts, refusals) = (
            attempts.load(Ordering::Relaxed),
            refusals.load(Ordering::Relaxed),
        );
        assert!(attempts >= 6, "the impostors tried only {attempts} times");
        // The attempt cut short by the abort may not have been answered.
        assert!(
            refusals + 1 >= attempts,
            "{refusals} of {attempts} attempts refused as unauthenticated"
        );
        for node in &nodes {
            assert_eq!(
                node.stats().links_up,
                (n - 1) as usize,
                "{:?}",
                node.stats()
            );
            assert!(node.resume_times().is_empty(), "no real link was disturbed");
        }
        for node in &nodes {
            node.shutdown().await;
        }
    })
    .await
    .expect("bounded");
}

/// Connections that never prove anything are capped per source address: beyond the cap,
/// the node drops them at once, while members still link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unproved_connections_are_capped_per_address() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(94, 2, |c| {
            c.max_unproved_per_address = 4;
            c.handshake_timeout = Duration::from_secs(20);
        })
        .await;
        let to = nodes[0].local_addr();
        let mut idle = Vec::new();
        for _ in 0..12 {
            idle.push(connect(Ipv4Addr::new(127, 0, 94, 77), to).await.unwrap());
        }
        let mut dropped = 0;
        for stream in &mut idle {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await
            {
                dropped += 1;
            }
        }
        assert_eq!(dropped, 8, "12 idle connections from one address, 4 kept");
        // Members, from their own addresses, still link and exchange.
        let topology = Topology::new(
            [plexus::Endpoint::new(NodeId(1), 0)],
            [plexus::Endpoint::new(NodeId(0), 0)],
        );
        let rx = nodes[0]
            .job(JobId(2), topology.clone())
            .consumer(0)
            .await
            .unwrap();
        let mut tx = nodes[1].job(JobId(2), topology).producer(0).await.unwrap();
        tx.send(
            plexus::Endpoint::new(NodeId(0), 0),
            message(tx.endpoint(), 0, 100),
        )
        .await
        .unwrap();
        tx.close().await.unwrap();
        let got = drain(rx).await.expect("delivered");
        assert_eq!(got.values().copied().collect::<Vec<_>>(), vec![1]);
        for node in &nodes {
            node.shutdown().await;
        }
    })
    .await
    .expect("bounded");
}
