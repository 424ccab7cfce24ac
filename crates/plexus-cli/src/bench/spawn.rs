//! `plexus bench --spawn`: every node in an OS process of its own. This process, the
//! coordinator, starts one `plexus bench-node` per node (this same executable), gives
//! them each other's addresses, starts each wave, relays the release of stalled consumers,
//! kills a node's process on request (`--kill-node`), gathers every endpoint's outcome, and
//! judges the run, wave by wave, as the in-process mode does. The conversation is in
//! [`super::wire`].
//!
//! Invariants: every wait is bounded by `--timeout-s` (the run's) or by [`EXIT_GRACE`]
//! (the `bye`s, and the final exit); every node process is killed if still running and always reaped
//! (waited for) before the coordinator returns, on every path, errors included (see
//! [`Fleet`]'s `Drop`); a node process that goes away before the end, other than the
//! killed one, is recorded as an error; a wave starts only once every node process said it
//! was done with the previous one, which was judged then, and the run stops at the first
//! wave that fails.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::arrival::Arrival;
use super::chaos::LinkChaos;
use super::delivered::Delivered;
use super::fleet::{self, Fleet};
use super::monitor::Monitor;
use super::report::Report;
use super::roles::wall_ms;
use super::shape::Shape;
use super::timeline::Timeline;
use super::verdict::{CloseRelease, HealthyTally, Kill, Killed, RunRecord, Tally};
use super::waves::{self, RssGrowth};
use super::wire::{FromNode, Line, ToNode};
use super::BenchArgs;

/// How long node processes get to exit after `exit` before they are killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// A line from node process `.0`.
type Inbound = fleet::Inbound<FromNode>;

/// Runs the bench with one process per node.
pub fn run(shape: &Shape, args: &BenchArgs, arrival: Arrival) -> Result<Report, String> {
    let (exe, shape_json, runtime) = fleet::coordinator_parts(shape, "nodes")?;
    let (inbox_tx, inbox) = mpsc::unbounded_channel();
    let group = args.nodes_per_process.max(1);
    let mut fleet = Fleet::new("node process");
    for i in 0..shape.nodes().div_ceil(group) {
        let first = (i * group).to_string();
        let count = group.to_string();
        let node_args = [
            "bench-node",
            "--node",
            &first,
            "--count",
            &count,
            "--shape",
            &shape_json,
        ];
        fleet.start(&exe, &node_args, Some(&inbox_tx))?;
    }
    drop(inbox_tx);
    let result = runtime.block_on(coordinate(shape, args, arrival, &mut fleet, inbox));
    fleet.shut_down(EXIT_GRACE);
    result
}

/// Where a node process is in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Running,
    /// Every endpoint ended; the node stays up until `exit`.
    Done,
    /// Its output closed (it exited, or was killed), or it said `bye`.
    Gone,
}

/// Waits for every node to listen; returns their addresses and process ids.
async fn await_ready(
    nodes: usize,
    group: usize,
    inbox: &mut mpsc::UnboundedReceiver<Inbound>,
    deadline: Instant,
    timeout_s: u64,
) -> Result<(Vec<SocketAddr>, Vec<u32>), String> {
    let mut addrs = vec![None; nodes];
    let mut pids = vec![0; nodes.div_ceil(group)];
    while addrs.iter().any(Option::is_none) {
        let (i, line) = match timeout_at(deadline, inbox.recv()).await {
            Err(_) => {
                return Err(format!(
                    "timed out after {timeout_s} s waiting for the node processes to listen"
                ))
            }
            Ok(None) => return Err("lost the output of every node process".into()),
            Ok(Some(got)) => got,
        };
        match line {
            Line::Message(FromNode::Ready { node, addr, pid })
                if node as usize / group == i && (node as usize) < nodes =>
            {
                addrs[node as usize] = Some(addr);
                pids[i] = pid;
            }
            Line::Message(FromNode::Failed { error }) => {
                return Err(format!("node process {i}: {error}"))
            }
            Line::Closed => {
                return Err(format!(
                    "node process {i}'s process exited before listening"
                ))
            }
            Line::Garbled(e) => {
                return Err(format!("node process {i} said something unreadable: {e}"))
            }
            Line::Message(other) => {
                return Err(format!(
                    "node process {i} sent {other:?} before it listened"
                ))
            }
        }
    }
    Ok((addrs.into_iter().flatten().collect(), pids))
}

