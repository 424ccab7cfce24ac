//! End-to-end tests of `plexus bench`: the real binary, real sockets, its JSON report.

use std::process::Command;

mod common;

use common::bench_verified as bench;

#[test]
fn small_all_to_all_verifies_with_one_link_per_peer() {
    let r = bench(&[
        "--nodes",
        "4",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--jobs",
        "2",
        "--bytes-per-producer",
        "256KiB",
        "--message-size",
        "4KiB",
        "--first-ip",
        "127.0.41.1",
    ]);
    assert_eq!(r["verified"], true);
    assert_eq!(r["nodes"], 4);
    assert_eq!(r["channels"], 2 * 8 * 8);
    // 2·k·m·(m·n) = 2·2·2·8
    assert_eq!(r["naive_connections_per_node"], 64);
    let links = r["links_per_node_max"].as_u64().expect("links");
    assert!((1..=3).contains(&links), "links per node {links}");
    let total = r["bytes_total"].as_u64().expect("bytes");
    assert!(
        total >= 2 * 8 * 256 * 1024 - 2 * 8 * 8 * 4096,
        "bytes {total}"
    );
    for field in [
        "elapsed_s",
        "throughput_bytes_per_s",
        "messages_per_s",
        "messages_total",
        "rss_peak_bytes",
        "rss_peak_bytes_per_process",
        "credit_pool_bytes",
        "healthy_throughput_bytes_per_s",
        "stalled_buffered_bytes_max",
        "stalled_consumers",
        "producers_per_node",
        "consumers_per_node",
        "jobs",
    ] {
        assert!(r.get(field).is_some(), "missing field {field}");
    }
}

#[test]
fn stalled_consumers_hold_at_most_their_pool_and_the_run_still_verifies() {
    let r = bench(&[
        "--nodes",
        "3",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--jobs",
        "1",
        "--bytes-per-producer",
        "2MiB",
        "--message-size",
        "8KiB",
        "--credit-pool",
        "64KiB",
        "--stall-consumers",
        "2",
        "--first-ip",
        "127.0.42.1",
    ]);
    assert_eq!(r["verified"], true);
    assert_eq!(r["stalled_consumers"], 2);
    let held = r["stalled_buffered_bytes_max"].as_u64().expect("held");
    assert!(held > 0, "stalled consumers were never granted anything");
    assert!(held <= 64 * 1024, "a stalled consumer held {held} bytes");
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["bench", "--message-size", "12Q"])
        .output()
        .expect("run plexus");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("12Q"));
}

#[test]
fn jobs_beyond_the_memory_budget_queue_and_the_peak_stays_under_it() {
    let budget: u64 = 1 << 20;
    let r = bench(&[
        "--nodes",
        "2",
        "--producers",
        "1",
        "--consumers",
        "2",
        "--jobs",
        "3",
        "--bytes-per-producer",
        "2MiB",
        "--message-size",
        "8KiB",
        "--credit-pool",
        "256KiB",
        "--memory-budget",
        "1MiB",
        "--first-ip",
        "127.0.47.1",
    ]);
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["jobs_completed"], 3, "{r}");
    assert_eq!(r["memory_budget_bytes"], budget);
    let peak = r["peak_buffered_bytes"].as_u64().expect("peak");
    assert!(
        peak > 0 && peak <= budget,
        "peak buffered {peak} vs budget {budget}"
    );
    // Each job needs 2 pools of 256 KiB per node and the budget leaves room for one job:
    // the others had to wait.
    let waited = r["admission_wait_ms_max"].as_f64().expect("wait");
    assert!(waited > 0.0, "no job waited: {r}");
}
