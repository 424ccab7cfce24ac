//! `plexus bench --agent`: plexus as the processes of a machine use it. This process, the
//! coordinator, starts one agent per node ([`super::agents`]), then one endpoint process
//! per endpoint of the run (`plexus bench-endpoint`, this same executable:
//! [`super::endpoint`]), each attached to its node's agent over the agent's Unix socket; it
//! starts them all at once, relays the release of stalled consumers and the close of held
//! producers, kills an agent (`--kill-node`) or an endpoint process (`--kill-endpoint`) on
//! request, gathers every endpoint's outcome, and judges the run as the other modes do
//! ([`super::verdict`]). The conversation with an endpoint process is in [`super::wire`].
//! Consumers open first, producers once every consumer is open, as each node of the other
//! modes opens its own.
//!
//! Endpoints are numbered in one fixed order, [`Shape::endpoints`]: jobs, then nodes in
//! ascending id, then producers before consumers, then slots; `--kill-endpoint I` kills
//! the I-th. The nodes' figures (link resumes, buffered bytes, admission waits) come from
//! the agents as they stop; each consumer's peak of credit outstanding
//! (`consumer_held_bytes_max`, `stalled_buffered_bytes_max`) comes with its outcome, read
//! by its endpoint process once it ended (`Consumer::credit`: what the agent and the
//! process held together), and is judged against the pool as in the other modes.
//!
//! Invariants: every wait is bounded, by `--timeout-s` (the run's, from before the agents
//! start), by [`AGENT_START_BOUND`] (the agents' sockets) or by [`EXIT_GRACE`] (the final
//! exit); agents and endpoint processes are killed if still running and reaped, and the
//! agents' directory removed, before [`run`] returns, on every path (errors, timeouts and
//! Ctrl-C included); the clock starts when every endpoint process has attached and is told
//! to start; an agent or an endpoint process that goes away before the end, other than the
//! one killed, is recorded as an error; the run ends once every endpoint reported or its
//! process is gone.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::agents::Agents;
use super::arrival::Arrival;
use super::chaos::LinkChaos;
use super::delivered::Delivered;
use super::fleet::{self, Fleet};
use super::monitor::Monitor;
use super::report::Report;
use super::roles::{wall_ms, EndpointKey, Role};
use super::shape::Shape;
use super::timeline::Timeline;
use super::verdict::{CloseRelease, HealthyTally, Kill, Killed, RunRecord, Tally};
use super::wire::{FromEndpoint, Line, ToEndpoint};
use super::BenchArgs;

/// The longest the agents get to accept attaches after they start.
pub const AGENT_START_BOUND: Duration = Duration::from_secs(20);

/// How long endpoint processes and agents get to exit once told to, before they are
/// killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How often the coordinator checks that the agents still run.
const AGENT_CHECK: Duration = Duration::from_millis(200);

/// A line from endpoint process `.0`.
type Inbound = fleet::Inbound<FromEndpoint>;

/// Runs the bench through agents, every endpoint in a process of its own.
pub fn run(shape: &Shape, args: &BenchArgs, arrival: Arrival) -> Result<Report, String> {
    let (exe, shape_json, runtime) = fleet::coordinator_parts(shape, "agents")?;
    let timeout = Duration::from_secs(args.timeout_s);
    let deadline = Instant::now() + timeout;
    let bound = AGENT_START_BOUND.min(timeout);
    let mut agents = match &args.cluster {
        Some(dir) => runtime.block_on(Agents::existing(dir, shape, bound))?,
        None => runtime.block_on(Agents::start(&exe, shape, bound))?,
    };
    let endpoints = shape.endpoints();
    let (inbox_tx, inbox) = mpsc::unbounded_channel();
    let mut fleet = Fleet::new("endpoint process");
    for e in &endpoints {
        let args = endpoint_args(e, &agents, &shape_json);
        fleet.start(&exe, &args, Some(&inbox_tx))?;
    }
    drop(inbox_tx);
    let run = Coordinator {
        shape,
        args,
        arrival,
        endpoints: &endpoints,
        fleet: &mut fleet,
        agents: &mut agents,
        deadline,
    };
    let result = runtime.block_on(run.coordinate(inbox));
    fleet.shut_down(EXIT_GRACE);
    agents.stop(EXIT_GRACE);
    result
}

