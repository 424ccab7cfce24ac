//! End-to-end tests of `plexus bench --report DIR`: the real binary writes the run to a
//! directory, and the files hold what the run measured. Each test uses its own 127.0.8X.1
//! address range and its own directory, so that tests can run in parallel.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;

use common::bench_command;

/// A fresh directory for one test, under the system's temporary directory.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("plexus-bench-report-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.0.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `plexus bench --json ARGS --report DIR`; it must verify. Returns the line it
/// printed and that line parsed.
fn bench_with_report(args: &[&str], dir: &TempDir) -> (String, Value) {
    let mut command = bench_command(args);
    command.args(["--report", dir.arg()]);
    let (out, report) = common::report(command);
    assert!(
        out.status.success() && report["verified"] == true,
        "bench failed: {}\nreport: {report}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8(out.stdout).expect("UTF-8 stdout"), report)
}

/// The text of every `<text>` element of `svg`, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let start = t.find('>')? + 1;
            let end = t.find("</text>")?;
            Some(t[start..end].trim().to_string())
        })
        .collect()
}

/// Checks that `svg` is one well-formed-looking SVG document with text and lines, and
/// that it shows each of `texts`.
fn assert_svg(name: &str, svg: &str, texts: &[&str]) {
    let svg = svg.trim();
    assert!(svg.starts_with("<svg"), "{name} does not start with <svg");
    assert!(svg.ends_with("</svg>"), "{name} does not end with </svg>");
    assert_eq!(
        svg.matches("<text").count(),
        svg.matches("</text>").count(),
        "{name}: unbalanced <text> elements"
    );
    assert!(
        svg.contains("<polyline") || svg.contains("<path"),
        "{name} draws no line"
    );
    let found = svg_texts(svg);
    for text in texts {
        assert!(
            found.iter().any(|t| t.contains(text)),
            "{name} has no text {text:?}: {found:?}"
        );
    }
}

/// delivered.csv's samples: (t_ms, healthy bytes, stalled bytes).
fn samples(csv: &str) -> Vec<(f64, u64, u64)> {
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("t_ms,healthy_bytes,stalled_bytes"));
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 3, "bad line {line:?}");
            (
                fields[0].parse().expect("t_ms"),
                fields[1].parse().expect("healthy bytes"),
                fields[2].parse().expect("stalled bytes"),
            )
        })
        .collect()
}

/// Checks the delivered samples: time goes forward, both counts never go down, and they
/// end at what the consumers of each kind had to receive.
fn assert_delivered(csv: &str, healthy_total: u64, stalled_total: u64) {
    let samples = samples(csv);
    assert!(samples.len() >= 2, "{} samples", samples.len());
    assert!(samples.len() <= 2000, "{} samples", samples.len());
    assert_eq!(
        (samples[0].1, samples[0].2),
        (0, 0),
        "first sample {:?}",
        samples[0]
    );
    for w in samples.windows(2) {
        assert!(w[0].0 < w[1].0, "time went back: {w:?}");
        assert!(w[0].1 <= w[1].1, "healthy bytes went down: {w:?}");
        assert!(w[0].2 <= w[1].2, "stalled bytes went down: {w:?}");
    }
    let last = samples[samples.len() - 1];
    assert_eq!(last.1, healthy_total, "healthy consumers' final bytes");
    assert_eq!(last.2, stalled_total, "stalled consumers' final bytes");
}

/// The small shape: 3 nodes × (1 producer + 2 consumers), one job, 2 MiB per producer.
const SMALL_SHAPE: [&str; 10] = [
    "--nodes",
    "3",
    "--producers",
    "1",
    "--consumers",
    "2",
    "--jobs",
    "1",
    "--bytes-per-producer",
    "2MiB",
];

/// [`SMALL_SHAPE`] with one stalled consumer.
fn stalled_shape() -> Vec<&'static str> {
    let mut args = SMALL_SHAPE.to_vec();
    args.extend(["--stall-consumers", "1"]);
    args
}

/// What each consumer of [`SMALL_SHAPE`] receives: 2 MiB spread over 6 consumers, from
/// each of the 3 producers.
const BYTES_PER_CONSUMER: u64 = 3 * (2 * 1024 * 1024 / 6);

