//! Tests of the session layer in the deterministic harness (`support::Net`): links that
//! break and come back (cuts at every frame boundary and inside frames, random cuts,
//! partitions shorter and longer than the grace period), nodes that die, restart or hang,
//! job cancellation, parked channels that expire, and hostile session claims.
//!
//! Timing facts the bounds below rely on (defaults of `Config::new`): the harness calls
//! `handle_timeout` every `tick` (125 ms: a quarter of the 500 ms ping interval); a lost
//! link is redialled at once, then after a backoff of 20 ms doubling up to 1 s, each delay
//! drawn in its upper half; a peer is declared dead after 2 refused dials in a row, or
//! after `grace_period` (10 s) without a link; a link silent for `idle_timeout` (2 s) is
//! closed; a handshake must complete within 5 s; acknowledgements go out every 64 frames
//! or after `ack_delay` (10 ms). Dials across a partition fail after the harness's
//! `dial_timeout` (200 ms).

mod support;

use std::ops::Range;
use std::time::{Duration, Instant};

use plexus_proto::frame::{CancelCode, Frame, PROTOCOL_VERSION};
use plexus_proto::{
    Bytes, Config, Endpoint, ExchangeError, JobId, LinkCause, NodeId, Recv, TrySendError,
    WireChannel,
};
use proptest::prelude::*;
use support::{
    assert_all_drained, ep, message, plan, run_to_completion, small, tight, Inbox, Net, Outbox,
    CLUSTER,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Asserts that every inbox finished without error and got exactly `want(inbox, producer)`
/// from each of `producers`, in order.
fn assert_delivered_exactly_once(
    ctx: &str,
    inboxes: &[Inbox],
    producers: &[Endpoint],
    want: impl Fn(&Inbox, Endpoint) -> Vec<Bytes>,
) {
    for inbox in inboxes {
        let me = inbox.endpoint();
        assert!(inbox.errors.is_empty(), "{ctx}: {me}: {:?}", inbox.errors);
        assert!(inbox.finished, "{ctx}: {me} did not finish");
        assert_eq!(inbox.after_finish, 0, "{ctx}: {me}");
        for &p in producers {
            let want = want(inbox, p);
            let got = inbox.by_producer.get(&p).map_or(&[][..], Vec::as_slice);
            assert_eq!(
                got.len(),
                want.len(),
                "{ctx}: {p} -> {me}: message count (lost or duplicated)"
            );
            assert!(
                got == want.as_slice(),
                "{ctx}: {p} -> {me}: order or content"
            );
        }
    }
}

/// Lets acknowledgements and reconnections settle, then checks that every node has all
/// its links up and retains nothing.
fn settle_and_assert_nothing_retained(ctx: &str, net: &mut Net) {
    net.disarm_cuts();
    net.advance(Duration::from_millis(300));
    let n = net.len();
    for i in 0..n {
        let s = net.stats(i);
        assert_eq!(s.links_up, n - 1, "{ctx}: node {i}: {s:?}");
        assert_eq!(s.retained_bytes, 0, "{ctx}: node {i} still retains: {s:?}");
    }
}

/// One round of an application: every producer sends what credit allows, the net runs,
/// every consumer reads what arrived.
fn round(net: &mut Net, outboxes: &mut [Outbox], inboxes: &mut [Inbox]) {
    for o in outboxes.iter_mut() {
        o.pump(net);
    }
    net.drive();
    for i in inboxes.iter_mut() {
        i.pull(net);
    }
}

/// Lets `dur` of virtual time pass in ticks, the application running between them.
fn run_for(net: &mut Net, outboxes: &mut [Outbox], inboxes: &mut [Inbox], dur: Duration) {
    let end = net.now + dur;
    while net.now < end {
        round(net, outboxes, inboxes);
        let step = net.tick().min(end - net.now);
        net.advance(step);
    }
    round(net, outboxes, inboxes);
}

/// Every producer in `producers` sends `msgs` messages (sizes up to `max`) to every
/// consumer in `consumers`, in `job`. Consumers open first.
fn exchange(
    net: &mut Net,
    job: JobId,
    producers: &[Endpoint],
    consumers: &[Endpoint],
    msgs: u32,
    max: usize,
) -> (Vec<Outbox>, Vec<Inbox>) {
    let inboxes = consumers
        .iter()
        .map(|c| Inbox::open(net, c.node.0 as usize, job, c.slot, producers))
        .collect();
    let outboxes = producers
        .iter()
        .map(|&p| {
            let plans = consumers
                .iter()
                .map(|&c| (c, plan(job, p, c, msgs, max)))
                .collect();
            Outbox::open(net, p.node.0 as usize, job, p.slot, plans)
        })
        .collect();
    (outboxes, inboxes)
}

fn is_link_failed(e: &ExchangeError, peer: u32) -> bool {
    matches!(e, ExchangeError::LinkFailed { peer: p, .. } if *p == NodeId(peer))
}

/// Asserts that every live endpoint of `job` among the boxes failed with an error
/// `ok` accepts: consumers read it (once, after their data) then `Finished`; producers'
/// `try_send` and `has_credit` fail with it, towards every consumer of the job.
fn assert_job_failed_everywhere(
    ctx: &str,
    net: &mut Net,
    outboxes: &[Outbox],
    inboxes: &mut [Inbox],
    ok: impl Fn(&ExchangeError) -> bool,
) {
    for inbox in inboxes.iter_mut() {
        if !inbox.alive(net) {
            continue;
        }
        inbox.pull(net);
        let me = inbox.endpoint();
        assert_eq!(inbox.errors.len(), 1, "{ctx}: {me}: {:?}", inbox.errors);
        assert!(ok(&inbox.errors[0]), "{ctx}: {me}: {:?}", inbox.errors);
        assert!(inbox.finished, "{ctx}: {me} must finish after its error");
        assert_eq!(
            net.node_mut(inbox.node).poll_recv(inbox.job, inbox.slot),
            Recv::Finished,
            "{ctx}: {me}"
        );
    }
    for o in outboxes {
        if !o.alive(net) {
            continue;
        }
        let me = o.endpoint();
        for (c, _) in &o.pending {
            let sent = net.try_send(o.node, o.job, o.slot, *c, Bytes::from_static(b"late"));
            match &sent {
                Err(TrySendError::Failed(e, _)) if ok(e) => {}
                other => panic!("{ctx}: producer {me} -> {c}: try_send gave {other:?}"),
            }
            let credit = net.node_mut(o.node).has_credit(o.job, o.slot, *c, 1);
            match &credit {
                Err(e) if ok(e) => {}
                other => panic!("{ctx}: producer {me} -> {c}: has_credit gave {other:?}"),
            }
        }
    }
}

/// Whether any live endpoint of the boxes saw an error (consumers) or a failed channel
/// (producers).
fn any_failure(outboxes: &[Outbox], inboxes: &[Inbox]) -> bool {
    inboxes.iter().any(|i| !i.errors.is_empty()) || outboxes.iter().any(|o| !o.failed.is_empty())
}

// ---------------------------------------------------------------------------------------
// A small scripted transfer, cut at every frame boundary
// ---------------------------------------------------------------------------------------

const SCRIPT_JOB: JobId = JobId(100);
const SCRIPT_SIZES: [usize; 5] = [0, 5, 1024, 7, 3];

fn script_messages(from: Endpoint, to: Endpoint) -> Vec<Bytes> {
    SCRIPT_SIZES
        .iter()
        .enumerate()
        .map(|(seq, &len)| message(SCRIPT_JOB, from, to, seq as u32, len))
        .collect()
}

/// Two nodes; producer 0/0 feeds consumers 1/0 and 1/1, producer 1/0 feeds consumer 0/0;
/// five messages per channel (small ones, which travel packed in `Batch` frames, around a
/// largest one), then `End`.
fn scripted(seed: u64) -> (Net, Vec<Outbox>, Vec<Inbox>) {
    let mut net = Net::with_seed(2, seed, small);
    net.max_chunk = 700;
    let job = SCRIPT_JOB;
    let (p0, p1) = (ep(0, 0), ep(1, 0));
    let (c10, c11, c00) = (ep(1, 0), ep(1, 1), ep(0, 0));
    let inboxes = vec![
        Inbox::open(&mut net, 1, job, 0, &[p0]),
        Inbox::open(&mut net, 1, job, 1, &[p0]),
        Inbox::open(&mut net, 0, job, 0, &[p1]),
    ];
    let outboxes = vec![
        Outbox::open(
            &mut net,
            0,
            job,
            0,
            vec![
                (c10, script_messages(p0, c10)),
                (c11, script_messages(p0, c11)),
            ],
        ),
        Outbox::open(&mut net, 1, job, 0, vec![(c00, script_messages(p1, c00))]),
    ];
    (net, outboxes, inboxes)
}

fn scripted_want(inbox: &Inbox, from: Endpoint) -> Vec<Bytes> {
    let me = inbox.endpoint();
    let producer = if me.node == NodeId(1) {
        ep(0, 0)
    } else {
        ep(1, 0)
    };
    if producer == from {
        script_messages(from, me)
    } else {
        Vec::new()
    }
}

/// Runs the scripted transfer with the cut `arm` sets up; checks exactly-once delivery,
/// no failure, nothing retained once settled, and the credit audit. Returns the net.
fn run_scripted(ctx: &str, seed: u64, arm: impl FnOnce(&mut Net)) -> Net {
    let (mut net, mut outboxes, mut inboxes) = scripted(seed);
    arm(&mut net);
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 20_000);
    assert_delivered_exactly_once(ctx, &inboxes, &[ep(0, 0), ep(1, 0)], scripted_want);
    for o in &outboxes {
        assert!(
            o.failed.is_empty(),
            "{ctx}: {}: {:?}",
            o.endpoint(),
            o.failed
        );
    }
    settle_and_assert_nothing_retained(ctx, &mut net);
    assert_all_drained(&net);
    net.assert_credit_respected();
    net
}

