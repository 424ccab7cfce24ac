//! Admission across nodes, in the deterministic harness: whatever order jobs reach the
//! nodes in, and whatever each node's budget, every job that fits each of its nodes alone
//! is admitted everywhere and completes, without any admission timeout; a job that can
//! never fit a node fails on every node it spans, at once; a failure anywhere wakes every
//! waiter. Also: a finished job's record is retired, leaving only its id.

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use plexus_proto::node::{Admission, ExchangeError, TrySendError};
use plexus_proto::{Config, Endpoint, JobId, NodeId};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::{ep, Net};

const POOL: u64 = 16 * 1024;
const SEND: u64 = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(60);

/// One job of the model: its nodes and how many consumers each runs (every node of the
/// job runs one producer).
#[derive(Clone, Debug)]
struct JobPlan {
    id: JobId,
    consumers: BTreeMap<u32, u32>,
}

impl JobPlan {
    fn per_node(&self) -> Vec<(NodeId, u32)> {
        self.consumers
            .iter()
            .map(|(&n, &c)| (NodeId(n), c))
            .collect()
    }
    fn producers(&self) -> Vec<Endpoint> {
        self.consumers.keys().map(|&n| ep(n, 0)).collect()
    }
    fn consumer_eps(&self) -> Vec<Endpoint> {
        self.consumers
            .iter()
            .flat_map(|(&n, &c)| (0..c).map(move |s| ep(n, s)))
            .collect()
    }
}

/// What node `i` runs of one admitted job: messages still to send, consumers still open.
#[derive(Debug, Default)]
struct Running {
    outbox: VecDeque<(Endpoint, Bytes)>,
    producer_open: bool,
    consumers: BTreeSet<u32>,
}

