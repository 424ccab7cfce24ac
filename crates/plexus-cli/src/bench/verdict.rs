//! Judging a run, wave by wave: from how every endpoint ended, which jobs completed, which
//! failed and whether they failed as expected, how long each job took, and the report.
//! Shared by both modes.
//!
//! Invariants: a job completes only if every one of its endpoints reported, without an
//! error, and its consumers received all their bytes; a job a kill affects (one using the
//! killed node, or the job of the killed endpoint) fails cleanly only if every one of its
//! endpoints that outlived the kill reported an error (none hung, none ended without
//! error) naming what was killed: the node, or for the other role of a killed endpoint's
//! job that endpoint (a consumer of a killed producer sees it abort, a producer of a
//! killed consumer sees it cancel; the endpoints of the killed one's own role fail only in
//! turn, and any error will do); no consumer's peak of credit
//! outstanding exceeds its pool, whatever its job's fate; the run verifies iff no error of any
//! kind was found (run-level errors included), so every failure that is not expected is
//! listed in `errors`; a [`Tally`] keeps counts, a histogram of job latencies and only the
//! ids and errors of failed jobs, so judging many waves does not grow with them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::arrival::Arrival;
use super::report::{Report, ShapeFields};
use super::roles::{EndpointError, EndpointKey, EndpointOutcome, Role};
use super::shape::Shape;
use super::timeline::Series;

/// Errors listed per job at most; the rest are counted.
const MAX_ERRORS_PER_JOB: usize = 8;

/// A kill during the run.
#[derive(Clone, Copy, Debug)]
pub struct Kill {
    /// What was killed.
    pub what: Killed,
    /// Wall-clock time of the kill, in ms since the UNIX epoch.
    pub at_ms: u64,
}

/// What a kill hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Killed {
    /// Node `node`: its process (`--spawn`; its endpoints die with it), or its agent
    /// (`--agent`; the endpoint processes attached to it live on, and must fail too).
    Node {
        /// The node.
        node: u32,
        /// The node's endpoints live on (in processes of their own).
        endpoints_survive: bool,
    },
    /// One endpoint's process (`--agent --kill-endpoint`), the `index`-th of
    /// [`Shape::endpoints`].
    Endpoint {
        /// Its place in [`Shape::endpoints`].
        index: usize,
        /// The endpoint.
        endpoint: EndpointKey,
    },
}

impl Killed {
    /// Whether the kill affects job `j`: it uses the killed node, or is the killed
    /// endpoint's.
    pub fn affects(&self, shape: &Shape, j: u32) -> bool {
        match self {
            Killed::Node { node, .. } => shape.job_uses(j, *node),
            Killed::Endpoint { endpoint, .. } => endpoint.job == j,
        }
    }

    /// Whether endpoint `e` (of an affected job) lived on after the kill, and so must
    /// report the failure.
    pub fn survives(&self, e: &EndpointKey) -> bool {
        match self {
            Killed::Node {
                node,
                endpoints_survive,
            } => *endpoints_survive || e.node != *node,
            Killed::Endpoint { endpoint, .. } => e != endpoint,
        }
    }

    /// Why `error`, reported by `e`, a survivor of an affected job, is not an error the
    /// kill explains, if it is not.
    fn unexplained(&self, e: &EndpointKey, error: &EndpointError) -> Option<String> {
        match self {
            Killed::Node { node, .. } => (error.names_node != Some(*node)).then(|| {
                format!(
                    "{} (an error that does not name the killed node {node})",
                    error.message
                )
            }),
            // The killed endpoint's own role fails in turn, as the other role gives up.
            Killed::Endpoint { endpoint: k, .. } if e.role == k.role => None,
            Killed::Endpoint { endpoint: k, .. } => {
                (error.names_endpoint != Some((k.node, k.slot))).then(|| {
                    format!(
                        "{} (an error that does not name the killed {})",
                        error.message,
                        k.describe()
                    )
                })
            }
        }
    }

