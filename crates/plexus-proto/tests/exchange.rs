//! End-to-end tests of the node core in the deterministic multi-node harness
//! (`support::Net`): isolation of a stalled consumer, all-to-all exchanges with exactly-once
//! in-order delivery, one link per node pair, endpoint failures (aborted producers,
//! cancelled consumers), a cut link that resumes, unreachable peers, idle links, parking,
//! hostile bytes, and an audit of every `Data` frame against the credit its sender had
//! received. Session-layer failures (dead, restarted, hung and partitioned nodes, cuts at
//! every frame) are in `session.rs`.

mod support;

use std::time::Duration;

use plexus_proto::batch::{BatchBuilder, BATCH_BODY_MAX};
use plexus_proto::credit::MESSAGE_OVERHEAD;
use plexus_proto::frame::{CancelCode, Frame, GoAwayCode, PROTOCOL_VERSION};
use plexus_proto::node::Arrival;
use plexus_proto::{
    Bytes, Config, Endpoint, ExchangeError, JobId, LinkCause, NodeId, Recv, TrySendError,
    WireChannel,
};
use proptest::prelude::*;
use support::{
    assert_all_drained, ep, message, plan, roomy, run_to_completion, secret, small, tight,
    total_len, Inbox, Net, Outbox, RawConn, CLUSTER,
};

// ---------------------------------------------------------------------------------------
// Isolation
// ---------------------------------------------------------------------------------------

/// Producer 0/0 of `job` feeding consumers 1/0 and 1/1, `n` messages each, message `seq`
/// being `size(seq)` bytes: opens both consumers and the producer's outbox, and returns the
/// outbox, the two consumers and the plan of messages for a consumer.
fn fan_out_to_two(
    net: &mut Net,
    job: JobId,
    n: u32,
    size: fn(u32) -> usize,
) -> (Outbox, [Endpoint; 2], impl Fn(Endpoint) -> Vec<Bytes>) {
    let p = ep(0, 0);
    let (c0, c1) = (ep(1, 0), ep(1, 1));
    let plan_for = move |c: Endpoint| -> Vec<Bytes> {
        (0..n).map(|s| message(job, p, c, s, size(s))).collect()
    };
    net.open_consumer(1, job, 0, &[p]);
    net.open_consumer(1, job, 1, &[p]);
    let out = Outbox::open(net, 0, job, 0, vec![(c0, plan_for(c0)), (c1, plan_for(c1))]);
    (out, [c0, c1], plan_for)
}

/// One producer, two consumers on the other node; consumer 1 stops reading. Consumer 0
/// still gets everything; consumer 1's channel stalls with at most its pool of bytes held
/// anywhere, and resumes, complete and in order, once it reads.
#[test]
fn stalled_consumer_does_not_hold_up_its_sibling() {
    const N: u32 = 200;
    let mut net = Net::new(2, small);
    let job = JobId(1);
    let p = ep(0, 0);
    let (mut out, [c0, c1], plan_for) =
        fan_out_to_two(&mut net, job, N, |seq| (seq as usize * 37) % 1024 + 1);
    out.close_when_done = false;
    let mut in0 = Inbox::attach(1, job, 0);
    let capacity = net.consumer_credit(1, job, 1).unwrap().capacity;
    assert!(
        total_len(&plan_for(c1)) > 10 * capacity,
        "the workload must outgrow the pool"
    );

    let mut stalled_rounds = 0;
    let mut rounds = 0;
    while in0.received() < N as usize {
        rounds += 1;
        assert!(rounds < 10_000, "consumer 0 made no progress");
        let before_c1 = out.accepted.get(&c1).map_or(0, Vec::len);
        out.pump(&mut net);
        net.drive();
        let got = in0.pull(&mut net);
        let after_c1 = out.accepted.get(&c1).map_or(0, Vec::len);
        // Consumer 1 read nothing: everything accepted for it is held somewhere.
        let held_c1 = out.accepted.get(&c1).map_or(0, |m| total_len(m));
        assert!(
            held_c1 <= capacity,
            "{held_c1} bytes held for consumer 1, pool is {capacity}"
        );
        let credit = net.consumer_credit(1, job, 1).unwrap();
        assert!(credit.outstanding <= credit.capacity, "{credit:?}");
        assert!(credit.peak <= credit.capacity, "{credit:?}");
        // Consumer 0 was just drained, so what node 1 holds is consumer 1's.
        assert!(net.stats(1).recv_queued_bytes <= capacity);
        if after_c1 == before_c1 && after_c1 < N as usize && got > 0 {
            stalled_rounds += 1;
        }
    }
    assert_eq!(
        in0.by_producer.get(&p),
        Some(&plan_for(c0)),
        "consumer 0 got its stream"
    );
    assert!(in0.errors.is_empty(), "{:?}", in0.errors);
    assert!(!in0.finished, "not finished before the producer closes");
    let sent_c1 = out.accepted.get(&c1).map_or(0, Vec::len);
    assert!(
        sent_c1 < N as usize,
        "consumer 1's channel must have stalled"
    );
    assert!(
        stalled_rounds >= 10,
        "consumer 0 progressed in only {stalled_rounds} rounds while consumer 1 was stalled"
    );
    // The channel is still refused while consumer 1 does not read.
    net.drive();
    let next = out.pending[1].1.front().cloned().unwrap();
    assert!(matches!(
        net.try_send(0, job, 0, c1, next),
        Err(TrySendError::NoCredit(_))
    ));

    // Consumer 1 starts reading: its stream resumes, complete and in order.
    out.close_when_done = true;
    let mut inboxes = vec![in0, Inbox::attach(1, job, 1)];
    let mut outboxes = vec![out];
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
    assert_eq!(inboxes[1].by_producer.get(&p), Some(&plan_for(c1)));
    for inbox in &inboxes {
        assert!(inbox.finished && inbox.errors.is_empty(), "{inbox:?}");
        let credit = net.consumer_credit(1, job, inbox.slot).unwrap();
        assert!(credit.peak <= credit.capacity, "{credit:?}");
        assert_eq!(
            credit.outstanding, 0,
            "every granted byte returns to the pool"
        );
    }
    assert_all_drained(&net);
    net.assert_credit_respected();
}

// ---------------------------------------------------------------------------------------
// All-to-all
// ---------------------------------------------------------------------------------------

