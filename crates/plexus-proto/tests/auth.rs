//! Proof of membership in the deterministic harness (`support::Net`): impostors without the
//! cluster's secret (a wrong one, or none) are refused before they change anything, a
//! recorded handshake replayed later fails, a reflected proof fails, a `Hello` must name
//! the node that was proved, nodes that hold different secrets never link, and no sequence
//! of frames an outsider sends proves membership (property test).

mod support;

use std::time::Duration;

use plexus_proto::auth::Secret;
use plexus_proto::frame::{Frame, GoAwayCode, PROTOCOL_VERSION};
use plexus_proto::{ExchangeError, JobId, LinkCause, NodeId};
use proptest::prelude::*;
use support::{ep, plan, run_to_completion, secret, small, Inbox, Net, Outbox, RawConn, CLUSTER};

const JOB: JobId = JobId(3);

/// Nodes 0 and 1 exchanging 30 messages in `JOB` (the link is up); returns what finishes
/// the exchange.
fn exchange(net: &mut Net) -> (Vec<Outbox>, Vec<Inbox>, Vec<bytes::Bytes>) {
    let (p, c) = (ep(0, 0), ep(1, 0));
    let msgs = plan(JOB, p, c, 30, 1024);
    let inboxes = vec![Inbox::open(net, 1, JOB, 0, &[p])];
    let mut outboxes = vec![Outbox::open(net, 0, JOB, 0, vec![(c, msgs.clone())])];
    outboxes[0].pump(net);
    net.drive();
    assert_eq!(net.stats(1).links_up, 1, "the legitimate link is up");
    (outboxes, inboxes, msgs)
}

/// A `Hello` of `node` in `incarnation` that claims no session with the receiver.
fn fresh_hello(node: NodeId, incarnation: u64) -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        cluster: CLUSTER,
        node,
        incarnation,
        peer_incarnation: 0,
        received: 0,
        max_message: 1024,
    }
}

/// Asserts that node 1 closed the raw connection for want of a proof, told it so, and
/// that the exchange between nodes 0 and 1 completes untouched.
fn assert_refused_and_harmless(
    ctx: &str,
    net: &mut Net,
    raw: RawConn,
    mut outboxes: Vec<Outbox>,
    mut inboxes: Vec<Inbox>,
    msgs: Vec<bytes::Bytes>,
) {
    let link = net.raw_link(raw);
    let closed = net
        .closes
        .iter()
        .find(|c| c.node == NodeId(1) && c.link == link)
        .unwrap_or_else(|| panic!("{ctx}: node 1 did not close the impostor's connection"));
    assert!(
        matches!(closed.cause, LinkCause::Unauthenticated(_)),
        "{ctx}: {:?}",
        closed.cause
    );
    assert!(!net.raw_is_open(raw), "{ctx}");
    assert!(
        matches!(
            net.raw_frames(raw).last(),
            Some(Frame::GoAway {
                code: GoAwayCode::Unauthenticated
            })
        ),
        "{ctx}: {:?}",
        net.raw_frames(raw)
    );
    assert_eq!(
        net.stats(1).links_up,
        1,
        "{ctx}: the real link is untouched"
    );
    run_to_completion(net, &mut outboxes, &mut inboxes, 10_000);
    assert_eq!(inboxes[0].by_producer.get(&ep(0, 0)), Some(&msgs), "{ctx}");
    assert!(
        inboxes[0].errors.is_empty(),
        "{ctx}: {:?}",
        inboxes[0].errors
    );
    assert!(
        outboxes[0].failed.is_empty(),
        "{ctx}: {:?}",
        outboxes[0].failed
    );
    net.assert_credit_respected();
}

/// A forged claim to be node 0, restarted (another incarnation), by someone with the wrong
/// secret: refused at the proof, and node 1 neither drops its session with node 0 nor
/// fails the job spanning it.
#[test]
fn an_impostor_with_a_wrong_secret_changes_nothing() {
    let mut net = Net::new(2, small);
    let (outboxes, inboxes, msgs) = exchange(&mut net);
    let raw = net.raw_connect(1);
    let wrong = Secret::new(*b"not the cluster's secret").expect("long enough");
    net.raw_prove(raw, NodeId(0), 0xF00D, &wrong);
    net.raw_send_frame(raw, &fresh_hello(NodeId(0), 0xF00D));
    net.drive();
    assert_refused_and_harmless("wrong secret", &mut net, raw, outboxes, inboxes, msgs);
}

/// The same forged restart claim by someone with no secret at all, who skips the proof and
/// sends a `Hello`: refused, nothing changes.
#[test]
fn an_impostor_without_a_secret_changes_nothing() {
    let mut net = Net::new(2, small);
    let (outboxes, inboxes, msgs) = exchange(&mut net);
    let raw = net.raw_connect(1);
    net.raw_send_frame(raw, &fresh_hello(NodeId(0), 0xF00D));
    net.drive();
    assert_refused_and_harmless("no secret", &mut net, raw, outboxes, inboxes, msgs);
}

/// A member's handshake, recorded and replayed on a new connection, fails: the acceptor's
/// nonce is fresh, so the recorded proof covers another transcript.
#[test]
fn a_replayed_handshake_is_refused() {
    let mut net = Net::new(2, small);
    let (outboxes, inboxes, msgs) = exchange(&mut net);
    let first = net.raw_connect(1);
    let recorded = net.raw_prove(first, NodeId(99), 0x99, &secret());
    assert!(
        net.raw_is_open(first),
        "the member's own handshake is accepted"
    );
    net.raw_close(first);
    net.drive();
    let replay = net.raw_connect(1);
    for frame in &recorded {
        net.raw_send_frame(replay, frame);
    }
    net.drive();
    assert_refused_and_harmless("replay", &mut net, replay, outboxes, inboxes, msgs);
}

