//! `plexus shuffle`: a real workload. Every producer has its share of TPC-H `lineitem`
//! (`tpchgen-arrow`, part i of n, generated in memory before the clock starts, so that
//! the runs time the exchange and not the generator), hash-partitions the rows by
//! `l_orderkey` across every consumer of the job and sends them as Apache Arrow batches; every consumer computes
//! TPC-H Q1 over what it got ([`q1`]); the parts, combined, must equal Q1 computed in one
//! process over the same generated data. With `--baseline flight`, the same shuffle then
//! runs over Arrow Flight ([`flight`]), as Flight-based engines shuffle.
//!
//! Each system runs plain, and with `--stall-consumers` again with that many consumers
//! reading nothing until the others have everything ([`progress`]). Producers and
//! consumers are the same for every system ([`endpoints`], [`drive`]); plexus runs n
//! nodes in this process on their own loopback addresses ([`over_plexus`]).
//!
//! Invariants: the bench verifies only if every plexus run's Q1 equals the one-process
//! answer exactly (every group's sums and count) and no endpoint failed; a baseline's
//! runs are judged the same way and reported, a stalled baseline run that reaches its
//! bound is `blocked`, and neither fails the bench; ratios are plexus's figure divided by
//! the baseline's, `null` unless both verified.

mod data;
mod drive;
mod endpoints;
mod flight;
mod over_plexus;
mod progress;
mod q1;

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use clap::Args;
use plexus::{Endpoint, NodeId};
use serde::Serialize;

use drive::RunResult;
use progress::Progress;
use q1::{Q1Row, Q1};

/// Options of `plexus shuffle`.
#[derive(Clone, Debug, Args)]
pub struct ShuffleArgs {
    /// TPC-H scale factor (1 is about 6 million `lineitem` rows).
    #[arg(long, default_value_t = 1.0)]
    pub scale_factor: f64,
    /// Nodes, each on its own loopback address.
    #[arg(long, default_value_t = 4)]
    pub nodes: u32,
    /// Producers per node, each generating one part of the table.
    #[arg(long, default_value_t = 2)]
    pub producers: u32,
    /// Consumers per node, each computing Q1 over its partition.
    #[arg(long, default_value_t = 2)]
    pub consumers: u32,
    /// Consumers that read nothing until every other consumer has all its rows; each
    /// system then also runs with them, after its plain run.
    #[arg(long, default_value_t = 0)]
    pub stall_consumers: u32,
    /// Run the same shuffle over this system too: `flight` (Arrow Flight over gRPC, one
    /// connection per node pair, a stream per channel).
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,
    /// The first node's address; node i uses this address plus i.
    #[arg(long, default_value = "127.0.0.1")]
    pub first_ip: Ipv4Addr,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Print exactly one JSON object on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// A system the shuffle can also run over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// Arrow Flight: one gRPC connection per node pair, a `do_put` or `do_get` per channel.
    Flight,
}

/// The shape of a run, as every system runs it.
#[derive(Clone, Debug)]
pub struct Spec {
    nodes: u32,
    producers: u32,
    consumers: u32,
    scale_factor: f64,
    first_ip: Ipv4Addr,
    stalled: u32,
    timeout: Duration,
}

impl Spec {
    fn node_ip(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first_ip).wrapping_add(i))
    }

    fn node_ips(&self) -> Vec<Ipv4Addr> {
        (0..self.nodes).map(|i| self.node_ip(i)).collect()
    }

    fn consumers_total(&self) -> usize {
        (self.nodes * self.consumers) as usize
    }

    fn producers_total(&self) -> usize {
        (self.nodes * self.producers) as usize
    }

    /// Consumer index `c`: slot c mod m of node c div m.
    fn consumer(&self, c: usize) -> Endpoint {
        let c = c as u32;
        Endpoint::new(NodeId(c / self.consumers), c % self.consumers)
    }

    /// Producer index `p`: slot p mod m of node p div m.
    fn producer(&self, p: usize) -> Endpoint {
        let p = p as u32;
        Endpoint::new(NodeId(p / self.producers), p % self.producers)
    }

    /// Which consumers stall: `stalled` of them, spread over the nodes.
    fn stalled_flags(&self) -> Vec<bool> {
        let total = self.consumers_total();
        let mut flags = vec![false; total];
        for i in 0..self.stalled as usize {
            flags[i * total / self.stalled as usize] = true;
        }
        flags
    }
}