/// A clean run of the scripted transfer: the frames it puts on the wire (handshake,
/// channel frames, acknowledgements), and the cut points that fall between the first
/// dialler's `Hello` reaching the acceptor and the acceptor's `Hello` reaching the dialler.
fn scripted_clean(seed: u64) -> (u64, Range<u64>) {
    let net = run_scripted("clean run", seed, |_| {});
    assert!(net.fired_cuts.is_empty());
    assert!(
        net.audit().batch_frames > 0,
        "cuts fall around batches too: {:?}",
        net.audit()
    );
    let hellos = &net.hellos_crossed;
    assert!(
        hellos.len() == 2 && !hellos[0].1 && hellos[1].1,
        "one handshake, dialler first: {hellos:?}"
    );
    (net.frames_crossed(), hellos[0].0..hellos[1].0)
}

/// For every k below the number of frames of a clean run, the transfer is run again and
/// the link cut right after the k-th frame crossed: the nodes reconnect, and every
/// consumer gets exactly its messages, once, in order, then `Finished`; no endpoint sees
/// an error; nothing stays retained. (The cut points inside the very first handshake are
/// in `cut_inside_the_first_handshake_is_invisible`, ignored for a core bug.)
#[test]
fn cut_at_every_frame_boundary() {
    let seed = 7;
    let (n, first_handshake) = scripted_clean(seed);
    assert!(n >= 30, "the transfer crosses {n} frames");
    for k in (0..n).filter(|k| !first_handshake.contains(k)) {
        let ctx = format!("cut after frame {k} of {n}");
        let net = run_scripted(&ctx, seed, |net| net.arm_cut(k, 0));
        assert_eq!(net.fired_cuts.len(), 1, "{ctx}: the cut happened");
        assert_eq!(net.fired_cuts[0].frames, k, "{ctx}");
        assert!(net.conns_created() >= 2, "{ctx}: reconnected");
    }
}

/// The same, with the cut in the middle of the frame after the k-th: some of its bytes
/// (from 1 byte of its length field to all but its last byte) reach the receiver and are
/// lost with the connection.
#[test]
fn cut_inside_a_frame_at_every_frame() {
    let seed = 8;
    let (n, first_handshake) = scripted_clean(seed);
    let mut fired = 0;
    let ks: Vec<u64> = (0..n).filter(|k| !first_handshake.contains(k)).collect();
    for &k in &ks {
        let partial = [1usize, 3, 4, 5, 9, 200][k as usize % 6];
        let ctx = format!("cut {partial} bytes into the frame after frame {k} of {n}");
        let net = run_scripted(&ctx, seed, |net| net.arm_cut(k, partial));
        if let Some(cut) = net.fired_cuts.first() {
            fired += 1;
            assert!(
                cut.partial_bytes > 0 && cut.partial_bytes <= partial,
                "{ctx}: {cut:?}"
            );
        }
    }
    assert!(
        fired + 2 >= ks.len(),
        "only {fired} of {} cuts found a frame to split",
        ks.len()
    );
}

