//! Helpers shared by the end-to-end tests of `plexus bench`: running the real binary and
//! reading its one-line JSON report.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::process::{Command, Output};

use serde_json::Value;

/// `plexus bench --json ARGS`, with `--timeout-s 120` unless `args` set a timeout.
pub fn bench_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plexus"));
    command.args(["bench", "--json"]).args(args);
    if !args.contains(&"--timeout-s") {
        command.args(["--timeout-s", "120"]);
    }
    command
}

/// Runs `command`; returns its output and its report, asserting there is exactly one
/// JSON line on stdout.
pub fn report(mut command: Command) -> (Output, Value) {
    let out = command.output().expect("run plexus bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one JSON line, got {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(lines[0]).expect("valid JSON");
    (out, report)
}

/// Runs the bench with `args`; returns its output and its report.
pub fn run(args: &[&str]) -> (Output, Value) {
    report(bench_command(args))
}

/// Runs the bench with `args`; it must exit successfully and report `verified: true`.
pub fn bench_verified(args: &[&str]) -> Value {
    let (out, r) = run(args);
    assert!(
        out.status.success() && r["verified"] == true,
        "bench failed: {}\nreport: {r}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

/// The entry of `system` in the `baselines` of report `r`.
pub fn baseline<'a>(r: &'a Value, system: &str) -> &'a Value {
    r["baselines"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["system"] == system))
        .unwrap_or_else(|| panic!("no {system} baseline in {r}"))
}

/// The words of a command line written as one string.
pub fn args(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}
