//! `--baseline`: after the plexus run, the same workload — same shape, same messages, the
//! same verification in every consumer — over other ways of moving data, in this process,
//! so that plexus's figures have something to be compared with:
//!
//! - `raw-tcp` ([`raw_tcp`]): one plain TCP connection per node pair, no credit, no
//!   scheduler: the upper bound a multiplexer can approach;
//! - `naive-tcp` ([`naive_tcp`]): one TCP connection per channel, what users do today;
//!   skipped, with a note, when its connections would not fit under the process's
//!   descriptor limit ([`super::fds`]);
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
//! socket table like plexus's, and is judged by the same [`verdict`] as plexus.
//!
//! Invariants: a system runs at most once per bench run, in the order asked; a skipped
//! system is reported with its reason and no figures, and counts neither for nor against
//! the run; a system that ran and did not verify fails the run (its errors are listed,
//! prefixed with its name); `ratio_vs_<system>` and `msgs_ratio_vs_<system>` are plexus's
//! figure divided by the system's, and `null` unless both ran and verified.

pub mod amqp_url;
mod naive_tcp;
mod outbox;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
pub mod raw_tcp;
mod roles;
#[cfg(feature = "zmq")]
mod zmq;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::{timeout_at, Instant};

use super::delivered::Delivered;
use super::fds;
use super::monitor::Monitor;
use super::report::Report;
use super::shape::Shape;
use super::transport::{self, Faults, Transport};
use super::verdict::{self, RunRecord};
use super::BenchArgs;
use naive_tcp::NaiveTcp;
use raw_tcp::RawTcp;

/// A system the workload can also run over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// One plain TCP connection per node pair.
    RawTcp,
    /// One TCP connection per channel.
    NaiveTcp,
    /// ZeroMQ PUSH/PULL sockets (needs the `zmq` feature).
    Zmq,
    /// A RabbitMQ broker at `--amqp-url` (needs the `rabbitmq` feature).
    Rabbitmq,
    /// plexus embedded, one node per process, as `--spawn` runs it (with `--agent` only).
    Embedded,
    /// plexus in the same mode without TLS (with `--tls` only).
    Plaintext,
}

impl System {
    /// The system's name, as `--baseline` spells it.
    pub fn name(self) -> &'static str {
        match self {
            System::RawTcp => "raw-tcp",
            System::NaiveTcp => "naive-tcp",
            System::Zmq => "zmq",
            System::Rabbitmq => "rabbitmq",
            System::Embedded => "embedded",
            System::Plaintext => "plaintext",
        }
    }

    /// The system's name in JSON field names (`ratio_vs_raw_tcp`).
    pub fn key(self) -> &'static str {
        match self {
            System::RawTcp => "raw_tcp",
            System::NaiveTcp => "naive_tcp",
            System::Zmq => "zmq",
            System::Rabbitmq => "rabbitmq",
            System::Embedded => "embedded",
            System::Plaintext => "plaintext",
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
        }
    }

    /// A system that ran, as its run was judged.
    pub fn judged(system: System, shape: &Shape, record: RunRecord, connections: u64) -> Self {
        Self::reported(system, verdict::judge(shape, record), connections)
    }

    /// A system that ran, as its `report` says.
    fn reported(system: System, report: Report, connections: u64) -> Self {
        BaselineResult {
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
}

fn how_it_connects(system: System) -> &'static str {
    match system {
        System::RawTcp => "one connection per node pair, made before the clock starts",
        System::NaiveTcp => "one connection per channel, made after the clock starts",
        System::Zmq => "a PUSH socket per channel to each consumer's PULL socket",
        System::Rabbitmq => {
            "one broker connection per node, a channel per endpoint, a queue per consumer"
        }
        System::Embedded => {
            "plexus embedded, one node per process (as --spawn runs it): one link per node pair"
        }
        System::Plaintext => "plexus in the same mode, its links without TLS",
    }
}

