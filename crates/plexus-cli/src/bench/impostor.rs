//! An impostor during a run: a task that keeps dialling every node's listening address,
//! claiming each time to be another node of the run just restarted (a new incarnation),
//! half of the time proving with a wrong secret and half of the time skipping the proof,
//! and saying `Hello` anyway. The run must not notice; every attempt must be refused as
//! unauthenticated.
//!
//! Invariants: the impostor dials from an address outside the nodes' (so the links
//! counted per node address stay the nodes' own); an attempt counts as refused only if the
//! node closed the connection after a `GoAway(Unauthenticated)`; one attempt at a time per
//! node, each bounded in time.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use plexus::{NodeId, Secret};
use plexus_proto::auth::{Claim, Role, Transcript};
use plexus_proto::codec::{encode, Decoder};
use plexus_proto::frame::{Frame, GoAwayCode, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use super::shape::Shape;
use super::sockets;
use super::verdict::RunRecord;

/// Where the impostor dials from: a loopback address no node of a run uses.
const IMPOSTOR_IP: Ipv4Addr = Ipv4Addr::new(127, 254, 254, 254);
/// The longest one attempt may take.
const ATTEMPT_BOUND: Duration = Duration::from_secs(10);
/// Pause between attempts.
const PAUSE: Duration = Duration::from_millis(20);

/// What the impostor did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Handshakes tried.
    pub tried: u64,
    /// Of those, refused as unauthenticated.
    pub refused: u64,
}

/// A running impostor.
pub struct Impostor {
    task: JoinHandle<()>,
    tried: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Impostor {
    /// With `on`, starts impersonating the nodes of `shape`, with a secret of its own.
    pub fn start_if(on: bool, shape: &Shape) -> Option<Impostor> {
        if !on {
            return None;
        }
        let wrong = Secret::new(*b"an impostor's guess at the secret").expect("long enough");
        let cluster = shape.node_config(0).cluster;
        let (tried, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let task = tokio::spawn(run(
            shape.node_ips(),
            cluster,
            wrong,
            tried.clone(),
            refused.clone(),
        ));
        Some(Impostor {
            task,
            tried,
            refused,
        })
    }

    /// Stops it (the attempt in progress, if any, is not counted) and records what it did
    /// in `record`; an attempt not refused fails the run.
    pub fn finish(impostor: Option<Impostor>, record: &mut RunRecord) {
        let Some(impostor) = impostor else {
            return;
        };
        impostor.task.abort();
        let attempts = Attempts {
            tried: impostor.tried.load(Ordering::Relaxed),
            refused: impostor.refused.load(Ordering::Relaxed),
        };
        if attempts.refused < attempts.tried {
            record.errors.push(format!(
                "{} of {} impostor handshakes were not refused as unauthenticated",
                attempts.tried - attempts.refused,
                attempts.tried
            ));
        }
        record.impostor = Some(attempts);
    }
}

/// One impersonating loop per node, at once.
async fn run(
    ips: Vec<Ipv4Addr>,
    cluster: u64,
    wrong: Secret,
    tried: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) {
    let mut loops = tokio::task::JoinSet::new();
    for i in 0..ips.len() {
        let (ips, wrong, tried, refused) =
            (ips.clone(), wrong.clone(), tried.clone(), refused.clone());
        loops.spawn(async move {
            let mut addr = None;
            for round in 0u64.. {
                // Each other node in turn is claimed, proved with a wrong secret or not.
                let claimed = NodeId(((i as u64 + 1 + round / 2) % ips.len() as u64) as u32);
                if addr.is_none() {
                    // Looked up again only after a failed attempt (a node may restart).
                    addr = sockets::listening().into_iter().find(|a| *a.ip() == ips[i]);
                }
                if let (Some(to), true) = (addr, claimed.0 as usize != i) {
                    let proof = (round % 2 == 0).then_some(&wrong);
                    let attempt = impersonate(to, cluster, claimed, proof);
                    let outcome = tokio::time::timeout(ATTEMPT_BOUND, attempt).await;
                    // Counted once finished, so an attempt cut short by a stop is not.
                    tried.fetch_add(1, Ordering::Relaxed);
                    if outcome == Ok(true) {
                        refused.fetch_add(1, Ordering::Relaxed);
                    } else {
                        addr = None;
                    }
                }
                tokio::time::sleep(PAUSE).await;
            }
        });
    }
    // Dropping the set (when this task is aborted) aborts the loops.
    while loops.join_next().await.is_some() {}
}

async fn connect(to: SocketAddrV4) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IMPOSTOR_IP.into(), 0))?;
    socket.connect(to.into()).await
}

/// One attempt: whether the node refused it as unauthenticated.
async fn impersonate(
    to: SocketAddrV4,
    cluster: u64,
    claimed: NodeId,
    secret: Option<&Secret>,
) -> bool {
    let Ok(mut stream) = connect(to).await else {
        return false;
    };
    let decoder = Decoder::new(1 << 16);
    let incarnation = 0xBAD0_0000_0000 | u64::from(claimed.0);
    let ours = Claim {
        node: claimed,
        incarnation,
        nonce: *b"an impostor's nonce, 32 bytes.!!",
    };
    let (mut out, mut inbox) = (BytesMut::new(), BytesMut::new());
    if let Some(secret) = secret {
        encode(
            &Frame::Challenge {
                version: PROTOCOL_VERSION,
                cluster,
                node: claimed,
                incarnation,
                nonce: ours.nonce,
            },
            &mut out,
        );
        if stream.write_all(&out.split()).await.is_err() {
            return false;
        }
        let acceptor = loop {
            match decoder.decode(&mut inbox) {
                Ok(Some(Frame::Challenge {
                    node,
                    incarnation,
                    nonce,
                    ..
                })) => {
                    break Claim {
                        node,
                        incarnation,
                        nonce,
                    }
                }
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => return false,
            }
            match stream.read_buf(&mut inbox).await {
                Ok(n) if n > 0 => {}
                _ => return false,
            }
        };
        let transcript = Transcript {
            version: PROTOCOL_VERSION,
            cluster,
            dialler: ours,
            acceptor,
        };
        encode(
            &Frame::Proof {
                proof: secret.prove(Role::Dialler, &transcript),
            },
            &mut out,
        );
    }
    encode(
        &Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster,
            node: claimed,
            incarnation,
            peer_incarnation: 0,
            received: 0,
            max_message: 1 << 20,
        },
        &mut out,
    );
    // The node may have closed already, which a failed write shows.
    let _ = stream.write_all(&out).await;
    let mut told = false;
    loop {
        while let Ok(Some(frame)) = decoder.decode(&mut inbox) {
            match frame {
                Frame::GoAway {
                    code: GoAwayCode::Unauthenticated,
                } => told = true,
                // A node that answers the Hello took the impostor for a member.
                Frame::Hello { .. } => return false,
                _ => {}
            }
        }
        match stream.read_buf(&mut inbox).await {
            Ok(0) | Err(_) => return told,
            Ok(_) => {}
        }
    }
}
