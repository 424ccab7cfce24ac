//! Helpers shared by the runtime's integration tests: nodes on their own loopback
//! addresses, self-describing messages, and a consumer drain that checks exactly-once order.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};
use plexus::{Config, Endpoint, Error, Membership, Node, NodeId};

/// The cluster id of every test node.
pub const CLUSTER: u64 = 0xC0FFEE;

/// Starts `n` nodes on `127.0.<subnet>.1 ..= 127.0.<subnet>.n`, tuned by `tune`.
pub async fn start_nodes(subnet: u8, n: u32, tune: impl Fn(&mut Config)) -> Vec<Node> {
    let membership = Membership::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(start_node(&membership, subnet, i, &tune).await);
    }
    nodes
}

/// The secret the nodes of these tests share.
pub fn secret() -> plexus::Secret {
    plexus::Secret::new(*b"the integration tests' secret").expect("long enough")
}

/// The builder of node `id` on `127.0.<subnet>.<id+1>`, tuned by `tune`, publishing its
/// address in `membership`.
pub fn node_builder(
    membership: &Membership,
    subnet: u8,
    id: u32,
    tune: &impl Fn(&mut Config),
) -> plexus::NodeBuilder {
    let mut config = Config::new(NodeId(id), CLUSTER, secret());
    tune(&mut config);
    let ip = Ipv4Addr::new(127, 0, subnet, (id + 1) as u8);
    Node::builder()
        .config(config)
        .listen(SocketAddr::new(IpAddr::V4(ip), 0))
        .membership(membership.clone())
}

/// Starts node `id` on `127.0.<subnet>.<id+1>`, publishing its address in `membership`.
pub async fn start_node(
    membership: &Membership,
    subnet: u8,
    id: u32,
    tune: &impl Fn(&mut Config),
) -> Node {
    node_builder(membership, subnet, id, tune)
        .start()
        .await
        .expect("node starts")
}

/// A message carrying its producer and sequence number, padded to `len` bytes.
pub fn message(producer: Endpoint, seq: u32, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len.max(12));
    b.put_u32_le(producer.node.0);
    b.put_u32_le(producer.slot);
    b.put_u32_le(seq);
    b.resize(len.max(12), (seq % 251) as u8);
    b.freeze()
}

fn parse(m: &[u8]) -> (Endpoint, u32) {
    let word = |i: usize| u32::from_le_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
    (Endpoint::new(NodeId(word(0)), word(4)), word(8))
}

/// Reads a consumer to its end, asserting each producer's messages arrive exactly once and
/// in order; returns how many came from each producer.
pub async fn drain(mut rx: plexus::Consumer) -> Result<HashMap<Endpoint, u32>, Error> {
    let mut next: HashMap<Endpoint, u32> = HashMap::new();
    while let Some(item) = rx.recv().await {
        let (from, payload) = item?;
        let (claimed, seq) = parse(&payload);
        assert_eq!(claimed, from, "message attributed to the wrong producer");
        let expected = next.entry(from).or_insert(0);
        assert_eq!(
            seq, *expected,
            "lost, duplicated or reordered message from {from}"
        );
        *expected += 1;
    }
    Ok(next)
}

/// The tasks of one job's endpoints on some nodes: each consumer drained (see [`drain`]),
/// each producer sending.
#[derive(Default)]
pub struct Exchange {
    pub consumers: Vec<tokio::task::JoinHandle<Result<HashMap<Endpoint, u32>, Error>>>,
    pub producers: Vec<tokio::task::JoinHandle<Result<(), Error>>>,
}