    /// The node killed, if a node was.
    pub fn node(&self) -> Option<u32> {
        match self {
            Killed::Node { node, .. } => Some(*node),
            Killed::Endpoint { .. } => None,
        }
    }

    /// What was killed, for messages.
    fn describe(&self) -> String {
        match self {
            Killed::Node { node, .. } => format!("node {node}"),
            Killed::Endpoint { endpoint, .. } => endpoint.describe(),
        }
    }
}

/// The endpoint killed by `--kill-endpoint`, as the report gives it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct KilledEndpoint {
    /// Its place in the kill order: jobs, then nodes, then producers before consumers,
    /// then slots.
    pub index: usize,
    /// Its job's id.
    pub job: u64,
    /// Its node.
    pub node: u32,
    /// Producer or consumer.
    pub role: Role,
    /// Its slot on the node.
    pub slot: u32,
}

/// The longest producers hold their close after a kill, should some endpoint never
/// report its failure (the run then reports that endpoint as hung).
const CLOSE_RELEASE_BOUND: Duration = Duration::from_secs(5);

/// When producers, held open while something is killed, may close: once every endpoint
/// of the affected jobs that outlived the kill has reported (with its error), or
/// [`CLOSE_RELEASE_BOUND`] after the kill.
#[derive(Debug)]
pub struct CloseRelease {
    killed: Killed,
    /// The affected jobs' endpoints that outlived the kill.
    expected: usize,
    /// When producers close, whatever was reported.
    pub deadline: tokio::time::Instant,
}

impl CloseRelease {
    /// Just after `killed` was killed, in the first wave of `shape`.
    pub fn after(shape: &Shape, killed: Killed) -> CloseRelease {
        let expected = shape
            .endpoints()
            .iter()
            .filter(|e| killed.affects(shape, e.job) && killed.survives(e))
            .count();
        CloseRelease {
            killed,
            expected,
            deadline: tokio::time::Instant::now() + CLOSE_RELEASE_BOUND,
        }
    }

    /// Whether every endpoint of the affected jobs that outlived the kill has reported.
    pub fn due(&self, shape: &Shape, outcomes: &[EndpointOutcome]) -> bool {
        let reported = outcomes
            .iter()
            .filter(|o| self.killed.affects(shape, o.job) && self.killed.survives(&o.key()))
            .count();
        reported >= self.expected
    }
}

/// Everything a run gathered, before judging.
#[derive(Debug, Default)]
pub struct RunRecord {
    /// How each endpoint that reported ended, for [`judge`] (a run of many waves judges
    /// each wave as it ends, with a [`Tally`], and leaves this empty).
    pub outcomes: Vec<EndpointOutcome>,
    /// Failures of the run itself (timeout, a process that died, ...).
    pub errors: Vec<String>,
    /// From the start of the endpoints to the end of the last one.
    pub elapsed_s: f64,
    /// Until the last non-stalled consumer was done, if it was.
    pub healthy_elapsed_s: Option<f64>,
    /// Most established connections any node's address held.
    pub links_per_node_max: usize,
    /// Successful link kills from outside.
    pub link_kills: u64,
    /// What `--impostor` tried, if it ran.
    pub impostor: Option<super::impostor::Attempts>,
    /// OS processes that ran nodes.
    pub processes: usize,
    /// Agent processes (`--agent`), one per node; 0 otherwise.
    pub agents: usize,
    /// Processes that each ran one endpoint (`--agent`); 0 otherwise.
    pub endpoint_processes: usize,
    /// Peak resident memory of each process that ran nodes, in process order; `None` for
    /// one that did not report it (it was killed, or the OS does not tell).
    pub rss_peak_bytes_per_process: Vec<Option<u64>>,
    /// Every link resume of every node: how long the link was down.
    pub resume_times: Vec<Duration>,
    /// The kill, if one happened.
    pub kill: Option<Kill>,
    /// The most bytes any node had buffered at once.
    pub peak_buffered_bytes: u64,
    /// The longest any job waited for admission on any node.
    pub admission_wait: Duration,
    /// Bytes delivered over time, if sampled (`--report`).
    pub timeline: Option<Series>,
    /// How much the resident memory grew per job between the end of the first tenth of
    /// the waves and the end of the last, if measured.
    pub rss_growth_bytes_per_job: Option<f64>,
}

