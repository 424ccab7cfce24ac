//! The memory budget in the deterministic harness: jobs are admitted in arrival order when
//! their consumers' pools fit, queued jobs are admitted as room frees, a job that waits
//! past the timeout fails, one that can never fit is refused, and the send share bounds
//! what producers may queue.

mod support;

use std::time::Duration;

use bytes::Bytes;
use plexus_proto::node::{Admission, ExchangeError, TrySendError};
use plexus_proto::{Config, JobId, NodeId};
use support::{ep, Net};

const POOL: u64 = 64 * 1024;
const SEND: u64 = 128 * 1024;

/// Room for the send share and two consumer pools.
fn two_pools(c: &mut Config) {
    c.max_message = 8 * 1024;
    c.credit_pool = POOL;
    c.send_buffer = SEND;
    c.memory_budget = Some(SEND + 2 * POOL);
    c.admission_timeout = Duration::from_secs(5);
}

#[test]
fn jobs_are_admitted_in_order_as_room_frees() {
    let mut net = Net::new(2, two_pools);
    // Job 1 has two consumers on node 1: it takes the whole pool budget there.
    let big = JobId(1);
    assert_eq!(
        net.node_mut(1).admit_job(big, &[(NodeId(1), 2)]),
        Ok(Admission::Admitted)
    );
    // Job 2 needs one pool, job 3 two: both wait, in that order.
    assert_eq!(
        net.node_mut(1).admit_job(JobId(2), &[(NodeId(1), 1)]),
        Ok(Admission::Queued)
    );
    assert_eq!(
        net.node_mut(1).admit_job(JobId(3), &[(NodeId(1), 2)]),
        Ok(Admission::Queued)
    );
    // A job with no consumer here reserves nothing and never waits.
    assert_eq!(
        net.node_mut(1).admit_job(JobId(4), &[(NodeId(1), 0)]),
        Ok(Admission::Admitted)
    );
    let p = ep(0, 0);
    net.open_consumer(1, big, 0, &[p]);
    net.open_consumer(1, big, 1, &[p]);
    assert!(
        matches!(
            net.node_mut(1).open_consumer(JobId(2), 0, [p]),
            Err(ExchangeError::NotAdmitted { .. })
        ),
        "a queued job cannot open endpoints"
    );
    net.drop_consumer(1, big, 0);
    net.drive();
    assert!(
        net.take_admissions(1).is_empty(),
        "job 1 still holds its reservation"
    );
    net.drop_consumer(1, big, 1);
    net.drive();
    // Job 2 fits now; job 3 (two pools) does not until job 2 is gone.
    assert_eq!(net.take_admissions(1), vec![(JobId(2), None)]);
    net.open_consumer(1, JobId(2), 0, &[p]);
    net.drop_consumer(1, JobId(2), 0);
    net.drive();
    assert_eq!(net.take_admissions(1), vec![(JobId(3), None)]);
    assert!(net.node(1).longest_admission_wait() <= Duration::from_secs(1));
}

#[test]
fn waiting_past_the_timeout_fails_and_oversized_jobs_are_refused() {
    let mut net = Net::new(1, two_pools);
    assert_eq!(
        net.node_mut(0).admit_job(JobId(1), &[(NodeId(0), 2)]),
        Ok(Admission::Admitted)
    );
    assert_eq!(
        net.node_mut(0).admit_job(JobId(2), &[(NodeId(0), 1)]),
        Ok(Admission::Queued)
    );
    net.advance(Duration::from_secs(4));
    assert!(
        net.take_admissions(0).is_empty(),
        "gave up before the timeout"
    );
    net.advance(Duration::from_secs(2));
    let outcomes = net.take_admissions(0);
    assert!(
        matches!(
            outcomes.as_slice(),
            [(JobId(2), Some(ExchangeError::AdmissionTimeout { .. }))]
        ),
        "{outcomes:?}"
    );
    assert!(matches!(
        net.node_mut(0).admit_job(JobId(3), &[(NodeId(0), 3)]),
        Err(ExchangeError::OverBudget { need, .. }) if need == 3 * POOL
    ));
}

#[test]
fn the_send_share_bounds_what_producers_queue() {
    // A consumer that grants far more than the sender's send share, and a peer that
    // freezes (so nothing is acknowledged): data piles up at the sender until the send
    // share stops it.
    const SHARE: u64 = 32 * 1024;
    let mut net = Net::new(2, |c| {
        two_pools(c);
        c.send_buffer = SHARE;
        c.credit_pool = 1 << 20;
        c.max_grant = 1 << 20;
        c.credit_want = 512 * 1024;
        c.memory_budget = Some(SHARE + (1 << 20));
    });
    let job = JobId(7);
    let (p, c) = (ep(0, 0), ep(1, 0));
    assert_eq!(
        net.node_mut(1).admit_job(job, &[(NodeId(1), 1)]),
        Ok(Admission::Admitted)
    );
    assert_eq!(
        net.node_mut(0).admit_job(job, &[(NodeId(1), 1)]),
        Ok(Admission::Admitted)
    );
    net.open_consumer(1, job, 0, &[p]);
    net.open_producer(0, job, 0, &[c]);
    net.drive();
    let payload = Bytes::from(vec![1u8; 4096]);
    // Stream in bursts with the consumer reading, so the channel's appetite (twice what
    // it spends while a request is answered) and the credit it holds ahead grow well past
    // the send share.
    for _ in 0..50 {
        for _ in 0..32 {
            let _ = net.try_send(0, job, 0, c, payload.clone());
        }
        net.drive();
        net.recv_all(1, job, 0);
    }
    // Let the last acknowledgements through, then stop the consumer's node.
    net.advance(Duration::from_millis(50));
    net.recv_all(1, job, 0);
    net.freeze(1);
    let mut accepted = 0u64;
    let mut refused = 0;
    for _ in 0..1000 {
        match net.try_send(0, job, 0, c, payload.clone()) {
            Ok(()) => accepted += 4096,
            Err(TrySendError::NoCredit(_)) => refused += 1,
            Err(TrySendError::Failed(e, _)) => panic!("{e}"),
        }
        net.drive();
    }
    assert!(refused > 0, "the sender was never stopped");
    assert!(
        accepted >= SHARE / 2,
        "only {accepted} bytes accepted: the send share was not what stopped the sender"
    );
    let stats = net.stats(0);
    assert!(
        stats.send_queued_bytes + stats.retained_bytes <= SHARE,
        "queued {} + retained {} exceed the send share {SHARE}",
        stats.send_queued_bytes,
        stats.retained_bytes
    );
    assert!(net.node(0).peak_buffered() <= SHARE + (1 << 20));
}
