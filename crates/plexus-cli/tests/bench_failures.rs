//! End-to-end tests of `plexus bench` across processes and failures: `--spawn` (one OS
//! process per node), `--nodes-per-job`, `--kill-node` and `--chaos-link-kill-ms`. Each
//! test uses its own 127.0.X.1 address range so that tests can run in parallel.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{args, bench_verified, run as bench};

#[test]
fn spawn_runs_one_process_per_node_and_verifies() {
    let r = bench_verified(&args("--spawn --nodes 3 --producers 2 --consumers 2 --jobs 2 --bytes-per-producer 1MiB --message-size 8KiB --credit-pool 64KiB --stall-consumers 1 --first-ip 127.0.43.1 --timeout-s 60"));
    assert_eq!(r["processes"], 3);
    assert_eq!(r["nodes"], 3);
    assert_eq!(r["nodes_per_job"], 3);
    assert_eq!(r["channels"], 2 * 6 * 6);
    assert_eq!(r["jobs_completed"], 2);
    assert_eq!(r["jobs_failed"], 0);
    assert_eq!(r["stalled_consumers"], 1);
    let held = r["stalled_buffered_bytes_max"].as_u64().expect("held");
    assert!(held <= 64 * 1024, "a stalled consumer held {held} bytes");
    let links = r["links_per_node_max"].as_u64().expect("links");
    assert!((1..=2).contains(&links), "links per node {links}");
    assert!(r["rss_peak_bytes"].as_u64().expect("rss") > 0);
    let per_process = r["rss_peak_bytes_per_process"]
        .as_array()
        .expect("per process");
    assert_eq!(per_process.len(), 3);
    assert!(per_process
        .iter()
        .all(|rss| rss.as_u64().is_some_and(|b| b > 0)));
    for field in [
        "killed_node",
        "failure_detect_ms_max",
        "resume_ms_p50",
        "resume_ms_p99",
    ] {
        assert!(r[field].is_null(), "{field} = {}", r[field]);
    }
    assert_eq!(r["link_kills"], 0);
    assert_eq!(r["link_resumes"], 0);
}

#[test]
fn nodes_per_job_shapes_channels_and_links() {
    // Job 0 uses nodes 0 and 1, job 1 nodes 2 and 3: each node talks to one peer.
    let r = bench_verified(&args("--nodes 4 --nodes-per-job 2 --producers 2 --consumers 1 --jobs 2 --bytes-per-producer 256KiB --message-size 4KiB --first-ip 127.0.44.1 --timeout-s 60"));
    assert_eq!(r["nodes_per_job"], 2);
    // k · (N·m_p) · (N·m_c) = 2 · 4 · 2
    assert_eq!(r["channels"], 16);
    // One job per node: m_p·N·m_c + m_c·N·m_p = 4 + 4.
    assert_eq!(r["naive_connections_per_node"], 8);
    assert_eq!(r["links_per_node_max"], 1);
    assert_eq!(r["processes"], 1);
    assert_eq!(r["jobs_completed"], 2);
}

#[test]
fn killing_a_node_fails_exactly_the_jobs_that_use_it() {
    let timeout_s = 30;
    let started = Instant::now();
    let (out, r) = bench(&[
        "--spawn",
        "--nodes",
        "4",
        "--nodes-per-job",
        "2",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--jobs",
        "2",
        "--bytes-per-producer",
        "4MiB",
        "--kill-node",
        "1",
        "--kill-at-ms",
        "300",
        "--first-ip",
        "127.0.45.1",
        "--timeout-s",
        &timeout_s.to_string(),
    ]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < Duration::from_secs(timeout_s),
        "took {took:?}\n{r}\n{stderr}"
    );
    let errors = r["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        !errors
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("timed out"))),
        "{r}"
    );
    // Job 1 (index 0) uses nodes 0 and 1; job 2 uses nodes 2 and 3 and must verify.
    assert_eq!(r["killed_node"], 1, "{r}\n{stderr}");
    assert_eq!(r["affected_job_ids"], serde_json::json!([1]));
    assert_eq!(r["failed_job_ids"], serde_json::json!([1]), "{r}");
    assert_eq!(r["jobs_completed"], 1, "{r}");
    assert!(
        !errors
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.starts_with("job 2"))),
        "{r}"
    );
    let detect = r["failure_detect_ms_max"]
        .as_u64()
        .expect("a detection time");
    assert!(
        detect < 3000,
        "every endpoint of job 1 saw the failure within {detect} ms"
    );
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["processes"], 4);
}

#[test]
fn kill_node_without_spawn_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["bench", "--kill-node", "1", "--kill-at-ms", "100"])
        .output()
        .expect("run plexus");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--kill-node needs --spawn"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["bench", "--nodes", "3", "--nodes-per-job", "4"])
        .output()
        .expect("run plexus");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes-per-job"));
}

#[test]
fn chaos_kills_links_from_outside_and_the_run_ends() {
    let (_, r) = bench(&args("--nodes 3 --producers 2 --consumers 2 --jobs 1 --bytes-per-producer 128MiB --chaos-link-kill-ms 50 --first-ip 127.0.46.1 --timeout-s 30"));
    // Killed links reconnect and resume: nothing is lost, nothing fails.
    assert!(r["link_kills"].as_u64().expect("link_kills") >= 1, "{r}");
    assert!(
        r["link_resumes"].as_u64().expect("link_resumes") >= 1,
        "{r}"
    );
    assert!(r["resume_ms_p99"].is_f64(), "{r}");
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["jobs_failed"], 0, "{r}");
}

#[test]
fn nodes_per_process_groups_nodes_into_fewer_processes() {
    let r = bench_verified(&args("--spawn --nodes 5 --nodes-per-process 2 --producers 1 --consumers 1 --jobs 1 --bytes-per-producer 256KiB --message-size 4KiB --first-ip 127.0.48.1"));
    assert_eq!(r["processes"], 3, "5 nodes, 2 per process: {r}");
    assert_eq!(r["links_per_node_max"], 4, "{r}");
    let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["bench", "--nodes", "4", "--nodes-per-process", "2"])
        .output()
        .expect("run plexus");
    assert_eq!(
        out.status.code(),
        Some(2),
        "--nodes-per-process needs --spawn"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes-per-process"));
}