/// 3 nodes, 2 jobs, 2 producers and 2 consumers per node and job, every producer sending
/// `msgs` messages to every consumer. All producers start before the first drive, so every
/// node pair needs its link from both sides in the same step. With `race`, dials are not
/// deferred and timers fire before the first drive: both sides of every pair dial at once
/// and the simultaneous-dial tie-break must leave one link.
fn all_to_all(seed: u64, config: fn(&mut Config), msgs: u32, race: bool) {
    let mut net = Net::with_seed(3, seed, |c| {
        config(c);
        if race {
            c.dial_defer = Duration::ZERO;
        }
    });
    net.max_chunk = 1 + (seed as usize * 997) % 3000;
    let max = net.node(0).config().max_message as usize;
    let jobs = [JobId(7), JobId(8)];
    let endpoints: Vec<Endpoint> = (0..3).flat_map(|n| (0..2).map(move |s| ep(n, s))).collect();
    let mut inboxes = Vec::new();
    let mut outboxes = Vec::new();
    for &job in &jobs {
        for &c in &endpoints {
            inboxes.push(Inbox::open(
                &mut net,
                c.node.0 as usize,
                job,
                c.slot,
                &endpoints,
            ));
        }
    }
    for &job in &jobs {
        for &p in &endpoints {
            let plans = endpoints
                .iter()
                .map(|&c| (c, plan(job, p, c, msgs, max)))
                .collect();
            outboxes.push(Outbox::open(
                &mut net,
                p.node.0 as usize,
                job,
                p.slot,
                plans,
            ));
        }
    }
    for o in &mut outboxes {
        o.pump(&mut net);
    }
    if race {
        net.fire_timers();
        for a in 0..3u32 {
            for b in 0..3u32 {
                assert!(
                    a == b || net.dials.contains(&(NodeId(a), NodeId(b))),
                    "node {a} should have dialled node {b}: {:?}",
                    net.dials
                );
            }
        }
    }
    net.drive();
    let check_links = |net: &Net| {
        for a in 0..3 {
            assert!(net.stats(a).links_up <= 2, "node {a}: {:?}", net.stats(a));
            for b in a + 1..3 {
                assert_eq!(
                    net.open_conns_between(a, b),
                    1,
                    "one link between {a} and {b}"
                );
            }
        }
    };
    check_links(&net);
    for a in 0..3 {
        assert_eq!(net.stats(a).links_up, 2);
    }

    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 20_000);

    for inbox in &inboxes {
        let me = inbox.endpoint();
        assert!(inbox.finished, "{me} of {} did not finish", inbox.job);
        assert!(inbox.errors.is_empty(), "{me}: {:?}", inbox.errors);
        assert_eq!(inbox.after_finish, 0);
        assert_eq!(inbox.by_producer.len(), endpoints.len());
        for &p in &endpoints {
            let got = inbox.by_producer.get(&p).map_or(&[][..], Vec::as_slice);
            let want = plan(inbox.job, p, me, msgs, max);
            assert_eq!(
                got.len(),
                want.len(),
                "{p} -> {me} of {}: message count",
                inbox.job
            );
            assert!(got == want, "{p} -> {me} of {}: messages differ", inbox.job);
        }
        let credit = net
            .consumer_credit(inbox.node, inbox.job, inbox.slot)
            .expect("the consumer is open");
        assert!(credit.peak <= credit.capacity, "{credit:?}");
        assert_eq!(credit.outstanding, 0, "{me}: {credit:?}");
    }
    check_links(&net);
    // Racing, each pair dials twice and keeps one; otherwise each pair dials once.
    let most = if race { 6 } else { 3 };
    assert!(
        net.conns_created() <= most,
        "{} connections for 3 node pairs",
        net.conns_created()
    );
    if race {
        assert!(
            net.closes
                .iter()
                .any(|c| c.cause == LinkCause::GoAway(GoAwayCode::SimultaneousDial)),
            "the tie-break was exercised: {:?}",
            net.closes
        );
    }
    for closed in &net.closes {
        assert!(
            matches!(
                closed.cause,
                LinkCause::GoAway(GoAwayCode::SimultaneousDial | GoAwayCode::Duplicate)
            ),
            "only surplus dials may close: {closed:?}"
        );
    }
    assert_all_drained(&net);
    assert!(net.audit().data_messages > 0);
    net.assert_credit_respected();
}

/// Roomy pools: exactly once, in per-producer order, everyone finishes, one link per pair.
#[test]
fn all_to_all_roomy_pools() {
    for seed in 1..=3 {
        all_to_all(seed, roomy, 16, false);
    }
}

/// Small messages queued faster than the link is written leave packed: several to a
/// `Batch` frame, within the credit their channel had, and arrive exactly once, in order,
/// on both channels of a producer — through `poll_recv` one by one and through
/// `take_arrivals` in bulk.
#[test]
fn small_messages_travel_in_batches() {
    const N: u32 = 400;
    let mut net = Net::new(2, roomy);
    let job = JobId(3);
    let p = ep(0, 0);
    let (mut out, [c0, c1], plan_for) =
        fan_out_to_two(&mut net, job, N, |seq| (seq as usize * 13) % 200);
    let mut one_by_one = Vec::new();
    let mut in_bulk = Vec::new();
    let mut finished = false;
    for _ in 0..1000 {
        out.pump(&mut net);
        net.drive();
        while let Recv::Message(from, m) = net.node_mut(1).poll_recv(job, 0) {
            assert_eq!(from, p);
            one_by_one.push(m);
        }
        let mut arrivals = std::collections::VecDeque::new();
        while net.node_mut(1).take_arrivals(job, 1, 4096, &mut arrivals) > 0 {}
        let taken: u64 = arrivals.iter().map(|(_, a)| a.cost()).sum();
        let outstanding = net.consumer_credit(1, job, 1).unwrap().outstanding;
        assert!(
            outstanding >= taken,
            "taken messages keep their credit until read: {outstanding} < {taken}"
        );
        net.node_mut(1).finished_reading(job, 1);
        for (from, arrival) in arrivals {
            assert_eq!(from, p);
            match arrival {
                Arrival::Message(m) => in_bulk.push(m),
                Arrival::Batch(batch) => in_bulk.extend(batch),
            }
        }
        finished = net.node_mut(1).poll_recv(job, 1) == Recv::Finished;
        if finished && one_by_one.len() == N as usize {
            break;
        }
        net.advance(net.tick());
    }
    assert!(finished, "consumer 1 did not finish");
    assert!(
        one_by_one == plan_for(c0),
        "consumer 0 got every message once, in order"
    );
    assert!(
        in_bulk == plan_for(c1),
        "consumer 1 got every message once, in order"
    );
    let audit = net.audit();
    assert_eq!(audit.data_messages, 2 * u64::from(N), "{audit:?}");
    assert!(
        audit.batch_frames > 0 && audit.batch_frames * 4 < audit.data_messages,
        "small messages were packed, several to a frame: {audit:?}"
    );
    net.assert_credit_respected();
    assert_eq!(net.stats(1).recv_queued_bytes, 0);
    let credit = net.consumer_credit(1, job, 1).unwrap();
    assert_eq!(
        credit.outstanding, 0,
        "every byte granted came back: {credit:?}"
    );
}

/// `try_send_many` takes messages while the channel's credit lasts and leaves the rest in
/// place, in order; credit arriving later wakes the producer for that consumer; every
/// message arrives once, in order; a failed channel is reported when nothing was taken.
#[test]
fn try_send_many_takes_what_credit_allows_and_keeps_the_rest() {
    const N: u32 = 300;
    let mut net = Net::new(2, small);
    let job = JobId(4);
    let (p, c) = (ep(0, 0), ep(1, 0));
    let all: Vec<Bytes> = (0..N).map(|s| message(job, p, c, s, 100)).collect();
    net.open_consumer(1, job, 0, &[p]);
    net.open_producer(0, job, 0, &[c]);
    let mut left: std::collections::VecDeque<Bytes> = all.iter().cloned().collect();
    let mut got = Vec::new();
    let mut calls_short_of_credit = 0;
    for _ in 0..2000 {
        let before = left.len();
        let taken = net
            .node_mut(0)
            .try_send_many(job, 0, c, &mut left)
            .expect("the channel is open");
        assert_eq!(left.len(), before - taken);
        let sent = all.len() - left.len();
        assert!(
            left.iter().eq(all[sent..].iter()),
            "what was not taken stays, in order"
        );
        if !left.is_empty() {
            calls_short_of_credit += 1;
        }
        net.drive();
        while let Recv::Message(from, m) = net.node_mut(1).poll_recv(job, 0) {
            assert_eq!(from, p);
            got.push(m);
        }
        if left.is_empty() && got.len() == all.len() {
            break;
        }
        if !left.is_empty() && !net.take_channel_ready(0).contains(&(job, 0, c)) {
            net.advance(net.tick());
        }
    }
    assert!(got == all, "every message once, in order");
    assert!(
        calls_short_of_credit > 5,
        "the pool of {} bytes made the producer wait for credit",
        net.node(1).config().credit_pool
    );
    net.assert_credit_respected();

    net.node_mut(0).cancel_job(job);
    let mut more: std::collections::VecDeque<Bytes> = [message(job, p, c, N, 10)].into();
    let failed = net.node_mut(0).try_send_many(job, 0, c, &mut more);
    assert!(
        matches!(failed, Err(ExchangeError::JobCancelled { .. })),
        "{failed:?}"
    );
}

