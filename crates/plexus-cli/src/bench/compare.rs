//! `--compare`: the matrix users ask for. plexus and every other system this build has
//! (raw-tcp, naive-tcp, grpc, zmq, and rabbitmq when a broker answers) each run the same
//! shape three times in one invocation: plain, with consumers stalled, and with links
//! killed from outside; the report is one [`Row`] per system: links per node, goodput,
//! the healthy consumers' goodput under the stall as a ratio of the plain run's, what was
//! held for the stalled consumers, and how the system came through the link kills.
//!
//! Each system's stalled and killed runs are bounded by [`fault_timeout`]: five times its
//! own plain run, at least [`MIN_FAULT_TIMEOUT`], at most `--timeout-s`; a run that ends
//! there with endpoints still waiting is `blocked`.
//!
//! Invariants: every system runs its three runs back to back, plexus first, so the ratios
//! of one row come from one system's runs minutes apart at most; a system that cannot run
//! here (its feature is not built, no broker answers, too many descriptors) is a row with
//! `skipped` set and no figures; the bench verifies when plexus's three runs verified,
//! whatever the other systems did (their outcomes are results); a ratio is `null` unless
//! both of its runs delivered.

use std::time::Duration;

use serde::Serialize;

use super::baseline::{self, BaselineResult, Outcome, System};
use super::report::{print_json, Report};
use super::shape::Shape;
use super::{BenchArgs, ConsumeMode};

/// Consumers stalled when `--stall-consumers` is not given.
pub const DEFAULT_STALLED: u32 = 2;
/// Milliseconds between link kills when `--chaos-link-kill-ms` is not given.
pub const DEFAULT_KILL_MS: u64 = 100;
/// The least time a stalled or killed run is given.
const MIN_FAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The other systems, in the order they run.
const SYSTEMS: [System; 5] = [
    System::RawTcp,
    System::NaiveTcp,
    System::Grpc,
    System::Zmq,
    System::Rabbitmq,
];

/// One run of one system, as the matrix needs it.
#[derive(Clone, Debug, Default)]
struct Run {
    outcome: Option<Outcome>,
    elapsed_s: f64,
    throughput_bytes_per_s: Option<f64>,
    healthy_throughput_bytes_per_s: Option<f64>,
    stalled_buffered_bytes_max: u64,
    links_per_node_max: usize,
    link_kills: u64,
    errors: Vec<String>,
    skipped: Option<String>,
}

impl Run {
    fn of_plexus(report: &Report, timeout: Duration) -> Run {
        let timed_out = report.elapsed_s >= timeout.as_secs_f64() * 0.99;
        let fates = baseline::Fates {
            timed_out,
            ..baseline::Fates::default()
        };
        Run {
            outcome: Some(Outcome::of(report.verified, fates)),
            elapsed_s: report.elapsed_s,
            throughput_bytes_per_s: Some(report.throughput_bytes_per_s),
            healthy_throughput_bytes_per_s: Some(report.healthy_throughput_bytes_per_s),
            stalled_buffered_bytes_max: report.stalled_buffered_bytes_max,
            links_per_node_max: report.links_per_node_max,
            link_kills: report.link_kills,
            errors: report.errors.clone(),
            skipped: None,
        }
    }

    fn of_baseline(result: BaselineResult) -> Run {
        Run {
            outcome: result.outcome,
            elapsed_s: result.elapsed_s.unwrap_or(0.0),
            throughput_bytes_per_s: result.throughput_bytes_per_s,
            healthy_throughput_bytes_per_s: result.healthy_throughput_bytes_per_s,
            stalled_buffered_bytes_max: result.stalled_buffered_bytes_max,
            links_per_node_max: result.links_per_node_max,
            link_kills: result.link_kills,
            skipped: result
                .skipped
                .then(|| result.note.clone().unwrap_or_default()),
            errors: result.errors,
        }
    }

    fn failed(error: String) -> Run {
        Run {
            outcome: Some(Outcome::Failed),
            errors: vec![error],
            ..Run::default()
        }
    }
}

