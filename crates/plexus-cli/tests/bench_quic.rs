//! End-to-end tests of `plexus bench --transport quic`: the workload over QUIC links
//! verifies, with one UDP flow per node pair counted from the kernel, beside the same run
//! over TCP; links cut from outside (their packets dropped for a while) resume without
//! losing or repeating anything; a killed node fails only its jobs, found by refusal; a
//! light channel's latency is measured beside bulk, over QUIC and over TCP.

mod common;

use common::{args, bench_command, bench_verified};

#[test]
fn quic_carries_the_workload_over_one_flow_per_node_pair_beside_tcp() {
    let r = bench_verified(&args(
        "--transport quic --baseline tcp --nodes 3 --producers 2 --consumers 2 --jobs 2 --bytes-per-producer 1MiB --message-size 16KiB --first-ip 127.0.101.1",
    ));
    let links = r["links_per_node_max"].as_u64().expect("links");
    assert!(links <= 2, "{links} QUIC links per node for 3 nodes");
    let tcp = &r["baselines"][0];
    assert_eq!(tcp["system"], "tcp");
    assert_eq!(tcp["verified"], true, "{tcp}");
    assert_eq!(tcp["bytes_total"], r["bytes_total"]);
    assert!(r["ratio_vs_tcp"].as_f64().expect("ratio") > 0.0);
    if nft_works() {
        // The kernel tracked the flows: every node talked to both others.
        assert_eq!(links, 2, "{r}");
    }
}

#[test]
fn quic_links_cut_from_outside_resume_and_the_run_verifies() {
    if !nft_works() {
        eprintln!("skipped: cutting QUIC links needs nft (nftables) and the right to use it");
        return;
    }
    let r = bench_verified(&args(
        "--transport quic --chaos-link-kill-ms 150 --nodes 3 --producers 1 --consumers 1 --jobs 1 --bytes-per-producer 96MiB --message-size 64KiB --first-ip 127.0.102.1 --timeout-s 120",
    ));
    let kills = r["link_kills"].as_u64().expect("kills");
    let resumes = r["link_resumes"].as_u64().expect("resumes");
    assert!(kills > 0, "no cut landed: {r}");
    assert!(resumes > 0, "no link resumed: {r}");
    assert_eq!(r["jobs_failed"], 0, "{r}");
}

#[test]
fn a_node_killed_over_quic_fails_its_jobs_by_refusal_not_by_the_grace_period() {
    let r = bench_verified(&args(
        "--transport quic --spawn --kill-node 1 --nodes 3 --producers 1 --consumers 1 --jobs 2 --nodes-per-job 2 --first-ip 127.0.104.1 --timeout-s 120",
    ));
    assert_eq!(r["killed_node"], 1);
    assert!(r["jobs_failed"].as_u64().expect("failed") > 0, "{r}");
    // Its UDP port answers "unreachable": the survivors' redials are refused, as over TCP,
    // long before the 10 s grace period would fail the jobs.
    let detect = r["failure_detect_ms_max"].as_u64().expect("detection");
    assert!(detect < 8_000, "{detect} ms to detect the killed node: {r}");
}

#[test]
fn latency_under_bulk_load_is_measured_over_quic_and_tcp() {
    let r = bench_verified(&args(
        "--transport quic --baseline tcp --latency 400 --latency-secs 1 --latency-load --message-size 16KiB --nodes 2 --producers 1 --consumers 2 --jobs 1 --first-ip 127.0.103.1",
    ));
    assert_eq!(r["mode"], "latency");
    assert_eq!(r["load_message_size"], 16 * 1024);
    // 2 nodes, 1 producer and 2 consumers each: 4 light channels; 400/s for 1 s.
    assert_eq!(r["messages_total"], 400, "{r}");
    let tcp = &r["baselines"][0];
    assert_eq!(tcp["system"], "tcp");
    assert_eq!(tcp["verified"], true, "{tcp}");
    for run in [&r, tcp] {
        // The load moved more than the light channels in all: it shared the links.
        let load = run["load_bytes_total"].as_u64().expect("load bytes");
        assert!(load > 400 * 128, "{run}");
        assert!(run["load_bytes_per_s"].as_f64().expect("load rate") > 0.0);
        let p50 = run["latency_us_p50"].as_f64().expect("p50");
        let p99 = run["latency_us_p99"].as_f64().expect("p99");
        assert!(0.0 < p50 && p50 <= p99, "{run}");
    }
    assert!(r["latency_p99_ratio_vs_tcp"].as_f64().expect("ratio") > 0.0);
}

#[test]
fn the_tcp_baseline_needs_quic() {
    let out = bench_command(&args("--baseline tcp"))
        .output()
        .expect("run plexus");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--transport quic"), "{stderr}");
}

/// Whether nftables can be read here (installed, and this user may use it): the flow
/// counting and the cuts need it; `.ci/run` installs it.
fn nft_works() -> bool {
    std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .is_ok_and(|out| out.status.success())
}