/// One system's figures: its plain run, and its stalled run if there was one.
#[derive(Clone, Debug, Serialize)]
pub struct SystemReport {
    /// `plexus` or `flight`.
    pub system: &'static str,
    /// Its plain run's Q1 equals the one-process answer and nothing failed.
    pub verified: bool,
    /// What went wrong, if anything.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Rows every consumer got, in all.
    pub rows_total: u64,
    /// Bytes of Arrow data (the rows' buffers) the consumers got.
    pub bytes_total: u64,
    /// From the first producer's start to the last consumer's end.
    pub elapsed_s: f64,
    /// `rows_total / elapsed_s`.
    pub rows_per_s: f64,
    /// `bytes_total / elapsed_s`.
    pub bytes_per_s: f64,
    /// Most established TCP connections any node's address held, from the OS.
    pub links_per_node_max: usize,
    /// Most bytes a producer held queued for consumers that had not taken them.
    pub queued_bytes_max: u64,
    /// With stalled consumers: the other consumers' rows per second until they had
    /// everything.
    pub stall_healthy_rows_per_s: Option<f64>,
    /// That, divided by `rows_per_s`.
    pub stall_healthy_ratio: Option<f64>,
    /// With stalled consumers: `verified`, `failed` or `blocked` (the others could not
    /// finish within the bound).
    pub stall_outcome: Option<&'static str>,
    /// With stalled consumers: the most bytes a producer held queued.
    pub stall_queued_bytes_max: Option<u64>,
}

/// The report of `plexus shuffle`.
#[derive(Clone, Debug, Serialize)]
pub struct ShuffleReport {
    /// plexus's runs verified: Q1 matched the one-process answer exactly.
    pub verified: bool,
    /// TPC-H scale factor.
    pub scale_factor: f64,
    /// Nodes.
    pub nodes: u32,
    /// Producers per node.
    pub producers: u32,
    /// Consumers per node.
    pub consumers: u32,
    /// Consumers stalled in the stalled runs.
    pub stall_consumers: u32,
    /// `lineitem` rows generated.
    pub rows_generated: u64,
    /// Rows Q1 counts (shipped by 1998-09-02), in the one-process answer.
    pub q1_rows: u64,
    /// Seconds generating every part took (before any run, not timed in them).
    pub generate_s: f64,
    /// Seconds the one-process answer took over the generated parts.
    pub reference_s: f64,
    /// Q1's result, as every system must give it.
    pub q1: Vec<Q1Row>,
    /// plexus's figures (flattened into the report).
    #[serde(flatten)]
    pub plexus: SystemReport,
    /// The baseline's figures, if one ran.
    pub baselines: Vec<SystemReport>,
    /// plexus's rows per second divided by Flight's.
    pub ratio_vs_flight: Option<f64>,
}

/// Runs the shuffle and prints its report; fails when plexus's runs did not verify.
pub fn main(args: ShuffleArgs) -> ExitCode {
    match run(&args) {
        Ok(report) => {
            print(&report, args.json);
            if report.verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("plexus shuffle: {e}");
            ExitCode::from(2)
        }
    }
}

fn check(args: &ShuffleArgs) -> Result<Spec, String> {
    if !(args.scale_factor > 0.0 && args.scale_factor <= 100.0) {
        return Err("--scale-factor must be more than 0 and at most 100".into());
    }
    if args.nodes == 0 || args.producers == 0 || args.consumers == 0 {
        return Err("--nodes, --producers and --consumers must be at least 1".into());
    }
    if args.nodes > 64 {
        return Err("--nodes: at most 64 in one process".into());
    }
    if args.stall_consumers >= args.nodes * args.consumers {
        return Err(format!(
            "--stall-consumers {} leaves no consumer that reads, of {}",
            args.stall_consumers,
            args.nodes * args.consumers
        ));
    }
    Ok(Spec {
        nodes: args.nodes,
        producers: args.producers,
        consumers: args.consumers,
        scale_factor: args.scale_factor,
        first_ip: args.first_ip,
        stalled: 0,
        timeout: Duration::from_secs(args.timeout_s.max(1)),
    })
}