/// Pools of two largest messages: the same promises under constant credit round trips.
#[test]
fn all_to_all_tight_pools() {
    for seed in 11..=13 {
        all_to_all(seed, tight, 12, false);
    }
}

/// Every pair dials both ways at the same instant: one link per pair survives the
/// tie-break, and the exchange is unaffected.
#[test]
fn all_to_all_with_simultaneous_dials() {
    for seed in 21..=23 {
        all_to_all(seed, roomy, 8, true);
    }
    all_to_all(24, tight, 8, true);
}

/// A node that needs a link to a lower-id peer, and expects data from it too, may wait
/// for the peer's dial (`dial_defer`); when the peer never dials (it has no endpoint of
/// the job open yet, so it does not know it needs the link), the higher id dials itself,
/// within the defer and a tick, and opens one connection. (A lower id whose consumer
/// expects a producer on the higher id dials at once, to learn whether it is alive.)
#[test]
fn higher_id_node_dials_a_silent_lower_peer_after_the_defer() {
    let mut net = Net::new(2, small);
    let job = JobId(6);
    let (p, c) = (ep(1, 0), ep(0, 0));
    let (p_silent, c_back) = (ep(0, 1), ep(1, 1));
    let msgs = plan(job, p, c, 20, 1024);
    let mut inboxes = vec![Inbox::open(&mut net, 1, job, 1, &[p_silent])];
    let mut outboxes = vec![Outbox::open(&mut net, 1, job, 0, vec![(c, msgs.clone())])];
    outboxes[0].pump(&mut net);
    net.drive();
    let defer = net.node(1).config().dial_defer;
    net.advance(defer - net.tick());
    assert!(
        net.dials.is_empty(),
        "node 1 waits for node 0: {:?}",
        net.dials
    );
    net.advance(2 * net.tick());
    assert_eq!(net.dials, vec![(NodeId(1), NodeId(0))]);
    assert_eq!(net.stats(1).links_up, 1);
    // Node 0's endpoints open late; the silent producer closes at once. Both use the link.
    inboxes.push(Inbox::open(&mut net, 0, job, 0, &[p]));
    net.open_producer(0, job, 1, &[c_back]);
    net.close_producer(0, job, 1);
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
    assert_eq!(inboxes[1].by_producer.get(&p), Some(&msgs));
    for inbox in &inboxes {
        assert!(inbox.finished && inbox.errors.is_empty(), "{inbox:?}");
    }
    assert_eq!(net.conns_created(), 1);
    assert_all_drained(&net);
    net.assert_credit_respected();
}

/// Small pools, 1-byte chunks and tiny writes: every frame arrives split at every point.
#[test]
fn all_to_all_byte_by_byte() {
    let mut net = Net::with_seed(2, 5, small);
    net.max_chunk = 1;
    net.max_transmit = 64;
    let job = JobId(3);
    let producers = [ep(0, 0), ep(1, 0)];
    let consumers = [ep(0, 1), ep(1, 1)];
    let mut inboxes: Vec<Inbox> = consumers
        .iter()
        .map(|c| Inbox::open(&mut net, c.node.0 as usize, job, c.slot, &producers))
        .collect();
    let mut outboxes: Vec<Outbox> = producers
        .iter()
        .map(|&p| {
            let plans = consumers
                .iter()
                .map(|&c| (c, plan(job, p, c, 10, 1024)))
                .collect();
            Outbox::open(&mut net, p.node.0 as usize, job, p.slot, plans)
        })
        .collect();
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
    for inbox in &inboxes {
        assert!(inbox.finished && inbox.errors.is_empty(), "{inbox:?}");
        for &p in &producers {
            assert_eq!(
                inbox.by_producer.get(&p),
                Some(&plan(job, p, inbox.endpoint(), 10, 1024))
            );
        }
    }
    assert_all_drained(&net);
    net.assert_credit_respected();
}

// ---------------------------------------------------------------------------------------
// Endpoint failures
// ---------------------------------------------------------------------------------------

/// A producer dropped without closing: its consumers get what it sent, then
/// `ProducerAborted`, and still finish with the other producers (remote and local).
#[test]
fn dropped_producer_aborts_only_its_channels() {
    const K: u32 = 30;
    let mut net = Net::new(2, small);
    let job = JobId(3);
    let (p0, p1, p2) = (ep(0, 0), ep(0, 1), ep(1, 5));
    let consumers = [ep(1, 0), ep(0, 2)];
    let producers = [p0, p1, p2];
    let mut inboxes: Vec<Inbox> = consumers
        .iter()
        .map(|c| Inbox::open(&mut net, c.node.0 as usize, job, c.slot, &producers))
        .collect();
    let mut outboxes: Vec<Outbox> = producers
        .iter()
        .map(|&p| {
            let plans = consumers
                .iter()
                .map(|&c| (c, plan(job, p, c, K, 1024)))
                .collect();
            Outbox::open(&mut net, p.node.0 as usize, job, p.slot, plans)
        })
        .collect();
    outboxes[0].close_when_done = false;
    for round in 0.. {
        assert!(round < 10_000, "producer 0 never got its messages out");
        outboxes[0].pump(&mut net);
        net.drive();
        for inbox in &mut inboxes {
            inbox.pull(&mut net);
        }
        if outboxes[0].done() {
            break;
        }
    }
    net.drop_producer(0, job, 0);
    assert!(matches!(
        net.try_send(0, job, 0, consumers[0], Bytes::from_static(b"late")),
        Err(TrySendError::Failed(
            ExchangeError::NoSuchEndpoint { .. },
            _
        ))
    ));
    let dropped = outboxes.remove(0);
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
    for inbox in &inboxes {
        let me = inbox.endpoint();
        assert!(
            inbox.finished,
            "{me} must finish despite the aborted producer"
        );
        assert_eq!(
            inbox.errors,
            vec![ExchangeError::ProducerAborted { producer: p0 }],
            "{me}"
        );
        assert_eq!(
            inbox.by_producer.get(&p0),
            dropped.accepted.get(&me),
            "{me}"
        );
        for &p in &[p1, p2] {
            assert_eq!(
                inbox.by_producer.get(&p),
                Some(&plan(job, p, me, K, 1024)),
                "{p}->{me}"
            );
        }
    }
    assert_all_drained(&net);
    net.assert_credit_respected();
}