#[test]
fn the_report_dir_holds_the_run_in_markdown_json_and_charts() {
    let dir = TempDir::new("stalled");
    let mut args = stalled_shape();
    args.extend(["--first-ip", "127.0.81.1"]);
    let (line, r) = bench_with_report(&args, &dir);

    // report.json is the very line --json printed, and holds the shape asked for.
    assert_eq!(dir.read("report.json"), line);
    let json: Value = serde_json::from_str(&dir.read("report.json")).expect("report.json");
    assert_eq!(json, r);
    for (field, value) in [
        ("nodes", 3),
        ("producers_per_node", 1),
        ("consumers_per_node", 2),
        ("jobs", 1),
        ("stalled_consumers", 1),
        ("channels", 18),
    ] {
        assert_eq!(json[field], value, "{field}");
    }
    assert_eq!(json["bytes_total"], 6 * BYTES_PER_CONSUMER);

    // Bytes delivered over time: 5 healthy consumers and 1 stalled one.
    assert_delivered(
        &dir.read("delivered.csv"),
        5 * BYTES_PER_CONSUMER,
        BYTES_PER_CONSUMER,
    );
    assert_svg(
        "delivered.svg",
        &dir.read("delivered.svg"),
        &[
            "healthy consumers (5",
            "stalled consumers (1",
            "time since start (ms)",
            "cumulative bytes delivered",
        ],
    );
    assert_svg(
        "goodput.svg",
        &dir.read("goodput.svg"),
        &["plexus", "goodput (MiB/s)", "messages per second"],
    );
    assert!(!dir.0.join("latency.svg").exists());

    let md = dir.read("report.md");
    for expected in [
        "**VERIFIED**",
        "## Machine",
        "| cores available | ",
        "| nodes (n) | 3 |",
        "| consumers per node and job (m_c) | 2 |",
        "| bytes per producer | 2.00 MiB |",
        "| stalled consumers | 1 |",
        "| plexus | yes |",
        "[delivered.svg](delivered.svg)",
        "## Stalled consumers",
        "--stall-consumers 1",
        "--report",
    ] {
        assert!(md.contains(expected), "report.md lacks {expected:?}:\n{md}");
    }
    assert!(!md.contains("## Errors"), "{md}");
}

#[test]
fn the_goodput_chart_and_tables_show_every_baseline_that_ran() {
    let dir = TempDir::new("baseline");
    let mut args = SMALL_SHAPE.to_vec();
    args.extend(["--baseline", "raw-tcp", "--first-ip", "127.0.82.1"]);
    let (_, r) = bench_with_report(&args, &dir);
    assert_svg(
        "goodput.svg",
        &dir.read("goodput.svg"),
        &["plexus", "raw-tcp"],
    );
    // Without stalled consumers, one line only: the healthy consumers'.
    let delivered = dir.read("delivered.svg");
    assert_svg("delivered.svg", &delivered, &["healthy consumers (6"]);
    assert!(!svg_texts(&delivered)
        .iter()
        .any(|t| t.starts_with("stalled")));
    assert_delivered(&dir.read("delivered.csv"), 6 * BYTES_PER_CONSUMER, 0);

    let ratio = r["ratio_vs_raw_tcp"]
        .as_f64()
        .expect("a ratio against raw-tcp");
    let md = dir.read("report.md");
    assert!(md.contains("| raw-tcp | yes |"), "{md}");
    assert!(
        md.contains(&format!("| {ratio:.2} |")),
        "no ratio {ratio:.2} in\n{md}"
    );
    assert!(!md.contains("## Stalled consumers"), "{md}");
}

#[test]
fn spawned_nodes_report_delivered_bytes_for_the_timeline() {
    let dir = TempDir::new("spawn");
    let mut args = stalled_shape();
    args.extend(["--spawn", "--first-ip", "127.0.83.1"]);
    let (_, r) = bench_with_report(&args, &dir);
    assert_eq!(r["processes"], 3);
    assert_delivered(
        &dir.read("delivered.csv"),
        5 * BYTES_PER_CONSUMER,
        BYTES_PER_CONSUMER,
    );
    assert!(dir.read("report.md").contains("With `--spawn`"));
}

#[test]
fn a_latency_run_charts_its_percentiles() {
    let dir = TempDir::new("latency");
    let (line, r) = bench_with_report(
        &[
            "--nodes",
            "2",
            "--producers",
            "1",
            "--consumers",
            "1",
            "--jobs",
            "1",
            "--latency",
            "1000",
            "--latency-secs",
            "0.5",
            "--baseline",
            "raw-tcp",
            "--first-ip",
            "127.0.84.1",
        ],
        &dir,
    );
    assert_eq!(r["mode"], "latency");
    assert_eq!(dir.read("report.json"), line);
    assert_svg(
        "latency.svg",
        &dir.read("latency.svg"),
        &["plexus", "raw-tcp", "p99.9", "µs"],
    );
    let md = dir.read("report.md");
    assert!(md.contains("# plexus bench report: latency"), "{md}");
    assert!(md.contains("| plexus | yes |"), "{md}");
    assert!(!dir.0.join("goodput.svg").exists());
}

#[test]
fn a_report_dir_that_cannot_be_made_fails_before_the_run() {
    let dir = TempDir::new("blocked");
    fs::create_dir_all(&dir.0).expect("make the temporary directory");
    let file = dir.0.join("a-file");
    fs::write(&file, "not a directory").expect("write a file");
    let below: &Path = &file.join("report");
    let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args([
            "bench",
            "--nodes",
            "2",
            "--first-ip",
            "127.0.85.1",
            "--report",
        ])
        .arg(below)
        .output()
        .expect("run plexus");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "the run went ahead");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot create"), "{stderr}");
}
