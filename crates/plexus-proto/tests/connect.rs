//! Connections under load: dials paced per node, one dial per peer at a time, and inbound
//! connections while a dial waits its turn.

mod support;

use plexus_proto::{Bytes, Endpoint, JobId, NodeId};
use support::{ep, plan, run_to_completion, small, Inbox, Net, Outbox};

/// One producer on node 0 sends one message to a consumer on each of `peers` other nodes.
/// Returns the outbox and its plan.
fn fan_out(net: &mut Net, peers: u32, job: JobId) -> (Outbox, Vec<(Endpoint, Vec<Bytes>)>) {
    let p = ep(0, 0);
    let plans: Vec<_> = (1..=peers)
        .map(|n| (ep(n, 0), plan(job, p, ep(n, 0), 1, 256)))
        .collect();
    let mut outbox = Outbox::open(net, 0, job, 0, plans.clone());
    outbox.pump(net);
    (outbox, plans)
}

/// A node that needs 40 peers at once (all hung, so no handshake completes) dials only
/// `max_dials_in_flight` of them; once they answer, it dials the rest in turn, one
/// connection per peer, and every message arrives.
#[test]
fn dials_are_paced() {
    const PEERS: u32 = 40;
    const MAX: usize = 4;
    let mut net = Net::new(PEERS as usize + 1, |c| {
        small(c);
        c.max_dials_in_flight = MAX;
    });
    for n in 1..=PEERS as usize {
        net.freeze(n);
    }
    let job = JobId(3);
    let (outbox, plans) = fan_out(&mut net, PEERS, job);
    net.drive();
    net.advance(net.tick());
    assert_eq!(net.dials.len(), MAX, "{:?}", net.dials);
    assert_eq!(net.stats(0).dials_in_flight, MAX);

    for n in 1..=PEERS as usize {
        net.thaw(n);
    }
    let mut inboxes: Vec<Inbox> = (1..=PEERS as usize)
        .map(|n| Inbox::open(&mut net, n, job, 0, &[ep(0, 0)]))
        .collect();
    let mut outboxes = vec![outbox];
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 20_000);
    for (inbox, (_, msgs)) in inboxes.iter().zip(&plans) {
        assert_eq!(inbox.by_producer.get(&ep(0, 0)), Some(msgs));
    }
    assert_eq!(net.conns_created(), PEERS as usize);
    assert!(
        net.dials.iter().all(|&(from, _)| from == NodeId(0)),
        "{:?}",
        net.dials
    );
    assert_eq!(net.stats(0).links_up, PEERS as usize);
    assert_eq!(net.stats(0).dials_in_flight, 0);
}

/// Node 0 dials one peer at a time and its first dial hangs; node 5, which node 0 also
/// needs, dials node 0. Node 0's own dial to node 5 is only waiting for its turn, so there
/// is no tie to break: node 0 takes node 5's connection (the higher id's) at once, and
/// never dials node 5 itself.
#[test]
fn a_peer_waiting_for_its_dial_is_taken_when_it_dials_first() {
    let mut net = Net::new(6, |c| {
        small(c);
        c.max_dials_in_flight = 1;
    });
    net.freeze(1);
    let job = JobId(4);
    fan_out(&mut net, 5, job);
    net.drive();
    assert_eq!(net.dials, vec![(NodeId(0), NodeId(1))]);

    let back = JobId(5);
    let msgs = plan(back, ep(5, 1), ep(0, 1), 3, 256);
    let mut from_5 = vec![Outbox::open(
        &mut net,
        5,
        back,
        1,
        vec![(ep(0, 1), msgs.clone())],
    )];
    let mut to_0 = vec![Inbox::open(&mut net, 0, back, 1, &[ep(5, 1)])];
    run_to_completion(&mut net, &mut from_5, &mut to_0, 1_000);
    assert_eq!(to_0[0].by_producer.get(&ep(5, 1)), Some(&msgs));
    assert_eq!(net.open_conns_between(0, 5), 1);
    assert!(
        !net.dials.contains(&(NodeId(0), NodeId(5))),
        "{:?}",
        net.dials
    );
    assert!(
        net.closes.is_empty(),
        "no tie-break, no surplus connection: {:?}",
        net.closes
    );
}