/// A consumer dropped mid-stream (remote, then local to its producer): the producer is
/// woken, its next `try_send` to it fails with `Cancelled`, its other channel completes.
#[test]
fn dropped_consumer_cancels_only_its_channel() {
    for consumer_node in [1u32, 0] {
        const K: u32 = 100;
        let mut net = Net::new(2, small);
        let job = JobId(4);
        let p = ep(0, 0);
        let (c0, c1) = (ep(consumer_node, 0), ep(1, 1));
        let mut victim = Inbox::open(&mut net, consumer_node as usize, job, 0, &[p]);
        let mut inboxes = vec![Inbox::open(&mut net, 1, job, 1, &[p])];
        let plans = vec![
            (c0, plan(job, p, c0, K, 1024)),
            (c1, plan(job, p, c1, K, 1024)),
        ];
        let mut outboxes = vec![Outbox::open(&mut net, 0, job, 0, plans)];
        for round in 0.. {
            assert!(round < 10_000);
            outboxes[0].pump(&mut net);
            net.drive();
            victim.pull(&mut net);
            inboxes[0].pull(&mut net);
            if victim.received() >= 10 {
                break;
            }
        }
        let received = victim.received();
        assert!(received < K as usize, "the consumer is dropped mid-stream");
        net.drop_consumer(consumer_node as usize, job, 0);
        net.take_channel_ready(0);
        net.drive();
        assert!(
            net.take_channel_ready(0).contains(&(job, 0, c0)),
            "the producer's channel to the dropped consumer is woken by the cancel"
        );
        let next = outboxes[0].pending[0].1.front().cloned().unwrap();
        assert_eq!(
            net.try_send(0, job, 0, c0, next.clone()),
            Err(TrySendError::Failed(
                ExchangeError::Cancelled {
                    consumer: c0,
                    code: CancelCode::ConsumerGone
                },
                next
            )),
            "the message is handed back"
        );
        run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
        assert_eq!(
            inboxes[0].by_producer.get(&p),
            Some(&plan(job, p, c1, K, 1024))
        );
        assert!(inboxes[0].finished && inboxes[0].errors.is_empty());
        assert!(matches!(
            outboxes[0].failed.get(&c0),
            Some(ExchangeError::Cancelled { .. })
        ));
        assert_eq!(
            &victim.by_producer[&p][..],
            &plan(job, p, c0, K, 1024)[..received],
            "what the dropped consumer read was a prefix of its stream"
        );
        assert!(matches!(
            net.node_mut(consumer_node as usize).poll_recv(job, 0),
            Recv::Error(ExchangeError::NoSuchEndpoint { .. })
        ));
        assert_all_drained(&net);
        net.assert_credit_respected();
    }
}

// ---------------------------------------------------------------------------------------
// Parking
// ---------------------------------------------------------------------------------------

/// A channel opened before its consumer exists is parked without data; once the consumer
/// opens, the producer is woken and the stream flows.
#[test]
fn channel_parked_until_its_consumer_opens() {
    let mut net = Net::new(2, small);
    let job = JobId(9);
    let (p, c) = (ep(0, 0), ep(1, 0));
    // No empty messages here: they need no credit (see the ignored tests below).
    let msgs: Vec<Bytes> = (0..50)
        .map(|s| message(job, p, c, s, 1 + (s as usize * 53) % 1024))
        .collect();
    let mut outboxes = vec![Outbox::open(&mut net, 0, job, 0, vec![(c, msgs.clone())])];
    for _ in 0..3 {
        outboxes[0].pump(&mut net);
        net.drive();
    }
    assert!(
        outboxes[0].accepted.is_empty(),
        "no credit before the consumer exists"
    );
    let s = net.stats(1);
    assert_eq!(
        (s.parked_channels, s.in_channels, s.recv_queued_bytes),
        (1, 1, 0),
        "{s:?}"
    );
    assert!(net.take_producer_ready(0).is_empty());

    let mut inboxes = vec![Inbox::open(&mut net, 1, job, 0, &[p])];
    net.drive();
    assert!(
        net.take_channel_ready(0).contains(&(job, 0, c)),
        "credit wakes the producer's channel"
    );
    assert_eq!(net.stats(1).parked_channels, 0);
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
    assert_eq!(inboxes[0].by_producer.get(&p), Some(&msgs));
    assert!(inboxes[0].finished && inboxes[0].errors.is_empty());
    assert_all_drained(&net);
    net.assert_credit_respected();
}

/// Producers that closed, or aborted, before their consumer opened: the consumer sees the
/// outcome of each as soon as it opens.
#[test]
fn channels_finished_while_parked_report_their_outcome() {
    let mut net = Net::new(2, small);
    let job = JobId(10);
    let (p0, p1, c) = (ep(0, 0), ep(0, 1), ep(1, 0));
    net.open_producer(0, job, 0, &[c]);
    net.open_producer(0, job, 1, &[c]);
    net.close_producer(0, job, 0);
    assert!(matches!(
        net.try_send(0, job, 1, c, Bytes::from_static(b"blocked")),
        Err(TrySendError::NoCredit(_))
    ));
    net.drive();
    net.drop_producer(0, job, 1);
    net.drive();
    assert_eq!(net.stats(1).parked_channels, 2);
    net.open_consumer(1, job, 0, &[p0, p1]);
    net.drive();
    let drained = net.recv_all(1, job, 0);
    assert!(drained.messages.is_empty());
    assert_eq!(
        drained.errors,
        vec![ExchangeError::ProducerAborted { producer: p1 }]
    );
    assert!(drained.finished);
    assert_all_drained(&net);
}

/// An empty message costs credit like any other (its overhead), so while its channel is
/// parked it waits for the consumer's grant, then is delivered like any other.
#[test]
fn empty_message_sent_while_parked_is_delivered() {
    let mut net = Net::new(2, small);
    let job = JobId(11);
    let (p, c) = (ep(0, 0), ep(1, 0));
    net.open_producer(0, job, 0, &[c]);
    assert!(
        matches!(
            net.try_send(0, job, 0, c, Bytes::new()),
            Err(TrySendError::NoCredit(_))
        ),
        "an empty message still needs credit"
    );
    net.drive();
    net.open_consumer(1, job, 0, &[p]);
    net.drive();
    net.try_send(0, job, 0, c, Bytes::new()).unwrap();
    net.close_producer(0, job, 0);
    net.drive();
    let drained = net.recv_all(1, job, 0);
    assert_eq!(
        drained.messages,
        vec![(p, Bytes::new())],
        "the empty message is lost"
    );
    assert!(drained.finished);
}

/// A consumer that never reads must stop its producer eventually, whatever the message
/// sizes: empty messages cost no credit, so without a bound they pile up without limit.
#[test]
fn empty_messages_are_bounded_for_a_stalled_consumer() {
    let mut net = Net::new(2, small);
    let job = JobId(12);
    let (p, c) = (ep(0, 0), ep(1, 0));
    net.open_consumer(1, job, 0, &[p]);
    net.open_producer(0, job, 0, &[c]);
    let mut accepted = 0u64;
    for _ in 0..100 {
        for _ in 0..1000 {
            if net.try_send(0, job, 0, c, Bytes::new()).is_ok() {
                accepted += 1;
            }
        }
        net.drive();
    }
    // The pool is 4096 bytes; 100,000 queued messages is unbounded by any measure.
    assert!(
        accepted < 100_000,
        "all {accepted} empty messages were accepted for a consumer that never reads"
    );
}

// ---------------------------------------------------------------------------------------
// Link failures
// ---------------------------------------------------------------------------------------