/// Counts non-stalled consumers still working, so stalled ones can be released when the
/// count reaches zero.
#[derive(Debug)]
pub struct HealthyTally {
    left: usize,
    done_at: Option<Instant>,
}

impl HealthyTally {
    /// `healthy` consumers are working.
    pub fn new(healthy: usize) -> HealthyTally {
        HealthyTally {
            left: healthy,
            done_at: None,
        }
    }

    /// Counts `n` more as done; true if that made them all done, just now.
    pub fn done(&mut self, n: usize) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left = self.left.saturating_sub(n);
        if self.left == 0 {
            self.done_at = Some(Instant::now());
            return true;
        }
        false
    }

    /// Seconds from `start` until every non-stalled consumer was done, if they were.
    pub fn elapsed_since(&self, start: Instant) -> Option<f64> {
        self.done_at
            .map(|t| t.saturating_duration_since(start).as_secs_f64())
    }
}

/// Judges `run`, one wave of jobs, against `shape` and builds the report.
pub fn judge(shape: &Shape, run: RunRecord) -> Report {
    let mut tally = Tally::new(1, Arrival::default());
    tally.judge_wave(shape, 0, &run.outcomes, run.kill);
    tally.report(shape, run)
}

/// What the waves judged so far add up to: counts, the few job ids worth listing, errors
/// and a histogram of job latencies; nothing that grows with the waves that verified.
#[derive(Debug)]
pub struct Tally {
    /// Waves the run was to have.
    waves: u32,
    arrival: Arrival,
    errors: Vec<String>,
    completed: u32,
    failed_job_ids: Vec<u64>,
    affected_job_ids: Vec<u64>,
    detect_ms: Option<u64>,
    bytes: u64,
    /// Bytes received by each node's consumers.
    bytes_by_node: std::collections::BTreeMap<u32, u64>,
    messages: u64,
    healthy_bytes: u64,
    stalled_peak: u64,
    /// The largest peak of credit outstanding of any consumer.
    held_peak: u64,
    /// Per completed job, µs from its first endpoint opened to its last consumer ended.
    latency_us: Histogram<u64>,
}

impl Tally {
    /// Nothing judged yet, of a run of `waves` waves whose jobs arrive as `arrival` says.
    pub fn new(waves: u32, arrival: Arrival) -> Tally {
        Tally {
            waves,
            arrival,
            errors: Vec::new(),
            completed: 0,
            failed_job_ids: Vec::new(),
            affected_job_ids: Vec::new(),
            detect_ms: None,
            bytes: 0,
            bytes_by_node: std::collections::BTreeMap::new(),
            messages: 0,
            healthy_bytes: 0,
            stalled_peak: 0,
            held_peak: 0,
            // Three significant digits; it grows to whatever latency comes.
            latency_us: Histogram::new(3).expect("3 significant digits are within 0..=5"),
        }
    }

    /// Judges wave `wave` by the `outcomes` of its endpoints (those that reported); true if
    /// it brought no error.
    pub fn judge_wave(
        &mut self,
        shape: &Shape,
        wave: u32,
        outcomes: &[EndpointOutcome],
        kill: Option<Kill>,
    ) -> bool {
        let errors_before = self.errors.len();
        let by_endpoint: HashMap<EndpointKey, &EndpointOutcome> =
            outcomes.iter().map(|o| (o.key(), o)).collect();
        for j in shape.wave_jobs(wave) {
            self.judge_job(shape, j, &by_endpoint, kill);
        }
        for o in outcomes.iter().filter(|o| o.role == Role::Consumer) {
            self.bytes += o.bytes;
            *self.bytes_by_node.entry(o.node).or_insert(0) += o.bytes;
            self.messages += o.messages;
            self.held_peak = self.held_peak.max(o.peak_buffered);
            if o.peak_buffered > shape.credit_pool() {
                self.errors.push(format!(
                    "job {}: consumer {}/{} held {} bytes of credit at its peak, more than its pool of {}",
                    Shape::job_id(o.job).0,
                    o.node,
                    o.slot,
                    o.peak_buffered,
                    shape.credit_pool()
                ));
            }
            if o.stalled {
                self.stalled_peak = self.stalled_peak.max(o.peak_buffered);
            } else {
                self.healthy_bytes += o.bytes;
            }
        }
        self.errors.len() == errors_before
    }

