//! Connections under load: dials paced per node, one dial per peer at a time, inbound
//! connections while a dial waits its turn, handshakes answered after the session they
//! describe moved on, and liveness timers of a node that was itself stalled.

mod support;

use std::time::Duration;

use plexus_proto::frame::GoAwayCode;
use plexus_proto::{Bytes, Endpoint, ExchangeError, JobId, LinkCause, NodeId};
use support::{ep, plan, run_to_completion, small, Inbox, Net, Outbox};

/// Whether a close says that a peer broke the protocol.
fn is_protocol_close(cause: &LinkCause) -> bool {
    matches!(
        cause,
        LinkCause::Protocol(_) | LinkCause::GoAway(GoAwayCode::ProtocolError)
    )
}

/// Node 0 loses its link to node 1, which hangs, and redials it; the connection waits in
/// node 1's accept backlog. The grace period runs out before the handshake could (a dial
/// made late in the grace period outlives it): node 0 declares node 1 dead and forgets the
/// session. A new job then needs node 1 again, and node 1 thaws. Node 0's `Hello` leaves
/// only once node 1 has proved itself (so after the thaw), and must describe the session as
/// it is then, not as it was at the dial: both sides agree that the session is lost, the old
/// job fails on both nodes, nobody sees the other break the protocol, and the new job is
/// delivered to a consumer opened after that.
#[test]
fn a_hello_delayed_by_a_hung_acceptor_describes_the_session_as_it_is() {
    let mut net = Net::new(2, |c| {
        small(c);
        c.handshake_timeout = Duration::from_secs(30);
    });
    let grace = net.node(0).config().grace_period;
    let old = JobId(1);
    let (p0, c0, p1, c1) = (ep(0, 0), ep(0, 0), ep(1, 0), ep(1, 0));
    // Both directions carry frames: each side's Hello claims a count above 0.
    let mut inboxes = vec![
        Inbox::open(&mut net, 1, old, 0, &[p0]),
        Inbox::open(&mut net, 0, old, 0, &[p1]),
    ];
    let mut outboxes = vec![
        Outbox::open(&mut net, 0, old, 0, vec![(c1, plan(old, p0, c1, 4, 512))]),
        Outbox::open(&mut net, 1, old, 0, vec![(c0, plan(old, p1, c0, 4, 512))]),
    ];
    for _ in 0..100 {
        for o in &mut outboxes {
            o.close_when_done = false;
            o.pump(&mut net);
        }
        net.drive();
        for i in &mut inboxes {
            i.pull(&mut net);
        }
        if inboxes.iter().all(|i| i.received() == 4) {
            break;
        }
        net.advance(net.tick());
    }
    assert!(inboxes.iter().all(|i| i.received() == 4), "{inboxes:?}");

    net.freeze(1);
    net.cut(0, 1);
    net.drive();
    net.advance(grace + net.tick());
    inboxes[1].pull(&mut net);
    assert!(
        !inboxes[1].errors.is_empty(),
        "node 0 declared node 1 dead after the grace period"
    );
    let dials_while_hung = net.dials.len();

    let new = JobId(2);
    let (p_new, c_new) = (ep(0, 1), ep(1, 1));
    let msgs = plan(new, p_new, c_new, 6, 512);
    let mut new_out = vec![Outbox::open(
        &mut net,
        0,
        new,
        1,
        vec![(c_new, msgs.clone())],
    )];
    new_out[0].pump(&mut net);
    net.drive();
    assert_eq!(
        net.dials.len(),
        dials_while_hung,
        "no second dial while the first is in its handshake: {:?}",
        net.dials
    );
    net.thaw(1);
    for _ in 0..100 {
        net.drive();
        inboxes[0].pull(&mut net);
        if !inboxes[0].errors.is_empty() {
            break;
        }
        net.advance(net.tick());
    }
    for closed in &net.closes {
        assert!(!is_protocol_close(&closed.cause), "{closed:?}");
    }
    assert!(
        inboxes[0].errors.iter().any(|e| matches!(
            e,
            ExchangeError::LinkFailed {
                peer: NodeId(0),
                cause: LinkCause::Restarted(_)
            }
        )),
        "node 1 learnt that node 0 lost the session: {:?}",
        inboxes[0].errors
    );
    // A consumer opened once node 1 knows gets the new job's data.
    let mut new_in = vec![Inbox::open(&mut net, 1, new, 1, &[p_new])];
    run_to_completion(&mut net, &mut new_out, &mut new_in, 20_000);

    assert_eq!(new_in[0].by_producer.get(&p_new), Some(&msgs));
    assert!(new_in[0].errors.is_empty(), "{:?}", new_in[0].errors);
    for closed in &net.closes {
        assert!(!is_protocol_close(&closed.cause), "{closed:?}");
    }
    net.assert_credit_respected();
}

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

