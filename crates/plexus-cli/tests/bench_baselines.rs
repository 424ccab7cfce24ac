//! End-to-end tests of `plexus bench --baseline` (the same workload over raw TCP, one TCP
//! connection per channel, and ZeroMQ with the `zmq` feature) and of `--latency`. Each
//! test uses its own 127.0.6X.1 address range so that tests can run in parallel.

use std::process::Command;

mod common;

use common::{baseline, bench_command, bench_verified, report};
use serde_json::Value;

fn number(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

const SMALL: [&str; 12] = [
    "--nodes",
    "3",
    "--producers",
    "2",
    "--consumers",
    "2",
    "--jobs",
    "2",
    "--bytes-per-producer",
    "512KiB",
    "--message-size",
    "4KiB",
];

#[test]
fn raw_and_naive_tcp_carry_the_same_workload_verified_with_ratios() {
    let mut args = SMALL.to_vec();
    args.extend([
        "--first-ip",
        "127.0.61.1",
        "--baseline",
        "raw-tcp,naive-tcp",
    ]);
    let r = bench_verified(&args);
    assert_eq!(r["channels"], 2 * 6 * 6);
    for (system, connections) in [("raw-tcp", 3), ("naive-tcp", 72)] {
        let b = baseline(&r, system);
        assert_eq!(b["verified"], true, "{b}");
        assert_eq!(b["skipped"], false, "{b}");
        assert_eq!(b["bytes_total"], r["bytes_total"], "{b}");
        assert_eq!(b["messages_total"], r["messages_total"], "{b}");
        assert_eq!(b["connections"], connections, "{b}");
        assert!(number(b, "throughput_bytes_per_s") > 0.0, "{b}");
        assert!(number(b, "messages_per_s") > 0.0, "{b}");
        assert!(number(b, "elapsed_s") > 0.0, "{b}");
        assert!(b.get("links_per_node_max").is_some(), "{b}");
        let key = system.replace('-', "_");
        let ratio = number(&r, &format!("ratio_vs_{key}"));
        let expected = number(&r, "throughput_bytes_per_s") / number(b, "throughput_bytes_per_s");
        assert!(
            (ratio - expected).abs() < 1e-9 * expected,
            "{ratio} vs {expected}"
        );
        assert!(number(&r, &format!("msgs_ratio_vs_{key}")) > 0.0);
    }
    // One connection per node pair: each node holds at most two.
    let links = baseline(&r, "raw-tcp")["links_per_node_max"]
        .as_u64()
        .expect("links");
    assert!(links <= 2, "raw-tcp links per node {links}");
}

#[test]
fn naive_tcp_is_skipped_when_it_would_exceed_the_descriptor_limit() {
    // 2 jobs × 16 producers × 16 consumers = 512 channels: 1024 descriptors, over 90% of
    // a soft limit of 1024. raw-tcp still runs.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -S -n 1024 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_plexus"))
        .args(["bench", "--json", "--timeout-s", "60"])
        .args(["--nodes", "2", "--producers", "8", "--consumers", "8"])
        .args(["--jobs", "2", "--bytes-per-producer", "16KiB"])
        .args(["--message-size", "1KiB", "--first-ip", "127.0.62.1"])
        .args(["--baseline", "naive-tcp,raw-tcp"]);
    let (out, r) = report(command);
    assert!(out.status.success(), "{r}");
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["channels"], 512);
    let naive = baseline(&r, "naive-tcp");
    assert_eq!(naive["skipped"], true, "{naive}");
    assert_eq!(
        naive["note"],
        "skipped: would need 512 connections (1024 file descriptors in one process), the fd limit is 1024"
    );
    assert_eq!(naive["connections"], 0);
    assert!(r["ratio_vs_naive_tcp"].is_null(), "{r}");
    assert_eq!(baseline(&r, "raw-tcp")["verified"], true);
    assert!(number(&r, "ratio_vs_raw_tcp") > 0.0);
}

#[test]
fn latency_reports_ordered_percentiles_for_plexus_and_raw_tcp() {
    let r = bench_verified(&[
        "--nodes",
        "3",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--jobs",
        "2",
        "--latency",
        "2000",
        "--latency-secs",
        "1",
        "--baseline",
        "raw-tcp",
        "--first-ip",
        "127.0.63.1",
    ]);
    assert_eq!(r["mode"], "latency");
    assert_eq!(r["message_size"], 128);
    // 2000 messages per second for 1 s over 72 channels: 27 each.
    assert_eq!(r["messages_per_channel"], 27);
    let raw = baseline(&r, "raw-tcp");
    for figures in [&r, raw] {
        assert_eq!(figures["messages_total"], 72 * 27, "{figures}");
        let p = [
            "latency_us_p50",
            "latency_us_p99",
            "latency_us_p999",
            "latency_us_max",
        ]
        .map(|f| number(figures, f));
        assert!(p[0] > 0.0, "{figures}");
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "unordered {p:?}");
        let rate = number(figures, "achieved_rate");
        assert!((1000.0..=2500.0).contains(&rate), "achieved {rate}/s");
    }
    assert_eq!(raw["verified"], true);
    assert!(number(&r, "latency_p99_ratio_vs_raw_tcp") > 0.0);
}

#[test]
fn baselines_and_latency_refuse_what_they_cannot_do() {
    for args in [
        vec!["--baseline", "raw-tcp", "--spawn"],
        vec!["--latency", "100", "--baseline", "naive-tcp"],
        vec!["--latency", "0"],
        vec!["--latency-load"],
        vec!["--latency", "100", "--baseline", "tcp"],
        vec!["--baseline", "carrier-pigeon"],
    ] {
        let out = bench_command(&args).output().expect("run plexus");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[cfg(not(feature = "zmq"))]
#[test]
fn zmq_needs_the_feature() {
    let out = bench_command(&["--baseline", "zmq"])
        .output()
        .expect("run plexus");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--features zmq"), "{stderr}");
}

#[cfg(not(feature = "rabbitmq"))]
#[test]
fn rabbitmq_needs_the_feature() {
    let out = bench_command(&["--baseline", "rabbitmq"])
        .output()
        .expect("run plexus");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--features rabbitmq"), "{stderr}");
}

#[cfg(feature = "zmq")]
#[test]
fn zmq_carries_the_same_workload_verified() {
    let mut args = SMALL.to_vec();
    args.extend(["--first-ip", "127.0.64.1", "--baseline", "zmq"]);
    let r = bench_verified(&args);
    let b = baseline(&r, "zmq");
    assert_eq!(b["verified"], true, "{b}");
    assert_eq!(b["bytes_total"], r["bytes_total"]);
    assert_eq!(b["connections"], 72);
    assert!(number(&r, "ratio_vs_zmq") > 0.0);
}
