//! End-to-end tests of `plexus bench --agent`: one `plexus agent` per node and every
//! endpoint in a process of its own, attached to its node's agent; a killed endpoint fails
//! only its job; latency through attaches is reported beside the embedded run; options that
//! do not go with agents are refused; nothing is left behind
//! (processes, the agents' directory); a stalled consumer's credit figures come through the
//! agents. Each test uses its own 127.0.13X.1 or 127.0.14X.1 address range so that tests
//! can run in parallel.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{args, bench_command};
use serde_json::Value;

/// Runs `plexus bench --json ARGS` (with `--agent`), checking that it leaves no process
/// and no directory behind; returns whether it exited successfully, its report and its
/// stderr.
fn run_agent(args: &[&str]) -> (bool, Value, String) {
    let mut command = bench_command(args);
    command.arg("--agent");
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run plexus bench");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for plexus bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("one JSON line expected ({e}): {stdout}\nstderr: {stderr}"));
    // The agents' directory is named after the bench's pid; no process may still name it.
    let mark = format!("plexus-bench-{pid}-");
    let left: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|name| name.starts_with(&mark))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let processes: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&mark))
        .collect();
    assert!(processes.is_empty(), "still running: {processes:?}");
    (out.status.success(), report, stderr)
}

#[test]
fn every_endpoint_in_its_own_process_through_the_agents_verifies() {
    let (ok, r, stderr) = run_agent(&args("--nodes 2 --producers 1 --consumers 1 --jobs 1 --bytes-per-producer 1MiB --message-size 32KiB --first-ip 127.0.131.1 --timeout-s 30"));
    assert!(ok && r["verified"] == true, "{r}\n{stderr}");
    assert_eq!(r["agents"], 2);
    assert_eq!(r["endpoint_processes"], 4);
    assert_eq!(r["processes"], 2);
    assert_eq!(r["jobs_completed"], 1);
    assert_eq!(r["links_per_node_max"], 1, "{r}");
    assert_eq!(r["bytes_total"], 2 * 1024 * 1024);
    assert!(r["killed_endpoint"].is_null());
    let rss = r["rss_peak_bytes_per_process"]
        .as_array()
        .expect("per agent");
    assert_eq!(rss.len(), 2);
    assert!(rss.iter().all(|b| b.as_u64().is_some_and(|b| b > 0)), "{r}");
}

#[test]
fn a_stalled_consumer_holds_no_more_than_its_pool_through_the_agents() {
    let (ok, r, stderr) = run_agent(&args("--nodes 2 --producers 1 --consumers 1 --jobs 2 --bytes-per-producer 1MiB --message-size 8KiB --credit-pool 64KiB --stall-consumers 1 --first-ip 127.0.141.1 --timeout-s 30"));
    assert!(ok && r["verified"] == true, "{r}\n{stderr}");
    assert_eq!(r["stalled_consumers"], 1);
    let pool = r["credit_pool_bytes"].as_u64().expect("pool");
    assert_eq!(pool, 64 * 1024);
    let held = r["stalled_buffered_bytes_max"].as_u64().expect("held");
    assert!(
        held > 0,
        "the stalled consumer was never granted anything: {r}"
    );
    assert!(held <= pool, "a stalled consumer held {held} bytes: {r}");
    let any = r["consumer_held_bytes_max"].as_u64().expect("held");
    assert!(any >= held && any <= pool, "{r}");
}

#[test]
fn a_killed_endpoint_fails_its_job_only() {
    let started = Instant::now();
    // Job 1 uses both nodes, and so does job 2; endpoint 1 is job 1's consumer on node 0
    // (producers before consumers).
    let (ok, r, stderr) = run_agent(&args("--nodes 2 --producers 1 --consumers 1 --jobs 2 --bytes-per-producer 512KiB --message-size 16KiB --kill-endpoint 1 --kill-at-ms 200 --first-ip 127.0.132.1 --timeout-s 30"));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(ok && r["verified"] == true, "{r}\n{stderr}");
    assert_eq!(
        r["killed_endpoint"],
        serde_json::json!({"index": 1, "job": 1, "node": 0, "role": "consumer", "slot": 0})
    );
    assert_eq!(r["affected_job_ids"], serde_json::json!([1]));
    assert_eq!(r["failed_job_ids"], serde_json::json!([1]));
    assert_eq!(r["jobs_completed"], 1);
    assert!(r["failure_detect_ms_max"].is_u64(), "{r}");
    assert!(r["killed_node"].is_null());
}

