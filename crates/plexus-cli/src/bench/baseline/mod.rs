//! `--baseline`: after the plexus run, the same workload — same shape, same messages, the
//! same verification in every consumer — over other ways of moving data, in this process,
//! so that plexus's figures have something to be compared with:
//!
//! - `raw-tcp` ([`raw_tcp`]): one plain TCP connection per node pair, no credit, no
//!   scheduler: the upper bound a multiplexer can approach;
//! - `naive-tcp` ([`naive_tcp`]): one TCP connection per channel, what users do today;
//!   skipped, with a note, when its connections would not fit under the process's
//!   descriptor limit ([`super::fds`]);
//! - `grpc` ([`grpc`]): gRPC streams (tonic) over one HTTP/2 connection per node pair, a
//!   streaming call per channel, with HTTP/2's default windows or `--grpc-window`;
//! - `zmq` (`zmq`, only with the cargo feature `zmq`): ZeroMQ used the ordinary way, a
//!   PULL socket per consumer and a PUSH socket per channel;
//! - `rabbitmq` (`rabbitmq`, only with the cargo feature `rabbitmq`): a RabbitMQ broker on
//!   loopback (`--amqp-url`, checked by [`amqp_url`]), a connection per node, a queue per
//!   consumer; skipped, with a note, when no broker answers;
//! - `embedded` (with `--agent` only): plexus itself embedded, one node per OS process, as
//!   `--spawn` runs it ([`super::spawn`]), to see what going through the agents costs;
//! - `plaintext` (with `--tls` only): plexus in the same mode with its links in plain TCP,
//!   to see what TLS costs.
//!
//! Each system runs on a fresh runtime with every node on its own loopback address (in
//! this process, or for `embedded` in node processes), its links counted from the OS
//! socket table like plexus's, and is judged by the same [`verdict`] as plexus. It faces
//! the same faults as the plexus run: the same stalled consumers (`--stall-consumers`),
//! and links killed from outside at the same period (`--chaos-link-kill-ms`); how it came
//! through is its [`Outcome`], from what its consumers saw.
//!
//! Invariants: a system runs at most once per bench run, in the order asked; a skipped
//! system is reported with its reason and no figures, and counts neither for nor against
//! the run; on the plain workload a system that ran and did not verify fails the run (its
//! errors are listed, prefixed with its name), while under faults its outcome is a result,
//! reported and not held against the run; `ratio_vs_<system>` and
//! `msgs_ratio_vs_<system>` are plexus's figure divided by the system's, and `null`
//! unless both ran and verified.

pub mod amqp_url;
mod grpc;
mod naive_tcp;
mod outbox;
mod outcome;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
pub mod raw_tcp;
mod roles;
#[cfg(feature = "zmq")]
mod zmq;

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::{timeout_at, Instant};

use super::chaos::Chaos;
use super::delivered::Delivered;
use super::fds;
use super::monitor::Monitor;
use super::report::Report;
use super::shape::Shape;
use super::transport::{self, Faults, Transport};
use super::verdict::{self, RunRecord};
use super::BenchArgs;
use naive_tcp::NaiveTcp;
pub use outcome::{Fates, Outcome};
use raw_tcp::RawTcp;
use roles::RunState;

/// A system the workload can also run over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// One plain TCP connection per node pair.
    RawTcp,
    /// One TCP connection per channel.
    NaiveTcp,
    /// gRPC streams over one HTTP/2 connection per node pair.
    Grpc,
    /// ZeroMQ PUSH/PULL sockets (needs the `zmq` feature).
    Zmq,
    /// A RabbitMQ broker at `--amqp-url` (needs the `rabbitmq` feature).
    Rabbitmq,
    /// plexus embedded, one node per process, as `--spawn` runs it (with `--agent` only).
    Embedded,
    /// plexus in the same mode without TLS (with `--tls` only).
    Plaintext,
    /// plexus in the same mode over TCP with TLS (with `--transport quic` only).
    Tcp,
}