/// Cutting the link between nodes 0 and 1 in the middle of two jobs (one spanning all
/// three nodes, one not touching node 1), twice, is invisible: the nodes redial, the
/// session resumes, and every consumer gets exactly its streams, once, in order, with no
/// error; producers see no failure; the link comes back and retains nothing at the end.
#[test]
fn cut_link_reconnects_and_resumes_invisibly() {
    const K: u32 = 40;
    let mut net = Net::new(3, small);
    let (j1, j2) = (JobId(21), JobId(22));
    let all: Vec<Endpoint> = (0..3).map(|n| ep(n, 0)).collect();
    let pair = [ep(0, 1), ep(2, 1)];
    let mut inboxes = Vec::new();
    let mut outboxes = Vec::new();
    for &c in &all {
        inboxes.push(Inbox::open(&mut net, c.node.0 as usize, j1, 0, &all));
    }
    for &c in &pair {
        inboxes.push(Inbox::open(&mut net, c.node.0 as usize, j2, 1, &pair));
    }
    for &p in &all {
        let plans = all.iter().map(|&c| (c, plan(j1, p, c, K, 1024))).collect();
        outboxes.push(Outbox::open(&mut net, p.node.0 as usize, j1, 0, plans));
    }
    for &p in &pair {
        let plans = pair.iter().map(|&c| (c, plan(j2, p, c, K, 1024))).collect();
        outboxes.push(Outbox::open(&mut net, p.node.0 as usize, j2, 1, plans));
    }
    for cut in 0..2 {
        for _ in 0..5 {
            for o in &mut outboxes {
                o.pump(&mut net);
            }
            net.drive();
            for i in &mut inboxes {
                i.pull(&mut net);
            }
        }
        assert_eq!(net.open_conns_between(0, 1), 1, "before cut {cut}");
        let across: usize = inboxes
            .iter()
            .filter(|i| i.job == j1 && i.node <= 1)
            .map(|i| {
                i.by_producer
                    .get(&ep(1 - i.node as u32, 0))
                    .map_or(0, Vec::len)
            })
            .sum();
        assert!(
            across < 2 * K as usize,
            "the cut must come mid-stream ({across} messages across already)"
        );
        net.cut(0, 1);
        net.drive();
        assert_eq!(
            net.open_conns_between(0, 1),
            1,
            "both sides redial at once; one connection is kept"
        );
    }

    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
    for inbox in &inboxes {
        let me = inbox.endpoint();
        assert!(inbox.finished, "{me} of {} must finish", inbox.job);
        assert!(
            inbox.errors.is_empty(),
            "{me} of {}: {:?}",
            inbox.job,
            inbox.errors
        );
        assert_eq!(inbox.after_finish, 0);
        let producers: &[Endpoint] = if inbox.job == j1 { &all } else { &pair };
        for &p in producers {
            let want = plan(inbox.job, p, me, K, 1024);
            let got = inbox.by_producer.get(&p).map_or(&[][..], Vec::as_slice);
            assert!(
                got == want.as_slice(),
                "{p} -> {me} of {}: complete",
                inbox.job
            );
        }
    }
    for o in &outboxes {
        assert!(o.failed.is_empty(), "{}: {:?}", o.endpoint(), o.failed);
    }
    for closed in &net.closes {
        assert!(
            matches!(
                closed.cause,
                LinkCause::GoAway(GoAwayCode::SimultaneousDial | GoAwayCode::Duplicate)
            ),
            "only surplus dials may close: {closed:?}"
        );
    }
    assert_eq!(net.node(0).resume_times().len(), 2);
    assert_eq!(net.node(1).resume_times().len(), 2);
    assert!(net.node(2).resume_times().is_empty());
    net.advance(Duration::from_millis(100));
    for i in 0..3 {
        assert_eq!(net.stats(i).links_up, 2, "node {i}");
        assert_eq!(net.stats(i).retained_bytes, 0, "node {i}");
    }
    assert_all_drained(&net);
    net.assert_credit_respected();
}

/// A producer whose consumer's node refuses connections (nothing listens there) fails
/// after `dead_after_refusals` (2) refused dials in a row, within the redial backoff and
/// a tick, and a consumer expecting a producer there is told and finishes.
#[test]
fn unreachable_peer_fails_after_refused_dials() {
    let mut net = Net::new(1, small);
    let job = JobId(30);
    let far = ep(3, 0);
    net.open_producer(0, job, 0, &[far]);
    net.open_consumer(0, job, 1, &[far]);
    assert!(matches!(
        net.try_send(0, job, 0, far, Bytes::from_static(b"hello")),
        Err(TrySendError::NoCredit(_))
    ));
    net.drive();
    assert_eq!(net.dials.len(), 1, "dialled at once");
    assert!(
        net.take_channel_ready(0).is_empty(),
        "one refusal is not enough"
    );
    let config = net.node(0).config().clone();
    net.advance(config.dial_backoff + 2 * net.tick());
    let refusals = config.dead_after_refusals as usize;
    assert_eq!(refusals, 2);
    assert_eq!(net.dials.len(), refusals, "{:?}", net.dials);
    assert!(net.take_channel_ready(0).contains(&(job, 0, far)));
    let err = net.try_send(0, job, 0, far, Bytes::from_static(b"hello"));
    assert!(
        matches!(
            &err,
            Err(TrySendError::Failed(
                ExchangeError::LinkFailed {
                    peer: NodeId(3),
                    cause: LinkCause::Unreachable(_)
                },
                _
            ))
        ),
        "{err:?}"
    );
    let drained = net.recv_all(0, job, 1);
    assert!(matches!(
        drained.errors.as_slice(),
        [ExchangeError::LinkFailed {
            peer: NodeId(3),
            cause: LinkCause::Unreachable(_)
        }]
    ));
    assert!(drained.finished);
    net.advance(Duration::from_secs(30));
    assert_eq!(net.dials.len(), refusals, "a dead peer is not redialled");
}

/// Quiet links are kept alive by pings: nothing closes while both nodes run.
#[test]
fn idle_links_stay_up() {
    let mut net = Net::new(2, small);
    let job = JobId(31);
    let (p, c) = (ep(0, 0), ep(1, 0));
    let (p_back, c_back) = (ep(1, 1), ep(0, 1));
    net.open_consumer(1, job, 0, &[p]);
    net.open_consumer(0, job, 1, &[p_back]);
    net.open_producer(0, job, 0, &[c]);
    net.open_producer(1, job, 1, &[c_back]);
    let _ = net.try_send(0, job, 0, c, Bytes::from_static(b"wake"));
    net.drive();
    assert_eq!(net.stats(0).links_up, 1);
    let idle = net.node(0).config().idle_timeout;
    let conns = net.conns_created();
    net.advance(idle * 3);
    assert!(
        net.closes.is_empty(),
        "pings keep a quiet link up: {:?}",
        net.closes
    );
    assert_eq!((net.stats(0).links_up, net.stats(1).links_up), (1, 1));
    assert_eq!(net.conns_created(), conns, "no reconnection");
    assert!(net.node(0).resume_times().is_empty());
}

// ---------------------------------------------------------------------------------------
// Hostile bytes
// ---------------------------------------------------------------------------------------

/// The job whose consumer 1/1 expects a producer on the hostile "node 99".
const HOSTILE_JOB: JobId = JobId(5);

/// The incarnation the hostile "node 99" claims.
const HOSTILE_INCARNATION: u64 = 0x99;

/// A `Hello` starting a fresh session (no session with the receiver claimed).
fn hello(node: u32) -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        cluster: CLUSTER,
        node: NodeId(node),
        incarnation: HOSTILE_INCARNATION,
        peer_incarnation: 0,
        received: 0,
        max_message: 1024,
    }
}