/// Core bug: a cut after the acceptor took the dialler's first `Hello` (and answered)
/// but before the answer reached the dialler. The acceptor holds a session the dialler
/// never saw; on the next handshake the dialler (rightly) claims none, and the acceptor
/// declares it dead ("it lost the session with us"), failing the job on its side only,
/// while the dialler's consumer waits forever for a producer that was failed.
#[test]
fn cut_inside_the_first_handshake_is_invisible() {
    let seed = 7;
    let (n, first_handshake) = scripted_clean(seed);
    for k in first_handshake.clone() {
        for partial in [0, 5] {
            let ctx = format!("cut {partial} bytes after frame {k} of {n}");
            let net = run_scripted(&ctx, seed, |net| net.arm_cut(k, partial));
            assert_eq!(net.fired_cuts.len(), 1, "{ctx}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Random cuts during an all-to-all
// ---------------------------------------------------------------------------------------

const RANDOM_JOB: JobId = JobId(110);

/// 3 nodes, one producer and one consumer each, all to all, tight pools; cuts fire after
/// the given numbers of frames (counted from when the three links are up), each after
/// some bytes of a frame. Checks exactly-once in-order delivery, no failure, the
/// retention bound during the run and nothing retained after it.
///
/// The retention bound: a node retains the payload of the frames it sent that the peer
/// has not acknowledged. Data goes only against credit, and a consumer's credit
/// outstanding never exceeds its pool. A consumer returns credit only for data it
/// received, and every grant leaves after an `Ack` covering everything received before
/// it (the `Ack` is written first in every transmit), so by the time new credit reaches
/// a sender, the data it replaces is acknowledged. Hence a node retains at most the pools
/// of the remote consumers its producers feed (payload, without the per-message overhead
/// the credit also pays for), whatever the cuts.
fn random_cuts(seed: u64, cuts: &[(u64, usize)]) {
    let mut net = Net::with_seed(3, seed, tight);
    net.max_chunk = 1 + (seed as usize * 131) % 2500;
    let max = net.node(0).config().max_message as usize;
    let pool = net.node(0).config().credit_pool;
    let eps: Vec<Endpoint> = (0..3).map(|n| ep(n, 0)).collect();
    let (mut outboxes, mut inboxes) = exchange(&mut net, RANDOM_JOB, &eps, &eps, 8, max);
    round(&mut net, &mut outboxes, &mut inboxes);
    for i in 0..3 {
        assert_eq!(net.stats(i).links_up, 2, "links up before the cuts");
    }
    let base = net.frames_crossed();
    for &(after, partial) in cuts {
        net.arm_cut(base + after, partial);
    }
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 50_000);
    let ctx = format!("seed {seed}, cuts {cuts:?}, fired {:?}", net.fired_cuts);
    assert_delivered_exactly_once(&ctx, &inboxes, &eps, |inbox, p| {
        plan(RANDOM_JOB, p, inbox.endpoint(), 8, max)
    });
    for o in &outboxes {
        assert!(
            o.failed.is_empty(),
            "{ctx}: {}: {:?}",
            o.endpoint(),
            o.failed
        );
    }
    assert_eq!(
        net.fired_cuts.len(),
        cuts.len(),
        "{ctx}: every cut fell inside the transfer"
    );
    // On the wire too: each of the 6 remote channels' 8 messages went out once as a new
    // frame; whatever else crossed was a resend of it.
    assert_eq!(net.audit().data_messages, 6 * 8, "{ctx}");
    let bound = 2 * pool;
    for i in 0..3 {
        assert!(
            net.peak_retained(i) <= bound,
            "{ctx}: node {i} retained {} bytes, bound {bound}",
            net.peak_retained(i)
        );
    }
    settle_and_assert_nothing_retained(&ctx, &mut net);
    assert_all_drained(&net);
    net.assert_credit_respected();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random schedules of cuts (none to several, at any frame — inside reconnection
    /// handshakes too when two are close — and inside frames).
    #[test]
    fn random_cuts_keep_delivery_exactly_once_and_retention_bounded(
        seed in 0u64..1_000,
        cuts in proptest::collection::vec((0u64..250, 0usize..40), 0..6),
    ) {
        random_cuts(seed, &cuts);
    }
}

/// A few fixed schedules, so the bound and the resumption are exercised on every run:
/// bursts of cuts close together (cutting the reconnection handshakes themselves).
#[test]
fn bursts_of_cuts_keep_delivery_exactly_once() {
    random_cuts(1, &[(5, 0), (6, 0), (7, 3), (8, 0), (9, 1)]);
    random_cuts(2, &[(20, 0), (21, 2), (60, 0), (61, 0), (120, 7)]);
    random_cuts(3, &[(0, 0), (1, 0), (2, 0), (3, 0)]);
}

// ---------------------------------------------------------------------------------------
// Resume times
// ---------------------------------------------------------------------------------------

/// Three partitions shorter than the grace period, of different lengths, during a
/// transfer: each node records exactly one resume per outage, in order, each lasting at
/// least the partition and at most the partition plus the slack of redialling (a dial
/// timing out, the longest backoff and two ticks); nothing else is recorded.
#[test]
fn resume_times_record_each_outage() {
    let mut net = Net::with_seed(2, 31, tight);
    let job = JobId(120);
    let max = net.node(0).config().max_message as usize;
    let eps = [ep(0, 0), ep(1, 0)];
    let (mut outboxes, mut inboxes) = exchange(&mut net, job, &eps, &eps, 400, max);
    round(&mut net, &mut outboxes, &mut inboxes);
    let config = net.node(0).config().clone();
    let slack = net.dial_timeout + config.dial_backoff_max + 2 * net.tick();
    let outages = [
        Duration::from_millis(300),
        Duration::from_millis(1500),
        Duration::from_secs(4),
    ];
    for (n, &len) in outages.iter().enumerate() {
        run_for(
            &mut net,
            &mut outboxes,
            &mut inboxes,
            Duration::from_millis(50),
        );
        assert!(
            inboxes.iter().all(|i| !i.finished),
            "outage {n} comes mid-transfer"
        );
        net.partition(0, 1);
        run_for(&mut net, &mut outboxes, &mut inboxes, len);
        net.heal(0, 1);
        run_for(&mut net, &mut outboxes, &mut inboxes, slack);
        assert_eq!(net.stats(0).links_up, 1, "outage {n} is over");
        for i in 0..2 {
            assert_eq!(net.node(i).resume_times().len(), n + 1, "node {i}");
        }
    }
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 20_000);
    assert_delivered_exactly_once("partitions", &inboxes, &eps, |inbox, p| {
        plan(job, p, inbox.endpoint(), 400, max)
    });
    for i in 0..2 {
        let times = net.node(i).resume_times();
        assert_eq!(times.len(), outages.len(), "node {i}: {times:?}");
        for (t, &len) in times.iter().zip(&outages) {
            assert!(
                *t >= len && *t <= len + slack,
                "node {i}: outage of {len:?} recorded as {t:?} (slack {slack:?})"
            );
        }
    }
    settle_and_assert_nothing_retained("partitions", &mut net);
}

// ---------------------------------------------------------------------------------------
// A dead node
// ---------------------------------------------------------------------------------------

/// Node 2 of 3 is killed during a transfer spanning job A (nodes 0, 1, 2) and job B
/// (nodes 0, 1). Its peers lose their links at once and redial; the dials are refused, and
/// after the second refusal (the first redial is immediate, the second follows a backoff
/// of 10–20 ms, at the next tick) node 2 is dead: every endpoint of A on nodes 0 and 1
/// fails with `LinkFailed { peer: 2, Unreachable }` within `dial_backoff` + 2 ticks, on
/// consumers (`Error` then `Finished`) and producers (`try_send`/`has_credit`). Job B
/// completes, and node 2 is not dialled again.
#[test]
fn dead_node_fails_exactly_the_jobs_spanning_it() {
    let mut net = Net::with_seed(3, 41, tight);
    let max = net.node(0).config().max_message as usize;
    let (ja, jb) = (JobId(130), JobId(131));
    let all: Vec<Endpoint> = (0..3).map(|n| ep(n, 0)).collect();
    let pair = [ep(0, 1), ep(1, 1)];
    let (mut out_a, mut in_a) = exchange(&mut net, ja, &all, &all, 200, max);
    let (mut out_b, mut in_b) = exchange(&mut net, jb, &pair, &pair, 60, max);
    for _ in 0..5 {
        round(&mut net, &mut out_a, &mut in_a);
        round(&mut net, &mut out_b, &mut in_b);
    }
    assert!(in_b.iter().all(|i| !i.finished), "job B is mid-transfer");
    assert!(!any_failure(&out_a, &in_a));

    let dials_from_2 = net.dials.iter().filter(|d| d.0 == NodeId(2)).count();
    net.kill(2);
    let killed_at = net.now;
    net.drive();
    let bound = net.node(0).config().dial_backoff + 2 * net.tick();
    let dead = |e: &ExchangeError| {
        matches!(
            e,
            ExchangeError::LinkFailed {
                peer: NodeId(2),
                cause: LinkCause::Unreachable(_)
            }
        )
    };
    let mut failed_at = None;
    while net.now <= killed_at + bound + net.tick() {
        round(&mut net, &mut out_a, &mut in_a);
        round(&mut net, &mut out_b, &mut in_b);
        if in_a
            .iter()
            .filter(|i| i.alive(&net))
            .all(|i| !i.errors.is_empty())
        {
            failed_at = Some(net.now);
            break;
        }
        net.advance(net.tick());
    }
    let failed_at = failed_at.expect("job A failed on nodes 0 and 1");
    assert!(
        failed_at - killed_at <= bound,
        "detected after {:?} (bound {bound:?})",
        failed_at - killed_at
    );
    assert_job_failed_everywhere("job A", &mut net, &out_a, &mut in_a, dead);
    let mut deaths = net.deaths.clone();
    deaths.sort();
    assert_eq!(
        deaths,
        vec![(0, NodeId(2), vec![ja]), (1, NodeId(2), vec![ja])],
        "each survivor declared node 2 dead once, failing job A only"
    );
    let from_2: Vec<_> = net.dials.iter().filter(|d| d.0 == NodeId(2)).collect();
    assert_eq!(from_2.len(), dials_from_2, "the dead node does nothing");
    let dials_to_2 = |net: &Net| net.dials.iter().filter(|d| d.1 == NodeId(2)).count();
    assert!(dials_to_2(&net) >= 2, "both peers redialled node 2");

    run_to_completion(&mut net, &mut out_b, &mut in_b, 20_000);
    assert_delivered_exactly_once("job B", &in_b, &pair, |inbox, p| {
        plan(jb, p, inbox.endpoint(), 60, max)
    });
    let before = dials_to_2(&net);
    net.advance(Duration::from_secs(15));
    assert_eq!(dials_to_2(&net), before, "a dead node is not redialled");
    for i in 0..2 {
        let s = net.stats(i);
        assert_eq!((s.out_channels, s.in_channels), (0, 0), "node {i}: {s:?}");
        assert_eq!(s.retained_bytes, 0, "node {i}: {s:?}");
    }
    net.assert_credit_respected();
}

// ---------------------------------------------------------------------------------------
// Partitions
// ---------------------------------------------------------------------------------------

/// Nodes 0 and 1 are partitioned during job P (nodes 0, 1) while job Q (nodes 0, 2) runs.
/// Until the grace period has passed since the link was lost, nothing fails; within a
/// tick after it, every endpoint of P on both sides fails with `LinkFailed { peer: the
/// other, Unreachable }`. Job Q completes.
#[test]
fn partition_longer_than_the_grace_period_fails_the_jobs_across_it() {
    let mut net = Net::with_seed(3, 51, tight);
    let max = net.node(0).config().max_message as usize;
    let grace = net.node(0).config().grace_period;
    let (jp, jq) = (JobId(140), JobId(141));
    let p_eps = [ep(0, 0), ep(1, 0)];
    let q_eps = [ep(0, 1), ep(2, 1)];
    let (mut out_p, mut in_p) = exchange(&mut net, jp, &p_eps, &p_eps, 200, max);
    let (mut out_q, mut in_q) = exchange(&mut net, jq, &q_eps, &q_eps, 3000, max);
    for _ in 0..5 {
        round(&mut net, &mut out_p, &mut in_p);
        round(&mut net, &mut out_q, &mut in_q);
    }
    net.partition(0, 1);
    let cut_at = net.now;
    net.drive();
    let tick = net.tick();
    while net.now + tick < cut_at + grace {
        round(&mut net, &mut out_p, &mut in_p);
        round(&mut net, &mut out_q, &mut in_q);
        net.advance(tick);
    }
    round(&mut net, &mut out_p, &mut in_p);
    assert!(
        !any_failure(&out_p, &in_p),
        "nothing fails before the grace period ({:?} after the cut)",
        net.now - cut_at
    );
    assert!(in_q.iter().all(|i| !i.finished), "job Q still runs");
    for _ in 0..3 {
        net.advance(tick);
        round(&mut net, &mut out_p, &mut in_p);
    }
    assert!(net.now - cut_at <= grace + 3 * tick);
    let unreachable = |peer: u32| {
        move |e: &ExchangeError| {
            is_link_failed(e, peer)
                && matches!(
                    e,
                    ExchangeError::LinkFailed {
                        cause: LinkCause::Unreachable(_),
                        ..
                    }
                )
        }
    };
    let (mut on0, mut on1): (Vec<Inbox>, Vec<Inbox>) = in_p.into_iter().partition(|i| i.node == 0);
    let (o0, o1): (Vec<Outbox>, Vec<Outbox>) = out_p.into_iter().partition(|o| o.node == 0);
    assert_job_failed_everywhere("P on node 0", &mut net, &o0, &mut on0, unreachable(1));
    assert_job_failed_everywhere("P on node 1", &mut net, &o1, &mut on1, unreachable(0));
    run_to_completion(&mut net, &mut out_q, &mut in_q, 50_000);
    assert_delivered_exactly_once("job Q", &in_q, &q_eps, |inbox, p| {
        plan(jq, p, inbox.endpoint(), 3000, max)
    });
    net.assert_credit_respected();
}

/// A partition shorter than the grace period is invisible: after it heals, the session
/// resumes and everything is delivered exactly once, with no error.
#[test]
fn partition_shorter_than_the_grace_period_is_invisible() {
    let mut net = Net::with_seed(3, 52, tight);
    let max = net.node(0).config().max_message as usize;
    let grace = net.node(0).config().grace_period;
    let job = JobId(142);
    let eps: Vec<Endpoint> = (0..3).map(|n| ep(n, 0)).collect();
    let (mut outboxes, mut inboxes) = exchange(&mut net, job, &eps, &eps, 150, max);
    for _ in 0..5 {
        round(&mut net, &mut outboxes, &mut inboxes);
    }
    net.partition(0, 1);
    run_for(
        &mut net,
        &mut outboxes,
        &mut inboxes,
        grace - Duration::from_secs(3),
    );
    assert!(!any_failure(&outboxes, &inboxes));
    assert!(
        inboxes.iter().all(|i| !i.finished),
        "the partition holds the job up"
    );
    net.heal(0, 1);
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 50_000);
    assert_delivered_exactly_once("short partition", &inboxes, &eps, |inbox, p| {
        plan(job, p, inbox.endpoint(), 150, max)
    });
    for i in 0..2 {
        assert_eq!(net.node(i).resume_times().len(), 1, "node {i}");
    }
    settle_and_assert_nothing_retained("short partition", &mut net);
    assert_all_drained(&net);
    net.assert_credit_respected();
}

// ---------------------------------------------------------------------------------------
// A restarted node
// ---------------------------------------------------------------------------------------

/// Node 1 restarts (a new incarnation at the same id) during job R between nodes 0 and 1,
/// while job L runs on node 0 alone. Node 0 redials at once, meets the new incarnation,
/// and fails every endpoint of R with `LinkFailed { peer: 1, Restarted }`; job L goes on.
/// A new job between node 0 and the restarted node 1 then works both ways.
#[test]
fn restarted_node_fails_its_old_jobs_and_serves_new_ones() {
    let mut net = Net::with_seed(2, 61, tight);
    let max = net.node(0).config().max_message as usize;
    let (jr, jl, jn) = (JobId(150), JobId(151), JobId(152));
    let r_eps = [ep(0, 0), ep(1, 0)];
    let l_eps = [ep(0, 5), ep(0, 6)];
    let (mut out_r, mut in_r) = exchange(&mut net, jr, &r_eps, &r_eps, 200, max);
    let (mut out_l, mut in_l) = exchange(&mut net, jl, &l_eps, &l_eps, 20, max);
    for _ in 0..5 {
        round(&mut net, &mut out_r, &mut in_r);
    }
    let old = net.node(1).config().incarnation;
    let new = net.restart(1);
    assert_ne!(old, new);
    net.drive();
    round(&mut net, &mut out_r, &mut in_r);
    let restarted = |e: &ExchangeError| {
        matches!(
            e,
            ExchangeError::LinkFailed {
                peer: NodeId(1),
                cause: LinkCause::Restarted(_)
            }
        )
    };
    assert_job_failed_everywhere("job R on node 0", &mut net, &out_r, &mut in_r, restarted);
    assert!(
        in_r.iter().all(|i| i.node == 0 || !i.alive(&net)),
        "node 1's endpoints of R are gone with its old incarnation"
    );
    run_to_completion(&mut net, &mut out_l, &mut in_l, 20_000);
    assert_delivered_exactly_once("job L", &in_l, &l_eps, |inbox, p| {
        plan(jl, p, inbox.endpoint(), 20, max)
    });

    let n_eps = [ep(0, 2), ep(1, 2)];
    let (mut out_n, mut in_n) = exchange(&mut net, jn, &n_eps, &n_eps, 30, max);
    run_to_completion(&mut net, &mut out_n, &mut in_n, 20_000);
    assert_delivered_exactly_once("new job", &in_n, &n_eps, |inbox, p| {
        plan(jn, p, inbox.endpoint(), 30, max)
    });
    assert_eq!(net.stats(0).links_up, 1);
    settle_and_assert_nothing_retained("after restart", &mut net);
    net.assert_credit_respected();
}

// ---------------------------------------------------------------------------------------
// A silent peer
// ---------------------------------------------------------------------------------------

/// Node 1 hangs (no bytes at all, no timers). Node 0 closes the link as `Silent` within
/// `idle_timeout` + a tick, redials (its connection is accepted by the hung node's kernel
/// but the handshake never completes, so it times out), and when no link came back for
/// the grace period, fails every endpoint of the job with `LinkFailed { peer: 1,
/// Unreachable }`, not before. A job on node 0 alone goes on.
#[test]
fn silent_peer_is_detected_redialled_then_failed_after_the_grace_period() {
    let mut net = Net::with_seed(2, 71, tight);
    let max = net.node(0).config().max_message as usize;
    let config = net.node(0).config().clone();
    let tick = net.tick();
    let (js, jl) = (JobId(160), JobId(161));
    let s_eps = [ep(0, 0), ep(1, 0)];
    let l_eps = [ep(0, 5), ep(0, 6)];
    let (mut out_s, mut in_s) = exchange(&mut net, js, &s_eps, &s_eps, 200, max);
    for _ in 0..5 {
        round(&mut net, &mut out_s, &mut in_s);
    }
    let node0_out: Vec<Outbox> = out_s.drain(..).filter(|o| o.node == 0).collect();
    let node0_in: Vec<Inbox> = in_s.drain(..).filter(|i| i.node == 0).collect();
    let (mut out_s, mut in_s) = (node0_out, node0_in);

    net.freeze(1);
    let frozen_at = net.now;
    let dials_before = net.dials.len();
    let mut silent_at: Option<Instant> = None;
    while silent_at.is_none() && net.now < frozen_at + config.idle_timeout + 2 * tick {
        net.advance(tick);
        round(&mut net, &mut out_s, &mut in_s);
        silent_at = net
            .closes
            .iter()
            .find(|c| c.node == NodeId(0) && c.cause == LinkCause::Silent)
            .map(|c| c.at);
    }
    let silent_at = silent_at.expect("node 0 closes the silent link");
    assert!(
        silent_at - frozen_at <= config.idle_timeout + tick,
        "silence detected after {:?}",
        silent_at - frozen_at
    );
    assert!(net.dials.len() > dials_before, "the link is redialled");

    let (mut out_l, mut in_l) = exchange(&mut net, jl, &l_eps, &l_eps, 20, max);
    while net.now + tick < silent_at + config.grace_period {
        net.advance(tick);
        round(&mut net, &mut out_s, &mut in_s);
        round(&mut net, &mut out_l, &mut in_l);
    }
    assert!(
        !any_failure(&out_s, &in_s),
        "no failure before the grace period"
    );
    assert!(
        net.closes
            .iter()
            .any(|c| c.node == NodeId(0) && c.cause == LinkCause::HandshakeTimeout),
        "a redial reached the hung node and timed out in its handshake: {:?}",
        net.closes
    );
    for _ in 0..2 {
        net.advance(tick);
        round(&mut net, &mut out_s, &mut in_s);
    }
    let unreachable = |e: &ExchangeError| {
        matches!(
            e,
            ExchangeError::LinkFailed {
                peer: NodeId(1),
                cause: LinkCause::Unreachable(_)
            }
        )
    };
    assert_job_failed_everywhere("job S on node 0", &mut net, &out_s, &mut in_s, unreachable);
    assert!(in_l.iter().all(|i| i.finished && i.errors.is_empty()));
}

/// Node 1 hangs for longer than the idle timeout but less than the grace period, then
/// runs again: the link closed as silent comes back (the connection node 0 dialled
/// meanwhile is accepted when node 1 thaws), the session resumes, and the transfer
/// completes exactly once with no error.
#[test]
fn hang_shorter_than_the_grace_period_is_invisible() {
    let mut net = Net::with_seed(2, 72, tight);
    let max = net.node(0).config().max_message as usize;
    let config = net.node(0).config().clone();
    let job = JobId(162);
    let eps = [ep(0, 0), ep(1, 0)];
    let (mut outboxes, mut inboxes) = exchange(&mut net, job, &eps, &eps, 150, max);
    for _ in 0..5 {
        round(&mut net, &mut outboxes, &mut inboxes);
    }
    net.freeze(1);
    run_for(
        &mut net,
        &mut outboxes,
        &mut inboxes,
        config.idle_timeout + Duration::from_secs(2),
    );
    assert!(
        net.closes.iter().any(|c| c.cause == LinkCause::Silent),
        "the hang was noticed"
    );
    net.thaw(1);
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 50_000);
    assert_delivered_exactly_once("hang", &inboxes, &eps, |inbox, p| {
        plan(job, p, inbox.endpoint(), 150, max)
    });
    settle_and_assert_nothing_retained("hang", &mut net);
    assert_all_drained(&net);
    net.assert_credit_respected();
}

// ---------------------------------------------------------------------------------------
// Cancelling a job
// ---------------------------------------------------------------------------------------

/// `cancel_job` on node 1 fails every endpoint of the job on every node (here: 3 nodes,
/// producers and consumers on each) with `JobCancelled { job, by: node 1 }`; another job
/// spanning the same nodes completes; nothing of the cancelled job is left behind.
#[test]
fn cancel_job_fails_its_endpoints_on_every_node() {
    let mut net = Net::with_seed(3, 81, tight);
    let max = net.node(0).config().max_message as usize;
    let (ja, jb) = (JobId(170), JobId(171));
    let a_eps: Vec<Endpoint> = (0..3).map(|n| ep(n, 0)).collect();
    let b_eps: Vec<Endpoint> = (0..3).map(|n| ep(n, 1)).collect();
    let (mut out_a, mut in_a) = exchange(&mut net, ja, &a_eps, &a_eps, 200, max);
    let (mut out_b, mut in_b) = exchange(&mut net, jb, &b_eps, &b_eps, 40, max);
    for _ in 0..5 {
        round(&mut net, &mut out_a, &mut in_a);
        round(&mut net, &mut out_b, &mut in_b);
    }
    assert!(in_a.iter().all(|i| !i.finished));
    net.node_mut(1).cancel_job(ja);
    net.drive();
    let cancelled = |e: &ExchangeError| {
        *e == ExchangeError::JobCancelled {
            job: ja,
            by: NodeId(1),
        }
    };
    assert_job_failed_everywhere("job A", &mut net, &out_a, &mut in_a, cancelled);
    run_to_completion(&mut net, &mut out_b, &mut in_b, 20_000);
    assert_delivered_exactly_once("job B", &in_b, &b_eps, |inbox, p| {
        plan(jb, p, inbox.endpoint(), 40, max)
    });
    net.advance(Duration::from_millis(100));
    for i in 0..3 {
        let s = net.stats(i);
        assert_eq!((s.out_channels, s.in_channels), (0, 0), "node {i}: {s:?}");
        assert_eq!(s.send_queued_bytes, 0, "node {i}: {s:?}");
    }
    net.assert_credit_respected();
}

// ---------------------------------------------------------------------------------------
// Parked channels
// ---------------------------------------------------------------------------------------

/// Data for a consumer that never opens: the channel is parked (without data) on the
/// consumer's node; after `park_timeout` the record is gone and the producer's channel
/// fails with `Cancelled { ConsumerNeverAppeared }` (not before), waking the producer.
#[test]
fn parked_channel_expires_and_fails_its_producer() {
    let mut net = Net::new(2, small);
    let job = JobId(180);
    let c = ep(1, 0);
    let timeout = net.node(1).config().park_timeout;
    let tick = net.tick();
    net.open_producer(0, job, 0, &[c]);
    assert!(matches!(
        net.try_send(0, job, 0, c, Bytes::from_static(b"early")),
        Err(TrySendError::NoCredit(_))
    ));
    net.drive();
    let parked_at = net.now;
    assert_eq!(net.stats(1).parked_channels, 1);
    net.take_channel_ready(0);
    net.advance(timeout - tick);
    assert_eq!(
        net.stats(1).parked_channels,
        1,
        "still parked before the timeout"
    );
    assert!(net.take_channel_ready(0).is_empty());
    assert!(matches!(
        net.try_send(0, job, 0, c, Bytes::from_static(b"early")),
        Err(TrySendError::NoCredit(_))
    ));
    net.advance(2 * tick);
    assert!(net.now - parked_at <= timeout + tick);
    let s = net.stats(1);
    assert_eq!(
        (s.parked_channels, s.in_channels),
        (0, 0),
        "the parked record is gone: {s:?}"
    );
    assert!(net.take_channel_ready(0).contains(&(job, 0, c)));
    assert_eq!(
        net.try_send(0, job, 0, c, Bytes::from_static(b"late")),
        Err(TrySendError::Failed(
            ExchangeError::Cancelled {
                consumer: c,
                code: CancelCode::ConsumerNeverAppeared
            },
            Bytes::from_static(b"late")
        ))
    );
    net.drive();
    assert_eq!(net.stats(0).out_channels, 0);
    assert_eq!(net.stats(1).in_channels, 0);
}

// ---------------------------------------------------------------------------------------
// Hostile session claims
// ---------------------------------------------------------------------------------------

const HOSTILE_JOB: JobId = JobId(190);
const LEGIT_JOB: JobId = JobId(191);
const HOSTILE_INCARNATION: u64 = 0x99;

fn hostile_hello(peer_incarnation: u64, received: u64) -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        cluster: CLUSTER,
        node: NodeId(99),
        incarnation: HOSTILE_INCARNATION,
        peer_incarnation,
        received,
        max_message: 1024,
    }
}