impl System {
    /// The system's name, as `--baseline` spells it.
    pub fn name(self) -> &'static str {
        match self {
            System::RawTcp => "raw-tcp",
            System::NaiveTcp => "naive-tcp",
            System::Grpc => "grpc",
            System::Zmq => "zmq",
            System::Rabbitmq => "rabbitmq",
            System::Embedded => "embedded",
            System::Plaintext => "plaintext",
            System::Tcp => "tcp",
        }
    }

    /// The system's name in JSON field names (`ratio_vs_raw_tcp`).
    pub fn key(self) -> &'static str {
        match self {
            System::RawTcp => "raw_tcp",
            System::NaiveTcp => "naive_tcp",
            System::Grpc => "grpc",
            System::Zmq => "zmq",
            System::Rabbitmq => "rabbitmq",
            System::Embedded => "embedded",
            System::Plaintext => "plaintext",
            System::Tcp => "tcp",
        }
    }
}

/// Checks that this build can run every system in `systems`, and that the broker at
/// `amqp_url` is one the `rabbitmq` system may use.
pub fn check(systems: &[System], amqp_url: &str) -> Result<(), String> {
    if systems.contains(&System::Zmq) && !cfg!(feature = "zmq") {
        return Err(
            "--baseline zmq: this plexus was built without ZeroMQ; build it with \
             `cargo build --release -p plexus-cli --features zmq` (libzmq is compiled from source)"
                .into(),
        );
    }
    if systems.contains(&System::Rabbitmq) {
        if !cfg!(feature = "rabbitmq") {
            return Err(
                "--baseline rabbitmq: this plexus was built without the AMQP client; build it \
                 with `cargo build --release -p plexus-cli --features rabbitmq` (the broker: \
                 scripts/rabbitmq.sh start)"
                    .into(),
            );
        }
        amqp_url::check(amqp_url)?;
    }
    Ok(())
}

/// How the workload went over one system.
#[derive(Clone, Debug, Serialize)]
pub struct BaselineResult {
    /// The system (`raw-tcp`, `naive-tcp`, `zmq`, `rabbitmq`).
    pub system: &'static str,
    /// The system did not run (see `note`).
    pub skipped: bool,
    /// Why it was skipped, or how it connects.
    pub note: Option<String>,
    /// Every consumer got every message of every producer exactly once, in order, intact.
    pub verified: bool,
    /// Why it did not verify, if it ran and did not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// From the start of the endpoints to the end of the last one (`null` if skipped).
    pub elapsed_s: Option<f64>,
    /// Payload bytes delivered to consumers.
    pub bytes_total: u64,
    /// Messages delivered to consumers.
    pub messages_total: u64,
    /// `bytes_total / elapsed_s`.
    pub throughput_bytes_per_s: Option<f64>,
    /// `messages_total / elapsed_s`.
    pub messages_per_s: Option<f64>,
    /// Most established TCP connections any node's address held, from /proc/net/tcp.
    pub links_per_node_max: usize,
    /// TCP connections the system opened between endpoints or nodes (or to the broker).
    pub connections: u64,
    /// How the run ended (`null` if skipped).
    pub outcome: Option<Outcome>,
    /// Consumers that read nothing until every other consumer was done.
    pub stalled_consumers: u32,
    /// With stalled consumers: what the others got, per second, until the last of them
    /// was done.
    pub healthy_throughput_bytes_per_s: Option<f64>,
    /// With stalled consumers: the most bytes sent to a stalled consumer and not yet read
    /// by it, wherever the system held them (queues, HTTP/2 or kernel buffers, a broker).
    pub stalled_buffered_bytes_max: u64,
    /// Links killed from outside while it ran.
    pub link_kills: u64,
}

impl BaselineResult {
    /// A system that did not run, and why.
    pub fn skipped(system: System, note: String) -> BaselineResult {
        BaselineResult {
            system: system.name(),
            skipped: true,
            note: Some(note),
            verified: false,
            errors: Vec::new(),
            elapsed_s: None,
            bytes_total: 0,
            messages_total: 0,
            throughput_bytes_per_s: None,
            messages_per_s: None,
            links_per_node_max: 0,
            connections: 0,
            outcome: None,
            stalled_consumers: 0,
            healthy_throughput_bytes_per_s: None,
            stalled_buffered_bytes_max: 0,
            link_kills: 0,
        }
    }

    /// A system that ran, as its run was judged, with what its consumers saw.
    pub fn judged(system: System, shape: &Shape, measured: Measured, connections: u64) -> Self {
        let report = verdict::judge(shape, measured.record);
        BaselineResult {
            stalled_buffered_bytes_max: measured.stalled_buffered_max,
            ..Self::reported(system, report, measured.fates, connections)
        }
    }