fn open_to_victim() -> Frame {
    Frame::Open {
        channel: WireChannel(0),
        job: HOSTILE_JOB,
        producer: 0,
        consumer: 1,
    }
}

/// A job between the honest nodes 0 and 1, running beside the hostile peer.
const LEGIT_JOB: JobId = JobId(55);

/// The legitimate exchange hostile peers must not disturb: producer 0 of node 0 sends 30
/// messages of `LEGIT_JOB` to consumer 0 of node 1, started and driven until the link is
/// up. Returns the producer, its messages, and the boxes that finish the exchange.
fn legit_exchange(net: &mut Net) -> (Endpoint, Vec<Bytes>, Vec<Outbox>, Vec<Inbox>) {
    let (p, c) = (ep(0, 0), ep(1, 0));
    let msgs = plan(LEGIT_JOB, p, c, 30, 1024);
    let inboxes = vec![Inbox::open(net, 1, LEGIT_JOB, 0, &[p])];
    let mut outboxes = vec![Outbox::open(net, 0, LEGIT_JOB, 0, vec![(c, msgs.clone())])];
    outboxes[0].pump(net);
    net.drive();
    (p, msgs, outboxes, inboxes)
}

/// Runs `script` as a raw peer of node 1 while nodes 0 and 1 exchange in another job;
/// asserts that the raw link is closed with a `Protocol` cause and a `GoAway`, that the
/// legitimate exchange completes, and (when the peer got past its `Hello`) that the
/// consumer expecting it is told why: the peer is declared dead for breaking the protocol.
fn hostile(name: &str, past_hello: bool, script: impl FnOnce(&mut Net, RawConn)) {
    let mut net = Net::new(2, small);
    let (p, msgs, mut outboxes, mut inboxes) = legit_exchange(&mut net);
    assert_eq!(
        net.stats(1).links_up,
        1,
        "{name}: the legitimate link is up"
    );

    let raw = net.raw_connect(1);
    // Past the handshake, a consumer of node 1 expects a producer on the hostile node. It
    // opens once the peer is known: node 1 would otherwise dial node 99 itself, and the
    // harness refuses dials to nodes it does not run.
    let mut victim = None;
    if past_hello {
        net.raw_prove(raw, NodeId(99), HOSTILE_INCARNATION, &secret());
        net.raw_send_frame(raw, &hello(99));
        net.drive();
        assert!(
            matches!(net.raw_frames(raw).get(2), Some(Frame::Hello { .. })),
            "{name}: node 1 answers the Hello: {:?}",
            net.raw_frames(raw)
        );
        victim = Some(Inbox::open(&mut net, 1, HOSTILE_JOB, 1, &[ep(99, 0)]));
        net.drive();
    }
    script(&mut net, raw);
    net.drive();

    let link = net.raw_link(raw);
    let closed = net
        .closes
        .iter()
        .find(|cl| cl.node == NodeId(1) && cl.link == link)
        .unwrap_or_else(|| panic!("{name}: node 1 did not close the hostile link"));
    // Before the proofs, anything unexpected is a failure to prove membership.
    assert!(
        matches!(
            (past_hello, &closed.cause),
            (_, LinkCause::Protocol(_)) | (false, LinkCause::Unauthenticated(_))
        ),
        "{name}: cause {:?}",
        closed.cause
    );
    assert!(!net.raw_is_open(raw), "{name}");
    let frames = net.raw_frames(raw);
    assert!(
        matches!(frames.last(), Some(Frame::GoAway { .. })),
        "{name}: the link ends with a GoAway: {frames:?}"
    );

    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
    assert_eq!(inboxes[0].by_producer.get(&p), Some(&msgs), "{name}");
    assert!(
        inboxes[0].errors.is_empty(),
        "{name}: {:?}",
        inboxes[0].errors
    );
    assert_eq!(
        net.stats(1).links_up,
        1,
        "{name}: the legitimate link is untouched"
    );
    if let Some(mut victim) = victim {
        victim.pull(&mut net);
        assert!(
            matches!(
                victim.errors.as_slice(),
                [ExchangeError::LinkFailed {
                    peer: NodeId(99),
                    cause: LinkCause::Protocol(_)
                }]
            ),
            "{name}: {:?}",
            victim.errors
        );
        assert!(victim.finished, "{name}");
    }
    net.assert_credit_respected();
}

/// Garbage, hostile lengths and broken handshakes close the link with a protocol error.
#[test]
fn hostile_bytes_before_the_handshake_close_the_link() {
    hostile("unknown kind", false, |net, raw| {
        net.raw_send(raw, &[1, 0, 0, 0, 0xEE])
    });
    hostile("huge declared length", false, |net, raw| {
        net.raw_send(raw, &[0xFF, 0xFF, 0xFF, 0xFF, 4, 0, 0, 0, 0]);
    });
    hostile("an HTTP request", false, |net, raw| {
        net.raw_send(raw, b"GET / HTTP/1.1\r\nHost: plexus\r\n\r\n");
    });
    hostile("empty frame", false, |net, raw| {
        net.raw_send(raw, &[0, 0, 0, 0])
    });
    hostile("channel frame before Hello", false, |net, raw| {
        net.raw_send_frame(raw, &open_to_victim());
    });
    hostile("wrong cluster", false, |net, raw| {
        net.raw_send_frame(
            raw,
            &Frame::Hello {
                version: PROTOCOL_VERSION,
                cluster: CLUSTER ^ 1,
                node: NodeId(99),
                incarnation: HOSTILE_INCARNATION,
                peer_incarnation: 0,
                received: 0,
                max_message: 1024,
            },
        );
    });
    hostile("wrong version", false, |net, raw| {
        net.raw_send_frame(
            raw,
            &Frame::Hello {
                version: PROTOCOL_VERSION.wrapping_add(1),
                cluster: CLUSTER,
                node: NodeId(99),
                incarnation: HOSTILE_INCARNATION,
                peer_incarnation: 0,
                received: 0,
                max_message: 1024,
            },
        );
    });
    hostile("our own node id", false, |net, raw| {
        net.raw_send_frame(raw, &hello(1))
    });
    let challenge = |version, cluster, node| Frame::Challenge {
        version,
        cluster,
        node: NodeId(node),
        incarnation: HOSTILE_INCARNATION,
        nonce: [1; 32],
    };
    hostile("challenge of another cluster", false, move |net, raw| {
        net.raw_send_frame(raw, &challenge(PROTOCOL_VERSION, CLUSTER ^ 1, 99))
    });
    hostile("challenge of another version", false, move |net, raw| {
        net.raw_send_frame(raw, &challenge(PROTOCOL_VERSION + 1, CLUSTER, 99))
    });
    hostile("challenge claiming our own id", false, move |net, raw| {
        net.raw_send_frame(raw, &challenge(PROTOCOL_VERSION, CLUSTER, 1))
    });
}

/// The hostile peer opens channel 0 to the victim consumer and asks for 100 bytes of
/// credit, which it gets.
fn open_with_a_grant_of_100(net: &mut Net, raw: RawConn) {
    net.raw_send_frame(raw, &open_to_victim());
    net.raw_send_frame(
        raw,
        &Frame::Backlog {
            channel: WireChannel(0),
            need: 100,
            want: 0,
        },
    );
    net.drive();
    let credit = Frame::Credit {
        channel: WireChannel(0),
        bytes: 100,
    };
    assert!(
        net.raw_frames(raw).contains(&credit),
        "{:?}",
        net.raw_frames(raw)
    );
}

