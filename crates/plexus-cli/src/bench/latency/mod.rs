//! `--latency RATE`: one-way latency of 128-byte messages at a fixed offered rate
//! (messages per second over the whole run), on the bench's shape, every node in this
//! process: for plexus (producers use `Producer::send`, which waits only for credit) and,
//! with `--baseline raw-tcp`, for raw-tcp, each on a runtime of its own.
//!
//! The rate and `--latency-secs` give each channel `max(1, ⌊rate·secs / channels⌋)`
//! messages; producers share the rate evenly and start 200 ms after the endpoints are
//! opened, so that opening them is not measured ([`roles`] has the schedule and the
//! stamps).
//!
//! With `--agent`, the plexus run's endpoints attach (`Node::attach`, one connection per
//! endpoint) over real Unix sockets to the nodes of this process, which serve them
//! (`Node::serve_local`); the same schedule then runs with the endpoints opened on the
//! nodes themselves, reported as the baseline `embedded`, with
//! `latency_p99_ratio_vs_embedded`. That measures the attach hop within one process (the
//! socket, the framing, the node's serving of attached endpoints), not separate processes.
//! With `--cluster DIR`, the endpoints attach from this process to the agents of the
//! cluster configured in DIR (other network namespaces, real links) instead. With
//! `--transport quic --baseline tcp`, the same schedule runs again over plexus's TCP links
//! (`latency_p99_ratio_vs_tcp`).
//!
//! With `--latency-load`, the nodes carry one more job on the same nodes while the schedule
//! runs ([`load`]): bulk on every link the latency channels use. The latency jobs keep
//! their own shape (128-byte messages, the schedule's count); the run's shape adds the
//! load's job and its message size, which the nodes are configured for.
//!
//! Invariants: every system runs the same schedule on the same shape; a run verifies only
//! if every scheduled message arrived exactly once, in order, intact; percentiles are
//! `null` when no message arrived; `latency_p99_ratio_vs_raw_tcp` is plexus's p99 divided
//! by raw-tcp's (above 1: plexus is slower), `null` unless both verified; so is
//! `latency_p99_ratio_vs_embedded`, the attached run's p99 divided by the embedded run's.

pub mod load;
pub mod roles;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use plexus::{Endpoint, Membership, Node};
use serde::Serialize;

use super::agents::{Agents, TempDir};
use super::baseline::raw_tcp::RawTcp;
use super::baseline::System;
use super::delivered::Delivered;
use super::host;
use super::monitor::Monitor;
use super::report::ShapeFields;
use super::roles::{wall_us, EndpointOutcome, Role};
use super::shape::Shape;
use super::transport::{self, ConsumeFn, Faults, ProduceFn, Sink, Source, Transport};
use super::verdict::{self, RunRecord};
use super::BenchArgs;
use load::Load;
use roles::{Timing, MESSAGE_LEN};

/// Time between opening the endpoints and the first scheduled message.
const LEAD: Duration = Duration::from_millis(200);

/// What one system's latency run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    /// Messages delivered to consumers.
    pub messages_total: u64,
    /// From the start of the endpoints to the end of the last one.
    pub elapsed_s: f64,
    /// Messages delivered per second, from the first scheduled send to the last arrival.
    pub achieved_rate: f64,
    /// Median one-way latency, in µs.
    pub latency_us_p50: Option<f64>,
    /// 99th percentile, in µs.
    pub latency_us_p99: Option<f64>,
    /// 99.9th percentile, in µs.
    pub latency_us_p999: Option<f64>,
    /// The largest, in µs.
    pub latency_us_max: Option<f64>,
    /// The most any producer sent behind its schedule, in µs.
    pub send_lag_us_max: f64,
    /// Most links any node's address held, from the OS (TCP connections, or the UDP
    /// flows of QUIC links).
    pub links_per_node_max: usize,
    /// With `--latency-load`: bulk bytes the load delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_bytes_total: Option<u64>,
    /// With `--latency-load`: the load's goodput, bytes per second from the schedule's
    /// start to the end of its last consumer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_bytes_per_s: Option<f64>,
}

/// A baseline's latency run.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyResult {
    /// The system.
    pub system: &'static str,
    /// Every scheduled message arrived exactly once, in order, intact.
    pub verified: bool,
    /// Why it did not verify.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What it measured.
    #[serde(flatten)]
    pub figures: Figures,
}