    /// A system that ran, as its `report` says, with what its consumers saw.
    fn reported(system: System, report: Report, fates: Fates, connections: u64) -> Self {
        let stalled = report.stalled_consumers > 0;
        BaselineResult {
            outcome: Some(Outcome::of(report.verified, fates)),
            stalled_consumers: report.stalled_consumers,
            healthy_throughput_bytes_per_s: stalled
                .then_some(report.healthy_throughput_bytes_per_s),
            stalled_buffered_bytes_max: report.stalled_buffered_bytes_max,
            link_kills: report.link_kills,
            system: system.name(),
            skipped: false,
            note: Some(how_it_connects(system).to_string()),
            verified: report.verified,
            errors: report.errors,
            elapsed_s: Some(report.elapsed_s),
            bytes_total: report.bytes_total,
            messages_total: report.messages_total,
            throughput_bytes_per_s: Some(report.throughput_bytes_per_s),
            messages_per_s: Some(report.messages_per_s),
            links_per_node_max: report.links_per_node_max,
            connections,
        }
    }

    /// Whether this result should fail the run: it ran the plain workload and did not
    /// verify (under faults, not verifying is a result).
    fn fails_run(&self, under_faults: bool) -> bool {
        !self.skipped && !self.verified && !under_faults
    }
}

fn how_it_connects(system: System) -> &'static str {
    match system {
        System::RawTcp => "one connection per node pair, made before the clock starts",
        System::NaiveTcp => "one connection per channel, made after the clock starts",
        System::Grpc => {
            "one HTTP/2 connection per node pair, made before the clock starts; a streaming call per channel"
        }
        System::Zmq => "a PUSH socket per channel to each consumer's PULL socket",
        System::Rabbitmq => {
            "one broker connection per node, a channel per endpoint, a queue per consumer"
        }
        System::Embedded => {
            "plexus embedded, one node per process (as --spawn runs it): one link per node pair"
        }
        System::Plaintext => "plexus in the same mode, its links without TLS",
        System::Tcp => "plexus in the same mode, its links over TCP with TLS 1.3",
    }
}

/// Runs every system `args.baseline` asks for, after the plexus run of `report`, and adds
/// their results and plexus's ratios to it.
pub fn run_all(shape: &Shape, args: &BenchArgs, report: &mut Report) {
    let under_faults = shape.stall_consumers() > 0 || args.chaos_link_kill_ms.is_some();
    let mut done: Vec<System> = Vec::new();
    for &system in &args.baseline {
        if done.contains(&system) {
            continue;
        }
        done.push(system);
        let result = run(system, shape, args);
        let ran = !result.skipped && result.verified;
        let ratio =
            |plexus: f64, other: Option<f64>| other.filter(|v| ran && *v > 0.0).map(|v| plexus / v);
        report.comparisons.insert(
            format!("ratio_vs_{}", system.key()),
            ratio(report.throughput_bytes_per_s, result.throughput_bytes_per_s),
        );
        report.comparisons.insert(
            format!("msgs_ratio_vs_{}", system.key()),
            ratio(report.messages_per_s, result.messages_per_s),
        );
        if result.fails_run(under_faults) {
            report.verified = false;
            if result.errors.is_empty() {
                report
                    .errors
                    .push(format!("{}: did not verify", system.name()));
            }
            let named = result
                .errors
                .iter()
                .map(|e| format!("{}: {e}", system.name()));
            report.errors.extend(named);
        }
        report.baselines.push(result);
    }
}

/// What a system's run faces besides the workload of its shape (which says which
/// consumers stall).
#[derive(Clone, Copy, Debug)]
pub struct Conditions {
    /// Print nothing but the final JSON.
    pub json: bool,
    /// Give up after this long.
    pub timeout: Duration,
    /// Kill a random live link between nodes this often.
    pub chaos: Option<Duration>,
    /// The HTTP/2 windows of the `grpc` system.
    pub grpc_windows: grpc::Windows,
}

impl Conditions {
    /// The conditions `args` ask for.
    pub fn of(args: &BenchArgs) -> Conditions {
        Conditions {
            json: args.json,
            timeout: Duration::from_secs(args.timeout_s),
            chaos: args.chaos_link_kill_ms.map(Duration::from_millis),
            grpc_windows: grpc::Windows(args.grpc_window),
        }
    }
}