/// Every node stalls (a paused machine, or processes starved of CPU) for three idle
/// timeouts while the link of nodes 0 and 1 is idle and a dial of node 1 to node 2 is in
/// its handshake.
/// When they run again, the first timer comes before the readers catch up: the stall must
/// not count as silence of the peers, nor against the handshake, so no connection closes.
#[test]
fn a_stalled_node_does_not_blame_its_peers() {
    let mut net = Net::new(3, small);
    let job = JobId(6);
    let msgs = plan(job, ep(0, 0), ep(1, 0), 3, 256);
    let mut outboxes = vec![Outbox::open(
        &mut net,
        0,
        job,
        0,
        vec![(ep(1, 0), msgs.clone())],
    )];
    let mut inboxes = vec![Inbox::open(&mut net, 1, job, 0, &[ep(0, 0)])];
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 1_000);
    assert_eq!(inboxes[0].by_producer.get(&ep(0, 0)), Some(&msgs));

    net.freeze(2);
    let late = JobId(7);
    let mut late_out = vec![Outbox::open(
        &mut net,
        1,
        late,
        0,
        vec![(ep(2, 0), plan(late, ep(1, 0), ep(2, 0), 2, 256))],
    )];
    late_out[0].pump(&mut net);
    net.drive();
    assert_eq!(net.dials.last(), Some(&(NodeId(1), NodeId(2))));
    for n in [0, 1] {
        net.freeze(n);
    }
    let idle = net.node(0).config().idle_timeout;
    net.advance(3 * idle);
    for n in 0..3 {
        net.thaw(n);
    }
    let mut late_in = vec![Inbox::open(&mut net, 2, late, 0, &[ep(1, 0)])];
    run_to_completion(&mut net, &mut late_out, &mut late_in, 1_000);
    net.advance(4 * net.tick());
    assert!(net.closes.is_empty(), "{:?}", net.closes);
    assert_eq!(net.conns_created(), 2);
    assert_eq!(net.stats(1).links_up, 2);
}

/// Nodes 0 and 1 are partitioned for half the grace period, during a job; then both stall
/// for a whole grace period (and the partition heals meanwhile). Only half the grace
/// period passed while they ran: when they run again, the failed dials that come in first
/// must not make the peer dead; they reconnect, resume, and the job completes.
#[test]
fn a_stall_does_not_count_against_the_grace_period() {
    let mut net = Net::new(2, small);
    let grace = net.node(0).config().grace_period;
    let job = JobId(8);
    let (p, c) = (ep(0, 0), ep(1, 0));
    let msgs = plan(job, p, c, 8, 256);
    let mut outboxes = vec![Outbox::open(&mut net, 0, job, 0, vec![(c, msgs.clone())])];
    outboxes[0].close_when_done = false;
    let mut inboxes = vec![Inbox::open(&mut net, 1, job, 0, &[p])];
    outboxes[0].pump(&mut net);
    net.drive();
    net.partition(0, 1);
    net.advance(grace / 2);
    for n in 0..2 {
        net.freeze(n);
    }
    net.advance(grace);
    net.heal(0, 1);
    for n in 0..2 {
        net.thaw(n);
    }
    outboxes[0].close_when_done = true;
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
    assert_eq!(inboxes[0].by_producer.get(&p), Some(&msgs));
    assert!(inboxes[0].errors.is_empty(), "{:?}", inboxes[0].errors);
    assert!(outboxes[0].failed.is_empty(), "{:?}", outboxes[0].failed);
}

/// Nodes that disagree on the largest message refuse each other's link in the handshake,
/// with a cause that says so, instead of failing a producer's large message later: the
/// job that needs the link fails, naming the peer.
#[test]
fn a_peer_with_another_max_message_is_refused_in_the_handshake() {
    let mut net = Net::new(2, |c| {
        small(c);
        if c.node == NodeId(1) {
            c.max_message *= 2;
        }
    });
    let job = JobId(1);
    let c = ep(1, 0);
    net.open_producer(0, job, 0, &[c]);
    let _ = net.try_send(0, job, 0, c, Bytes::from_static(b"x"));
    net.drive();
    let refused = net.closes.iter().any(|closed| {
        matches!(
            &closed.cause,
            LinkCause::Protocol(reason) if reason.contains("max_message")
        ) || closed.cause == LinkCause::GoAway(GoAwayCode::ConfigMismatch)
    });
    assert!(refused, "{:?}", net.closes);
    assert!(
        net.deaths
            .iter()
            .any(|(i, peer, jobs)| *i == 0 && *peer == NodeId(1) && jobs == &[job]),
        "{:?}",
        net.deaths
    );
    let err = net.try_send(0, job, 0, c, Bytes::from_static(b"y"));
    assert!(
        matches!(
            err,
            Err(plexus_proto::TrySendError::Failed(
                ExchangeError::LinkFailed {
                    peer: NodeId(1),
                    ..
                },
                _
            ))
        ),
        "{err:?}"
    );
}