/// The report of `--latency`: the shape, plexus's figures, and the baselines'.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    /// Always `latency`.
    pub mode: &'static str,
    /// plexus and every baseline verified.
    pub verified: bool,
    /// Why not, if not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The run's shape.
    #[serde(flatten)]
    pub shape: ShapeFields,
    /// Size of every message, header included.
    pub message_size: u32,
    /// Messages per second asked for, over the whole run.
    pub offered_rate: f64,
    /// Messages each channel carries.
    pub messages_per_channel: u32,
    /// How long the schedule lasts, in seconds.
    pub schedule_s: f64,
    /// Always `plexus`: the figures at the top level are plexus's.
    pub system: &'static str,
    /// plexus's figures.
    #[serde(flatten)]
    pub figures: Figures,
    /// The same schedule over the `--baseline` systems (raw-tcp).
    pub baselines: Vec<LatencyResult>,
    /// With `--latency-load`: the size of the load's messages (`--message-size`); its
    /// job runs on the same nodes as the latency jobs while the schedule lasts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_message_size: Option<u32>,
    /// plexus's p99 divided by raw-tcp's.
    pub latency_p99_ratio_vs_raw_tcp: Option<f64>,
    /// With `--transport quic --baseline tcp`: plexus's p99 over QUIC divided by its p99
    /// over TCP (with TLS) on the same schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_ratio_vs_tcp: Option<f64>,
    /// With `--cluster`: the endpoints attached from this process to the cluster's agents.
    pub cluster: bool,
    /// With `--agent`: plexus's endpoints attached over Unix sockets to the nodes of this
    /// process (the attach hop within one process), and the `embedded` baseline ran the
    /// same schedule on the nodes themselves.
    pub attached: bool,
    /// With `--agent`: the attached run's p99 divided by the embedded run's.
    pub latency_p99_ratio_vs_embedded: Option<f64>,
    /// plexus's own run verified (for the summary; `verified` covers every system).
    #[serde(skip)]
    pub plexus_verified: bool,
}

/// What every system of one latency invocation runs: the schedule's shape and the run's.
#[derive(Clone)]
struct Schedule {
    /// The latency jobs: 128-byte messages, the schedule's count per channel.
    light: Shape,
    /// What the nodes carry: the latency jobs and, with `--latency-load`, one more job on
    /// the same nodes, the load (`--message-size` messages).
    run: Shape,
    /// Messages per second, over the whole run.
    rate: f64,
    json: bool,
    timeout: Duration,
}

impl Schedule {
    /// With `--latency-load`: the run has the load's job beyond the latency jobs.
    fn has_load(&self) -> bool {
        self.run.jobs() > self.light.jobs()
    }

    /// The same schedule over `transport`.
    fn over(&self, transport: super::shape::LinkTransport) -> Result<Schedule, String> {
        let respec = |shape: &Shape| {
            let mut spec = shape.spec().clone();
            spec.transport = transport;
            Shape::new(spec)
        };
        Ok(Schedule {
            light: respec(&self.light)?,
            run: respec(&self.run)?,
            ..self.clone()
        })
    }
}