/// Runs the workload of `shape` over `system`.
pub fn run(system: System, shape: &Shape, args: &BenchArgs) -> BaselineResult {
    let conditions = Conditions::of(args);
    match system {
        System::RawTcp => on_runtime(system, run_raw(shape, conditions)),
        System::NaiveTcp => match fds::too_many(shape.channels(), 2, fds::soft_limit()) {
            Some(note) => BaselineResult::skipped(system, note),
            None => on_runtime(system, run_naive(shape, conditions)),
        },
        System::Grpc => on_runtime(system, run_grpc(shape, conditions)),
        #[cfg(feature = "zmq")]
        System::Zmq => zmq::run(shape, conditions),
        #[cfg(not(feature = "zmq"))]
        System::Zmq => BaselineResult::skipped(system, "built without the zmq feature".into()),
        #[cfg(feature = "rabbitmq")]
        System::Rabbitmq => rabbitmq::run(shape, &args.amqp_url, conditions),
        #[cfg(not(feature = "rabbitmq"))]
        System::Rabbitmq => {
            BaselineResult::skipped(system, "built without the rabbitmq feature".into())
        }
        System::Embedded => run_embedded(shape, args),
        System::Plaintext => run_plaintext(args),
        System::Tcp => run_over_tcp(args),
    }
}

/// The same plexus run, in the same mode, with its links in plain TCP.
fn run_plaintext(args: &BenchArgs) -> BaselineResult {
    let plain = BenchArgs {
        tls: false,
        tls_dir: None,
        transport: Default::default(),
        baseline: Vec::new(),
        report: None,
        impostor: false,
        ..args.clone()
    };
    let report = plain
        .shape()
        .and_then(|shape| super::run_nodes(&shape, &plain, plain.arrival()).map(|r| (shape, r)));
    match report {
        Ok((shape, report)) => {
            let connections = fds::links_per_node(&shape).iter().sum::<u64>() / 2;
            BaselineResult::reported(System::Plaintext, report, Fates::default(), connections)
        }
        Err(e) => failed(System::Plaintext, e),
    }
}

/// The same plexus run, in the same mode, with its links over TCP under TLS (the same
/// identities), to see what QUIC costs or gains.
fn run_over_tcp(args: &BenchArgs) -> BaselineResult {
    let over_tcp = BenchArgs {
        transport: super::shape::LinkTransport::Tcp,
        tls: true,
        baseline: Vec::new(),
        report: None,
        impostor: false,
        ..args.clone()
    };
    let report = over_tcp.shape().and_then(|shape| {
        super::run_nodes(&shape, &over_tcp, over_tcp.arrival()).map(|r| (shape, r))
    });
    match report {
        Ok((shape, report)) => {
            let connections = fds::links_per_node(&shape).iter().sum::<u64>() / 2;
            BaselineResult::reported(System::Tcp, report, Fates::default(), connections)
        }
        Err(e) => failed(System::Tcp, e),
    }
}

/// The workload of `shape` with plexus embedded, one node per process, as `--spawn` runs
/// it; the links it opens are one per pair of nodes that share a job.
fn run_embedded(shape: &Shape, args: &BenchArgs) -> BaselineResult {
    let spawned = BenchArgs {
        agent: false,
        spawn: true,
        nodes_per_process: 1,
        baseline: Vec::new(),
        report: None,
        kill_node: None,
        kill_endpoint: None,
        kill_at_ms: None,
        chaos_link_kill_ms: None,
        ..args.clone()
    };
    let connections = fds::links_per_node(shape).iter().sum::<u64>() / 2;
    match super::spawn::run(shape, &spawned, spawned.arrival()) {
        Ok(report) => {
            BaselineResult::reported(System::Embedded, report, Fates::default(), connections)
        }
        Err(e) => failed(System::Embedded, e),
    }
}

/// Runs `run` (a run of `system`) on a runtime of its own.
fn on_runtime(system: System, run: impl Future<Output = BaselineResult>) -> BaselineResult {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run),
        Err(e) => failed(system, format!("cannot start the runtime: {e}")),
    }
}