/// Protocol violations by a peer that passed the handshake close its link (and fail only
/// its channels), including data beyond credit, by one byte past an exact grant.
#[test]
fn hostile_frames_after_the_handshake_close_the_link() {
    hostile("second Hello", true, |net, raw| {
        net.raw_send_frame(raw, &hello(99));
    });
    hostile("data on an unknown channel", true, |net, raw| {
        net.raw_send_frame(
            raw,
            &Frame::Data {
                channel: WireChannel(7),
                payload: Bytes::from_static(b"boo"),
            },
        );
    });
    hostile("data without credit", true, |net, raw| {
        net.raw_send_frame(raw, &open_to_victim());
        net.raw_send_frame(
            raw,
            &Frame::Data {
                channel: WireChannel(0),
                payload: Bytes::from_static(b"x"),
            },
        );
    });
    hostile("data one byte past a grant", true, |net, raw| {
        open_with_a_grant_of_100(net, raw);
        net.raw_send_frame(
            raw,
            &Frame::Data {
                channel: WireChannel(0),
                // 100 bytes of credit pay for 84 bytes of payload and the message overhead.
                payload: Bytes::from(vec![7; 100 - MESSAGE_OVERHEAD as usize]),
            },
        );
        net.drive();
        assert!(net.raw_is_open(raw), "data within credit is accepted");
        net.raw_send_frame(
            raw,
            &Frame::Data {
                channel: WireChannel(0),
                payload: Bytes::from_static(b"!"),
            },
        );
    });
    hostile("a batch one message past a grant", true, |net, raw| {
        open_with_a_grant_of_100(net, raw);
        // Two messages of 34 bytes cost the 100 bytes of credit with their overhead; one
        // more is beyond it.
        let batch = |n: usize| {
            let mut b = BatchBuilder::default();
            b.start(BATCH_BODY_MAX);
            for _ in 0..n {
                b.push(&[5; 34]);
            }
            Frame::Batch {
                channel: WireChannel(0),
                messages: b.finish(),
            }
        };
        net.raw_send_frame(raw, &batch(2));
        net.drive();
        assert!(net.raw_is_open(raw), "a batch within credit is accepted");
        net.raw_send_frame(raw, &batch(1));
    });
    hostile("need beyond the largest message", true, |net, raw| {
        net.raw_send_frame(raw, &open_to_victim());
        net.raw_send_frame(
            raw,
            &Frame::Backlog {
                channel: WireChannel(0),
                // The largest message (1024 bytes here) costs 1024 + overhead.
                need: 1024 + MESSAGE_OVERHEAD as u32 + 1,
                want: 0,
            },
        );
    });
    hostile("End with a wrong byte count", true, |net, raw| {
        net.raw_send_frame(raw, &open_to_victim());
        net.raw_send_frame(
            raw,
            &Frame::End {
                channel: WireChannel(0),
                sent: 5,
            },
        );
    });
    hostile("channel opened twice", true, |net, raw| {
        net.raw_send_frame(raw, &open_to_victim());
        net.raw_send_frame(raw, &open_to_victim());
    });
    hostile("declared length past the limit", true, |net, raw| {
        net.raw_send(raw, &(1u32 << 30).to_le_bytes());
    });
}