fn run(args: &ShuffleArgs) -> Result<ShuffleReport, String> {
    let spec = check(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let schema = data::projected_schema()?;
    let say = |what: &str| {
        if !args.json {
            eprintln!("plexus shuffle: {what}");
        }
    };

    say("generating lineitem");
    let started = Instant::now();
    let parts = Arc::new(data::generate_all(
        spec.scale_factor,
        spec.producers_total() as u32,
    )?);
    let generate_s = started.elapsed().as_secs_f64();
    say("the one-process answer");
    let started = Instant::now();
    let (reference, rows_generated) = reference(&parts)?;
    let reference_s = started.elapsed().as_secs_f64();

    let mut systems = Vec::new();
    let mut kinds = vec![System::Plexus];
    if args.baseline == Some(Baseline::Flight) {
        kinds.push(System::Flight);
    }
    for system in kinds {
        say(&format!("{}: plain", system.name()));
        let plain = runtime.block_on(system.run(&spec, schema.clone(), parts.clone()))?;
        let mut report = judge(system, &plain, &reference);
        if args.stall_consumers > 0 {
            say(&format!(
                "{}: {} consumers stalled",
                system.name(),
                args.stall_consumers
            ));
            let bound = fault_bound(plain.elapsed_s, spec.timeout);
            let stalled_spec = Spec {
                stalled: args.stall_consumers,
                timeout: bound,
                ..spec.clone()
            };
            let stalled =
                runtime.block_on(system.run(&stalled_spec, schema.clone(), parts.clone()))?;
            add_stall(&mut report, &stalled, &reference);
        }
        systems.push(report);
    }
    let plexus = systems.remove(0);
    let ratio_vs_flight = systems
        .iter()
        .find(|s| s.system == "flight" && s.verified && plexus.verified && s.rows_per_s > 0.0)
        .map(|flight| plexus.rows_per_s / flight.rows_per_s);
    let stall_ok = plexus.stall_outcome.is_none_or(|o| o == "verified");
    Ok(ShuffleReport {
        verified: plexus.verified && stall_ok,
        scale_factor: spec.scale_factor,
        nodes: spec.nodes,
        producers: spec.producers,
        consumers: spec.consumers,
        stall_consumers: args.stall_consumers,
        rows_generated,
        q1_rows: reference.rows(),
        generate_s,
        reference_s,
        q1: reference.rows_out(),
        plexus,
        baselines: systems,
        ratio_vs_flight,
    })
}

/// How long a stalled run may take: five times the plain run, at least 20 s, at most the
/// run's timeout.
fn fault_bound(plain_s: f64, limit: Duration) -> Duration {
    let plain_s = if plain_s.is_finite() {
        plain_s.clamp(0.0, 86_400.0)
    } else {
        0.0
    };
    Duration::from_secs_f64(plain_s * 5.0)
        .max(Duration::from_secs(20))
        .min(limit)
}

/// The systems a shuffle runs over.
#[derive(Clone, Copy, Debug)]
enum System {
    Plexus,
    Flight,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Plexus => "plexus",
            System::Flight => "flight",
        }
    }

    async fn run(
        self,
        spec: &Spec,
        schema: arrow_schema::SchemaRef,
        parts: Arc<Vec<Arc<Vec<RecordBatch>>>>,
    ) -> Result<RunResult, String> {
        let progress = Arc::new(Progress::new(spec.producers_total(), spec.stalled_flags()));
        match self {
            System::Plexus => over_plexus::run(spec, schema, parts, progress).await,
            System::Flight => flight::run(spec, parts, progress).await,
        }
    }
}

/// Q1 over every part of the table, computed here without any exchange; and the rows
/// generated.
fn reference(parts: &[Arc<Vec<RecordBatch>>]) -> Result<(Q1, u64), String> {
    let mut q1 = Q1::default();
    let mut rows = 0;
    for batch in parts.iter().flat_map(|part| part.iter()) {
        rows += batch.num_rows() as u64;
        q1.add(batch)?;
    }
    Ok((q1, rows))
}