async fn run_raw(shape: &Shape, conditions: Conditions) -> BaselineResult {
    let deadline = Instant::now() + conditions.timeout;
    let (faults, log) = Faults::new();
    match timeout_at(deadline, RawTcp::open(shape, &faults)).await {
        Ok(Ok((raw, connections))) => {
            let measured = measure(raw, shape, conditions, &shape.node_ips(), deadline, log).await;
            BaselineResult::judged(System::RawTcp, shape, measured, connections)
        }
        Ok(Err(e)) => failed(System::RawTcp, e),
        Err(_) => failed(System::RawTcp, "timed out connecting the nodes".into()),
    }
}

async fn run_naive(shape: &Shape, conditions: Conditions) -> BaselineResult {
    let deadline = Instant::now() + conditions.timeout;
    let (faults, log) = Faults::new();
    match NaiveTcp::open(shape, &faults) {
        Ok((naive, connections)) => {
            let measured =
                measure(naive, shape, conditions, &shape.node_ips(), deadline, log).await;
            let connections = connections.load(Ordering::Relaxed);
            BaselineResult::judged(System::NaiveTcp, shape, measured, connections)
        }
        Err(e) => failed(System::NaiveTcp, e),
    }
}

async fn run_grpc(shape: &Shape, conditions: Conditions) -> BaselineResult {
    let deadline = Instant::now() + conditions.timeout;
    let (faults, log) = Faults::new();
    let opened = timeout_at(
        deadline,
        grpc::Grpc::open(shape, conditions.grpc_windows, &faults),
    )
    .await;
    match opened {
        Ok(Ok((grpc, connections))) => {
            let measured = measure(grpc, shape, conditions, &shape.node_ips(), deadline, log).await;
            BaselineResult::judged(System::Grpc, shape, measured, connections)
        }
        Ok(Err(e)) => failed(System::Grpc, e),
        Err(_) => failed(System::Grpc, "timed out connecting the nodes".into()),
    }
}

/// A run of one system, before judging.
pub struct Measured {
    /// What the endpoints and the run reported.
    pub record: RunRecord,
    /// What its consumers and its clock saw.
    pub fates: Fates,
    /// The most bytes sent to a stalled consumer and not yet read by it.
    pub stalled_buffered_max: u64,
}

/// Runs the throughput workload over `transport`, timed and watched like the plexus run,
/// with its stalled consumers and, if asked, links between `chaos_ips` killed from
/// outside.
async fn measure<T: Transport>(
    transport: T,
    shape: &Shape,
    conditions: Conditions,
    chaos_ips: &[Ipv4Addr],
    deadline: Instant,
    mut faults: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> Measured {
    let delivered = Arc::new(Delivered::default());
    let monitor = Monitor::start(shape, &delivered, conditions.json);
    let state = Arc::new(RunState::new(shape, delivered));
    let (produce, consume) = roles::throughput(shape, state.clone());
    let chaos = conditions
        .chaos
        .map(|period| Chaos::start(chaos_ips.to_vec(), period));
    let start = Instant::now();
    let (mut outcomes, mut errors) =
        transport::drive(transport, shape, deadline, produce, consume).await;
    let elapsed_s = start.elapsed().as_secs_f64();
    let timed_out = Instant::now() >= deadline;
    let link_kills = chaos.map_or(0, Chaos::stop);
    errors.extend(Faults::drain(&mut faults));
    state.annotate(shape, &mut outcomes);
    let fates = Fates {
        duplicated: state.duplicated(),
        lost: state.lost(),
        timed_out,
    };
    let healthy_elapsed_s = if shape.stall_consumers() > 0 {
        state.healthy_elapsed_since(start)
    } else {
        None
    };
    let record = RunRecord {
        outcomes,
        errors,
        elapsed_s,
        healthy_elapsed_s,
        link_kills,
        links_per_node_max: monitor.finish(),
        processes: 1,
        ..RunRecord::default()
    };
    Measured {
        record,
        fates,
        stalled_buffered_max: state.stalled_unread_max(shape),
    }
}

/// A system that could not run for `error`.
fn failed(system: System, error: String) -> BaselineResult {
    BaselineResult {
        skipped: false,
        note: Some(how_it_connects(system).to_string()),
        errors: vec![error],
        ..BaselineResult::skipped(system, String::new())
    }
}