/// One system's row of the matrix (a figure is `null` where its run did not happen).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The system (`plexus`, `raw-tcp`, `naive-tcp`, `grpc`, `zmq`, `rabbitmq`).
    pub system: &'static str,
    /// Most established TCP connections any node's address held in the plain run.
    pub links_per_node_max: Option<usize>,
    /// Goodput of the plain run, in payload bytes per second.
    pub throughput_bytes_per_s: Option<f64>,
    /// How the plain run ended.
    pub plain_outcome: Option<Outcome>,
    /// The healthy consumers' goodput with consumers stalled.
    pub stall_healthy_throughput_bytes_per_s: Option<f64>,
    /// That, divided by the plain run's goodput: 1 means the stall cost the others
    /// nothing.
    pub stall_healthy_ratio: Option<f64>,
    /// How the stalled run ended (`blocked`: the others could not finish either).
    pub stall_outcome: Option<Outcome>,
    /// The most bytes held at once for one stalled consumer.
    pub stall_buffered_bytes_max: Option<u64>,
    /// How the run with links killed from outside ended.
    pub link_kill_outcome: Option<Outcome>,
    /// Links killed in that run.
    pub link_kills: Option<u64>,
    /// The first errors of the faulted runs, saying how a system failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub how: Vec<String>,
    /// Why the system did not run, or `null`.
    pub skipped: Option<String>,
}

impl Row {
    fn new(system: &'static str, plain: &Run, stall: &Run, kill: &Run) -> Row {
        if let Some(why) = &plain.skipped {
            return Row::skipped(system, why.clone());
        }
        let ratio = match (
            stall.healthy_throughput_bytes_per_s,
            plain.throughput_bytes_per_s,
        ) {
            (Some(healthy), Some(plain)) if plain > 0.0 => Some(healthy / plain),
            _ => None,
        };
        let mut how = Vec::new();
        for (label, run) in [("plain", plain), ("stall", stall), ("link kills", kill)] {
            if run.outcome != Some(Outcome::Verified) {
                if let Some(first) = telling_error(run) {
                    how.push(format!("{label}: {first}"));
                }
            }
        }
        Row {
            system,
            links_per_node_max: Some(plain.links_per_node_max),
            throughput_bytes_per_s: plain.throughput_bytes_per_s,
            plain_outcome: plain.outcome,
            stall_healthy_throughput_bytes_per_s: stall.healthy_throughput_bytes_per_s,
            stall_healthy_ratio: ratio,
            stall_outcome: stall.outcome,
            stall_buffered_bytes_max: stall.outcome.map(|_| stall.stalled_buffered_bytes_max),
            link_kill_outcome: kill.outcome,
            link_kills: kill.outcome.map(|_| kill.link_kills),
            how,
            skipped: None,
        }
    }

    fn skipped(system: &'static str, why: String) -> Row {
        Row {
            system,
            links_per_node_max: None,
            throughput_bytes_per_s: None,
            plain_outcome: None,
            stall_healthy_throughput_bytes_per_s: None,
            stall_healthy_ratio: None,
            stall_outcome: None,
            stall_buffered_bytes_max: None,
            link_kill_outcome: None,
            link_kills: None,
            how: Vec::new(),
            skipped: Some(why),
        }
    }
}

/// The error that best says how `run` went wrong: for lost or duplicated messages the
/// verification that saw it, for a blocked run the clock running out, otherwise the first
/// thing an endpoint or a link saw.
fn telling_error(run: &Run) -> Option<&String> {
    let mark = match run.outcome {
        Some(Outcome::Lost) => "out-of-order",
        Some(Outcome::Duplicated) => "duplicate",
        Some(Outcome::Blocked) => "timed out",
        _ => "",
    };
    let seen = |e: &&String| {
        !e.starts_with("timed out") && !e.ends_with("never finished") && !e.ends_with("more errors")
    };
    run.errors
        .iter()
        .find(|e| !mark.is_empty() && e.contains(mark))
        .or_else(|| run.errors.iter().find(seen))
        .or(run.errors.first())
}

/// The report of `--compare`.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// plexus verified in all three runs.
    pub verified: bool,
    /// Why plexus did not, if it did not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Nodes, producers and consumers per node and job, jobs, message size and bytes
    /// per producer of every run.
    pub nodes: u32,
    /// Producers per node and job.
    pub producers: u32,
    /// Consumers per node and job.
    pub consumers: u32,
    /// Jobs at once.
    pub jobs: u32,
    /// Size of each message.
    pub message_size: u64,
    /// Bytes each producer sends.
    pub bytes_per_producer: u64,
    /// Consumers stalled in the stall runs.
    pub stall_consumers: u32,
    /// Milliseconds between link kills in the kill runs.
    pub chaos_link_kill_ms: u64,
    /// From the first run's start to the last run's end.
    pub elapsed_s: f64,
    /// One row per system, plexus first.
    pub compare: Vec<Row>,
}

/// How long a stalled or killed run of a system whose plain run took `plain_s` may take.
fn fault_timeout(plain_s: f64, limit: Duration) -> Duration {
    let plain_s = if plain_s.is_finite() { plain_s } else { 0.0 };
    let five_times = Duration::from_secs_f64((plain_s * 5.0).clamp(0.0, 86_400.0));
    five_times.max(MIN_FAULT_TIMEOUT).min(limit)
}