/// Two honest nodes exchanging in `LEGIT_JOB`, and node 1's consumer 1 of `HOSTILE_JOB`
/// expecting a producer on the hostile node 99, which connects to node 1 with a fresh
/// `Hello`, opens a channel to that consumer and asks for credit: node 1 answers with
/// `Credit`, the only channel frame it sends node 99. Returns the net, the legit boxes,
/// the victim's inbox and the raw connection.
fn hostile_setup() -> (Net, Vec<Outbox>, Vec<Inbox>, Inbox, support::RawConn) {
    let mut net = Net::new(2, small);
    let eps = [ep(0, 0), ep(1, 0)];
    let (mut outboxes, mut inboxes) = exchange(&mut net, LEGIT_JOB, &eps, &eps, 30, 1024);
    round(&mut net, &mut outboxes, &mut inboxes);
    let raw = net.raw_connect(1);
    net.raw_prove(raw, NodeId(99), HOSTILE_INCARNATION, &support::secret());
    net.raw_send_frame(raw, &hostile_hello(0, 0));
    net.drive();
    // The consumer opens once the peer is known (node 1 would dial it otherwise).
    let victim = Inbox::open(&mut net, 1, HOSTILE_JOB, 1, &[ep(99, 0)]);
    net.raw_send_frame(
        raw,
        &Frame::Open {
            channel: WireChannel(0),
            job: HOSTILE_JOB,
            producer: 0,
            consumer: 1,
        },
    );
    net.raw_send_frame(
        raw,
        &Frame::Backlog {
            channel: WireChannel(0),
            need: 100,
            want: 0,
        },
    );
    net.drive();
    let frames = net.raw_frames(raw);
    let channel_frames = frames
        .iter()
        .filter(|f| {
            !matches!(
                f,
                Frame::Challenge { .. }
                    | Frame::Proof { .. }
                    | Frame::Hello { .. }
                    | Frame::Ack { .. }
                    | Frame::Ping { .. }
            )
        })
        .count();
    assert_eq!(channel_frames, 1, "one Credit: {frames:?}");
    (net, outboxes, inboxes, victim, raw)
}