/// The command line of endpoint `e`'s process.
fn endpoint_args(e: &EndpointKey, agents: &Agents, shape_json: &str) -> Vec<OsString> {
    let role = match e.role {
        Role::Producer => "producer",
        Role::Consumer => "consumer",
    };
    let mut args: Vec<OsString> = vec!["bench-endpoint".into(), "--socket".into()];
    args.push(agents.socket(e.node).into());
    for (flag, value) in [
        ("--node", e.node.to_string()),
        ("--job", e.job.to_string()),
        ("--role", role.to_string()),
        ("--slot", e.slot.to_string()),
        ("--shape", shape_json.to_string()),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    args
}

/// What to kill, once its time comes.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// Node `.0`'s agent.
    Agent(u32),
    /// The endpoint process of the `.0`-th endpoint, `.1`.
    Endpoint(usize, EndpointKey),
}

/// Where an endpoint process is in the run.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    /// Its consumer said it is open.
    opened: bool,
    /// Its outcome came.
    reported: bool,
    /// Its output closed (it exited, or was killed).
    gone: bool,
    /// A consumer that does not stall and has not said it is done.
    healthy_pending: bool,
    /// (healthy, stalled) bytes it last said its consumer received.
    received: (u64, u64),
}

/// One run's coordination.
struct Coordinator<'a> {
    shape: &'a Shape,
    args: &'a BenchArgs,
    arrival: Arrival,
    endpoints: &'a [EndpointKey],
    fleet: &'a mut Fleet,
    agents: &'a mut Agents,
    deadline: Instant,
}

