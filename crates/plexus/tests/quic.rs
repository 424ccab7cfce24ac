//! Links over QUIC (`Transport::Quic`): jobs between nodes on loopback deliver every
//! message exactly once, in order, as over TCP; a node without a TLS identity cannot use
//! QUIC; a certificate that names another node gets no link.

mod common;

use std::time::Duration;

use common::{message, node_builder, tls_identities, Exchange};
use plexus::{Error, JobId, Membership, Node, NodeId, Topology, Transport};

const BOUND: Duration = Duration::from_secs(60);

async fn start_quic_node(
    membership: &Membership,
    subnet: u8,
    id: u32,
    identity: Option<plexus::TlsIdentity>,
) -> Result<Node, Error> {
    let tune = |c: &mut plexus::Config| {
        c.credit_pool = 256 * 1024;
        c.max_message = 16 * 1024;
    };
    let mut builder = node_builder(membership, subnet, id, &tune).transport(Transport::Quic);
    if let Some(identity) = identity {
        builder = builder.tls(identity);
    }
    builder.start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_deliver_every_message_once_in_order_over_quic() {
    tokio::time::timeout(BOUND, async {
        let (subnet, n, m, per_channel) = (97u8, 3u32, 2u32, 300u32);
        let membership = Membership::new();
        let mut nodes = Vec::new();
        for (i, identity) in tls_identities(n, &[]).into_iter().enumerate() {
            let node = start_quic_node(&membership, subnet, i as u32, Some(identity)).await;
            nodes.push(node.expect("node starts"));
        }
        let ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
        let topology = Topology::all_to_all(&ids, m, m);
        let mut exchange = Exchange::default();
        exchange
            .open(&nodes, JobId(1), &topology, m, per_channel, |_| 3000)
            .await;
        let Exchange {
            consumers,
            producers,
        } = exchange;
        for p in producers {
            p.await.expect("join").expect("producer finishes");
        }
        for c in consumers {
            let counts = c
                .await
                .expect("join")
                .expect("every channel complete, in order");
            assert_eq!(counts.len(), (n * m) as usize);
            assert!(counts.values().all(|&got| got == per_channel), "{counts:?}");
        }
        for node in &nodes {
            node.shutdown().await;
        }
    })
    .await
    .expect("within the bound");
}

#[tokio::test]
async fn quic_needs_a_tls_identity() {
    let started = start_quic_node(&Membership::new(), 98, 0, None).await;
    assert!(matches!(started, Err(Error::Missing(_))), "{started:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_another_node_gets_no_quic_link() {
    tokio::time::timeout(BOUND, async {
        // Node 1 holds a certificate naming node 0.
        let identities = tls_identities(2, &[(1, 0)]);
        let membership = Membership::new();
        let mut nodes = Vec::new();
        for (i, identity) in identities.into_iter().enumerate() {
            let node = start_quic_node(&membership, 99, i as u32, Some(identity)).await;
            nodes.push(node.expect("node starts"));
        }
        let ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
        let topology = Topology::all_to_all(&ids, 1, 1);
        let job = nodes[0].job(JobId(1), topology.clone());
        let mut tx = job.producer(0).await.expect("producer");
        let to = Topology::all_to_all(&ids, 1, 1).consumers()[1];
        // Credit never comes: no link to node 1 is ever made.
        let sent = tokio::time::timeout(
            Duration::from_secs(3),
            tx.send(to, message(tx.endpoint(), 0, 100)),
        )
        .await;
        let failed_or_waiting = match sent {
            Err(_) => true,
            Ok(result) => result.is_err(),
        };
        assert!(failed_or_waiting, "a message went to an impostor");
        assert!(
            nodes[0].status().links.iter().all(|l| !l.up),
            "a link came up"
        );
    })
    .await
    .expect("within the bound");
}