/// Runs the latency mode at `rate` messages per second.
pub fn run(args: &BenchArgs, rate: u64) -> Result<LatencyReport, String> {
    let counts = args.shape()?;
    let per_channel = ((rate as f64 * args.latency_secs) / counts.channels() as f64)
        .floor()
        .max(1.0) as u64;
    let consumers_per_job = u64::from(counts.nodes_per_job()) * u64::from(counts.consumers());
    let mut spec = args.spec();
    spec.message_size = u64::from(MESSAGE_LEN);
    spec.bytes_per_producer = per_channel * u64::from(MESSAGE_LEN) * consumers_per_job;
    let light = Shape::new(spec.clone())?;
    let run = if args.latency_load {
        spec.jobs += 1;
        spec.message_size = args.message_size;
        spec.bytes_per_producer = per_channel * args.message_size * consumers_per_job;
        Shape::new(spec)?
    } else {
        light.clone()
    };
    let schedule = Schedule {
        light,
        run,
        rate: rate as f64,
        json: args.json,
        timeout: Duration::from_secs(args.timeout_s),
    };
    let shape = schedule.light.clone();
    let rate = schedule.rate;
    let attach = args.agent && args.cluster.is_none();
    let plexus = match &args.cluster {
        Some(dir) => on_runtime(|| run_on_cluster(&schedule, dir))?,
        None => on_runtime(|| run_plexus(&schedule, attach, "plexus"))?,
    };
    let mut baselines = Vec::new();
    if attach {
        baselines.push(on_runtime(|| run_plexus(&schedule, false, EMBEDDED))?);
    }
    if args.baseline.contains(&System::Tcp) {
        let over_tcp = schedule.over(super::shape::LinkTransport::Tcp)?;
        let system = System::Tcp.name();
        baselines.push(on_runtime(|| run_plexus(&over_tcp, attach, system))?);
    }
    if args.baseline.contains(&System::RawTcp) {
        baselines.push(on_runtime(|| run_raw(&schedule))?);
    }
    let p99 = |r: &LatencyResult| r.figures.latency_us_p99.filter(|_| r.verified);
    let ratio_to = |system: &str| {
        baselines
            .iter()
            .find(|b| b.system == system)
            .and_then(p99)
            .zip(p99(&plexus))
            .filter(|(base, _)| *base > 0.0)
            .map(|(base, plexus)| plexus / base)
    };
    let ratio = ratio_to(System::RawTcp.name());
    let ratio_vs_embedded = ratio_to(EMBEDDED);
    let ratio_vs_tcp = ratio_to(System::Tcp.name());
    let mut errors = plexus.errors.clone();
    for b in &baselines {
        errors.extend(b.errors.iter().map(|e| format!("{}: {e}", b.system)));
    }
    let verified = plexus.verified && baselines.iter().all(|b| b.verified);
    let producers = f64::from(shape.nodes_per_job() * shape.producers() * shape.jobs());
    Ok(LatencyReport {
        mode: "latency",
        verified,
        errors,
        shape: ShapeFields::of(&shape),
        message_size: MESSAGE_LEN,
        offered_rate: rate,
        messages_per_channel: shape.plan().messages(),
        schedule_s: (per_channel * consumers_per_job) as f64 * producers / rate,
        system: "plexus",
        figures: plexus.figures,
        plexus_verified: plexus.verified,
        baselines,
        load_message_size: schedule
            .has_load()
            .then(|| schedule.run.plan().message_size()),
        latency_p99_ratio_vs_raw_tcp: ratio,
        latency_p99_ratio_vs_tcp: ratio_vs_tcp,
        cluster: args.cluster.is_some(),
        attached: attach,
        latency_p99_ratio_vs_embedded: ratio_vs_embedded,
    })
}

/// Runs `f` on a runtime of its own.
fn on_runtime<F, Fut>(f: F) -> Result<LatencyResult, String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = LatencyResult>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    Ok(runtime.block_on(f()))
}

/// The name of the plexus run with its endpoints opened on the nodes themselves, beside
/// an attached run.
const EMBEDDED: &str = "embedded";

/// Runs the schedule over plexus nodes of this process, reported as `system`; with
/// `attach`, every endpoint attaches to its node over a Unix socket the node serves.
async fn run_plexus(schedule: &Schedule, attach: bool, system: &'static str) -> LatencyResult {
    let shape = &schedule.run;
    let membership = Membership::new();
    let mut nodes = Vec::with_capacity(shape.nodes() as usize);
    for i in 0..shape.nodes() {
        match host::start_node(shape, i, &membership).await {
            Ok(node) => nodes.push(node),
            Err(e) => {
                shut_down(&nodes).await;
                return failed(system, e);
            }
        }
    }
    // Removed once the run is over (after the nodes stop).
    let mut dir = None;
    let opening = if attach {
        match serve_sockets(&nodes) {
            Ok((d, sockets)) => {
                dir = Some(d);
                Opening::Attach(sockets)
            }
            Err(e) => {
                shut_down(&nodes).await;
                return failed(system, e);
            }
        }
    } else {
        let mut jobs = HashMap::new();
        for j in 0..shape.jobs() {
            for node in shape.job_nodes(j) {
                let job = nodes[node.0 as usize].job(shape.node_job_id(j), shape.topology(j));
                jobs.insert((j, node.0), job);
            }
        }
        Opening::Embedded(jobs)
    };
    let transport = PlexusTransport {
        opening,
        shape: shape.clone(),
    };
    let (_faults, log) = Faults::new();
    let result = measure(system, transport, schedule, Monitor::own_tables(), log).await;
    shut_down(&nodes).await;
    drop(dir);
    result
}