/// Sending the acceptor's own proof back (a reflection) fails: proofs name the role.
#[test]
fn a_reflected_proof_is_refused() {
    let mut net = Net::new(2, small);
    let (outboxes, inboxes, msgs) = exchange(&mut net);
    let raw = net.raw_connect(1);
    net.raw_send_frame(
        raw,
        &Frame::Challenge {
            version: PROTOCOL_VERSION,
            cluster: CLUSTER,
            node: NodeId(0),
            incarnation: 0xF00D,
            nonce: [7; 32],
        },
    );
    net.drive();
    let Some(Frame::Proof { proof }) = net.raw_frames(raw).get(1).cloned() else {
        panic!("node 1 answers with its Challenge and Proof");
    };
    net.raw_send_frame(raw, &Frame::Proof { proof });
    net.drive();
    assert_refused_and_harmless("reflection", &mut net, raw, outboxes, inboxes, msgs);
}

/// A member that proves to be node 99 and then says `Hello` as node 0 is refused.
#[test]
fn a_hello_must_name_the_node_that_was_proved() {
    let mut net = Net::new(2, small);
    let (outboxes, inboxes, msgs) = exchange(&mut net);
    let raw = net.raw_connect(1);
    net.raw_prove(raw, NodeId(99), 0x99, &secret());
    net.raw_send_frame(raw, &fresh_hello(NodeId(0), 0x99));
    net.drive();
    assert_refused_and_harmless("switched identity", &mut net, raw, outboxes, inboxes, msgs);
}

/// Nodes that hold different secrets never link: every attempt closes unauthenticated on
/// both sides, and the job spanning them fails once the grace period is over, naming why.
#[test]
fn nodes_with_different_secrets_never_link() {
    let mut net = Net::new(2, |c| {
        small(c);
        if c.node == NodeId(1) {
            c.secret = Secret::new(*b"node 1's own idea of it").expect("long enough");
        }
    });
    let grace = net.node(0).config().grace_period;
    let (p, c) = (ep(0, 0), ep(1, 0));
    let mut outbox = Outbox::open(&mut net, 0, JOB, 0, vec![(c, plan(JOB, p, c, 3, 64))]);
    let mut inbox = Inbox::open(&mut net, 1, JOB, 0, &[p]);
    let mut waited = Duration::ZERO;
    while waited < grace * 2 && outbox.failed.is_empty() {
        outbox.pump(&mut net);
        net.drive();
        inbox.pull(&mut net);
        net.advance(net.tick());
        waited += net.tick();
    }
    assert_eq!(net.stats(0).links_up + net.stats(1).links_up, 0);
    assert!(
        net.closes
            .iter()
            .any(|c| matches!(c.cause, LinkCause::Unauthenticated(_))),
        "{:?}",
        net.closes
    );
    assert!(
        net.closes.iter().all(|c| matches!(
            c.cause,
            LinkCause::Unauthenticated(_) | LinkCause::GoAway(GoAwayCode::Unauthenticated)
        )),
        "every close is for want of a proof: {:?}",
        net.closes
    );
    match outbox.failed.get(&c) {
        Some(ExchangeError::LinkFailed {
            peer: NodeId(1),
            cause: LinkCause::Unreachable(why),
        }) => assert!(why.contains("not authenticated"), "{why}"),
        other => panic!("the producer's channel fails naming the cause: {other:?}"),
    }
}

/// A frame an outsider might send: any handshake frame with any contents, or others.
fn outsider_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<[u8; 32]>()
        )
            .prop_map(
                |(version, cluster, node, incarnation, nonce)| Frame::Challenge {
                    version,
                    cluster,
                    node: NodeId(node),
                    incarnation,
                    nonce,
                }
            ),
        // Mostly well-formed challenges, so the proofs after them are checked.
        (any::<u32>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(node, incarnation, nonce)| {
            Frame::Challenge {
                version: PROTOCOL_VERSION,
                cluster: CLUSTER,
                node: NodeId(node % 4 + 2),
                incarnation,
                nonce,
            }
        }),
        any::<[u8; 32]>().prop_map(|proof| Frame::Proof { proof }),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(node, incarnation, peer_incarnation, received)| Frame::Hello {
                version: PROTOCOL_VERSION,
                cluster: CLUSTER,
                node: NodeId(node % 4),
                incarnation,
                peer_incarnation,
                received,
                max_message: 1024,
            }
        ),
        any::<u64>().prop_map(|received| Frame::Ack { received }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever sequence of frames an outsider sends, its connection is never taken for a
    /// proved member, and the members' link stays up.
    #[test]
    fn no_sequence_of_frames_proves_membership_without_the_secret(
        frames in proptest::collection::vec(outsider_frame(), 1..12)
    ) {
        let mut net = Net::new(2, small);
        let (_outboxes, _inboxes, _msgs) = exchange(&mut net);
        let raw = net.raw_connect(1);
        let link = net.raw_link(raw);
        for frame in &frames {
            net.raw_send_frame(raw, frame);
            net.drive();
            prop_assert!(!net.node(1).link_is_proved(link), "{frames:?}");
            if !net.raw_is_open(raw) {
                break;
            }
        }
        prop_assert_eq!(net.stats(1).links_up, 1);
    }
}