impl Coordinator<'_> {
    /// Waits for every endpoint process to attach, starts them, and gathers what they
    /// report until every endpoint ended; judges the run.
    async fn coordinate(
        self,
        mut inbox: mpsc::UnboundedReceiver<Inbound>,
    ) -> Result<Report, String> {
        let Coordinator {
            shape,
            args,
            arrival,
            endpoints,
            fleet,
            agents,
            deadline,
        } = self;
        await_ready(endpoints, &mut inbox, deadline, args.timeout_s).await?;
        // With something to kill, every job must still be in progress when it dies:
        // producers hold their close until the failure has played out.
        let hold_close = args.kill_node.is_some() || args.kill_endpoint.is_some();
        let start_msg = ToEndpoint::Start { hold_close };
        // Consumers open first, producers once every consumer is open: no channel waits
        // parked for its consumer, and of two nodes the lower id dials (the higher waits
        // for it while a consumer of its own expects data from there), so no two
        // connections cross.
        for (i, e) in endpoints.iter().enumerate() {
            if e.role == Role::Consumer {
                fleet.send(i, &start_msg);
            }
        }
        let mut producers_started = false;
        let start = Instant::now();
        let delivered = Arc::new(Delivered::default());
        let timeline = args
            .report
            .is_some()
            .then(|| Timeline::start(delivered.clone(), start.into_std()));
        let monitor = match agents.socket_tables() {
            Some(tables) => Monitor::start_in(shape, &delivered, args.json, tables),
            None => Monitor::start(shape, &delivered, args.json),
        };
        let chaos = args
            .chaos_link_kill_ms
            .map(|ms| LinkChaos::start(shape, Duration::from_millis(ms)));
        let impostor = super::impostor::Impostor::start_if(args.impostor, shape);
        let target = match (args.kill_node, args.kill_endpoint) {
            (Some(node), _) => Some(Target::Agent(node)),
            (None, Some(index)) => {
                let endpoint = endpoints.get(index).copied().ok_or(format!(
                    "--kill-endpoint {index}: the run has {} endpoints",
                    endpoints.len()
                ))?;
                Some(Target::Endpoint(index, endpoint))
            }
            (None, None) => None,
        };
        let kill_at = start + Duration::from_millis(args.kill_delay_ms());
        let mut pending_kill = target.map(|target| (target, kill_at));

        let mut record = RunRecord {
            processes: shape.nodes() as usize,
            agents: shape.nodes() as usize,
            endpoint_processes: endpoints.len(),
            ..RunRecord::default()
        };
        let mut state: Vec<Progress> = endpoints
            .iter()
            .map(|e| Progress {
                healthy_pending: e.role == Role::Consumer && !shape.is_stalled(e.job, e.endpoint()),
                ..Progress::default()
            })
            .collect();
        let mut tally = HealthyTally::new(state.iter().filter(|s| s.healthy_pending).count());
        let mut close_release: Option<CloseRelease> = None;
        let mut agent_check = tokio::time::interval(AGENT_CHECK);
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        let pids: Vec<u32> = (0..endpoints.len()).map(|i| fleet.pid(i)).collect();
        let describe = |i: usize| match (endpoints.get(i), pids.get(i)) {
            (Some(e), Some(pid)) => {
                format!("the endpoint process of {} (pid {pid})", e.describe())
            }
            _ => format!("endpoint process {i}"),
        };
        while state.iter().any(|s| !s.reported && !s.gone) {
            let consumers_open = || {
                endpoints
                    .iter()
                    .zip(&state)
                    .all(|(e, s)| e.role == Role::Producer || s.opened || s.reported || s.gone)
            };
            if !producers_started && consumers_open() {
                producers_started = true;
                for (i, e) in endpoints.iter().enumerate() {
                    if e.role == Role::Producer {
                        fleet.send(i, &start_msg);
                    }
                }
            }
            if close_release
                .as_ref()
                .is_some_and(|r| r.due(shape, &record.outcomes))
            {
                close_release = None;
                fleet.broadcast(&ToEndpoint::CloseProducers);
            }
            let kill_at = pending_kill.map(|(_, at)| at);
            let release_at = close_release.as_ref().map(|r| r.deadline);
            tokio::select! {
                got = inbox.recv() => {
                    let Some((i, line)) = got else {
                        record.errors.push("lost the output of every endpoint process".into());
                        break;
                    };
                    let Some(progress) = state.get_mut(i) else {
                        continue;
                    };
                    match line {
                        Line::Message(FromEndpoint::Endpoint { outcome }) => {
                            if endpoints.get(i) == Some(&outcome.key()) {
                                progress.reported = true;
                                record.outcomes.push(outcome);
                            } else {
                                record.errors.push(format!(
                                    "{} reported for another endpoint ({:?})",
                                    describe(i),
                                    outcome.key()
                                ));
                            }
                        }
                        Line::Message(FromEndpoint::Opened) => progress.opened = true,
                        Line::Message(FromEndpoint::HealthyDone) => {
                            if std::mem::take(&mut progress.healthy_pending) && tally.done(1) {
                                fleet.broadcast(&ToEndpoint::Release);
                            }
                        }
                        Line::Message(FromEndpoint::Progress { healthy, stalled }) => {
                            progress.received = (healthy, stalled);
                            let (h, s) = state.iter().fold((0, 0), |(h, s), p| {
                                (h + p.received.0, s + p.received.1)
                            });
                            delivered.set(h, s);
                        }
                        Line::Message(FromEndpoint::Failed { error }) => {
                            record.errors.push(format!("{}: {error}", describe(i)));
                        }
                        Line::Message(FromEndpoint::Ready { .. }) => {
                            record.errors.push(format!("{} said it was ready twice", describe(i)));
                        }
                        Line::Garbled(e) => {
                            record.errors.push(format!("{} said something unreadable: {e}", describe(i)));
                        }
                        Line::Closed => {
                            progress.gone = true;
                            let killed = matches!(
                                record.kill.map(|k| k.what),
                                Some(Killed::Endpoint { index, .. }) if index == i
                            );
                            if !killed {
                                record.errors.push(format!("{} exited unexpectedly", describe(i)));
                            }
                            // Its consumer will never say it is done: stop waiting for it.
                            if std::mem::take(&mut progress.healthy_pending) && tally.done(1) {
                                fleet.broadcast(&ToEndpoint::Release);
                            }
                        }
                    }
                }
                _ = sleep_until(kill_at.unwrap_or(deadline)), if kill_at.is_some() => {
                    if let Some((target, _)) = pending_kill.take() {
                        let at_ms = wall_ms();
                        let (killed, what) = match target {
                            Target::Agent(node) => (
                                agents.kill(node),
                                Killed::Node { node, endpoints_survive: true },
                            ),
                            Target::Endpoint(index, endpoint) => (
                                fleet.kill(index),
                                Killed::Endpoint { index, endpoint },
                            ),
                        };
                        match killed {
                            Ok(()) => {
                                record.kill = Some(Kill { what, at_ms });
                                close_release = Some(CloseRelease::after(shape, what));
                            }
                            Err(e) => {
                                record.errors.push(e);
                                fleet.broadcast(&ToEndpoint::CloseProducers);
                            }
                        }
                    }
                }
                _ = sleep_until(release_at.unwrap_or(deadline)), if release_at.is_some() => {
                    close_release = None;
                    fleet.broadcast(&ToEndpoint::CloseProducers);
                }
                _ = agent_check.tick() => {
                    for (node, status) in agents.exited() {
                        record.errors.push(format!(
                            "the agent of node {node} (pid {}) exited unexpectedly ({status})",
                            agents.pid(node)
                        ));
                    }
                    for node in agents.external_gone() {
                        let gone = format!("the agent of node {node} (pid {}) is gone", agents.pid(node));
                        if !record.errors.contains(&gone) {
                            record.errors.push(gone);
                        }
                    }
                }
                _ = &mut interrupted => {
                    record.errors.push("interrupted (SIGINT)".into());
                    break;
                }
                _ = sleep_until(deadline) => {
                    record.errors.push(format!("timed out after {} s", args.timeout_s));
                    break;
                }
            }
        }
        let mut verdicts = Tally::new(1, arrival);
        verdicts.judge_wave(shape, 0, &record.outcomes, record.kill);
        record.elapsed_s = start.elapsed().as_secs_f64();
        record.healthy_elapsed_s = tally.elapsed_since(start.into_std());
        if let Some((target, _)) = pending_kill {
            record.errors.push(format!(
                "the run ended after {:.0} ms, before --kill-at-ms {}: {target:?} was not killed",
                record.elapsed_s * 1000.0,
                args.kill_delay_ms()
            ));
        }
        record.timeline = timeline.map(Timeline::stop);
        record.links_per_node_max = monitor.finish();
        record.link_kills = chaos.map_or(0, LinkChaos::stop);
        super::impostor::Impostor::finish(impostor, &mut record);
        record.rss_peak_bytes_per_process = agents.peak_rss();
        fleet.broadcast(&ToEndpoint::Exit);
        for figures in agents
            .stop_with_figures(EXIT_GRACE)
            .await
            .into_iter()
            .flatten()
        {
            record.peak_buffered_bytes =
                record.peak_buffered_bytes.max(figures.peak_buffered_bytes);
            record.admission_wait = record
                .admission_wait
                .max(Duration::from_micros(figures.admission_wait_us));
            record
                .resume_times
                .extend(figures.resume_us.into_iter().map(Duration::from_micros));
        }
        Ok(verdicts.report(shape, record))
    }
}