/// Runs the schedule through the agents of the cluster configured in `dir` (as
/// `scripts/netns-cluster.sh` starts them, in network namespaces of their own): every
/// endpoint of this process attaches to its node's agent.
async fn run_on_cluster(schedule: &Schedule, dir: &std::path::Path) -> LatencyResult {
    let system = "plexus";
    let bound = super::attached::AGENT_START_BOUND.min(schedule.timeout);
    let agents = match Agents::existing(dir, &schedule.run, bound).await {
        Ok(agents) => agents,
        Err(e) => return failed(system, e),
    };
    let sockets = (0..schedule.run.nodes())
        .map(|i| agents.socket(i).to_owned())
        .collect();
    let tables = agents.socket_tables().unwrap_or_default();
    let transport = PlexusTransport {
        opening: Opening::Attach(sockets),
        shape: schedule.run.clone(),
    };
    let (_faults, log) = Faults::new();
    let mut result = measure(system, transport, schedule, tables, log).await;
    let gone = agents.external_gone();
    if !gone.is_empty() {
        result.verified = false;
        result.errors.push(format!(
            "the agents of nodes {gone:?} exited during the run"
        ));
    }
    result
}

/// Has every node serve attaches on a socket of its own, in a new owner-only directory.
fn serve_sockets(nodes: &[Node]) -> Result<(TempDir, Vec<PathBuf>), String> {
    let dir = TempDir::create()?;
    let mut sockets = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let socket = dir.path().join(format!("node{i}.sock"));
        let policy = plexus::AttachPolicy::owner_only()
            .map_err(|e| format!("cannot tell this process's user: {e}"))?;
        node.serve_local(&socket, policy)
            .map_err(|e| format!("node {i} cannot serve {}: {e}", socket.display()))?;
        sockets.push(socket);
    }
    Ok((dir, sockets))
}

async fn shut_down(nodes: &[Node]) {
    for node in nodes {
        node.shutdown().await;
    }
}

async fn run_raw(schedule: &Schedule) -> LatencyResult {
    let deadline = tokio::time::Instant::now() + schedule.timeout;
    let (faults, log) = Faults::new();
    let system = System::RawTcp.name();
    match tokio::time::timeout_at(deadline, RawTcp::open(&schedule.run, &faults)).await {
        Ok(Ok((raw, _))) => measure(system, raw, schedule, Monitor::own_tables(), log).await,
        Ok(Err(e)) => failed(system, e),
        Err(_) => failed(system, "timed out connecting the nodes".into()),
    }
}

/// Runs the schedule (and load) over `transport` and judges it; the links are
/// counted in the socket tables `tables`.
async fn measure<T: Transport>(
    system: &'static str,
    transport: T,
    schedule: &Schedule,
    tables: Vec<PathBuf>,
    mut faults: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> LatencyResult {
    let deadline = tokio::time::Instant::now() + schedule.timeout;
    let shape = &schedule.light;
    let delivered = Arc::new(Delivered::default());
    let monitor = Monitor::start_in(shape, &delivered, schedule.json, tables);
    let start = Instant::now();
    let origin_us = wall_us() + LEAD.as_micros() as u64;
    let timing = match Timing::new(shape.clone(), schedule.rate, start + LEAD, delivered) {
        Ok(timing) => Arc::new(timing),
        Err(e) => return failed(system, e),
    };
    let load = if schedule.has_load() {
        match Load::new(schedule.run.clone(), timing.producers()) {
            Ok(load) => Some(Arc::new(load)),
            Err(e) => return failed(system, e),
        }
    } else {
        None
    };
    let (produce, consume) = with_load(roles::roles(timing.clone()), load.clone());
    let (outcomes, mut errors) =
        transport::drive(transport, &schedule.run, deadline, produce, consume).await;
    let elapsed_s = start.elapsed().as_secs_f64();
    errors.extend(Faults::drain(&mut faults));
    let links_per_node_max = monitor.finish();
    let (light, bulk): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|o| o.job < shape.jobs());
    errors.extend(
        bulk.iter()
            .filter_map(|o| o.error.as_ref().map(|e| e.message.clone())),
    );
    let report = verdict::judge(
        shape,
        RunRecord {
            outcomes: light,
            errors,
            elapsed_s,
            links_per_node_max,
            processes: 1,
            ..RunRecord::default()
        },
    );
    let (latencies, lag_ns, last_arrival_ns) = timing.results();
    let us = |ns: u64| ns as f64 / 1000.0;
    let quantile = |q: f64| {
        latencies
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h: &Histogram<u64>| us(h.value_at_quantile(q)))
    };
    let span_s = last_arrival_ns as f64 / 1e9;
    let load_figures = schedule.has_load().then(|| load_figures(&bulk, origin_us));
    LatencyResult {
        system,
        verified: report.verified,
        errors: report.errors,
        figures: Figures {
            messages_total: report.messages_total,
            elapsed_s,
            achieved_rate: if span_s > 0.0 {
                report.messages_total as f64 / span_s
            } else {
                0.0
            },
            latency_us_p50: quantile(0.5),
            latency_us_p99: quantile(0.99),
            latency_us_p999: quantile(0.999),
            latency_us_max: latencies
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| us(h.max())),
            send_lag_us_max: us(lag_ns),
            links_per_node_max,
            load_bytes_total: load_figures.map(|(bytes, _)| bytes),
            load_bytes_per_s: load_figures.map(|(_, rate)| rate),
        },
    }
}