async fn coordinate(
    shape: &Shape,
    args: &BenchArgs,
    arrival: Arrival,
    fleet: &mut Fleet,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
) -> Result<Report, String> {
    let n = shape.nodes() as usize;
    let group = args.nodes_per_process.max(1) as usize;
    let processes = n.div_ceil(group);
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let (addrs, pids) = await_ready(n, group, &mut inbox, deadline, args.timeout_s).await?;
    let own_pid = std::process::id();
    let distinct_pids = pids
        .iter()
        .filter(|&&p| p != own_pid)
        .collect::<BTreeSet<_>>()
        .len();

    // With a node to kill, every job must still be in progress when it dies: producers
    // hold their close until the failure has played out (see `close_release`).
    let hold_close = args.kill_node.is_some();
    fleet.broadcast(&ToNode::Start {
        addrs,
        hold_close,
        arrival,
    });
    let start = Instant::now();
    let delivered = Arc::new(Delivered::default());
    let timeline = args
        .report
        .is_some()
        .then(|| Timeline::start(delivered.clone(), start.into_std()));
    let monitor = Monitor::start(shape, &delivered, args.json);
    monitor.expect_waves(shape, args.waves);
    let chaos = args
        .chaos_link_kill_ms
        .map(|ms| LinkChaos::start(shape, Duration::from_millis(ms)));
    let impostor = super::impostor::Impostor::start_if(args.impostor, shape);
    let kill_at = start + Duration::from_millis(args.kill_delay_ms());
    let mut pending_kill = args.kill_node.map(|node| (node, kill_at));

    let mut record = RunRecord {
        processes: distinct_pids,
        rss_peak_bytes_per_process: vec![None; processes],
        ..RunRecord::default()
    };
    let mut state = vec![NodeState::Running; processes];
    // Over every wave.
    let waves = args.waves as usize;
    let mut healthy_left: Vec<usize> = (0..processes)
        .map(|p| {
            (p * group..((p + 1) * group).min(n))
                .map(|node| shape.healthy_consumers_on(node as u32) * waves)
                .sum()
        })
        .collect();
    let mut tally = HealthyTally::new(healthy_left.iter().sum());
    // (healthy, stalled) bytes each node process last reported.
    let mut progress = vec![(0u64, 0u64); processes];
    // When producers may close: once every surviving endpoint of the jobs the killed node
    // spans has ended (with its error), or `CLOSE_RELEASE_BOUND` after the kill.
    let mut close_release: Option<CloseRelease> = None;
    let mut verdicts = Tally::new(args.waves, arrival);
    let mut growth = RssGrowth::new(args.waves, shape.jobs());
    // Each node process's resident memory when it was last done with a wave.
    let mut rss_now: Vec<Option<u64>> = vec![None; processes];
    let mut wave = 0;
    // Whether the current wave has been judged.
    let mut judged = false;
    monitor.wave_started(wave, args.waves);
    loop {
        if !state.contains(&NodeState::Running) {
            // The wave is over on every node: judge it, then run the next or stop.
            let verified = verdicts.judge_wave(shape, wave, &record.outcomes, record.kill)
                && record.errors.is_empty();
            judged = true;
            record.outcomes.clear();
            growth.wave_ended(wave, rss_now.iter().copied().sum());
            if !verified && wave + 1 < args.waves {
                record.errors.push(format!(
                    "wave {} of {} failed: the waves after it did not run",
                    wave + 1,
                    args.waves
                ));
            }
            if !verified || wave + 1 >= args.waves {
                break;
            }
            wave += 1;
            judged = false;
            monitor.wave_started(wave, args.waves);
            fleet.broadcast(&ToNode::Wave { wave });
            for s in state.iter_mut().filter(|s| **s == NodeState::Done) {
                *s = NodeState::Running;
            }
        }
        let kill_at = pending_kill.map(|(_, at)| at);
        if close_release
            .as_ref()
            .is_some_and(|r| r.due(shape, &record.outcomes))
        {
            close_release = None;
            fleet.broadcast(&ToNode::CloseProducers);
        }
        let release_at = close_release.as_ref().map(|r| r.deadline);
        tokio::select! {
            got = inbox.recv() => {
                let Some((i, line)) = got else {
                    record.errors.push("lost the output of every node process".into());
                    break;
                };
                let Some(node_state) = state.get_mut(i) else {
                    continue;
                };
                match line {
                    Line::Message(FromNode::Endpoint { outcome }) => record.outcomes.push(outcome),
                    Line::Message(FromNode::HealthyDone) => {
                        healthy_left[i] = healthy_left[i].saturating_sub(1);
                        if tally.done(1) {
                            fleet.broadcast(&ToNode::Release);
                        }
                    }
                    Line::Message(FromNode::Progress { healthy, stalled }) => {
                        progress[i] = (healthy, stalled);
                        let (h, s) = progress
                            .iter()
                            .fold((0, 0), |(h, s), &(ph, ps)| (h + ph, s + ps));
                        delivered.set(h, s);
                    }
                    Line::Message(FromNode::Done { wave: done, rss_bytes }) => {
                        if done == wave {
                            *node_state = NodeState::Done;
                            rss_now[i] = rss_bytes;
                        } else {
                            record.errors.push(format!(
                                "node process {i} said it was done with wave {done} in wave {wave}"
                            ));
                        }
                    }
                    Line::Message(FromNode::Bye { .. }) => {
                        record.errors.push(format!("node process {i} said bye before it was asked"));
                    }
                    Line::Message(FromNode::Failed { error }) => {
                        record.errors.push(format!("node process {i}: {error}"));
                    }
                    Line::Message(FromNode::Ready { .. }) => {
                        record.errors.push(format!("node process {i} said it was ready twice"));
                    }
                    Line::Garbled(e) => {
                        record.errors.push(format!("node process {i} said something unreadable: {e}"));
                    }
                    Line::Closed => {
                        let killed = record
                            .kill
                            .and_then(|k| k.what.node())
                            .is_some_and(|node| node as usize == i);
                        if !killed {
                            record.errors.push(format!(
                                "node process {i}'s process (pid {}) exited unexpectedly",
                                pids[i]
                            ));
                        }
                        *node_state = NodeState::Gone;
                        // Its consumers will never say they are done: stop waiting for them.
                        if tally.done(std::mem::take(&mut healthy_left[i])) {
                            fleet.broadcast(&ToNode::Release);
                        }
                    }
                }
            }
            _ = sleep_until(kill_at.unwrap_or(deadline)), if kill_at.is_some() => {
                if let Some((node, _)) = pending_kill.take() {
                    let at_ms = wall_ms();
                    match fleet.kill(node as usize) {
                        Ok(()) => {
                            let what = Killed::Node { node, endpoints_survive: false };
                            record.kill = Some(Kill { what, at_ms });
                            close_release = Some(CloseRelease::after(shape, what));
                        }
                        Err(e) => {
                            record.errors.push(e);
                            fleet.broadcast(&ToNode::CloseProducers);
                        }
                    }
                }
            }
            _ = sleep_until(release_at.unwrap_or(deadline)), if release_at.is_some() => {
                close_release = None;
                fleet.broadcast(&ToNode::CloseProducers);
            }
            _ = sleep_until(deadline) => {
                record.errors.push(waves::timed_out(args.timeout_s, wave, args.waves));
                break;
            }
        }
    }
    if !judged {
        verdicts.judge_wave(shape, wave, &record.outcomes, record.kill);
    }
    record.rss_growth_bytes_per_job = growth.bytes_per_job();
    record.elapsed_s = start.elapsed().as_secs_f64();
    record.healthy_elapsed_s = tally.elapsed_since(start.into_std());
    if let Some((node, _)) = pending_kill {
        record.errors.push(format!(
            "the run ended after {:.0} ms, before --kill-at-ms {}: node {node} was not killed",
            record.elapsed_s * 1000.0,
            args.kill_delay_ms()
        ));
    }
    record.timeline = timeline.map(Timeline::stop);
    record.links_per_node_max = monitor.finish();
    record.link_kills = chaos.map_or(0, LinkChaos::stop);
    super::impostor::Impostor::finish(impostor, &mut record);
    fleet.broadcast(&ToNode::Exit);
    collect_byes(&mut inbox, &mut state, &mut record).await;
    Ok(verdicts.report(shape, record))
}