/// After the hostile link closed: its close was a protocol error, the victim consumer
/// failed with it, and the legitimate job completes untouched.
fn assert_hostile_link_closed(
    ctx: &str,
    net: &mut Net,
    link_node: usize,
    link: plexus_proto::LinkId,
    mut outboxes: Vec<Outbox>,
    mut inboxes: Vec<Inbox>,
    mut victim: Inbox,
) {
    let closed = net
        .closes
        .iter()
        .find(|c| c.node.0 as usize == link_node && c.link == link)
        .unwrap_or_else(|| panic!("{ctx}: node {link_node} did not close the link"));
    assert!(
        matches!(closed.cause, LinkCause::Protocol(_)),
        "{ctx}: {:?}",
        closed.cause
    );
    victim.pull(net);
    assert!(
        matches!(
            victim.errors.as_slice(),
            [ExchangeError::LinkFailed {
                peer: NodeId(99),
                cause: LinkCause::Protocol(_)
            }]
        ),
        "{ctx}: {:?}",
        victim.errors
    );
    assert!(victim.finished, "{ctx}");
    run_to_completion(net, &mut outboxes, &mut inboxes, 20_000);
    let eps = [ep(0, 0), ep(1, 0)];
    assert_delivered_exactly_once(ctx, &inboxes, &eps, |inbox, p| {
        plan(LEGIT_JOB, p, inbox.endpoint(), 30, 1024)
    });
    net.assert_credit_respected();
}