/// A frame a hostile peer may send, with small channel numbers so they hit real channels.
fn hostile_frame() -> impl Strategy<Value = Frame> {
    let ch = (0u32..3).prop_map(WireChannel);
    prop_oneof![
        (ch.clone(), 0u32..3).prop_map(|(channel, consumer)| Frame::Open {
            channel,
            job: HOSTILE_JOB,
            producer: 0,
            consumer,
        }),
        (ch.clone(), 0usize..1500).prop_map(|(channel, n)| Frame::Data {
            channel,
            payload: Bytes::from(vec![0xAB; n]),
        }),
        (ch.clone(), proptest::collection::vec(0usize..300, 1..8)).prop_map(|(channel, sizes)| {
            let mut b = BatchBuilder::default();
            b.start(BATCH_BODY_MAX);
            for n in sizes {
                b.push(&vec![0xCD; n]);
            }
            Frame::Batch {
                channel,
                messages: b.finish(),
            }
        }),
        (ch.clone(), 0u32..1500, 0u32..5000).prop_map(|(channel, need, want)| {
            Frame::Backlog {
                channel,
                need,
                want,
            }
        }),
        (ch.clone(), any::<u32>()).prop_map(|(channel, bytes)| Frame::Credit { channel, bytes }),
        (ch.clone(), 0u64..3000).prop_map(|(channel, sent)| Frame::End { channel, sent }),
        ch.clone().prop_map(|channel| Frame::Abort { channel }),
        (ch, 0u16..4).prop_map(|(channel, code)| Frame::Cancel {
            channel,
            code: CancelCode::from_wire(code),
        }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
    ]
}

/// What a hostile peer does next.
#[derive(Clone, Debug)]
enum HostileOp {
    Frame(Frame),
    Bytes(Vec<u8>),
    /// The victim consumer reads everything (returning credit to its pool).
    Read,
}

fn hostile_op() -> impl Strategy<Value = HostileOp> {
    prop_oneof![
        8 => hostile_frame().prop_map(HostileOp::Frame),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(HostileOp::Bytes),
        2 => Just(HostileOp::Read),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Arbitrary frames and bytes from a peer that passed the handshake never panic the
    /// core; if the link closes, the cause is a protocol error (or the peer's `GoAway`),
    /// and the consumer expecting that peer never holds more than its pool.
    #[test]
    fn hostile_streams_never_panic(ops in proptest::collection::vec(hostile_op(), 1..40)) {
        let mut net = Net::new(1, small);
        let raw = net.raw_connect(0);
        net.raw_prove(raw, NodeId(99), HOSTILE_INCARNATION, &secret());
        net.raw_send_frame(raw, &hello(99));
        net.drive();
        // Opened once the peer is up, so node 0 does not dial it (see `hostile`).
        net.open_consumer(0, HOSTILE_JOB, 1, &[ep(99, 0)]);
        net.open_consumer(0, HOSTILE_JOB, 2, &[ep(99, 0), ep(99, 1)]);
        for op in ops {
            match op {
                HostileOp::Frame(frame) => net.raw_send_frame(raw, &frame),
                HostileOp::Bytes(bytes) => net.raw_send(raw, &bytes),
                HostileOp::Read => {
                    net.recv_all(0, HOSTILE_JOB, 1);
                }
            }
            net.drive();
            for slot in [1, 2] {
                let credit = net.consumer_credit(0, HOSTILE_JOB, slot).unwrap();
                prop_assert!(credit.outstanding <= credit.capacity, "{:?}", credit);
            }
            prop_assert!(net.stats(0).recv_queued_bytes <= 2 * 4096);
        }
        for closed in &net.closes {
            prop_assert!(
                matches!(closed.cause, LinkCause::Protocol(_) | LinkCause::GoAway(_)),
                "{:?}", closed
            );
        }
        if !net.raw_is_open(raw) {
            let frames = net.raw_frames(raw);
            prop_assert!(matches!(frames.last(), Some(Frame::GoAway { .. })), "{:?}", frames);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The credit rule on the wire
// ---------------------------------------------------------------------------------------

/// Many producers on two nodes feed consumers that read one message at a time: credit is
/// the binding constraint throughout. The harness decodes every byte on every link and
/// checks each `Data` frame against the credit its sender had received for the channel.
#[test]
fn no_data_frame_is_ever_sent_beyond_credit() {
    for seed in [3u64, 4, 5] {
        let mut net = Net::with_seed(3, seed, tight);
        let max = net.node(0).config().max_message as usize;
        let job = JobId(40);
        let producers: Vec<Endpoint> = (0..3).flat_map(|n| (0..3).map(move |s| ep(n, s))).collect();
        let consumers = [ep(0, 9), ep(1, 9), ep(2, 9)];
        for c in consumers {
            net.open_consumer(c.node.0 as usize, job, c.slot, &producers);
        }
        let mut outboxes: Vec<Outbox> = producers
            .iter()
            .map(|&p| {
                let plans = consumers
                    .iter()
                    .map(|&c| (c, plan(job, p, c, 15, max)))
                    .collect();
                Outbox::open(&mut net, p.node.0 as usize, job, p.slot, plans)
            })
            .collect();
        let mut got: Vec<Vec<(Endpoint, Bytes)>> = vec![Vec::new(); 3];
        let mut finished = [false; 3];
        for round in 0.. {
            assert!(round < 100_000, "slow readers never finished");
            for o in &mut outboxes {
                o.pump(&mut net);
            }
            net.drive();
            for (k, c) in consumers.iter().enumerate() {
                // One message per round: the consumer is the bottleneck.
                match net.node_mut(c.node.0 as usize).poll_recv(job, c.slot) {
                    Recv::Message(from, m) => got[k].push((from, m)),
                    Recv::Finished => finished[k] = true,
                    Recv::Pending => {}
                    Recv::Error(e) => panic!("{c}: {e}"),
                }
                let credit = net.consumer_credit(c.node.0 as usize, job, c.slot).unwrap();
                assert!(credit.outstanding <= credit.capacity, "{credit:?}");
            }
            if finished.iter().all(|f| *f) {
                break;
            }
        }
        for (k, &c) in consumers.iter().enumerate() {
            for &p in &producers {
                let from_p: Vec<Bytes> = got[k]
                    .iter()
                    .filter(|(f, _)| *f == p)
                    .map(|(_, m)| m.clone())
                    .collect();
                assert!(from_p == plan(job, p, c, 15, max), "{p} -> {c}");
            }
        }
        let audit = net.audit();
        assert!(
            audit.data_messages > 200,
            "the audit saw the traffic: {audit:?}"
        );
        assert!(audit.credit_frames > 50, "credit went round: {audit:?}");
        net.assert_credit_respected();
        assert_all_drained(&net);
    }
}

// ---------------------------------------------------------------------------------------
// Probes of suspected defects
// ---------------------------------------------------------------------------------------

/// A job started after a link was cut (and came back), between the same two nodes, works:
/// the cut leaves no trace on later jobs.
#[test]
fn new_job_after_a_cut_gets_a_new_link() {
    let mut net = Net::new(2, small);
    let (j1, j2) = (JobId(50), JobId(51));
    let (p, c) = (ep(0, 0), ep(1, 0));
    let mut inboxes = vec![Inbox::open(&mut net, 1, j1, 0, &[p])];
    let mut outboxes = vec![Outbox::open(
        &mut net,
        0,
        j1,
        0,
        vec![(c, plan(j1, p, c, 5, 1024))],
    )];
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 1000);
    net.cut(0, 1);
    net.drive();
    net.advance(Duration::from_secs(30));

    let mut inboxes = vec![Inbox::open(&mut net, 1, j2, 0, &[p])];
    let msgs = plan(j2, p, c, 5, 1024);
    let mut outboxes = vec![Outbox::open(&mut net, 0, j2, 0, vec![(c, msgs.clone())])];
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
    assert!(outboxes[0].failed.is_empty(), "{:?}", outboxes[0].failed);
    assert!(inboxes[0].errors.is_empty(), "{:?}", inboxes[0].errors);
    assert_eq!(inboxes[0].by_producer.get(&p), Some(&msgs));
}

/// A channel parked for a consumer that, once open, does not expect its producer, and
/// whose producer already ended, must not leave a record behind.
#[test]
fn unexpected_channel_that_ended_while_parked_leaves_no_record() {
    let mut net = Net::new(2, small);
    let job = JobId(52);
    let c = ep(1, 0);
    net.open_producer(0, job, 0, &[c]);
    net.close_producer(0, job, 0);
    net.drive();
    assert_eq!(net.stats(1).parked_channels, 1);
    // The consumer's topology does not include producer 0/0.
    net.open_consumer(1, job, 0, &[ep(0, 7)]);
    net.advance(Duration::from_secs(1));
    let s = net.stats(1);
    assert_eq!(
        s.in_channels, 0,
        "a dead channel record is kept forever: {s:?}"
    );
}

/// Channels a peer opens for consumers that do not exist, beyond `max_parked_channels`,
/// are refused; a peer that never answers the refusals must not make the node keep a
/// record for each of them.
#[test]
fn refused_channels_do_not_accumulate_records() {
    let mut net = Net::new(1, |c| {
        small(c);
        c.max_parked_channels = 8;
    });
    let raw = net.raw_connect(0);
    net.raw_prove(raw, NodeId(99), HOSTILE_INCARNATION, &secret());
    net.raw_send_frame(raw, &hello(99));
    for n in 0..10_000u32 {
        net.raw_send_frame(
            raw,
            &Frame::Open {
                channel: WireChannel(n),
                job: JobId(60),
                producer: 0,
                consumer: n,
            },
        );
    }
    net.drive();
    let s = net.stats(0);
    assert!(s.parked_channels <= 8, "{s:?}");
    assert!(
        s.in_channels <= 64,
        "{} channel records held for a peer that opened 10,000: {s:?}",
        s.in_channels
    );
}

/// A peer that names thousands of jobs nobody here knows (cancels, failures, refusals,
/// turns of admission) creates at most `max_parked_channels` records, which expire with
/// the parking timeout; the legitimate exchange is untouched.
#[test]
fn a_peer_naming_random_jobs_cannot_grow_the_job_table() {
    let mut net = Net::new(2, |c| {
        small(c);
        c.max_parked_channels = 50;
        c.park_timeout = Duration::from_secs(5);
    });
    let (p, msgs, mut outboxes, mut inboxes) = legit_exchange(&mut net);
    let legit_jobs = net.stats(1).jobs;
    let raw = net.raw_connect(1);
    net.raw_prove(raw, NodeId(99), HOSTILE_INCARNATION, &secret());
    net.raw_send_frame(raw, &hello(99));
    net.drive();
    for i in 0..2000u64 {
        let job = JobId(1_000_000 + i);
        let frame = match i % 4 {
            0 => Frame::Reserved { job },
            1 => Frame::CancelJob { job },
            2 => Frame::JobRefused {
                job,
                reason: plexus_proto::frame::RefuseCode::OverBudget,
            },
            _ => Frame::JobFailed {
                job,
                dead: NodeId(7),
            },
        };
        net.raw_send_frame(raw, &frame);
    }
    net.drive();
    let jobs = net.stats(1).jobs;
    assert!(
        jobs <= legit_jobs + 50,
        "{jobs} job records after 2000 named at random"
    );
    assert!(net.raw_is_open(raw), "naming jobs breaks no rule");
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 10_000);
    assert_eq!(inboxes[0].by_producer.get(&p), Some(&msgs));
    net.advance(Duration::from_secs(6));
    assert!(
        net.stats(1).jobs <= legit_jobs,
        "the records expired: {:?}",
        net.stats(1)
    );
}
