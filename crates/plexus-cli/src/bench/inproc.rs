//! `plexus bench` in one process (the default): n nodes run here, node i listening on its
//! own loopback address, and every endpoint is a task of this process; with `--waves`, the
//! same nodes run one wave of jobs after another.
//!
//! Invariants: the run is bounded by `--timeout-s`, and on timeout the endpoints that did
//! report are still judged; stalled consumers are released once every non-stalled
//! consumer announced it was done; a wave starts only once every endpoint of the previous
//! one reported and its task ended, and the run stops at the first wave that fails; each
//! wave is judged as it ends and its outcomes dropped; the nodes shut down only after
//! every endpoint reported, so no queued data is cut off.

use std::sync::Arc;
use std::time::Duration;

use plexus::{Membership, Node};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::arrival::Arrival;
use super::chaos::LinkChaos;
use super::delivered::Delivered;
use super::host;
use super::memory;
use super::monitor::Monitor;
use super::report::Report;
use super::roles::{EndpointEvent, EndpointOutcome};
use super::shape::Shape;
use super::timeline::Timeline;
use super::verdict::{HealthyTally, RunRecord, Tally};
use super::waves::{self, RssGrowth};
use super::BenchArgs;

/// Runs the bench with every node in this process.
pub fn run(shape: &Shape, args: &BenchArgs, arrival: Arrival) -> Result<Report, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run_async(shape, args, arrival))
}

async fn run_async(shape: &Shape, args: &BenchArgs, arrival: Arrival) -> Result<Report, String> {
    let membership = Membership::new();
    let mut nodes = Vec::with_capacity(shape.nodes() as usize);
    for i in 0..shape.nodes() {
        nodes.push(host::start_node(shape, i, &membership).await?);
    }
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
    let launcher = host::Launcher::new(shape, arrival, &release_rx, &close_gate, &delivered);
    let monitor = Monitor::start(shape, &delivered, args.json);
    monitor.expect_waves(shape, args.waves);
    let chaos = args
        .chaos_link_kill_ms
        .map(|ms| LinkChaos::start(shape, Duration::from_millis(ms)));
    let impostor = super::impostor::Impostor::start_if(args.impostor, shape);

    let mut record = RunRecord {
        processes: 1,
        ..RunRecord::default()
    };
    let mut tally = Tally::new(args.waves, arrival);
    let mut growth = RssGrowth::new(args.waves, shape.jobs());
    let healthy: usize = (0..shape.nodes())
        .map(|i| shape.healthy_consumers_on(i))
        .sum();
    let mut wave_run = WaveRun {
        nodes: &nodes,
        launcher: &launcher,
        expected: (0..shape.nodes()).map(|i| shape.endpoints_on(i)).sum(),
        healthy: HealthyTally::new(healthy * args.waves as usize),
        release: release_tx,
        deadline,
        timeout_s: args.timeout_s,
        waves: args.waves,
    };
    // The last wave's tasks, dropped only after the nodes shut down, so that no queued data
    // is cut off.
    let mut tasks = JoinSet::new();
    for wave in 0..args.waves {
        monitor.wave_started(wave, args.waves);
        let (outcomes, wave_tasks) = wave_run.run(wave, &mut record.errors).await;
        tasks = wave_tasks;
        let verified = tally.judge_wave(shape, wave, &outcomes, None) && record.errors.is_empty();
        if !verified {
            if wave + 1 < args.waves {
                record.errors.push(format!(
                    "wave {} of {} failed: the waves after it did not run",
                    wave + 1,
                    args.waves
                ));
            }
            break;
        }
        // Every endpoint reported: let their tasks end (a failed one lingers), so that the
        // wave is over on every node before the next starts.
        let _ = timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        growth.wave_ended(wave, memory::rss_bytes());
    }
    record.elapsed_s = start.elapsed().as_secs_f64();
    record.healthy_elapsed_s = wave_run.healthy.elapsed_since(start.into_std());
    record.timeline = timeline.map(Timeline::stop);
    record.links_per_node_max = monitor.finish();
    record.link_kills = chaos.map_or(0, LinkChaos::stop);
    super::impostor::Impostor::finish(impostor, &mut record);
    record.resume_times = nodes.iter().flat_map(host::resume_times).collect();
    record.peak_buffered_bytes = nodes.iter().map(Node::peak_buffered).max().unwrap_or(0);
    record.admission_wait = nodes
        .iter()
        .map(Node::longest_admission_wait)
        .max()
        .unwrap_or_default();
    record.rss_growth_bytes_per_job = growth.bytes_per_job();
    for node in &nodes {
        node.shutdown().await;
    }
    drop(tasks);
    record.rss_peak_bytes_per_process = vec![memory::peak_rss_bytes()];
    Ok(tally.report(shape, record))
}

/// What running one wave needs, the same for every wave.
struct WaveRun<'a> {
    nodes: &'a [Node],
    launcher: &'a host::Launcher,
    /// Endpoints of a wave.
    expected: usize,
    /// Non-stalled consumers of every wave, still working.
    healthy: HealthyTally,
    /// Releases the stalled consumers.
    release: watch::Sender<bool>,
    deadline: Instant,
    timeout_s: u64,
    waves: u32,
}

impl WaveRun<'_> {
    /// Opens wave `wave`'s endpoints and gathers their outcomes until every one reported
    /// or the run's deadline passed (then noted in `errors`); returns them with the wave's
    /// tasks.
    async fn run(
        &mut self,
        wave: u32,
        errors: &mut Vec<String>,
    ) -> (Vec<EndpointOutcome>, JoinSet<()>) {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let tasks = self.launcher.launch(self.nodes, wave, &events_tx);
        drop(events_tx);
        let mut outcomes = Vec::with_capacity(self.expected);
        while outcomes.len() < self.expected {
            tokio::select! {
                event = events.recv() => match event {
                    Some(EndpointEvent::Finished(outcome)) => outcomes.push(outcome),
                    Some(EndpointEvent::HealthyDone) => {
                        if self.healthy.done(1) {
                            self.release.send_replace(true);
                        }
                    }
                    None => {
                        errors.push("the endpoint tasks ended without reporting".into());
                        break;
                    }
                },
                _ = sleep_until(self.deadline) => {
                    errors.push(waves::timed_out(self.timeout_s, wave, self.waves));
                    break;
                }
            }
        }
        (outcomes, tasks)
    }
}
