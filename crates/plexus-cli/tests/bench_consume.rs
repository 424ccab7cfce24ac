//! End-to-end tests of `plexus bench --consume`: consumers that read their producers as a
//! k-way merge or build side before probe side, in one process and with one process per
//! node, verify, hold at most their credit pool, and are compared with interleaved
//! reading; combinations that make no sense are refused. Each test uses its own
//! 127.0.12X.1 address range so that tests can run in parallel.

use std::process::Command;

use serde_json::Value;

mod common;

use common::bench_verified;

/// 3 nodes × (2 producers + 2 consumers), 2 jobs, 1 MiB per producer, in messages of
/// `message_size`, with a credit pool of `pool`, from `first_ip`.
fn tiny(
    consume: &'static str,
    message_size: &'static str,
    pool: &'static str,
    first_ip: &'static str,
) -> Vec<&'static str> {
    vec![
        "--consume",
        consume,
        "--nodes",
        "3",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--jobs",
        "2",
        "--bytes-per-producer",
        "1MiB",
        "--message-size",
        message_size,
        "--credit-pool",
        pool,
        "--first-ip",
        first_ip,
    ]
}

/// Checks what every run with an ordered reading reports: its mode, a consumer's held
/// credit within the pool, and the interleaved run it is compared with.
fn assert_ordered(r: &Value, mode: &str, pool: u64) {
    assert_eq!(r["consume_mode"], mode, "{r}");
    assert_eq!(r["credit_pool_bytes"], pool, "{r}");
    let held = r["consumer_held_bytes_max"].as_u64().expect("held bytes");
    assert!(held > 0 && held <= pool, "a consumer held {held} of {pool}");
    let theirs = r["interleaved_throughput_bytes_per_s"]
        .as_f64()
        .expect("the interleaved run's throughput");
    let ratio = r["ratio_vs_interleaved"].as_f64().expect("a ratio");
    let ours = r["throughput_bytes_per_s"].as_f64().expect("throughput");
    assert!(theirs > 0.0 && ratio > 0.0, "{r}");
    assert!((ratio - ours / theirs).abs() < 1e-9 * ratio.max(1.0), "{r}");
}

#[test]
fn a_merge_in_one_process_verifies_within_its_pool() {
    // Four 8 KiB messages' worth of pool: the other producers may read ahead by little.
    let mut args = tiny("merge", "8KiB", "32KiB", "127.0.121.1");
    // Jobs on 2 of the 3 nodes, round robin: the second job's producers are on nodes 2
    // and 0, numbered in endpoint order.
    args.extend(["--nodes-per-job", "2"]);
    let r = bench_verified(&args);
    assert_ordered(&r, "merge", 32 * 1024);
    assert_eq!(r["jobs_completed"], 2);
}

#[test]
fn a_merge_of_small_batched_messages_verifies_with_one_process_per_node() {
    let mut args = tiny("merge", "512B", "16KiB", "127.0.122.1");
    args.push("--spawn");
    let r = bench_verified(&args);
    assert_ordered(&r, "merge", 16 * 1024);
    assert_eq!(r["processes"], 3);
}

#[test]
fn build_then_probe_in_one_process_verifies_over_waves() {
    let mut args = tiny("build-then-probe", "512B", "16KiB", "127.0.123.1");
    args.extend(["--waves", "2"]);
    let r = bench_verified(&args);
    assert_ordered(&r, "build-then-probe", 16 * 1024);
    assert_eq!(r["jobs_completed"], 4);
}

#[test]
fn build_then_probe_verifies_with_one_process_per_node() {
    let mut args = tiny("build-then-probe", "8KiB", "32KiB", "127.0.124.1");
    args.push("--spawn");
    let r = bench_verified(&args);
    assert_ordered(&r, "build-then-probe", 32 * 1024);
    assert_eq!(r["processes"], 3);
}

#[test]
fn interleaved_reading_is_the_default_and_is_not_compared() {
    let r = bench_verified(&[
        "--nodes",
        "2",
        "--producers",
        "1",
        "--consumers",
        "1",
        "--jobs",
        "1",
        "--bytes-per-producer",
        "256KiB",
        "--credit-pool",
        "64KiB",
        "--first-ip",
        "127.0.125.1",
    ]);
    assert_eq!(r["consume_mode"], "interleaved");
    let held = r["consumer_held_bytes_max"].as_u64().expect("held bytes");
    assert!(held > 0 && held <= 64 * 1024, "a consumer held {held}");
    assert_eq!(r["interleaved_throughput_bytes_per_s"], Value::Null);
    assert_eq!(r["ratio_vs_interleaved"], Value::Null);
}

/// Runs `plexus bench ARGS`, which must be refused before anything runs; returns what it
/// said on stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .arg("bench")
        .args(args)
        .args(["--first-ip", "127.0.126.1"])
        .output()
        .expect("run plexus");
    assert_eq!(out.status.code(), Some(2), "{args:?} was not refused");
    assert!(out.stdout.is_empty(), "{args:?}: the run went ahead");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn combinations_that_make_no_sense_are_refused() {
    let stalled = refused(&["--consume", "merge", "--stall-consumers", "1"]);
    assert!(
        stalled.contains("--consume merge") && stalled.contains("--stall-consumers"),
        "{stalled}"
    );
    let baseline = refused(&["--consume", "build-then-probe", "--baseline", "raw-tcp"]);
    assert!(baseline.contains("--baseline"), "{baseline}");
    let alone = refused(&[
        "--consume",
        "build-then-probe",
        "--nodes",
        "1",
        "--producers",
        "1",
    ]);
    assert!(alone.contains("at least 2 producers per job"), "{alone}");
    let unknown = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["bench", "--consume", "sideways"])
        .output()
        .expect("run plexus");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("sideways"));
}