#[test]
fn a_killed_agent_fails_the_jobs_of_its_node_on_every_endpoint() {
    // Job 1 uses nodes 0 and 1, job 2 nodes 2 and 0, job 3 nodes 1 and 2: the agent of
    // node 2 takes jobs 2 and 3 with it, and its own endpoint processes see it go.
    let (ok, r, stderr) = run_agent(&args("--nodes 3 --nodes-per-job 2 --producers 1 --consumers 1 --jobs 3 --bytes-per-producer 512KiB --message-size 16KiB --kill-node 2 --kill-at-ms 200 --first-ip 127.0.133.1 --timeout-s 30"));
    assert!(ok && r["verified"] == true, "{r}\n{stderr}");
    assert_eq!(r["killed_node"], 2);
    assert_eq!(r["affected_job_ids"], serde_json::json!([2, 3]));
    assert_eq!(r["failed_job_ids"], serde_json::json!([2, 3]));
    assert_eq!(r["jobs_completed"], 1);
}

#[test]
fn the_embedded_baseline_runs_the_same_shape_one_node_per_process() {
    let (ok, r, stderr) = run_agent(&args("--nodes 2 --producers 1 --consumers 1 --jobs 1 --bytes-per-producer 256KiB --message-size 4KiB --baseline embedded --first-ip 127.0.134.1 --timeout-s 30"));
    assert!(ok && r["verified"] == true, "{r}\n{stderr}");
    let embedded = &r["baselines"][0];
    assert_eq!(embedded["system"], "embedded");
    assert_eq!(embedded["verified"], true, "{r}");
    assert_eq!(embedded["links_per_node_max"], 1, "{r}");
    assert!(
        r["ratio_vs_embedded"].as_f64().is_some_and(|x| x > 0.0),
        "{r}"
    );
    assert!(
        r["msgs_ratio_vs_embedded"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{r}"
    );
}

#[test]
fn latency_through_attaches_is_reported_beside_the_embedded_run() {
    let (ok, r, stderr) = run_agent(&args("--nodes 2 --producers 1 --consumers 1 --jobs 2 --latency 400 --latency-secs 0.5 --first-ip 127.0.142.1 --timeout-s 30"));
    assert!(ok && r["verified"] == true, "{r}\n{stderr}");
    assert_eq!(r["mode"], "latency");
    assert_eq!(r["attached"], true);
    assert_eq!(r["system"], "plexus");
    assert_eq!(r["messages_total"], 200, "{r}");
    let embedded = &r["baselines"][0];
    assert_eq!(embedded["system"], "embedded", "{r}");
    assert_eq!(embedded["verified"], true, "{r}");
    assert_eq!(embedded["messages_total"], 200, "{r}");
    for run in [&r, embedded] {
        let p50 = run["latency_us_p50"].as_f64().expect("p50");
        let p99 = run["latency_us_p99"].as_f64().expect("p99");
        assert!(0.0 < p50 && p50 <= p99, "{r}");
    }
    assert!(
        r["latency_p99_ratio_vs_embedded"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{r}"
    );
}

#[test]
fn options_that_do_not_go_with_agents_are_refused() {
    let refused = |args: &[&str], says: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
            .arg("bench")
            .args(args)
            .output()
            .expect("run plexus");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    refused(&["--agent", "--spawn"], "--agent does not go with --spawn");
    refused(
        &["--agent", "--waves", "2"],
        "--agent does not go with --waves",
    );
    refused(
        &["--kill-endpoint", "1", "--kill-at-ms", "100"],
        "--kill-endpoint needs --agent",
    );
    refused(&["--baseline", "embedded"], "--baseline embedded");
    refused(
        &[
            "--agent",
            "--latency",
            "100",
            "--kill-node",
            "1",
            "--kill-at-ms",
            "5",
        ],
        "--latency runs without failures",
    );
    refused(
        &[
            "--agent",
            "--nodes",
            "2",
            "--kill-endpoint",
            "99",
            "--kill-at-ms",
            "5",
        ],
        "--kill-endpoint 99",
    );
}
