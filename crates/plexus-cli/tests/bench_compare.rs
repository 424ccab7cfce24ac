//! End-to-end tests of the comparison: the grpc baseline, the baselines under the same
//! stalls and link kills as plexus, and `plexus bench --compare`. Each test uses its own
//! 127.0.7X.1 address range so that tests can run in parallel.

mod common;

use common::{args, baseline, bench_command, bench_verified, report};
use serde_json::Value;

/// The row of `system` in a `--compare` report.
fn row<'a>(r: &'a Value, system: &str) -> &'a Value {
    r["compare"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["system"] == system))
        .unwrap_or_else(|| panic!("no {system} row in {r}"))
}

#[test]
fn grpc_carries_the_same_workload_over_one_connection_per_node_pair() {
    let r = bench_verified(&args(
        "--nodes 3 --producers 2 --consumers 2 --jobs 2 --bytes-per-producer 512KiB --message-size 4KiB --first-ip 127.0.71.1 --baseline grpc",
    ));
    let b = baseline(&r, "grpc");
    assert_eq!(b["verified"], true, "{b}");
    assert_eq!(b["outcome"], "verified", "{b}");
    assert_eq!(b["bytes_total"], r["bytes_total"], "{b}");
    assert_eq!(b["messages_total"], r["messages_total"], "{b}");
    // One HTTP/2 connection per pair of the three nodes, made by the lower one.
    assert_eq!(b["connections"], 3, "{b}");
    let links = b["links_per_node_max"].as_u64().expect("links");
    assert!(links <= 2, "grpc links per node {links}");
    let ratio = r["ratio_vs_grpc"].as_f64().expect("ratio_vs_grpc");
    assert!(ratio > 0.0, "{ratio}");
}

#[test]
fn small_http2_windows_still_carry_messages_larger_than_them() {
    // Windows of 64 KiB - 1 and 128 KiB messages: each message waits for window updates.
    let r = bench_verified(&args(
        "--nodes 2 --producers 1 --consumers 2 --jobs 1 --bytes-per-producer 2MiB --message-size 128KiB --first-ip 127.0.72.1 --baseline grpc --grpc-window 65535",
    ));
    assert_eq!(baseline(&r, "grpc")["verified"], true, "{r}");
}

#[test]
fn baselines_face_the_same_stalled_consumers_and_say_what_they_held() {
    let (out, r) = report(bench_command(&args(
        "--nodes 3 --producers 2 --consumers 2 --jobs 1 --bytes-per-producer 1MiB --message-size 8KiB --stall-consumers 1 --first-ip 127.0.73.1 --baseline raw-tcp,naive-tcp --timeout-s 60",
    )));
    assert!(out.status.success(), "{r}");
    // Each of the 6 consumers is owed a sixth of everything.
    let owed = r["bytes_total"].as_u64().expect("bytes") / 6;
    for system in ["raw-tcp", "naive-tcp"] {
        let b = baseline(&r, system);
        assert_eq!(b["stalled_consumers"], 1, "{b}");
        assert_eq!(b["outcome"], "verified", "{b}");
        assert!(
            b["healthy_throughput_bytes_per_s"]
                .as_f64()
                .expect("healthy")
                > 0.0
        );
        // Their readers never wait on a consumer: everything owed to it piles up.
        assert_eq!(b["stalled_buffered_bytes_max"], owed, "{b}");
    }
    let held = r["stalled_buffered_bytes_max"]
        .as_u64()
        .expect("plexus held");
    assert!(held > 0 && held <= 4 << 20, "plexus held {held}");
}

#[test]
fn baselines_face_the_same_link_kills_and_their_failure_is_a_result() {
    let (out, r) = report(bench_command(&args(
        "--nodes 3 --producers 2 --consumers 2 --jobs 1 --bytes-per-producer 16MiB --message-size 32KiB --chaos-link-kill-ms 40 --first-ip 127.0.74.1 --baseline raw-tcp --timeout-s 60",
    )));
    // plexus resumes its links; the run passes whatever raw TCP came to.
    assert!(out.status.success(), "{r}");
    assert_eq!(r["verified"], true, "{r}");
    let b = baseline(&r, "raw-tcp");
    let kills = b["link_kills"].as_u64().expect("kills");
    let outcome = b["outcome"].as_str().expect("outcome");
    if kills > 0 {
        assert_ne!(outcome, "verified", "raw TCP survived {kills} kills: {b}");
    }
    assert!(
        ["verified", "failed", "lost", "blocked"].contains(&outcome),
        "{b}"
    );
}

#[test]
fn compare_reports_every_column_for_every_system_that_ran() {
    let dir = std::env::temp_dir().join(format!("plexus-compare-{}", std::process::id()));
    let dir_arg = dir.display().to_string();
    let mut line = args(
        "--compare --nodes 3 --producers 1 --consumers 2 --jobs 1 --bytes-per-producer 4MiB --message-size 16KiB --chaos-link-kill-ms 30 --first-ip 127.0.75.1 --timeout-s 60 --report",
    );
    line.push(&dir_arg);
    let (out, r) = report(bench_command(&line));
    assert!(out.status.success(), "{r}");
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["stall_consumers"], 2);
    let rows = r["compare"].as_array().expect("compare");
    let systems: Vec<&str> = rows.iter().filter_map(|x| x["system"].as_str()).collect();
    assert_eq!(
        systems,
        ["plexus", "raw-tcp", "naive-tcp", "grpc", "zmq", "rabbitmq"]
    );
    let plexus = row(&r, "plexus");
    assert_eq!(plexus["plain_outcome"], "verified", "{plexus}");
    assert_eq!(plexus["stall_outcome"], "verified", "{plexus}");
    assert_eq!(plexus["link_kill_outcome"], "verified", "{plexus}");
    assert!(plexus["links_per_node_max"].as_u64().expect("links") <= 2);
    for x in rows.iter().filter(|x| x["skipped"].is_null()) {
        for field in [
            "links_per_node_max",
            "throughput_bytes_per_s",
            "stall_healthy_ratio",
            "stall_buffered_bytes_max",
            "link_kill_outcome",
        ] {
            assert!(!x[field].is_null(), "{field} missing in {x}");
        }
        let outcome = x["link_kill_outcome"].as_str().expect("outcome");
        assert!(
            ["verified", "failed", "lost", "duplicated", "blocked"].contains(&outcome),
            "{x}"
        );
    }
    if !cfg!(feature = "zmq") {
        assert_eq!(row(&r, "zmq")["skipped"], "built without the zmq feature");
    }
    // The report: the same JSON, the table in Markdown, and a chart per column.
    let json = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    assert_eq!(serde_json::from_str::<Value>(&json).expect("json"), r);
    let markdown = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(markdown.contains("| grpc |"), "{markdown}");
    for chart in [
        "links.svg",
        "goodput.svg",
        "stall.svg",
        "held.svg",
        "link-kills.svg",
    ] {
        let svg = std::fs::read_to_string(dir.join(chart)).expect("chart");
        assert!(svg.starts_with("<svg") && svg.contains("plexus"), "{chart}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_refuses_what_it_cannot_run() {
    for line in [
        "--compare --spawn",
        "--compare --agent",
        "--compare --baseline raw-tcp",
        "--compare --latency 100",
        "--grpc-window 1MiB",
        "--baseline grpc --grpc-window 100",
    ] {
        let out = bench_command(&args(line)).output().expect("run plexus");
        assert_eq!(out.status.code(), Some(2), "{line}");
        assert!(out.stdout.is_empty(), "{line}");
    }
}