/// Waits until every endpoint process attached to its agent.
async fn await_ready(
    endpoints: &[EndpointKey],
    inbox: &mut mpsc::UnboundedReceiver<Inbound>,
    deadline: Instant,
    timeout_s: u64,
) -> Result<(), String> {
    let mut ready = vec![false; endpoints.len()];
    let mut left = endpoints.len();
    let describe = |i: usize| {
        endpoints
            .get(i)
            .map_or(format!("endpoint process {i}"), |e| {
                format!("the endpoint process of {}", e.describe())
            })
    };
    while left > 0 {
        let (i, line) = match timeout_at(deadline, inbox.recv()).await {
            Err(_) => {
                return Err(format!(
                    "timed out after {timeout_s} s waiting for the endpoint processes to attach ({left} of {} did not)",
                    endpoints.len()
                ))
            }
            Ok(None) => return Err("lost the output of every endpoint process".into()),
            Ok(Some(got)) => got,
        };
        match line {
            Line::Message(FromEndpoint::Ready { .. }) => {
                if let Some(r) = ready.get_mut(i).filter(|r| !**r) {
                    *r = true;
                    left -= 1;
                }
            }
            Line::Message(FromEndpoint::Failed { error }) => {
                return Err(format!("{}: {error}", describe(i)))
            }
            Line::Closed => return Err(format!("{} exited before attaching", describe(i))),
            Line::Garbled(e) => {
                return Err(format!("{} said something unreadable: {e}", describe(i)))
            }
            Line::Message(other) => {
                return Err(format!("{} sent {other:?} before it attached", describe(i)))
            }
        }
    }
    Ok(())
}
