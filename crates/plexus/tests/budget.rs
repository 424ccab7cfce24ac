//! The memory budget over real sockets: jobs that do not fit wait in a FIFO admission
//! queue and run when room frees up, buffered bytes stay under the budget, a job that
//! waits too long fails with a clear error, and one that can never fit is refused at once.

mod common;

use std::time::Duration;

use common::{drain, message, start_nodes};
use plexus::{Config, Endpoint, ExchangeError, JobId, Node, NodeId, Topology};

const BOUND: Duration = Duration::from_secs(60);
const POOL: u64 = 256 * 1024;
const SEND_BUFFER: u64 = 512 * 1024;

/// A budget with room for the send buffer and exactly one consumer's pool.
fn one_pool_budget(config: &mut Config) {
    config.max_message = 16 * 1024;
    config.credit_pool = POOL;
    config.send_buffer = SEND_BUFFER;
    config.memory_budget = Some(SEND_BUFFER + POOL);
    config.admission_timeout = Duration::from_secs(20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_beyond_the_budget_queue_and_all_complete_under_it() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(71, 2, one_pool_budget).await;
        // Each job sends from node 0 to one consumer on node 1, whose budget holds one
        // consumer's pool: node 1 runs one job at a time, the others queue.
        let (producer, consumer) = (Endpoint::new(NodeId(0), 0), Endpoint::new(NodeId(1), 0));
        let topology = Topology::new([producer], [consumer]);
        let per_channel = 300u32;
        let mut runs = Vec::new();
        for job in 1..=3u64 {
            let rx_job = nodes[1].job(JobId(job), topology.clone());
            let tx_job = nodes[0].job(JobId(job), topology.clone());
            runs.push(tokio::spawn(async move {
                let got = drain(rx_job.consumer(0).await?).await?;
                assert_eq!(got.get(&producer), Some(&per_channel), "{got:?}");
                Ok::<_, plexus::Error>(())
            }));
            runs.push(tokio::spawn(async move {
                let mut tx = tx_job.producer(0).await?;
                for seq in 0..per_channel {
                    tx.send(consumer, message(producer, seq, 4000)).await?;
                }
                tx.close().await
            }));
        }
        for run in runs {
            run.await.unwrap().expect("every job completes");
        }
        for node in &nodes {
            let peak = node.peak_buffered();
            assert!(peak > 0, "nothing was ever buffered?");
            assert!(peak <= SEND_BUFFER + POOL, "peak {peak} over the budget");
        }
        let waited = nodes
            .iter()
            .map(Node::longest_admission_wait)
            .max()
            .unwrap();
        assert!(
            waited > Duration::ZERO,
            "no job ever waited: the budget was not binding"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_waits_too_long_fails_and_one_that_never_fits_is_refused() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(72, 1, |c| {
            one_pool_budget(c);
            c.admission_timeout = Duration::from_millis(300);
        })
        .await;
        let me = NodeId(0);
        let one = Topology::all_to_all(&[me], 1, 1);
        let holder = nodes[0].job(JobId(1), one.clone());
        let _held = holder.consumer(0).await.expect("the first job fits");
        let err = nodes[0]
            .job(JobId(2), one.clone())
            .consumer(0)
            .await
            .expect_err("the second job waits, then gives up");
        assert!(
            matches!(err.exchange(), Some(ExchangeError::AdmissionTimeout { job, .. }) if *job == JobId(2)),
            "{err}"
        );
        let two = Topology::new([Endpoint::new(me, 0)], [Endpoint::new(me, 0), Endpoint::new(me, 1)]);
        let err = nodes[0]
            .job(JobId(3), two)
            .consumer(0)
            .await
            .expect_err("two pools never fit");
        assert!(
            matches!(err.exchange(), Some(ExchangeError::OverBudget { .. })),
            "{err}"
        );
    })
    .await
    .expect("bounded");
}