/// An `Ack` for exactly the frames node 1 sent is accepted; one for more than it sent
/// closes the link with a protocol error.
#[test]
fn ack_of_more_frames_than_were_sent_closes_the_link() {
    let (mut net, outboxes, inboxes, victim, raw) = hostile_setup();
    net.raw_send_frame(raw, &Frame::Ack { received: 1 });
    net.drive();
    assert!(net.raw_is_open(raw), "an Ack of what was sent is fine");
    net.raw_send_frame(raw, &Frame::Ack { received: 2 });
    net.drive();
    assert!(!net.raw_is_open(raw));
    assert!(matches!(
        net.raw_frames(raw).last(),
        Some(Frame::GoAway { .. })
    ));
    let link = net.raw_link(raw);
    assert_hostile_link_closed("Ack beyond", &mut net, 1, link, outboxes, inboxes, victim);
}

/// An `Ack` going backwards (below one already received) closes the link too.
#[test]
fn ack_going_backwards_closes_the_link() {
    let (mut net, outboxes, inboxes, victim, raw) = hostile_setup();
    net.raw_send_frame(raw, &Frame::Ack { received: 1 });
    net.raw_send_frame(raw, &Frame::Ack { received: 0 });
    net.drive();
    assert!(!net.raw_is_open(raw));
    let link = net.raw_link(raw);
    assert_hostile_link_closed(
        "Ack backwards",
        &mut net,
        1,
        link,
        outboxes,
        inboxes,
        victim,
    );
}

