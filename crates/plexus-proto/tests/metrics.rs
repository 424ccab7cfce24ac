//! The node's counters in the deterministic harness: traffic per peer matches what was
//! sent, a finished job and a refused impostor are counted, and resumes are counted per
//! peer with their downtime.

mod support;

use plexus_proto::frame::{Frame, PROTOCOL_VERSION};
use plexus_proto::{JobId, NodeId};
use support::{ep, plan, run_to_completion, small, Inbox, Net, Outbox, CLUSTER};

const JOB: JobId = JobId(8);

#[test]
fn counters_follow_traffic_jobs_refusals_and_resumes() {
    let mut net = Net::new(2, small);
    let (p, c) = (ep(0, 0), ep(1, 0));
    let msgs = plan(JOB, p, c, 40, 700);
    let mut inboxes = vec![Inbox::open(&mut net, 1, JOB, 0, &[p])];
    let mut outboxes = vec![Outbox::open(&mut net, 0, JOB, 0, vec![(c, msgs.clone())])];
    // A cut in the middle: the link resumes, once.
    for _ in 0..20 {
        outboxes[0].pump(&mut net);
        net.drive();
        inboxes[0].pull(&mut net);
    }
    net.cut(0, 1);
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 20_000);
    assert_eq!(inboxes[0].by_producer.get(&p), Some(&msgs));

    let sender = net.node(0).counters().peers[&NodeId(1)];
    let receiver = net.node(1).counters().peers[&NodeId(0)];
    assert_eq!(sender.messages_sent, 40, "{sender:?}");
    assert_eq!(receiver.messages_received, 40, "{receiver:?}");
    let payload: u64 = msgs.iter().map(|m| m.len() as u64).sum();
    assert!(sender.bytes_sent >= payload, "{sender:?}");
    assert!(receiver.bytes_received >= payload, "{receiver:?}");
    let resumes = sender.resumes + receiver.resumes;
    assert!(
        resumes >= 1,
        "the cut link resumed: {sender:?} {receiver:?}"
    );

    // A quiet link is pinged, and the pong times the round trip.
    let ping = net.node(0).config().ping_interval;
    net.advance(ping * 2);
    net.drive();
    net.advance(net.tick());
    net.drive();
    let rtt = net.node(0).counters().peers[&NodeId(1)].rtt;
    assert!(rtt.is_some(), "no round trip measured");

    // The consumer's end of the job ended well once its record retires.
    assert_eq!(net.node(1).counters().jobs_completed, 0);
    net.drop_consumer(1, JOB, 0);
    net.drive();
    assert_eq!(net.node(1).counters().jobs_completed, 1);
    assert!(net.node(1).counters().jobs_failed.is_empty());

    let raw = net.raw_connect(1);
    net.raw_send_frame(
        raw,
        &Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster: CLUSTER,
            node: NodeId(0),
            incarnation: 5,
            peer_incarnation: 0,
            received: 0,
            max_message: 1024,
        },
    );
    net.drive();
    assert_eq!(net.node(1).counters().unauthenticated, 1);
    assert!(
        !net.node(1).counters().peers.contains_key(&NodeId(99)),
        "an outsider adds no series"
    );
}

/// A consumer that stops reading starves its channels: the producer's wait shows, naming
/// the consumer, until the consumer reads again; then it is counted.
#[test]
fn a_stalled_consumer_shows_as_starving_its_producer() {
    let mut net = Net::new(2, support::tight);
    let (p, c) = (ep(0, 0), ep(1, 0));
    let msgs = plan(JOB, p, c, 200, 900);
    let mut inboxes = vec![Inbox::open(&mut net, 1, JOB, 0, &[p])];
    let mut outboxes = vec![Outbox::open(&mut net, 0, JOB, 0, vec![(c, msgs.clone())])];
    for _ in 0..50 {
        outboxes[0].pump(&mut net);
        net.drive();
        net.advance(net.tick());
    }
    let jobs = net.node(0).job_summaries(10);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!((jobs[0].job, jobs[0].producers), (JOB, 1));
    assert!(jobs[0].bytes_sent > 0, "{jobs:?}");
    let received = net.node(1).job_summaries(10);
    assert!(received[0].bytes_received > 0, "{received:?}");
    let starving = net.node(0).starving(net.now());
    assert_eq!(starving.len(), 1, "{starving:?}");
    assert_eq!((starving[0].producer, starving[0].consumer), (p, c));
    assert!(!starving[0].blocked_for.is_zero(), "{starving:?}");
    // The consumer reads: the producer sends again, and its wait counts for the job.
    inboxes[0].pull(&mut net);
    net.drive();
    outboxes[0].pump(&mut net);
    net.drive();
    let jobs = net.node(0).job_summaries(10);
    assert!(!jobs[0].producers_blocked.is_zero(), "{jobs:?}");
    run_to_completion(&mut net, &mut outboxes, &mut inboxes, 50_000);
    assert_eq!(inboxes[0].by_producer.get(&p), Some(&msgs));
    assert!(net.node(0).starving(net.now()).is_empty());
    assert!(!net.node(0).counters().producers_blocked.is_zero());
}