impl Exchange {
    /// Opens job `job` of `topology` on every node of `nodes`, `slots` consumers and
    /// producers each: every producer sends messages 0 to `per_channel - 1` to every
    /// consumer in turn (message `seq` padded to `len(seq)` bytes), then finishes (its
    /// data delivered).
    pub async fn open(
        &mut self,
        nodes: &[Node],
        job: plexus::JobId,
        topology: &plexus::Topology,
        slots: u32,
        per_channel: u32,
        len: fn(u32) -> usize,
    ) {
        for node in nodes {
            let job = node.job(job, topology.clone());
            for slot in 0..slots {
                let rx = job.consumer(slot).await.expect("consumer opens");
                self.consumers.push(tokio::spawn(drain(rx)));
            }
            for slot in 0..slots {
                let mut tx = job.producer(slot).await.expect("producer opens");
                let targets = topology.consumers().to_vec();
                self.producers.push(tokio::spawn(async move {
                    let me = tx.endpoint();
                    for seq in 0..per_channel {
                        for &c in &targets {
                            tx.send(c, message(me, seq, len(seq))).await?;
                        }
                    }
                    tx.finish().await
                }));
            }
        }
    }
}

/// Established TCP connections whose local address is `ip`, per the kernel's IPv4 socket
/// table (the nodes of these tests bind their dials to their own address, so each link
/// end counts under its node's address). A connection seen twice in one read (the kernel
/// prints a changing table) counts once.
pub fn established_at(ip: std::net::Ipv4Addr) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!("{:08X}:", u32::from_le_bytes(ip.octets()));
    let ends: std::collections::HashSet<(&str, &str)> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, remote, state) = (*fields.get(1)?, *fields.get(2)?, *fields.get(3)?);
            (state == "01" && addr.starts_with(&local)).then_some((addr, remote))
        })
        .collect();
    ends.len()
}

/// A throwaway certificate authority and, for each of `nodes`, an identity whose
/// certificate names it (or names `named[i]` instead, where given).
pub fn tls_identities(nodes: u32, named: &[(u32, u32)]) -> Vec<plexus::TlsIdentity> {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("self-signed");
    (0..nodes)
        .map(|i| {
            let as_node = named
                .iter()
                .find(|(who, _)| *who == i)
                .map_or(i, |(_, other)| *other);
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(vec![plexus::node_name(NodeId(as_node))])
                .expect("params");
            let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("signed");
            plexus::TlsIdentity::from_pem(&cert.pem(), &key.serialize_pem(), &ca_cert.pem())
                .expect("identity")
        })
        .collect()
}

/// Starts node `id` as [`start_node`] does, with TLS under `identity`.
pub async fn start_tls_node(
    membership: &Membership,
    subnet: u8,
    id: u32,
    identity: plexus::TlsIdentity,
    tune: &impl Fn(&mut Config),
) -> Node {
    node_builder(membership, subnet, id, tune)
        .tls(identity)
        .start()
        .await
        .expect("node starts")
}

/// Kills the established TCP connections from `src` to `dst` with `ss -K` (iproute2), as
/// a flaky network or an operator would; true if it killed any.
pub fn kill_link(src: Ipv4Addr, dst: Ipv4Addr) -> bool {
    let out = std::process::Command::new("ss")
        .args([
            "-K",
            "-t",
            "-n",
            "src",
            &src.to_string(),
            "dst",
            &dst.to_string(),
        ])
        .output()
        .expect("ss (iproute2) is installed");
    // ss prints a header, then one line per socket it closed.
    String::from_utf8_lossy(&out.stdout).lines().count() > 1
}

/// Until `done`, kills a live link among nodes `127.0.<subnet>.1..=n` every `every`,
/// cycling through the pairs, counting the kills that hit a connection in `kills`.
pub fn kill_links_until(
    subnet: u8,
    n: u32,
    every: std::time::Duration,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    kills: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let mut i = 0u32;
        while !done.load(Ordering::Relaxed) {
            let (a, b) = (i % n, (i / n + 1 + i) % n);
            i += 1;
            if a == b {
                continue;
            }
            let ip = |k: u32| Ipv4Addr::new(127, 0, subnet, (k + 1) as u8);
            if kill_link(ip(a), ip(b)) {
                kills.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(every);
        }
    })
}
