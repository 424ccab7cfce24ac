//! `--report DIR`: a bench run written down in a directory. Every run writes `report.md`
//! ([`markdown`]: the command, the machine, the shape and every figure, in tables) and
//! `report.json` (the object `--json` prints); a throughput run adds `goodput.svg` (per
//! system) and, from the timeline sampled during the run, `delivered.svg` and
//! `delivered.csv` (bytes delivered over time to healthy and to stalled consumers); a
//! `--latency` run adds `latency.svg` ([`charts`]).
//!
//! Invariants: DIR is created before the run ([`prepare`]), so a directory that cannot be
//! made fails the bench before anything runs; `report.json` is byte for byte the line
//! `--json` prints; report.md lists every other file written and says why a chart is
//! missing; the first file that cannot be written or drawn fails the export with its
//! name.

mod charts;
mod machine;
mod markdown;

use std::ffi::OsString;
use std::fmt::Write;
use std::fs;
use std::path::Path;

use serde::Serialize;

use super::child::PROGRESS_EVERY;
use super::compare::CompareReport;
use super::latency::LatencyReport;
use super::report::Report;
use super::timeline::{Series, PERIOD};
use charts::{Bar, Delivery, Percentiles};
use machine::Machine;
use markdown::Context;

/// Creates `dir` if it is missing.
pub fn prepare(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Writes `text` to `dir/name`.
fn write(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let path = dir.join(name);
    fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The line `--json` prints for `report`.
fn json_line(report: &impl Serialize) -> Result<String, String> {
    serde_json::to_string(report)
        .map(|line| line + "\n")
        .map_err(|e| format!("cannot encode the report: {e}"))
}

/// Writes the report of a throughput run to `dir`. `spawned`: the nodes ran in processes
/// of their own (the timeline then moves at the pace of their progress reports).
pub fn throughput(
    dir: &Path,
    report: &Report,
    bytes_per_producer: u64,
    spawned: bool,
) -> Result<(), String> {
    let mut files = vec![("report.json", "the JSON object `--json` prints".to_string())];
    let mut notes = Vec::new();
    write(dir, "report.json", &json_line(report)?)?;

    let mut bars = vec![Bar {
        system: "plexus".into(),
        bytes_per_s: report.throughput_bytes_per_s,
        msgs_per_s: report.messages_per_s,
        verified: report.verified,
    }];
    for b in report.baselines.iter().filter(|b| !b.skipped) {
        bars.push(Bar {
            system: b.system.into(),
            bytes_per_s: b.throughput_bytes_per_s.unwrap_or(0.0),
            msgs_per_s: b.messages_per_s.unwrap_or(0.0),
            verified: b.verified,
        });
    }
    write(dir, "goodput.svg", &charts::goodput(&bars)?)?;
    files.push((
        "goodput.svg",
        "goodput (bytes/s) and messages per second of plexus and each baseline that ran".into(),
    ));
    for b in report.baselines.iter().filter(|b| b.skipped) {
        notes.push(format!(
            "{} is not in goodput.svg: it was skipped ({})",
            b.system,
            b.note.as_deref().unwrap_or("no reason given")
        ));
    }

    match &report.timeline {
        Some(series) => {
            let total_consumers = u64::from(report.shape.jobs)
                * u64::from(report.shape.nodes_per_job)
                * u64::from(report.shape.consumers_per_node);
            let stalled = u64::from(report.stalled_consumers);
            let delivery = Delivery {
                points: series.points(),
                healthy_consumers: total_consumers.saturating_sub(stalled),
                stalled_consumers: stalled,
                released_ms: (stalled > 0).then_some(report.healthy_elapsed_s * 1000.0),
            };
            write(dir, "delivered.svg", &charts::delivered(&delivery)?)?;
            write(dir, "delivered.csv", &csv(series))?;
            files.push((
                "delivered.svg",
                "cumulative bytes delivered over time, healthy consumers summed and stalled consumers summed".into(),
            ));
            files.push((
                "delivered.csv",
                "the samples of delivered.svg: t_ms, healthy_bytes, stalled_bytes".into(),
            ));
            notes.push(format!(
                "The delivered samples were taken every {} ms during the plexus run, and at most {} kept (evenly spread over the run).",
                PERIOD.as_millis(),
                super::timeline::MAX_POINTS
            ));
            if spawned {
                notes.push(format!(
                    "With `--spawn` (or `--agent`), the node processes (or the consumers' processes) report what their consumers received every {} ms (and when a healthy consumer is done), so the curves move in such steps.",
                    PROGRESS_EVERY.as_millis()
                ));
            }
        }
        None => {
            notes.push("No delivered chart: the run took no samples of delivered bytes.".into())
        }
    }

    if report.agents > 0 {
        notes.push(format!(
            "The run went through {} agents, every endpoint in a process of its own ({} endpoint processes); a consumer's credit figures are what its agent and its process held together.",
            report.agents, report.endpoint_processes
        ));
    }
    let markdown = with_context(&files, &notes, |ctx| {
        markdown::throughput(report, bytes_per_producer, ctx)
    });
    write(dir, "report.md", &markdown)
}

/// Writes the report of a `--compare` run to `dir`: report.json, report.md and a chart
/// per column of the matrix.
pub fn compare(dir: &Path, report: &CompareReport) -> Result<(), String> {
    write(dir, "report.json", &json_line(report)?)?;
    let mut files = vec![("report.json", "the JSON object `--json` prints".to_string())];
    let ran: Vec<_> = report
        .compare
        .iter()
        .filter(|r| r.skipped.is_none())
        .collect();
    let named = |suffix: &dyn Fn(&super::compare::Row) -> String| -> Vec<Bar> {
        ran.iter()
            .map(|r| Bar {
                system: format!("{}{}", r.system, suffix(r)),
                bytes_per_s: 0.0,
                msgs_per_s: 0.0,
                verified: true,
            })
            .collect()
    };
    let outcome = |o: Option<super::baseline::Outcome>| o.map_or("-", |o| o.name());
    let plain = named(&|_| String::new());
    // Per chart: its file, title and unit, and a bar per system.
    let columns: [(&str, &str, &str, ColumnBars); 5] = [
        (
            "links.svg",
            "Links per node (TCP connections any node held; lower is better)",
            "connections",
            (
                plain.clone(),
                ran.iter()
                    .map(|r| r.links_per_node_max.unwrap_or(0) as f64)
                    .collect(),
            ),
        ),
        (
            "goodput.svg",
            "Goodput, plain run (higher is better)",
            "GB/s",
            (
                plain.clone(),
                ran.iter()
                    .map(|r| r.throughput_bytes_per_s.unwrap_or(0.0) / 1e9)
                    .collect(),
            ),
        ),
        (
            "stall.svg",
            "Others' goodput with consumers stalled, over the plain run's (1 = unaffected)",
            "ratio",
            (
                named(&|r| format!(" ({})", outcome(r.stall_outcome))),
                ran.iter()
                    .map(|r| r.stall_healthy_ratio.unwrap_or(0.0))
                    .collect(),
            ),
        ),
        (
            "held.svg",
            "Most bytes held for one stalled consumer (lower is better)",
            "MiB",
            (
                plain.clone(),
                ran.iter()
                    .map(|r| r.stall_buffered_bytes_max.unwrap_or(0) as f64 / 1_048_576.0)
                    .collect(),
            ),
        ),
        (
            "link-kills.svg",
            "Links killed from outside: 1 = every message delivered exactly once",
            "verified",
            (
                named(&|r| format!(" ({})", outcome(r.link_kill_outcome))),
                ran.iter()
                    .map(|r| {
                        f64::from(u8::from(
                            r.link_kill_outcome == Some(super::baseline::Outcome::Verified),
                        ))
                    })
                    .collect(),
            ),
        ),
    ];
    for (name, title, unit, (bars, values)) in columns {
        write(dir, name, &charts::column(title, unit, &bars, &values)?)?;
        files.push((name, title.to_string()));
    }
    let notes: Vec<String> = report
        .compare
        .iter()
        .filter_map(|r| {
            r.skipped
                .as_ref()
                .map(|why| format!("{} is in no chart: it was skipped ({why})", r.system))
        })
        .collect();
    let markdown = with_context(&files, &notes, |ctx| markdown::compare(report, ctx));
    write(dir, "report.md", &markdown)
}

/// The bars of one chart: a label per system, and its figure.
type ColumnBars = (Vec<Bar>, Vec<f64>);

/// Renders report.md with the context of this run: its command line and machine, and the
/// files and notes written beside it.
fn with_context(
    files: &[(&'static str, String)],
    notes: &[String],
    render: impl FnOnce(&Context) -> String,
) -> String {
    let machine = Machine::probe();
    let command = command_line(std::env::args_os());
    render(&Context {
        command: &command,
        machine: &machine,
        files,
        notes,
    })
}

/// Writes the report of a `--latency` run to `dir`.
pub fn latency(dir: &Path, report: &LatencyReport) -> Result<(), String> {
    write(dir, "report.json", &json_line(report)?)?;
    let mut systems = vec![percentiles("plexus", &report.figures)];
    systems.extend(
        report
            .baselines
            .iter()
            .map(|b| percentiles(b.system, &b.figures)),
    );
    write(dir, "latency.svg", &charts::latency(&systems)?)?;
    let files = [
        ("report.json", "the JSON object `--json` prints".to_string()),
        (
            "latency.svg",
            "one-way latency percentiles (p50, p99, p99.9, max) per system".to_string(),
        ),
    ];
    let notes = ["A latency run moves too little to chart goodput or delivered bytes: only latency.svg is drawn.".to_string()];
    let markdown = with_context(&files, &notes, |ctx| markdown::latency(report, ctx));
    write(dir, "report.md", &markdown)
}

fn percentiles(system: &str, f: &super::latency::Figures) -> Percentiles {
    Percentiles {
        system: system.to_string(),
        us: [
            f.latency_us_p50,
            f.latency_us_p99,
            f.latency_us_p999,
            f.latency_us_max,
        ],
    }
}

/// The samples as CSV, with a header line.
fn csv(series: &Series) -> String {
    let mut out = String::from("t_ms,healthy_bytes,stalled_bytes\n");
    for p in series.points() {
        let _ = writeln!(out, "{:.3},{},{}", p.t_ms, p.healthy, p.stalled);
    }
    out
}

/// `args` as one line a shell would run again: words with anything but plain characters
/// are single-quoted.
fn command_line(args: impl IntoIterator<Item = OsString>) -> String {
    args.into_iter()
        .map(|a| quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::timeline::Point;
    use super::*;

    #[test]
    fn the_command_line_quotes_what_a_shell_would_split() {
        let args = ["plexus", "bench", "--report", "/tmp/my report", "it's", ""];
        assert_eq!(
            command_line(args.map(OsString::from)),
            r"plexus bench --report '/tmp/my report' 'it'\''s' ''"
        );
        assert_eq!(quote("--first-ip=127.0.0.1"), "--first-ip=127.0.0.1");
    }

    #[test]
    fn csv_has_a_header_and_a_line_per_point() {
        let mut s = Series::new(10);
        s.offer(
            0,
            Point {
                t_ms: 0.0,
                healthy: 0,
                stalled: 0,
            },
        );
        s.close(Point {
            t_ms: 12.5,
            healthy: 300,
            stalled: 7,
        });
        assert_eq!(
            csv(&s),
            "t_ms,healthy_bytes,stalled_bytes\n0.000,0,0\n12.500,300,7\n"
        );
    }

    #[test]
    fn a_directory_is_made_and_written_into() {
        let dir = std::env::temp_dir().join(format!("plexus-export-{}", std::process::id()));
        prepare(&dir.join("nested")).expect("create");
        write(&dir.join("nested"), "x.txt", "hello").expect("write");
        assert_eq!(
            fs::read_to_string(dir.join("nested/x.txt")).ok().as_deref(),
            Some("hello")
        );
        let blocked = dir.join("nested/x.txt/below");
        assert!(prepare(&blocked).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