/// The hostile peer drops its connection; node 1 redials it (the test answers that
/// connection) and gets a `Hello` claiming the session with node 1 and more frames
/// received than node 1 ever sent: node 1 closes the link with a protocol error. The same
/// claim with the true count resumes the session.
#[test]
fn hello_claiming_more_frames_than_were_sent_closes_the_link() {
    for (received, resumes) in [(1u64, true), (2, false)] {
        let (mut net, outboxes, inboxes, victim, raw) = hostile_setup();
        net.intercept_dials_to(NodeId(99));
        net.raw_close(raw);
        net.drive();
        let &(dialler, peer, redial) = net
            .intercepted
            .first()
            .expect("node 1 redials the lost peer at once");
        assert_eq!((dialler, peer), (1, NodeId(99)));
        let incarnation = net.node(1).config().incarnation;
        net.raw_prove_as_acceptor(redial, NodeId(99), HOSTILE_INCARNATION, &support::secret());
        let frames = net.raw_frames(redial);
        match frames.iter().find(|f| matches!(f, Frame::Hello { .. })) {
            Some(Frame::Hello {
                peer_incarnation,
                received,
                ..
            }) => {
                assert_eq!(*peer_incarnation, HOSTILE_INCARNATION, "node 1 resumes");
                assert_eq!(*received, 2, "node 1 received Open and Backlog");
            }
            other => panic!("node 1 opens with its Hello: {other:?}"),
        }
        net.raw_send_frame(redial, &hostile_hello(incarnation, received));
        net.drive();
        let ctx = format!("Hello claiming {received} frames received");
        if resumes {
            assert!(net.raw_is_open(redial), "{ctx}: resumed");
            assert_eq!(net.stats(1).links_up, 2, "{ctx}");
            assert!(victim.errors.is_empty(), "{ctx}");
            assert_eq!(net.node(1).resume_times().len(), 1, "{ctx}");
        } else {
            assert!(!net.raw_is_open(redial), "{ctx}");
            let link = match net.closes.iter().rev().find(|c| c.node == NodeId(1)) {
                Some(c) => c.link,
                None => panic!("{ctx}: node 1 closed nothing"),
            };
            assert_hostile_link_closed(&ctx, &mut net, 1, link, outboxes, inboxes, victim);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Probes of suspected defects
// ---------------------------------------------------------------------------------------

/// Nodes 0 and 2 are partitioned past the grace period during a job spanning nodes 0, 1
/// and 2. Nodes 0 and 2 fail the job; node 1, which can reach both, must not wait
/// forever: its endpoints of the job must fail too, within a bounded time (Promise 6:
/// every endpoint involved is told). Today node 0 drops its producer's channel to node 1
/// silently, and node 1's consumer waits for its `End` forever.
#[test]
fn job_failure_reaches_every_node_of_the_job() {
    let mut net = Net::with_seed(3, 91, tight);
    let max = net.node(0).config().max_message as usize;
    let grace = net.node(0).config().grace_period;
    let job = JobId(200);
    let eps: Vec<Endpoint> = (0..3).map(|n| ep(n, 0)).collect();
    let (mut outboxes, mut inboxes) = exchange(&mut net, job, &eps, &eps, 200, max);
    for _ in 0..5 {
        round(&mut net, &mut outboxes, &mut inboxes);
    }
    net.partition(0, 2);
    run_for(
        &mut net,
        &mut outboxes,
        &mut inboxes,
        grace + Duration::from_secs(5),
    );
    for inbox in &inboxes {
        assert!(
            inbox.finished && !inbox.errors.is_empty(),
            "{} of the job: finished {}, errors {:?}",
            inbox.endpoint(),
            inbox.finished,
            inbox.errors
        );
    }
}

/// Node 1's consumer of a job expects producers on nodes 0 and 2. Node 2 dies: node 1
/// fails the job (error, then `Finished`). Node 0, whose producer only feeds node 1, does
/// not touch node 2 and is not told; its producer opens its channel afterwards. That
/// channel must not attach to the failed consumer: no message may be read after
/// `Finished`, and no channel record may stay behind (and the producer should learn the
/// job failed). Today `on_open` attaches it, the consumer grants credit, the producer
/// sends its whole stream, and the messages are read after the error and `Finished`.
#[test]
fn channel_opened_after_the_job_failed_is_refused() {
    let mut net = Net::new(3, small);
    let job = JobId(201);
    let (p0, p2, c) = (ep(0, 0), ep(2, 0), ep(1, 0));
    let mut inbox = Inbox::open(&mut net, 1, job, 0, &[p0, p2]);
    net.drive();
    assert_eq!(net.stats(1).links_up, 1, "node 1 dialled node 2");
    net.kill(2);
    net.advance(Duration::from_millis(300));
    inbox.pull(&mut net);
    assert!(
        inbox.finished && inbox.errors.iter().any(|e| is_link_failed(e, 2)),
        "{inbox:?}"
    );
    let msgs = plan(job, p0, c, 5, 100);
    let mut outbox = Outbox::open(&mut net, 0, job, 0, vec![(c, msgs)]);
    for _ in 0..20 {
        outbox.pump(&mut net);
        net.advance(net.tick());
        inbox.pull(&mut net);
    }
    assert_eq!(inbox.after_finish, 0, "messages after Finished: {inbox:?}");
    let s = net.stats(1);
    assert_eq!(s.in_channels, 0, "a channel record stays behind: {s:?}");
    assert!(
        !outbox.failed.is_empty(),
        "the producer is never told its consumer's job failed: {outbox:?}"
    );
}

/// A consumer that opens after its producer's parked channel expired must learn that the
/// producer's channel was refused (an error, then `Finished`) rather than wait forever.
#[test]
fn consumer_opened_after_its_parked_channel_expired_is_told() {
    let mut net = Net::new(2, small);
    let job = JobId(202);
    let (p, c) = (ep(0, 0), ep(1, 0));
    net.open_producer(0, job, 0, &[c]);
    let _ = net.try_send(0, job, 0, c, Bytes::from_static(b"early"));
    net.drive();
    let timeout = net.node(1).config().park_timeout;
    net.advance(timeout + 2 * net.tick());
    assert_eq!(net.stats(1).parked_channels, 0);
    let mut inbox = Inbox::open(&mut net, 1, job, 0, &[p]);
    net.advance(Duration::from_secs(60));
    inbox.pull(&mut net);
    assert!(
        inbox.finished && !inbox.errors.is_empty(),
        "the late consumer hangs: {inbox:?}"
    );
}

/// Configurations used here must be valid (guards the helpers above).
#[test]
fn configurations_are_valid() {
    for f in [small as fn(&mut Config), tight] {
        let mut c = Config::new(NodeId(0), CLUSTER, support::secret());
        f(&mut c);
        c.validate().unwrap();
    }
}