/// Runs job `id` on both nodes: one producer and one consumer on each, every producer
/// sending `per_channel` messages to every consumer. Returns the tasks, which end with
/// the job's outcome on each endpoint.
fn run_two_node_job(
    nodes: &[Node],
    id: JobId,
    per_channel: u32,
) -> Vec<tokio::task::JoinHandle<Result<(), plexus::Error>>> {
    let ids = [NodeId(0), NodeId(1)];
    let topology = Topology::all_to_all(&ids, 1, 1);
    let mut tasks = Vec::new();
    for node in nodes {
        let job = node.job(id, topology.clone());
        let me = Endpoint::new(node.id(), 0);
        let consumers: Vec<Endpoint> = topology.consumers().to_vec();
        let producers = topology.producers().len();
        // Producer and consumer open concurrently: both wait for the same admission.
        let rx_job = job.clone();
        tasks.push(tokio::spawn(async move {
            let got = drain(rx_job.consumer(0).await?).await?;
            assert_eq!(got.len(), producers, "{got:?}");
            assert!(got.values().all(|&n| n == per_channel), "{got:?}");
            Ok(())
        }));
        tasks.push(tokio::spawn(async move {
            let mut tx = job.producer(0).await?;
            for seq in 0..per_channel {
                for &c in &consumers {
                    tx.send(c, message(me, seq, 2000)).await?;
                }
            }
            tx.close().await
        }));
    }
    tasks
}

/// Two jobs span the same two nodes; each node's budget holds the pools of one job at a
/// time; job A reaches node 0 first and job B reaches node 1 first, as when two
/// coordinators' start messages cross. Both complete, one after the other, and no
/// admission timeout is involved (it is far longer than the test's bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_arrivals_on_two_nodes_both_complete() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(73, 2, |c| {
            one_pool_budget(c);
            c.admission_timeout = Duration::from_secs(600);
        })
        .await;
        let topology = Topology::all_to_all(&[NodeId(0), NodeId(1)], 1, 1);
        let (a, b) = (JobId(1), JobId(2));
        // The crossing: A asks on node 0 and B on node 1 before either asks elsewhere.
        let a0 = nodes[0].job(a, topology.clone());
        let b1 = nodes[1].job(b, topology.clone());
        assert!(a0.try_admit().expect("A asks on node 0"));
        let _ = b1.try_admit().expect("B asks on node 1");
        let mut tasks = run_two_node_job(&nodes, a, 50);
        tasks.extend(run_two_node_job(&nodes, b, 50));
        for task in tasks {
            task.await.unwrap().expect("both jobs complete");
        }
        drop((a0, b1));
        let waited = nodes
            .iter()
            .map(Node::longest_admission_wait)
            .max()
            .unwrap();
        assert!(waited > Duration::ZERO, "the budget was not binding");
        assert!(waited < Duration::from_secs(30), "waited {waited:?}");
    })
    .await
    .expect("bounded: no admission deadlock");
}

/// A job that times out waiting for admission on node 1 fails on node 0 as well, where
/// it was admitted: node 0's endpoints get an error naming node 1 instead of waiting for
/// producers that will never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_timeout_on_one_node_fails_the_job_on_every_node() {
    tokio::time::timeout(BOUND, async {
        let nodes = start_nodes(74, 2, |c| {
            one_pool_budget(c);
            c.admission_timeout = Duration::from_millis(500);
        })
        .await;
        // Node 1's budget is taken by a job that stays open.
        let me = Endpoint::new(NodeId(1), 1);
        let holder = nodes[1].job(JobId(1), Topology::new([me], [me]));
        let _held = holder.consumer(1).await.expect("the holder fits");
        let tasks = run_two_node_job(&nodes, JobId(2), 10);
        let mut refused_by_1 = 0;
        for task in tasks {
            let err = task.await.unwrap().expect_err("the job cannot run");
            match err.exchange() {
                Some(ExchangeError::AdmissionTimeout { .. }) => {}
                Some(ExchangeError::JobRefused { node, .. }) if *node == NodeId(1) => {
                    refused_by_1 += 1;
                }
                _ => panic!("unexpected error: {err}"),
            }
        }
        assert!(
            refused_by_1 > 0,
            "node 0's endpoints never learnt of the refusal"
        );
    })
    .await
    .expect("bounded: every endpoint got the outcome");
}
