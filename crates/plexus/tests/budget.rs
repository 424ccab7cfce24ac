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
