//! End-to-end tests of `plexus bench --waves`, `--arrival-order` and the refusal of shapes
//! beyond the file descriptor limit: the real binary, real sockets, its JSON report.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

use common::bench_verified;
use serde_json::Value;

/// A small all-to-all: 4 nodes, `jobs` jobs, one producer and one consumer per node and
/// job.
fn tiny(first_ip: &'static str, jobs: &'static str) -> Vec<&'static str> {
    vec![
        "--nodes",
        "4",
        "--producers",
        "1",
        "--consumers",
        "1",
        "--jobs",
        jobs,
        "--bytes-per-producer",
        "64KiB",
        "--message-size",
        "4KiB",
        "--first-ip",
        first_ip,
    ]
}

fn number(r: &Value, field: &str) -> f64 {
    r[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number: {r}"))
}

/// Checks the figures of a verified run of `waves` waves of 2 jobs.
fn assert_waves(r: &Value, waves: u64) {
    assert_eq!(r["waves"], waves, "{r}");
    assert_eq!(r["jobs_total"], 2 * waves, "{r}");
    assert_eq!(r["jobs_completed"], 2 * waves, "{r}");
    // Each consumer gets 4 producers' 16 KiB, in every wave.
    assert_eq!(r["bytes_total"], waves * 2 * 4 * 4 * 16 * 1024, "{r}");
    let (p50, p99) = (
        number(r, "job_latency_ms_p50"),
        number(r, "job_latency_ms_p99"),
    );
    assert!(0.0 < p50 && p50 <= p99, "job latency p50 {p50}, p99 {p99}");
    assert!(r["rss_growth_bytes_per_job"].is_f64(), "{r}");
}

#[test]
fn waves_run_one_after_another_and_report_job_latency() {
    let mut args = tiny("127.0.91.1", "2");
    args.extend(["--waves", "3"]);
    let r = bench_verified(&args);
    assert_waves(&r, 3);
    assert_eq!(r["arrival_order"], "same");
    assert!(r["seed"].is_u64(), "{r}");
    // One wave has no growth to measure.
    let one = bench_verified(&tiny("127.0.91.1", "2"));
    assert_eq!(
        (one["waves"].as_u64(), one["jobs_total"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(one["rss_growth_bytes_per_job"].is_null(), "{one}");
}

#[test]
fn spawned_node_processes_run_the_waves_the_coordinator_starts() {
    let mut args = tiny("127.0.92.1", "2");
    args.extend(["--waves", "3", "--spawn", "--nodes-per-process", "2"]);
    let r = bench_verified(&args);
    assert_waves(&r, 3);
    assert_eq!(r["processes"], 2, "{r}");
}

/// The tiny shape with 4 jobs arriving in a random order per node, under a budget that
/// holds `budget`.
fn random_arrival(first_ip: &'static str, budget: &'static str) -> Vec<&'static str> {
    let mut args = tiny(first_ip, "4");
    args.extend([
        "--credit-pool",
        "64KiB",
        "--memory-budget",
        budget,
        "--arrival-order",
        "per-node-random",
        "--seed",
        "42",
        "--waves",
        "3",
    ]);
    args
}

#[test]
fn per_node_random_arrival_verifies_when_every_job_fits() {
    // A job needs one 64 KiB pool per node; a quarter of 1 MiB is kept for sending, so
    // all 4 jobs fit at once.
    for spawn in [false, true] {
        let mut args = random_arrival("127.0.93.1", "1MiB");
        if spawn {
            args.push("--spawn");
        }
        let r = bench_verified(&args);
        assert_eq!(r["arrival_order"], "per-node-random", "{r}");
        assert_eq!(r["seed"], 42, "{r}");
        assert_eq!(r["jobs_completed"], 12, "{r}");
    }
}

#[test]
fn per_node_random_arrival_verifies_one_job_at_a_time() {
    // 128 KiB leaves room for the 32 KiB send share and one job's 64 KiB pool per node, not
    // two: nodes that admitted different jobs first must still not wait for each other.
    for spawn in [false, true] {
        let mut args = random_arrival("127.0.94.1", "128KiB");
        args.extend(["--timeout-s", "30"]);
        if spawn {
            args.push("--spawn");
        }
        let r = bench_verified(&args);
        assert_eq!(r["jobs_completed"], 12, "{r}");
        assert!(r["peak_buffered_bytes"].as_u64() <= Some(128 * 1024), "{r}");
    }
}

/// Runs `plexus bench ARGS` under a soft limit of 256 open files; returns its output and
/// how long it took.
fn under_256_fds(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -S -n 256 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_plexus"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run plexus bench");
    (out, started.elapsed())
}

#[test]
fn a_shape_beyond_the_descriptor_limit_is_refused_at_once() {
    // 40 nodes of 39 links each in one process: about 1784 descriptors.
    let (out, took) = under_256_fds(&["--nodes", "40", "--first-ip", "127.0.95.1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        stderr.contains("40 nodes in one process need about 1784 file descriptors (39 links per node); this process may open 256. Use --spawn --nodes-per-process G (G ≤ 4)"),
        "{stderr}"
    );
    // With --spawn, each node process is held to the same limit.
    let (out, _) = under_256_fds(&[
        "--nodes",
        "40",
        "--spawn",
        "--nodes-per-process",
        "8",
        "--first-ip",
        "127.0.95.1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("8 nodes in one node process need about") && stderr.contains("(G ≤ 4)"),
        "{stderr}"
    );
}

#[test]
fn waves_and_arrival_orders_refuse_what_they_cannot_do() {
    for args in [
        &["--waves", "0"][..],
        &["--waves", "2", "--stall-consumers", "1"],
        &["--waves", "2", "--baseline", "raw-tcp"],
        &["--waves", "2147483648", "--jobs", "2"],
        &["--latency", "100", "--arrival-order", "per-node-random"],
        &["--arrival-order", "backwards"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
            .arg("bench")
            .args(args)
            .output()
            .expect("run plexus");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--waves")
                || stderr.contains("--arrival-order")
                || stderr.contains("backwards"),
            "{args:?}: {stderr}"
        );
    }
}