/// The load's bytes received and its goodput: bytes per second from the schedule's start
/// to the end of its last consumer, from its endpoints' `outcomes`.
fn load_figures(outcomes: &[EndpointOutcome], origin_us: u64) -> (u64, f64) {
    let consumers = outcomes.iter().filter(|o| o.role == Role::Consumer);
    let bytes = consumers.clone().map(|o| o.bytes).sum();
    let end_us = consumers.map(|o| o.ended_us).max().unwrap_or(origin_us);
    let span_s = end_us.saturating_sub(origin_us) as f64 / 1e6;
    let rate = if span_s > 0.0 {
        bytes as f64 / span_s
    } else {
        0.0
    };
    (bytes, rate)
}

/// The latency roles, and with a load its roles for the load's job; every latency
/// producer tells the load when it is through.
fn with_load<S: Sink, R: Source>(
    (light_produce, light_consume): (ProduceFn<S>, ConsumeFn<R>),
    load: Option<Arc<Load>>,
) -> (ProduceFn<S>, ConsumeFn<R>) {
    let Some(load) = load else {
        return (light_produce, light_consume);
    };
    let for_consumers = load.clone();
    let produce: ProduceFn<S> = Arc::new(move |sink, job, me| {
        let load = load.clone();
        if job == load.job() {
            return Box::pin(load.produce(sink, me));
        }
        let light = light_produce(sink, job, me);
        Box::pin(async move {
            let outcome = light.await;
            load.light_finished();
            outcome
        })
    });
    let consume: ConsumeFn<R> = Arc::new(move |source, job, me| {
        if job == for_consumers.job() {
            Box::pin(for_consumers.clone().consume(source, me))
        } else {
            light_consume(source, job, me)
        }
    });
    (produce, consume)
}

fn failed(system: &'static str, error: String) -> LatencyResult {
    LatencyResult {
        system,
        verified: false,
        errors: vec![error],
        figures: Figures::default(),
    }
}

/// How the endpoints of a plexus run open.
enum Opening {
    /// On the nodes' jobs, by (job index, node).
    Embedded(HashMap<(u32, u32), plexus::Job>),
    /// Each attached on its own to its node's socket, by node.
    Attach(Vec<PathBuf>),
}

/// What keeps an attached endpoint's connection and job open.
type Attachment = Option<(plexus::AttachedNode, plexus::Job)>;

/// plexus as a [`Transport`]: the bench's nodes and their jobs.
struct PlexusTransport {
    opening: Opening,
    shape: Shape,
}

impl PlexusTransport {
    /// Opens the job of `job` for endpoint `me`: the node's, or one of a new attach.
    async fn job(&self, job: u32, me: Endpoint) -> Result<(plexus::Job, Attachment), String> {
        match &self.opening {
            Opening::Embedded(jobs) => {
                let handle = jobs.get(&(job, me.node.0)).ok_or("no such job here")?;
                Ok((handle.clone(), None))
            }
            Opening::Attach(sockets) => {
                let socket = sockets.get(me.node.0 as usize).ok_or("no such node here")?;
                let attached = Node::attach(socket)
                    .await
                    .map_err(|e| format!("attaching to node {}: {e}", me.node.0))?;
                let handle = attached.job(self.shape.node_job_id(job), self.shape.topology(job));
                Ok((handle.clone(), Some((attached, handle))))
            }
        }
    }
}