/// Runs the matrix on the shape of `args` and prints it; tells whether plexus verified.
pub fn run(args: &BenchArgs) -> Result<CompareReport, String> {
    let started = std::time::Instant::now();
    let stalled = if args.stall_consumers > 0 {
        args.stall_consumers
    } else {
        DEFAULT_STALLED
    };
    let kill_ms = args.chaos_link_kill_ms.unwrap_or(DEFAULT_KILL_MS);
    let plain = BenchArgs {
        bytes_per_producer: Some(args.bytes_per_producer()),
        stall_consumers: 0,
        chaos_link_kill_ms: None,
        baseline: Vec::new(),
        report: None,
        compare: false,
        consume: ConsumeMode::Interleaved,
        ..args.clone()
    };
    let stall = BenchArgs {
        stall_consumers: stalled,
        ..plain.clone()
    };
    let kill = BenchArgs {
        chaos_link_kill_ms: Some(kill_ms),
        ..plain.clone()
    };
    let limit = Duration::from_secs(args.timeout_s);
    let shapes = (plain.shape()?, stall.shape()?, kill.shape()?);
    let mut rows = Vec::with_capacity(SYSTEMS.len() + 1);
    let mut errors = Vec::new();

    progress(args.json, "plexus");
    let plexus_plain = plexus_run(&shapes.0, &plain, limit);
    let faults_limit = fault_timeout(plexus_plain.elapsed_s, limit);
    let plexus_stall = plexus_run(&shapes.1, &with_timeout(&stall, faults_limit), faults_limit);
    let plexus_kill = plexus_run(&shapes.2, &with_timeout(&kill, faults_limit), faults_limit);
    for (label, run) in [
        ("plain", &plexus_plain),
        ("stall", &plexus_stall),
        ("link kills", &plexus_kill),
    ] {
        if run.outcome != Some(Outcome::Verified) {
            errors.extend(run.errors.iter().map(|e| format!("plexus {label}: {e}")));
            if run.errors.is_empty() {
                errors.push(format!("plexus {label}: did not verify"));
            }
        }
    }
    rows.push(Row::new(
        "plexus",
        &plexus_plain,
        &plexus_stall,
        &plexus_kill,
    ));

    for system in SYSTEMS {
        if let Some(why) = unavailable(system) {
            rows.push(Row::skipped(system.name(), why));
            continue;
        }
        progress(args.json, system.name());
        let plain_run = Run::of_baseline(baseline::run(system, &shapes.0, &plain));
        if plain_run.skipped.is_some() {
            rows.push(Row::new(system.name(), &plain_run, &plain_run, &plain_run));
            continue;
        }
        let faults_limit = fault_timeout(plain_run.elapsed_s, limit);
        let stall_run = Run::of_baseline(baseline::run(
            system,
            &shapes.1,
            &with_timeout(&stall, faults_limit),
        ));
        let kill_run = Run::of_baseline(baseline::run(
            system,
            &shapes.2,
            &with_timeout(&kill, faults_limit),
        ));
        rows.push(Row::new(system.name(), &plain_run, &stall_run, &kill_run));
    }
    Ok(CompareReport {
        verified: errors.is_empty(),
        errors,
        nodes: args.nodes,
        producers: args.producers,
        consumers: args.consumers,
        jobs: args.jobs,
        message_size: args.message_size,
        bytes_per_producer: args.bytes_per_producer(),
        stall_consumers: stalled,
        chaos_link_kill_ms: kill_ms,
        elapsed_s: started.elapsed().as_secs_f64(),
        compare: rows,
    })
}

/// `args` with runs bounded by `timeout` (whole seconds, at least one).
fn with_timeout(args: &BenchArgs, timeout: Duration) -> BenchArgs {
    BenchArgs {
        timeout_s: timeout.as_secs().max(1),
        ..args.clone()
    }
}

/// One plexus run of `shape` in this process.
fn plexus_run(shape: &Shape, args: &BenchArgs, timeout: Duration) -> Run {
    match super::inproc::run(shape, args, args.arrival()) {
        Ok(report) => Run::of_plexus(&report, timeout),
        Err(e) => Run::failed(e),
    }
}

/// Why `system` cannot run in this build or on this machine, if it cannot.
fn unavailable(system: System) -> Option<String> {
    match system {
        System::Zmq if !cfg!(feature = "zmq") => Some("built without the zmq feature".into()),
        System::Rabbitmq if !cfg!(feature = "rabbitmq") => {
            Some("built without the rabbitmq feature".into())
        }
        _ => None,
    }
}