    /// Judges job `j` by its endpoints' outcomes.
    fn judge_job(
        &mut self,
        shape: &Shape,
        j: u32,
        by_endpoint: &HashMap<EndpointKey, &EndpointOutcome>,
        kill: Option<Kill>,
    ) {
        let id = Shape::job_id(j).0;
        let killed = kill.filter(|k| k.what.affects(shape, j));
        if killed.is_some() {
            self.affected_job_ids.push(id);
        }
        let mut problems = Vec::new();
        let mut unexpected = Vec::new();
        let mut span = JobSpan::default();
        for e in shape.job_endpoints(j) {
            let name = format!("job {id}: {:?} {}/{}", e.role, e.node, e.slot).to_lowercase();
            let outcome = by_endpoint.get(&e);
            match (outcome, outcome.and_then(|o| o.error.as_ref())) {
                (None, _) => problems.push(format!("{name} never finished")),
                (Some(_), Some(e)) => problems.push(e.message.clone()),
                (Some(o), None) => {
                    span.add(o);
                    if e.role == Role::Consumer && o.bytes != shape.bytes_per_consumer() {
                        problems.push(format!(
                            "{name} received {} bytes, expected {}",
                            o.bytes,
                            shape.bytes_per_consumer()
                        ));
                    }
                }
            }
            let Some(kill) = killed.filter(|k| k.what.survives(&e)) else {
                continue;
            };
            // An endpoint of an affected job that outlived the kill must fail, for it.
            let what = kill.what.describe();
            match outcome.map(|o| &o.error) {
                None => unexpected.push(format!("{name} hung after {what} was killed")),
                Some(None) => unexpected.push(format!(
                    "{name} ended without an error though {what} was killed"
                )),
                Some(Some(error)) => {
                    let after = error.at_ms.saturating_sub(kill.at_ms);
                    self.detect_ms = Some(self.detect_ms.map_or(after, |d| d.max(after)));
                    unexpected.extend(kill.what.unexplained(&e, error));
                }
            }
        }
        if problems.is_empty() {
            self.completed += 1;
            if let Some(us) = span.latency_us() {
                // Fails only beyond what the histogram can grow to: then it is left out.
                let _ = self.latency_us.record(us);
            }
            if let Some(kill) = killed {
                self.errors.push(format!(
                    "job {id} lost {} but completed: the kill came too late",
                    kill.what.describe()
                ));
            }
            return;
        }
        self.failed_job_ids.push(id);
        if killed.is_none() {
            unexpected = problems;
        }
        let more = unexpected.len().saturating_sub(MAX_ERRORS_PER_JOB);
        self.errors
            .extend(unexpected.into_iter().take(MAX_ERRORS_PER_JOB));
        if more > 0 {
            self.errors.push(format!("job {id}: {more} more errors"));
        }
    }