/// Gathers the `bye` of every node process still up (its peak memory and link resumes),
/// for at most [`EXIT_GRACE`]; a node process that exits or stays silent instead is
/// recorded as an error.
async fn collect_byes(
    inbox: &mut mpsc::UnboundedReceiver<Inbound>,
    state: &mut [NodeState],
    record: &mut RunRecord,
) {
    let deadline = Instant::now() + EXIT_GRACE;
    while state.iter().any(|&s| s != NodeState::Gone) {
        let Ok(Some((i, line))) = timeout_at(deadline, inbox.recv()).await else {
            break;
        };
        let Some(node_state) = state.get_mut(i) else {
            continue;
        };
        match line {
            Line::Message(FromNode::Bye {
                rss_peak_bytes,
                resume_us,
                peak_buffered_bytes,
                admission_wait_us,
            }) => {
                if let Some(rss) = record.rss_peak_bytes_per_process.get_mut(i) {
                    *rss = Some(rss_peak_bytes);
                }
                record.peak_buffered_bytes = record.peak_buffered_bytes.max(peak_buffered_bytes);
                record.admission_wait = record
                    .admission_wait
                    .max(Duration::from_micros(admission_wait_us));
                record
                    .resume_times
                    .extend(resume_us.into_iter().map(Duration::from_micros));
                *node_state = NodeState::Gone;
            }
            // Its output closes after its bye too: only an exit before it is an error.
            Line::Closed if *node_state != NodeState::Gone => {
                record
                    .errors
                    .push(format!("node process {i} exited without saying bye"));
                *node_state = NodeState::Gone;
            }
            Line::Closed => {}
            // Late outcomes and progress no longer count.
            Line::Message(_) | Line::Garbled(_) => {}
        }
    }
    for (i, _) in state
        .iter()
        .enumerate()
        .filter(|(_, &s)| s != NodeState::Gone)
    {
        record.errors.push(format!(
            "node process {i} did not say bye within {EXIT_GRACE:?}"
        ));
    }
}