/// Says which system runs now, on stderr (unless only JSON is wanted).
fn progress(json: bool, system: &str) {
    if !json {
        eprintln!("plexus bench --compare: {system}: plain, stalled, links killed");
    }
}

impl CompareReport {
    /// Prints the report: one JSON object, or the table.
    pub fn print(&self, json: bool) {
        if json {
            print_json(self);
        } else {
            print!("{}", self.table());
        }
    }

    /// The matrix as a text table, with the shape above it.
    pub fn table(&self) -> String {
        let mut out = format!(
            "plexus bench --compare: {} nodes, {}+{} endpoints per node and job, {} jobs, {}-byte messages, {} bytes per producer; stall: {} consumers; link kills: every {} ms ({:.0} s in all)\n\n",
            self.nodes,
            self.producers,
            self.consumers,
            self.jobs,
            self.message_size,
            self.bytes_per_producer,
            self.stall_consumers,
            self.chaos_link_kill_ms,
            self.elapsed_s
        );
        out.push_str(&format!(
            "{:<10} {:>6} {:>12} {:>14} {:>12} {:>14} {:>12}\n",
            "system",
            "links",
            "goodput",
            "stall: others",
            "stall: held",
            "stall outcome",
            "link kills"
        ));
        for row in &self.compare {
            if let Some(why) = &row.skipped {
                out.push_str(&format!("{:<10} skipped: {why}\n", row.system));
                continue;
            }
            let kills = match (row.link_kill_outcome, row.link_kills) {
                (Some(o), Some(k)) => format!("{} ({k})", o.name()),
                _ => "-".into(),
            };
            out.push_str(&format!(
                "{:<10} {:>6} {:>12} {:>14} {:>12} {:>14} {:>12}\n",
                row.system,
                row.links_per_node_max.map_or("-".into(), |l| l.to_string()),
                row.throughput_bytes_per_s
                    .map_or("-".into(), |t| format!("{:.2} GB/s", t / 1e9)),
                row.stall_healthy_ratio
                    .map_or("-".into(), |r| format!("{r:.2}x")),
                row.stall_buffered_bytes_max
                    .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
                row.stall_outcome.map_or("-", Outcome::name),
                kills,
            ));
        }
        for row in self.compare.iter().filter(|r| !r.how.is_empty()) {
            out.push_str(&format!("\n{}:\n", row.system));
            for how in &row.how {
                out.push_str(&format!("  {how}\n"));
            }
        }
        out.push_str(if self.verified {
            "\nplexus verified in all three runs\n"
        } else {
            "\nplexus did NOT verify\n"
        });
        for e in &self.errors {
            out.push_str(&format!("  {e}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faulted_runs_get_five_times_the_plain_run_within_bounds() {
        let limit = Duration::from_secs(300);
        assert_eq!(fault_timeout(0.5, limit), MIN_FAULT_TIMEOUT);
        assert_eq!(fault_timeout(10.0, limit), Duration::from_secs(50));
        assert_eq!(fault_timeout(100.0, limit), limit);
        assert_eq!(fault_timeout(f64::NAN, limit), MIN_FAULT_TIMEOUT);
    }

    #[test]
    fn a_row_divides_the_stalled_others_by_the_plain_goodput() {
        let plain = Run {
            outcome: Some(Outcome::Verified),
            throughput_bytes_per_s: Some(2e9),
            links_per_node_max: 7,
            ..Run::default()
        };
        let stall = Run {
            outcome: Some(Outcome::Blocked),
            healthy_throughput_bytes_per_s: Some(5e8),
            stalled_buffered_bytes_max: 123,
            errors: vec!["timed out".into()],
            ..Run::default()
        };
        let kill = Run {
            outcome: Some(Outcome::Failed),
            link_kills: 3,
            errors: vec!["reset".into()],
            ..Run::default()
        };
        let row = Row::new("x", &plain, &stall, &kill);
        assert_eq!(row.stall_healthy_ratio, Some(0.25));
        assert_eq!(row.stall_outcome, Some(Outcome::Blocked));
        assert_eq!(row.stall_buffered_bytes_max, Some(123));
        assert_eq!(row.link_kill_outcome, Some(Outcome::Failed));
        assert_eq!(row.link_kills, Some(3));
        assert_eq!(row.how, vec!["stall: timed out", "link kills: reset"]);
        let skipped = Run {
            skipped: Some("no broker".into()),
            ..Run::default()
        };
        let row = Row::new("y", &skipped, &skipped, &skipped);
        assert_eq!(row.skipped.as_deref(), Some("no broker"));
        assert_eq!(row.throughput_bytes_per_s, None);
    }
}