    /// The report of the waves judged, with what the run gathered besides.
    pub fn report(self, shape: &Shape, mut run: RunRecord) -> Report {
        let mut errors = std::mem::take(&mut run.errors);
        errors.extend(self.errors);
        let elapsed = run.elapsed_s;
        let healthy_elapsed = run.healthy_elapsed_s.unwrap_or(elapsed);
        let mut resume_ms: Vec<f64> = run
            .resume_times
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        resume_ms.sort_by(f64::total_cmp);
        let latency_ms = |q: f64| {
            (!self.latency_us.is_empty())
                .then(|| self.latency_us.value_at_quantile(q) as f64 / 1000.0)
        };
        Report {
            verified: errors.is_empty(),
            errors,
            shape: ShapeFields::of(shape),
            message_size: u64::from(shape.plan().message_size()),
            consume_mode: shape.consume(),
            interleaved_throughput_bytes_per_s: None,
            ratio_vs_interleaved: None,
            arrival_order: self.arrival.order,
            seed: self.arrival.seed,
            waves: self.waves,
            jobs_total: u64::from(self.waves) * u64::from(shape.jobs()),
            bytes_total: self.bytes,
            messages_total: self.messages,
            elapsed_s: elapsed,
            throughput_bytes_per_s: self.bytes as f64 / elapsed,
            node_received_bytes_per_s_min: self
                .bytes_by_node
                .values()
                .min()
                .map(|b| *b as f64 / elapsed),
            // Every channel of a job carries the same bytes, and a node's own producers
            // are 1/nodes_per_job of a job's: the rest came over the network.
            node_network_received_bytes_per_s_min: self.bytes_by_node.values().min().map(|b| {
                let remote =
                    f64::from(shape.nodes_per_job() - 1) / f64::from(shape.nodes_per_job());
                *b as f64 * remote / elapsed
            }),
            messages_per_s: self.messages as f64 / elapsed,
            job_latency_ms_p50: latency_ms(0.5),
            job_latency_ms_p99: latency_ms(0.99),
            rss_growth_bytes_per_job: run.rss_growth_bytes_per_job,
            links_per_node_max: run.links_per_node_max,
            naive_connections_per_node: shape.naive_connections_per_node(),
            stalled_consumers: shape.stall_consumers(),
            healthy_throughput_bytes_per_s: self.healthy_bytes as f64 / healthy_elapsed,
            healthy_elapsed_s: healthy_elapsed,
            stalled_buffered_bytes_max: self.stalled_peak,
            consumer_held_bytes_max: self.held_peak,
            credit_pool_bytes: shape.credit_pool(),
            rss_peak_bytes: run
                .rss_peak_bytes_per_process
                .iter()
                .flatten()
                .copied()
                .max()
                .unwrap_or(0),
            rss_peak_bytes_per_process: run.rss_peak_bytes_per_process,
            processes: run.processes,
            jobs_completed: self.completed,
            jobs_failed: u32::try_from(self.failed_job_ids.len()).unwrap_or(u32::MAX),
            failed_job_ids: self.failed_job_ids,
            affected_job_ids: self.affected_job_ids,
            killed_node: run.kill.and_then(|k| k.what.node()),
            killed_endpoint: run.kill.and_then(|k| match k.what {
                Killed::Endpoint { index, endpoint } => Some(KilledEndpoint {
                    index,
                    job: Shape::job_id(endpoint.job).0,
                    node: endpoint.node,
                    role: endpoint.role,
                    slot: endpoint.slot,
                }),
                Killed::Node { .. } => None,
            }),
            agents: run.agents,
            endpoint_processes: run.endpoint_processes,
            failure_detect_ms_max: run.kill.and(self.detect_ms),
            link_kills: run.link_kills,
            impostor_attempts: run.impostor.map(|a| a.tried),
            impostor_refused: run.impostor.map(|a| a.refused),
            link_resumes: resume_ms.len(),
            resume_ms_p50: percentile(&resume_ms, 50),
            resume_ms_p99: percentile(&resume_ms, 99),
            memory_budget_bytes: shape.memory_budget(),
            peak_buffered_bytes: run.peak_buffered_bytes,
            admission_wait_ms_max: run.admission_wait.as_secs_f64() * 1000.0,
            baselines: Vec::new(),
            comparisons: BTreeMap::new(),
            timeline: run.timeline,
        }
    }
}

/// When a job's endpoints opened and ended, over every node.
#[derive(Debug, Default)]
struct JobSpan {
    first_opened_us: Option<u64>,
    last_consumer_ended_us: Option<u64>,
}

