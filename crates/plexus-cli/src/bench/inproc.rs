//! `plexus bench` in one process (the default): n nodes run here, node i listening on its
//! own loopback address, and every endpoint is a task of this process.
//!
//! Invariants: the run is bounded by `--timeout-s`, and on timeout the endpoints that did
//! report are still judged; stalled consumers are released once every non-stalled
//! consumer announced it was done; the nodes shut down only after every endpoint
//! reported, so no queued data is cut off.

use std::sync::Arc;
use std::time::Duration;

use plexus::{Membership, Node};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use super::chaos::Chaos;
use super::delivered::Delivered;
use super::host;
use super::memory;
use super::monitor::Monitor;
use super::report::Report;
use super::roles::EndpointEvent;
use super::shape::Shape;
use super::timeline::Timeline;
use super::verdict::{self, HealthyTally, RunRecord};
use super::BenchArgs;

/// Runs the bench with every node in this process.
pub fn run(shape: &Shape, args: &BenchArgs) -> Result<Report, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run_async(shape, args))
}

async fn run_async(shape: &Shape, args: &BenchArgs) -> Result<Report, String> {
    let membership = Membership::new();
    let mut nodes = Vec::with_capacity(shape.nodes() as usize);
    for i in 0..shape.nodes() {
        nodes.push(host::start_node(shape, i, &membership).await?);
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = watch::channel(false);
    let delivered = Arc::new(Delivered::default());
    let start = Instant::now();
    let timeline = args
        .report
        .is_some()
        .then(|| Timeline::start(delivered.clone(), start.into_std()));
    let deadline = start + Duration::from_secs(args.timeout_s);
    // No node is killed in this mode, so producers close as soon as they are done.
    let (_close_tx, close_gate) = watch::channel(true);
    let tasks = host::launch(
        &nodes,
        shape,
        &events_tx,
        &release_rx,
        &close_gate,
        &delivered,
    )
    .await;
    drop(events_tx);
    let monitor = Monitor::start(shape, &delivered, args.json);
    let chaos = args
        .chaos_link_kill_ms
        .map(|ms| Chaos::start(shape.node_ips(), Duration::from_millis(ms)));

    let mut record = RunRecord {
        processes: 1,
        ..RunRecord::default()
    };
    let expected: usize = (0..shape.nodes()).map(|i| shape.endpoints_on(i)).sum();
    let mut tally = HealthyTally::new(
        (0..shape.nodes())
            .map(|i| shape.healthy_consumers_on(i))
            .sum(),
    );
    while record.outcomes.len() < expected {
        tokio::select! {
            event = events.recv() => match event {
                Some(EndpointEvent::Finished(outcome)) => record.outcomes.push(outcome),
                Some(EndpointEvent::HealthyDone) => {
                    if tally.done(1) {
                        release_tx.send_replace(true);
                    }
                }
                None => {
                    record.errors.push("the endpoint tasks ended without reporting".into());
                    break;
                }
            },
            _ = sleep_until(deadline) => {
                record.errors.push(format!("timed out after {} s", args.timeout_s));
                break;
            }
        }
    }
    record.elapsed_s = start.elapsed().as_secs_f64();
    record.healthy_elapsed_s = tally.elapsed_since(start.into_std());
    record.timeline = timeline.map(Timeline::stop);
    record.links_per_node_max = monitor.finish();
    record.link_kills = chaos.map_or(0, Chaos::stop);
    record.resume_times = nodes.iter().flat_map(host::resume_times).collect();
    record.peak_buffered_bytes = nodes.iter().map(Node::peak_buffered).max().unwrap_or(0);
    record.admission_wait = nodes
        .iter()
        .map(Node::longest_admission_wait)
        .max()
        .unwrap_or_default();
    for node in &nodes {
        node.shutdown();
    }
    drop(tasks);
    record.rss_peak_bytes_per_process = vec![memory::peak_rss_bytes()];
    Ok(verdict::judge(shape, record))
}