impl Transport for PlexusTransport {
    type Sink = PlexusSink;
    type Source = PlexusSource;

    async fn producer(&self, job: u32, me: Endpoint) -> Result<PlexusSink, String> {
        let (handle, attachment) = self.job(job, me).await?;
        let tx = handle.producer(me.slot).await.map_err(|e| e.to_string())?;
        Ok(PlexusSink {
            tx,
            _attachment: attachment,
        })
    }

    async fn consumer(&self, job: u32, me: Endpoint) -> Result<PlexusSource, String> {
        let (handle, attachment) = self.job(job, me).await?;
        let rx = handle.consumer(me.slot).await.map_err(|e| e.to_string())?;
        Ok(PlexusSource {
            rx,
            shape: self.shape.clone(),
            _attachment: attachment,
        })
    }
}

/// A plexus producer, sending with `Producer::send` (it waits only for credit).
struct PlexusSink {
    tx: plexus::Producer,
    _attachment: Attachment,
}

impl Sink for PlexusSink {
    async fn send(&mut self, to: Endpoint, _to_id: u32, message: Bytes) -> Result<(), String> {
        self.tx.send(to, message).await.map_err(|e| e.to_string())
    }

    async fn finish(self) -> Result<(), String> {
        self.tx.close().await.map_err(|e| e.to_string())
    }
}

/// A plexus consumer, naming producers by their workload id.
struct PlexusSource {
    rx: plexus::Consumer,
    shape: Shape,
    _attachment: Attachment,
}

impl Source for PlexusSource {
    async fn recv(&mut self) -> Option<Result<(u32, Bytes), String>> {
        let item = self.rx.recv().await?;
        Some(
            item.map(|(from, m)| (self.shape.producer_id(from), m))
                .map_err(|e| e.to_string()),
        )
    }
}

impl LatencyReport {
    /// Prints the report: JSON on stdout, or a summary for people.
    pub fn print(&self, json: bool) {
        if json {
            super::report::print_json(self);
            return;
        }
        let verdict = if self.verified { "VERIFIED" } else { "FAILED" };
        println!(
            "plexus bench --latency: {verdict}: {}; {}-byte messages at {:.0}/s for {:.2} s",
            self.shape, self.message_size, self.offered_rate, self.schedule_s
        );
        if self.attached {
            println!(
                "  plexus: every endpoint attached over a Unix socket to its node, in this process (the attach hop within one process); embedded: the same schedule on the nodes themselves"
            );
        }
        for e in &self.errors {
            println!("  error: {e}");
        }
        println!(
            "  {:<8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "system",
            "verified",
            "messages",
            "rate/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "lag µs"
        );
        let row = |system: &str, verified: bool, f: &Figures| {
            let v = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
            println!(
                "  {system:<8} {:>8} {:>9} {:>9.0} {:>9} {:>9} {:>9} {:>9} {:>9.0}",
                if verified { "yes" } else { "NO" },
                f.messages_total,
                f.achieved_rate,
                v(f.latency_us_p50),
                v(f.latency_us_p99),
                v(f.latency_us_p999),
                v(f.latency_us_max),
                f.send_lag_us_max
            );
        };
        row("plexus", self.plexus_verified, &self.figures);
        for b in &self.baselines {
            row(b.system, b.verified, &b.figures);
        }
        if let Some(size) = self.load_message_size {
            let load = |system: &str, f: &Figures| {
                println!(
                    "  load beside {system}: {:.1} MB/s of {size}-byte messages",
                    f.load_bytes_per_s.unwrap_or(0.0) / 1e6
                );
            };
            load("plexus", &self.figures);
            for b in &self.baselines {
                load(b.system, &b.figures);
            }
        }
        if let Some(r) = self.latency_p99_ratio_vs_raw_tcp {
            println!("  p99 plexus ÷ raw-tcp: {r:.2}");
        }
        if let Some(r) = self.latency_p99_ratio_vs_tcp {
            println!("  p99 over QUIC ÷ over TCP: {r:.2}");
        }
        if let Some(r) = self.latency_p99_ratio_vs_embedded {
            println!("  p99 attached ÷ embedded: {r:.2}");
        }
    }
}