impl JobSpan {
    fn add(&mut self, o: &EndpointOutcome) {
        if let Some(opened) = o.opened_us {
            self.first_opened_us = Some(self.first_opened_us.map_or(opened, |t| t.min(opened)));
        }
        if o.role == Role::Consumer {
            let ended = o.ended_us;
            self.last_consumer_ended_us =
                Some(self.last_consumer_ended_us.map_or(ended, |t| t.max(ended)));
        }
    }

    /// From the first endpoint opened to the last consumer ended, in µs, if both are known.
    fn latency_us(&self) -> Option<u64> {
        Some(
            self.last_consumer_ended_us?
                .saturating_sub(self.first_opened_us?),
        )
    }
}

/// The nearest-rank `p`-th percentile of sorted `values`, `None` if there are none.
fn percentile(sorted: &[f64], p: usize) -> Option<f64> {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::roles::EndpointError;
    use super::super::shape::ShapeSpec;
    use super::*;

    /// A one-second run of these outcomes, with `kill` if any.
    fn run_record(outcomes: Vec<EndpointOutcome>, kill: Option<Kill>) -> RunRecord {
        RunRecord {
            outcomes,
            elapsed_s: 1.0,
            kill,
            ..RunRecord::default()
        }
    }

    fn shape() -> Shape {
        Shape::new(ShapeSpec {
            nodes: 4,
            producers: 1,
            consumers: 1,
            jobs: 2,
            nodes_per_job: Some(2),
            bytes_per_producer: 4096,
            message_size: 1024,
            credit_pool: 1 << 16,
            stall_consumers: 0,
            first_ip: Ipv4Addr::new(127, 0, 0, 1),
            memory_budget: None,
            secret_file: None,
            tls_dir: None,
            transport: Default::default(),
            job_base: 0,
            consume: Default::default(),
        })
        .expect("valid shape")
    }

    fn ok(shape: &Shape, j: u32, role: Role, node: u32) -> EndpointOutcome {
        EndpointOutcome {
            job: j,
            node,
            role,
            slot: 0,
            stalled: false,
            bytes: if role == Role::Consumer {
                shape.bytes_per_consumer()
            } else {
                0
            },
            messages: 1,
            peak_buffered: 0,
            error: None,
            opened_us: Some(1_000 + u64::from(node)),
            ended_us: 5_000 + 10 * u64::from(node),
        }
    }

    fn failed(j: u32, role: Role, node: u32, names: u32, at_ms: u64) -> EndpointOutcome {
        EndpointOutcome {
            error: Some(EndpointError {
                message: format!("link to node {names} failed"),
                at_ms,
                names_node: Some(names),
                names_endpoint: None,
                agent_lost: false,
            }),
            ..ok(&shape(), j, role, node)
        }
    }

    fn all_ok(shape: &Shape) -> Vec<EndpointOutcome> {
        let mut out = Vec::new();
        for j in 0..2 {
            for e in shape.job_endpoints(j) {
                out.push(ok(shape, j, e.role, e.node));
            }
        }
        out
    }

    #[test]
    fn a_clean_run_verifies() {
        let s = shape();
        let r = judge(
            &s,
            RunRecord {
                outcomes: all_ok(&s),
                elapsed_s: 1.0,
                ..RunRecord::default()
            },
        );
        assert!(r.verified, "{:?}", r.errors);
        assert_eq!((r.jobs_completed, r.jobs_failed), (2, 0));
        assert_eq!(r.failure_detect_ms_max, None);
    }

    #[test]
    fn a_consumer_holding_more_than_its_pool_fails_the_run() {
        let s = shape();
        let pool = s.credit_pool();
        let mut outcomes = all_ok(&s);
        let consumer = |o: &EndpointOutcome| o.role == Role::Consumer;
        for (i, o) in outcomes.iter_mut().filter(|o| consumer(o)).enumerate() {
            o.peak_buffered = pool - i as u64;
        }
        let run = |outcomes| run_record(outcomes, None);
        let r = judge(&s, run(outcomes.clone()));
        assert!(r.verified, "{:?}", r.errors);
        assert_eq!(r.consumer_held_bytes_max, pool);
        if let Some(o) = outcomes.iter_mut().rfind(|o| consumer(o)) {
            o.peak_buffered = pool + 1;
        }
        let r = judge(&s, run(outcomes));
        assert!(!r.verified);
        assert_eq!(r.consumer_held_bytes_max, pool + 1);
        assert!(r.errors[0].contains("more than its pool"), "{:?}", r.errors);
    }

    #[test]
    fn a_killed_node_fails_exactly_its_jobs() {
        let s = shape();
        // Job 0 uses nodes 0 and 1; node 1 dies at t = 1000.
        let mut outcomes: Vec<_> = all_ok(&s).into_iter().filter(|o| o.job == 1).collect();
        outcomes.push(failed(0, Role::Producer, 0, 1, 1040));
        outcomes.push(failed(0, Role::Consumer, 0, 1, 1075));
        let kill = Some(Kill {
            what: Killed::Node {
                node: 1,
                endpoints_survive: false,
            },
            at_ms: 1000,
        });
        let run = |outcomes| run_record(outcomes, kill);
        let r = judge(&s, run(outcomes.clone()));
        assert!(r.verified, "{:?}", r.errors);
        assert_eq!(r.failed_job_ids, [1]);
        assert_eq!(r.affected_job_ids, [1]);
        assert_eq!(r.failure_detect_ms_max, Some(75));
        // A surviving endpoint that blames someone else, or hangs, is an error.
        outcomes.pop();
        let r = judge(&s, run(outcomes.clone()));
        assert!(!r.verified);
        assert!(r.errors[0].contains("never finished") || r.errors[0].contains("hung"));
        outcomes.push(failed(0, Role::Consumer, 0, 0, 1075));
        let r = judge(&s, run(outcomes));
        assert!(!r.verified);
        assert!(r.errors[0].contains("does not name"), "{:?}", r.errors);
    }

    /// The outcome of `e` failing at `at_ms` with an error naming endpoint `names` (node,
    /// slot), if any.
    fn failed_naming(e: &EndpointKey, names: Option<(u32, u32)>, at_ms: u64) -> EndpointOutcome {
        EndpointOutcome {
            error: Some(EndpointError {
                message: format!("{} failed", e.describe()),
                at_ms,
                names_node: names.map(|n| n.0),
                names_endpoint: names,
                agent_lost: false,
            }),
            ..ok(&shape(), e.job, e.role, e.node)
        }
    }

    #[test]
    fn a_killed_endpoint_fails_its_job_whose_other_role_names_it() {
        let s = shape();
        // Job 0: producers 0/0 and 1/0, consumers 0/0 and 1/0; consumer 1/0 dies at 1000.
        let killed = EndpointKey {
            job: 0,
            role: Role::Consumer,
            node: 1,
            slot: 0,
        };
        let what = Killed::Endpoint {
            index: 3,
            endpoint: killed,
        };
        assert_eq!(s.endpoints()[3], killed);
        let kill = Some(Kill { what, at_ms: 1000 });
        let others = |s: &Shape| -> Vec<EndpointKey> {
            s.job_endpoints(0)
                .into_iter()
                .filter(|e| *e != killed)
                .collect()
        };
        let mut outcomes: Vec<_> = all_ok(&s).into_iter().filter(|o| o.job == 1).collect();
        for e in others(&s) {
            // Producers see the killed consumer cancel; the other consumer sees a producer
            // give up in turn.
            let names = match e.role {
                Role::Producer => (killed.node, killed.slot),
                Role::Consumer => (0, 0),
            };
            outcomes.push(failed_naming(&e, Some(names), 1200));
        }
        let run = |outcomes| run_record(outcomes, kill);
        let r = judge(&s, run(outcomes.clone()));
        assert!(r.verified, "{:?}", r.errors);
        assert_eq!(r.failed_job_ids, [1]);
        assert_eq!(r.affected_job_ids, [1]);
        assert_eq!(r.killed_node, None);
        let k = r.killed_endpoint.expect("the killed endpoint");
        assert_eq!(
            (k.index, k.job, k.node, k.role, k.slot),
            (3, 1, 1, Role::Consumer, 0)
        );
        assert_eq!(r.failure_detect_ms_max, Some(200));
        // A producer whose error names another consumer is not explained by the kill.
        let mut blamed = outcomes.clone();
        if let Some(o) = blamed
            .iter_mut()
            .find(|o| o.job == 0 && o.role == Role::Producer)
        {
            *o = failed_naming(&o.key(), Some((0, 0)), 1200);
        }
        let r = judge(&s, run(blamed));
        assert!(!r.verified);
        assert!(
            r.errors[0].contains("does not name the killed consumer 1/0"),
            "{:?}",
            r.errors
        );
        // A survivor that never reports hangs the job.
        outcomes.retain(|o| !(o.job == 0 && o.role == Role::Consumer));
        let r = judge(&s, run(outcomes));
        assert!(!r.verified);
        assert!(
            r.errors.iter().any(|e| e.contains("hung")),
            "{:?}",
            r.errors
        );
    }

    #[test]
    fn a_killed_agent_leaves_its_endpoints_to_fail_too() {
        let s = shape();
        let what = Killed::Node {
            node: 1,
            endpoints_survive: true,
        };
        let kill = Some(Kill { what, at_ms: 1000 });
        let mut outcomes: Vec<_> = all_ok(&s).into_iter().filter(|o| o.job == 1).collect();
        outcomes.push(failed(0, Role::Producer, 0, 1, 1040));
        outcomes.push(failed(0, Role::Consumer, 0, 1, 1050));
        let run = |outcomes| run_record(outcomes, kill);
        // The endpoints attached to node 1's agent live on: they must report too.
        let r = judge(&s, run(outcomes.clone()));
        assert!(!r.verified);
        assert!(
            r.errors.iter().any(|e| e.contains("hung")),
            "{:?}",
            r.errors
        );
        outcomes.push(failed(0, Role::Producer, 1, 1, 1010));
        outcomes.push(failed(0, Role::Consumer, 1, 1, 1020));
        let r = judge(&s, run(outcomes));
        assert!(r.verified, "{:?}", r.errors);
        assert_eq!(r.killed_node, Some(1));
        assert_eq!(r.failure_detect_ms_max, Some(50));
    }

    #[test]
    fn waves_are_judged_apart_and_add_up() {
        let s = shape();
        let mut tally = Tally::new(2, Arrival::default());
        assert!(tally.judge_wave(&s, 0, &all_ok(&s), None));
        // Wave 1 runs jobs 2 and 3 (ids 3 and 4) on the nodes of jobs 0 and 1.
        let mut second: Vec<_> = all_ok(&s)
            .into_iter()
            .map(|o| EndpointOutcome {
                job: o.job + 2,
                ..o
            })
            .collect();
        second.retain(|o| !(o.job == 3 && o.role == Role::Consumer));
        assert!(!tally.judge_wave(&s, 1, &second, None));
        let r = tally.report(
            &s,
            RunRecord {
                elapsed_s: 1.0,
                ..RunRecord::default()
            },
        );
        assert!(!r.verified);
        assert_eq!((r.waves, r.jobs_total), (2, 4));
        assert_eq!((r.jobs_completed, r.jobs_failed), (3, 1));
        assert_eq!(r.failed_job_ids, [4]);
        assert!(r.errors[0].starts_with("job 4: consumer"), "{:?}", r.errors);
        // Job 0 (nodes 0 and 1): first opened at 1000 µs, last consumer ended at 5010.
        let p50 = r.job_latency_ms_p50.expect("latencies");
        assert!((p50 - 4.01).abs() < 0.01, "p50 {p50}");
        assert!(r.job_latency_ms_p99 >= r.job_latency_ms_p50);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50), Some(50.0));
        assert_eq!(percentile(&v, 99), Some(99.0));
        assert_eq!(percentile(&[3.0], 99), Some(3.0));
        assert_eq!(percentile(&[], 50), None);
    }
}