/// Runs one random scenario; returns the virtual time it took and the frames that crossed.
fn scenario(seed: u64) -> (Duration, u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = rng.gen_range(3..=5usize);
    // Each node's pool budget holds 2 to 4 consumer pools.
    let capacity: Vec<u64> = (0..n).map(|_| rng.gen_range(2..=4)).collect();
    let caps = capacity.clone();
    let mut net = Net::with_seed(n, seed, move |c: &mut Config| {
        c.max_message = 1024;
        c.credit_pool = POOL;
        c.send_buffer = SEND;
        c.memory_budget = Some(SEND + caps[c.node.0 as usize] * POOL);
        c.admission_timeout = TIMEOUT;
        c.park_timeout = TIMEOUT;
    });
    let jobs: Vec<JobPlan> = (1..=rng.gen_range(10..=14u64))
        .map(|id| {
            let span = rng.gen_range(2..=n);
            let mut nodes: Vec<u32> = (0..n as u32).collect();
            nodes.shuffle(&mut rng);
            let mut consumers: BTreeMap<u32, u32> = nodes[..span]
                .iter()
                .map(|&node| (node, rng.gen_range(0..=3)))
                .collect();
            if consumers.values().all(|&c| c == 0) {
                *consumers.values_mut().next().expect("span >= 2") = 1;
            }
            JobPlan {
                id: JobId(id),
                consumers,
            }
        })
        .collect();
    let fits = |job: &JobPlan| {
        job.consumers
            .iter()
            .all(|(&node, &c)| u64::from(c) <= capacity[node as usize])
    };
    // Each node asks for its jobs in its own random order.
    let mut arrivals: Vec<VecDeque<usize>> = (0..n)
        .map(|i| {
            let mut mine: Vec<usize> = (0..jobs.len())
                .filter(|&j| jobs[j].consumers.contains_key(&(i as u32)))
                .collect();
            mine.shuffle(&mut rng);
            mine.into()
        })
        .collect();
    let mut running: Vec<BTreeMap<JobId, Running>> = (0..n).map(|_| BTreeMap::new()).collect();
    let mut finished: BTreeSet<(usize, JobId)> = BTreeSet::new();
    let mut failed: BTreeMap<JobId, Vec<(usize, ExchangeError)>> = BTreeMap::new();
    let start = net.now();
    let start_job =
        |net: &mut Net, running: &mut Vec<BTreeMap<JobId, Running>>, i: usize, job: &JobPlan| {
            let me = i as u32;
            let producers = job.producers();
            let consumers = job.consumer_eps();
            let mut run = Running::default();
            for s in 0..job.consumers[&me] {
                net.open_consumer(i, job.id, s, &producers);
                run.consumers.insert(s);
            }
            net.open_producer(i, job.id, 0, &consumers);
            run.producer_open = true;
            for c in &consumers {
                for k in 0..3u8 {
                    run.outbox.push_back((*c, Bytes::from(vec![k; 200])));
                }
            }
            running[i].insert(job.id, run);
        };
    for _ in 0..200_000u32 {
        let mut decided = 0;
        for i in 0..n {
            for (job, outcome) in net.take_admissions(i) {
                decided += 1;
                match outcome {
                    None => {
                        let plan = &jobs[(job.0 - 1) as usize];
                        start_job(&mut net, &mut running, i, plan);
                    }
                    Some(e) => failed.entry(job).or_default().push((i, e)),
                }
            }
        }
        let all_asked = arrivals.iter().all(VecDeque::is_empty);
        let waiting = (0..n)
            .map(|i| net.node(i).admission_load().0)
            .sum::<usize>();
        if decided == 0 && all_asked && waiting == 0 && running.iter().all(BTreeMap::is_empty) {
            break;
        }
        // Arrivals: now and then, a node asks for the next job of its order.
        for (i, order) in arrivals.iter_mut().enumerate() {
            if rng.gen_bool(0.3) {
                if let Some(j) = order.pop_front() {
                    let job = &jobs[j];
                    match net.node_mut(i).admit_job(job.id, &job.per_node()) {
                        Ok(Admission::Admitted) => start_job(&mut net, &mut running, i, job),
                        Ok(Admission::Queued) => {}
                        Err(e) => failed.entry(job.id).or_default().push((i, e)),
                    }
                }
            }
        }
        // Producers send what credit allows, then close; consumers read to the end. A job
        // that failed is given up on this node (its endpoints dropped).
        for (i, here) in running.iter_mut().enumerate() {
            let ids: Vec<JobId> = here.keys().copied().collect();
            for id in ids {
                let run = here.get_mut(&id).expect("listed");
                let mut blocked = VecDeque::new();
                let mut error = None;
                while let Some((c, m)) = run.outbox.pop_front() {
                    match net.try_send(i, id, 0, c, m) {
                        Ok(()) => {}
                        Err(TrySendError::NoCredit(m)) => blocked.push_back((c, m)),
                        Err(TrySendError::Failed(e, _)) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                let run = here.get_mut(&id).expect("listed");
                run.outbox = blocked;
                if (run.outbox.is_empty() || error.is_some()) && run.producer_open {
                    run.producer_open = false;
                    net.close_producer(i, id, 0);
                    net.drop_producer(i, id, 0);
                }
                let slots: Vec<u32> = here[&id].consumers.iter().copied().collect();
                for s in slots {
                    let drained = net.recv_all(i, id, s);
                    error = error.or(drained.errors.into_iter().next());
                    if drained.finished || error.is_some() {
                        net.drop_consumer(i, id, s);
                        here.get_mut(&id).expect("listed").consumers.remove(&s);
                    }
                }
                if let Some(e) = error {
                    failed.entry(id).or_default().push((i, e));
                }
                let run = &here[&id];
                if !run.producer_open && run.consumers.is_empty() {
                    here.remove(&id);
                    finished.insert((i, id));
                }
            }
        }
        net.advance(Duration::from_millis(1));
    }
    let elapsed = net.now() - start;
    for job in &jobs {
        if fits(job) {
            assert!(
                !failed.contains_key(&job.id),
                "seed {seed}: {} fits every node but failed: {:?}",
                job.id,
                failed[&job.id]
            );
            for &node in job.consumers.keys() {
                assert!(
                    finished.contains(&(node as usize, job.id)),
                    "seed {seed}: {} never completed on node {node} ({elapsed:?})",
                    job.id
                );
            }
        } else {
            let errors = failed.get(&job.id).map_or(0, Vec::len);
            assert!(
                errors > 0,
                "seed {seed}: {} cannot fit a node yet did not fail",
                job.id
            );
            assert!(
                failed[&job.id].iter().all(|(_, e)| matches!(
                    e,
                    ExchangeError::OverBudget { .. } | ExchangeError::JobRefused { .. }
                )),
                "seed {seed}: {:?}",
                failed[&job.id]
            );
        }
    }
    assert!(
        elapsed < TIMEOUT,
        "seed {seed}: took {elapsed:?}, so something waited for a timeout"
    );
    for i in 0..n {
        let stats = net.stats(i);
        assert_eq!(
            stats.in_channels + stats.out_channels,
            0,
            "seed {seed}: node {i}"
        );
        assert_eq!(
            net.node(i).admission_load(),
            (0, 0),
            "seed {seed}: node {i} still holds reservations"
        );
    }
    (elapsed, net.frames_crossed())
}

#[test]
fn random_arrival_orders_never_deadlock_and_every_fitting_job_completes() {
    let mut longest = Duration::ZERO;
    for seed in 0..40 {
        longest = longest.max(scenario(seed).0);
    }
    assert!(longest < TIMEOUT / 4, "{longest:?}");
}

/// A seed replays exactly: the cores' hash maps are seeded from it too.
#[test]
fn a_scenario_replays_bit_for_bit_from_its_seed() {
    assert_eq!(scenario(17), scenario(17));
}

/// Two jobs spanning the same two nodes, each node's budget room for one job at a time,
/// reaching the nodes in opposite orders: both complete, one after the other.
#[test]
fn crossing_arrivals_take_turns_instead_of_deadlocking() {
    let mut net = Net::new(2, |c| {
        c.max_message = 1024;
        c.credit_pool = POOL;
        c.send_buffer = SEND;
        c.memory_budget = Some(SEND + 2 * POOL);
        c.admission_timeout = TIMEOUT;
    });
    let plan = [(NodeId(0), 2), (NodeId(1), 2)];
    let (a, b) = (JobId(1), JobId(2));
    assert_eq!(net.node_mut(0).admit_job(a, &plan), Ok(Admission::Admitted));
    // Node 1 sees B first, but B's turn at node 1 comes only after node 0 reserved it.
    assert_eq!(net.node_mut(1).admit_job(b, &plan), Ok(Admission::Queued));
    assert_eq!(net.node_mut(0).admit_job(b, &plan), Ok(Admission::Queued));
    assert_eq!(net.node_mut(1).admit_job(a, &plan), Ok(Admission::Queued));
    net.drive();
    assert_eq!(
        net.take_admissions(1),
        vec![(a, None)],
        "A's turn reached node 1"
    );
    assert!(
        net.take_admissions(0).is_empty(),
        "B waits for room on node 0"
    );
    // A runs to its end on both nodes (no data: its endpoints open and close).
    for i in 0..2 {
        net.open_producer(i, a, 0, &[ep(0, 0), ep(0, 1), ep(1, 0), ep(1, 1)]);
        net.close_producer(i, a, 0);
        net.drop_producer(i, a, 0);
        for s in 0..2 {
            net.open_consumer(i, a, s, &[ep(0, 0), ep(1, 0)]);
        }
    }
    net.drive();
    for i in 0..2 {
        for s in 0..2 {
            assert!(net.recv_all(i, a, s).finished);
            net.drop_consumer(i, a, s);
        }
    }
    net.drive();
    assert_eq!(net.take_admissions(0), vec![(b, None)]);
    assert_eq!(net.take_admissions(1), vec![(b, None)]);
    assert_eq!(net.stats(0).jobs, 1, "A's record retired, B's lives");
    assert_eq!(net.stats(0).finished_jobs, 1);
}

/// A job that can never fit one node fails there at once, and on the other node too,
/// waking the task that waited there for its turn.
#[test]
fn a_job_refused_anywhere_fails_everywhere_at_once() {
    let mut net = Net::new(2, |c| {
        c.max_message = 1024;
        c.credit_pool = POOL;
        c.send_buffer = SEND;
        c.memory_budget = Some(SEND + 2 * POOL);
    });
    // Node 0 would need three pools and has room for two; node 1 has one consumer.
    let plan = [(NodeId(0), 3), (NodeId(1), 1)];
    let job = JobId(9);
    assert_eq!(net.node_mut(1).admit_job(job, &plan), Ok(Admission::Queued));
    let refused = net.node_mut(0).admit_job(job, &plan);
    assert!(
        matches!(refused, Err(ExchangeError::OverBudget { need, .. }) if need == 3 * POOL),
        "{refused:?}"
    );
    net.drive();
    let outcome = net.take_admissions(1);
    assert!(
        matches!(
            outcome.as_slice(),
            [(j, Some(ExchangeError::JobRefused { node: NodeId(0), .. }))] if *j == job
        ),
        "{outcome:?}"
    );
    let again = net.node_mut(1).admit_job(job, &plan);
    // Nothing of the job is left on node 1 (no handle, no endpoint): it is over there.
    assert!(
        matches!(again, Err(ExchangeError::JobFinished { .. })),
        "{again:?}"
    );
}

/// Thousands of jobs one after another: each job's record goes when the job is over, and
/// only the most recent ids stay, so what a node holds does not grow with the jobs it saw.
#[test]
fn finished_jobs_leave_only_a_bounded_ring_of_ids() {
    const KEPT: usize = 100;
    let mut net = Net::new(2, |c| {
        c.finished_jobs_kept = KEPT;
        c.park_timeout = Duration::from_millis(500);
    });
    let producers = [ep(0, 0), ep(1, 0)];
    let consumers = [ep(0, 0), ep(1, 0)];
    let plan = [(NodeId(0), 1), (NodeId(1), 1)];
    for id in 1..=2000u64 {
        let job = JobId(id);
        for i in 0..2 {
            assert_eq!(
                net.node_mut(i).admit_job(job, &plan),
                Ok(Admission::Admitted)
            );
            net.open_consumer(i, job, 0, &producers);
            net.open_producer(i, job, 0, &consumers);
            net.close_producer(i, job, 0);
            net.drop_producer(i, job, 0);
        }
        net.drive();
        for i in 0..2 {
            assert!(net.recv_all(i, job, 0).finished);
            net.drop_consumer(i, job, 0);
        }
        net.drive();
    }
    // Late frames of peers' turns or cancels expire with the orphan timeout.
    net.advance(Duration::from_secs(1));
    for i in 0..2 {
        let stats = net.stats(i);
        assert_eq!(stats.jobs, 0, "node {i}: {stats:?}");
        assert_eq!(stats.finished_jobs, KEPT, "node {i}: {stats:?}");
        assert_eq!(
            stats.in_channels + stats.out_channels + stats.parked_channels,
            0
        );
    }
    // A late frame of a long-finished job cannot revive it.
    assert!(matches!(
        net.node_mut(0).admit_job(JobId(2000), &plan),
        Err(ExchangeError::JobFinished { .. })
    ));
}