/// Runs every system `args.baseline` asks for, after the plexus run of `report`, and adds
/// their results and plexus's ratios to it.
pub fn run_all(shape: &Shape, args: &BenchArgs, report: &mut Report) {
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
        if !result.skipped && !result.verified {
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

/// Runs the workload of `shape` over `system`.
fn run(system: System, shape: &Shape, args: &BenchArgs) -> BaselineResult {
    let timeout = Duration::from_secs(args.timeout_s);
    match system {
        System::RawTcp => on_runtime(system, run_raw(shape, args.json, timeout)),
        System::NaiveTcp => match fds::too_many(shape.channels(), 2, fds::soft_limit()) {
            Some(note) => BaselineResult::skipped(system, note),
            None => on_runtime(system, run_naive(shape, args.json, timeout)),
        },
        #[cfg(feature = "zmq")]
        System::Zmq => zmq::run(shape, args.json, timeout),
        #[cfg(not(feature = "zmq"))]
        System::Zmq => BaselineResult::skipped(system, "built without the zmq feature".into()),
        #[cfg(feature = "rabbitmq")]
        System::Rabbitmq => rabbitmq::run(shape, &args.amqp_url, args.json, timeout),
        #[cfg(not(feature = "rabbitmq"))]
        System::Rabbitmq => {
            BaselineResult::skipped(system, "built without the rabbitmq feature".into())
        }
        System::Embedded => run_embedded(shape, args),
        System::Plaintext => run_plaintext(args),
    }
}

/// The same plexus run, in the same mode, with its links in plain TCP.
fn run_plaintext(args: &BenchArgs) -> BaselineResult {
    let plain = BenchArgs {
        tls: false,
        tls_dir: None,
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
            BaselineResult::reported(System::Plaintext, report, connections)
        }
        Err(e) => failed(System::Plaintext, e),
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
        Ok(report) => BaselineResult::reported(System::Embedded, report, connections),
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

async fn run_raw(shape: &Shape, json: bool, timeout: Duration) -> BaselineResult {
    let deadline = Instant::now() + timeout;
    let (faults, log) = Faults::new();
    match timeout_at(deadline, RawTcp::open(shape, &faults)).await {
        Ok(Ok((raw, connections))) => {
            let record = measure(raw, shape, json, deadline, log).await;
            BaselineResult::judged(System::RawTcp, shape, record, connections)
        }
        Ok(Err(e)) => failed(System::RawTcp, e),
        Err(_) => failed(System::RawTcp, "timed out connecting the nodes".into()),
    }
}

async fn run_naive(shape: &Shape, json: bool, timeout: Duration) -> BaselineResult {
    let deadline = Instant::now() + timeout;
    let (faults, log) = Faults::new();
    match NaiveTcp::open(shape, &faults) {
        Ok((naive, connections)) => {
            let record = measure(naive, shape, json, deadline, log).await;
            let connections = connections.load(Ordering::Relaxed);
            BaselineResult::judged(System::NaiveTcp, shape, record, connections)
        }
        Err(e) => failed(System::NaiveTcp, e),
    }
}

/// Runs the throughput workload over `transport`, timed and watched like the plexus run.
async fn measure<T: Transport>(
    transport: T,
    shape: &Shape,
    json: bool,
    deadline: Instant,
    mut faults: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> RunRecord {
    let delivered = Arc::new(Delivered::default());
    let monitor = Monitor::start(shape, &delivered, json);
    let (produce, consume) = roles::throughput(shape, delivered);
    let start = Instant::now();
    let (outcomes, mut errors) =
        transport::drive(transport, shape, deadline, produce, consume).await;
    let elapsed_s = start.elapsed().as_secs_f64();
    errors.extend(Faults::drain(&mut faults));
    RunRecord {
        outcomes,
        errors,
        elapsed_s,
        links_per_node_max: monitor.finish(),
        processes: 1,
        ..RunRecord::default()
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