/// The figures of a system's plain run, judged against `reference`.
fn judge(system: System, run: &RunResult, reference: &Q1) -> SystemReport {
    let mut errors = run.errors.clone();
    if run.q1 != *reference {
        errors.push(format!(
            "Q1 differs from the one-process answer ({} rows counted, {} expected)",
            run.q1.rows(),
            reference.rows()
        ));
    }
    let per_s = |x: u64| x as f64 / run.elapsed_s.max(1e-9);
    SystemReport {
        system: system.name(),
        verified: errors.is_empty(),
        errors,
        rows_total: run.rows_total,
        bytes_total: run.bytes_total,
        elapsed_s: run.elapsed_s,
        rows_per_s: per_s(run.rows_total),
        bytes_per_s: per_s(run.bytes_total),
        links_per_node_max: run.links_per_node_max,
        queued_bytes_max: run.queued_bytes_max,
        stall_healthy_rows_per_s: None,
        stall_healthy_ratio: None,
        stall_outcome: None,
        stall_queued_bytes_max: None,
    }
}

/// Adds the stalled run's figures to `report`.
fn add_stall(report: &mut SystemReport, stalled: &RunResult, reference: &Q1) {
    let healthy = stalled
        .healthy_elapsed_s
        .map(|s| stalled.healthy_rows as f64 / s.max(1e-9));
    let healthy = healthy.or_else(|| {
        // The others never had everything: their pace until the bound.
        Some(stalled.healthy_rows as f64 / stalled.elapsed_s.max(1e-9))
    });
    let outcome = if stalled.timed_out {
        "blocked"
    } else if stalled.errors.is_empty() && stalled.q1 == *reference {
        "verified"
    } else {
        "failed"
    };
    report.stall_healthy_rows_per_s = healthy;
    report.stall_healthy_ratio = healthy
        .filter(|_| report.rows_per_s > 0.0)
        .map(|h| h / report.rows_per_s);
    report.stall_outcome = Some(outcome);
    report.stall_queued_bytes_max = Some(stalled.queued_bytes_max);
    if outcome != "verified" {
        let named = stalled
            .errors
            .iter()
            .take(3)
            .map(|e| format!("stalled run: {e}"));
        report.errors.extend(named);
        if stalled.errors.is_empty() {
            report
                .errors
                .push("stalled run: Q1 differs from the one-process answer".into());
        }
    }
}

fn print(report: &ShuffleReport, json: bool) {
    if json {
        crate::bench::print_json(report);
        return;
    }
    let verdict = if report.verified {
        "VERIFIED"
    } else {
        "FAILED"
    };
    println!(
        "plexus shuffle: {verdict}: TPC-H SF {} lineitem ({} rows), {} nodes x ({} producers + {} consumers); Q1 over {} rows matches the one-process answer: {}",
        report.scale_factor,
        report.rows_generated,
        report.nodes,
        report.producers,
        report.consumers,
        report.q1_rows,
        report.plexus.errors.iter().all(|e| !e.contains("Q1 differs")),
    );
    for s in std::iter::once(&report.plexus).chain(&report.baselines) {
        println!(
            "  {:<7} {:>10.0} rows/s  {:>8.1} MB/s  {:.2} s  links per node {}  {}",
            s.system,
            s.rows_per_s,
            s.bytes_per_s / 1e6,
            s.elapsed_s,
            s.links_per_node_max,
            if s.verified {
                "verified"
            } else {
                "NOT verified"
            }
        );
        if let (Some(ratio), Some(outcome)) = (s.stall_healthy_ratio, s.stall_outcome) {
            println!(
                "          with {} consumers stalled: the others at {ratio:.2}x, {outcome}",
                report.stall_consumers
            );
        }
        for e in s.errors.iter().take(5) {
            println!("          {e}");
        }
    }
    if let Some(r) = report.ratio_vs_flight {
        println!("  plexus / flight: {r:.2}x rows per second");
    }
}
