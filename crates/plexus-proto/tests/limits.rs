//! Members that misbehave, in the deterministic harness: a peer that holds the secret but
//! opens more channels than a member may, or opens and ends channels faster than a member
//! may, has its link closed with `GoAway(Limit)`, while the other members' exchange goes on.

mod support;

use plexus_proto::frame::{Frame, GoAwayCode, PROTOCOL_VERSION};
use plexus_proto::{Config, JobId, LinkCause, NodeId, WireChannel};
use support::{ep, plan, run_to_completion, secret, small, Inbox, Net, Outbox, RawConn, CLUSTER};

const JOB: JobId = JobId(4);
const ROGUE_JOB: JobId = JobId(40);
const ROGUE: NodeId = NodeId(99);

/// Nodes 0 and 1 exchanging in `JOB`, and a member (node 99) connected to node 1 and past
/// its `Hello`.
fn setup(tune: impl FnMut(&mut Config)) -> (Net, Vec<Outbox>, Vec<Inbox>, RawConn) {
    let mut net = Net::new(2, tune);
    let (p, c) = (ep(0, 0), ep(1, 0));
    let inboxes = vec![Inbox::open(&mut net, 1, JOB, 0, &[p])];
    let mut outboxes = vec![Outbox::open(
        &mut net,
        0,
        JOB,
        0,
        vec![(c, plan(JOB, p, c, 30, 1024))],
    )];
    outboxes[0].pump(&mut net);
    net.drive();
    let raw = net.raw_connect(1);
    net.raw_prove(raw, ROGUE, 0x99, &secret());
    net.raw_send_frame(
        raw,
        &Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster: CLUSTER,
            node: ROGUE,
            incarnation: 0x99,
            peer_incarnation: 0,
            received: 0,
            max_message: 1024,
        },
    );
    net.drive();
    assert!(net.raw_is_open(raw), "the member is accepted");
    (net, outboxes, inboxes, raw)
}

fn open(wire: u32, consumer: u32) -> Frame {
    Frame::Open {
        channel: WireChannel(wire),
        job: ROGUE_JOB,
        producer: 0,
        consumer,
    }
}

/// Asserts that node 1 cut the member off for a limit, and that the exchange between nodes
/// 0 and 1 completes.
fn assert_cut_off(
    ctx: &str,
    mut net: Net,
    raw: RawConn,
    mut outboxes: Vec<Outbox>,
    mut inboxes: Vec<Inbox>,
) {
    assert!(!net.raw_is_open(raw), "{ctx}: the member was cut off");
    assert!(
        matches!(
            net.raw_frames(raw).last(),
            Some(Frame::GoAway {
                code: GoAwayCode::Limit
            })
        ),
        "{ctx}: {:?}",
        net.raw_frames(raw).last()
    );
    let link = net.raw_link(raw);
    let closed = net
        .closes
        .iter()
        .find(|c| c.node == NodeId(1) && c.link == link)
        .expect("node 1 closed the link");
    assert!(
        matches!(&closed.cause, LinkCause::Protocol(why) if why.contains("limit")),
        "{ctx}: {:?}",
        closed.cause
    );
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
    assert_eq!(
        inboxes[0].by_producer.get(&ep(0, 0)).map(Vec::len),
        Some(30)
    );
    assert!(
        inboxes[0].errors.is_empty(),
        "{ctx}: {:?}",
        inboxes[0].errors
    );
    assert_eq!(
        net.stats(1).links_up,
        1,
        "{ctx}: the members' link is untouched"
    );
}

#[test]
fn a_member_opening_more_channels_of_a_job_than_allowed_is_cut_off() {
    let (mut net, outboxes, inboxes, raw) = setup(|c| {
        small(c);
        c.max_channels_per_peer_job = 10;
    });
    for wire in 0..10 {
        net.raw_send_frame(raw, &open(wire, wire));
    }
    net.drive();
    assert!(net.raw_is_open(raw), "10 channels of a job are allowed");
    net.raw_send_frame(raw, &open(10, 10));
    net.drive();
    assert_cut_off("per job", net, raw, outboxes, inboxes);
}

#[test]
fn a_member_opening_more_channels_than_allowed_in_all_is_cut_off() {
    let (mut net, outboxes, inboxes, raw) = setup(|c| {
        small(c);
        c.max_channels_per_peer = 5;
    });
    for wire in 0..6u32 {
        net.raw_send_frame(
            raw,
            &Frame::Open {
                channel: WireChannel(wire),
                job: JobId(100 + u64::from(wire)),
                producer: 0,
                consumer: 0,
            },
        );
    }
    net.drive();
    assert_cut_off("in all", net, raw, outboxes, inboxes);
}

/// Opens and aborts at once, again and again (the "rapid reset" pattern): within the
/// burst it is allowed, beyond it the member is cut off.
#[test]
fn a_member_churning_channels_is_cut_off() {
    let (mut net, outboxes, inboxes, raw) = setup(|c| {
        small(c);
        c.max_channel_churn_per_s = 10;
        c.channel_churn_burst = 40;
    });
    for wire in 0..10 {
        net.raw_send_frame(raw, &open(wire, 0));
        net.raw_send_frame(
            raw,
            &Frame::Abort {
                channel: WireChannel(wire),
            },
        );
    }
    net.drive();
    assert!(net.raw_is_open(raw), "20 opens and aborts fit the burst");
    for wire in 10..40 {
        net.raw_send_frame(raw, &open(wire, 0));
        net.raw_send_frame(
            raw,
            &Frame::Abort {
                channel: WireChannel(wire),
            },
        );
    }
    net.drive();
    assert_cut_off("churn", net, raw, outboxes, inboxes);
}
