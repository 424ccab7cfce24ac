//! End-to-end tests of `plexus shuffle`: TPC-H `lineitem` shuffled between nodes on
//! loopback as Arrow batches, Q1 checked exactly against the one-process answer, over
//! plexus and over Arrow Flight, with and without a stalled consumer.

#![cfg(feature = "shuffle")]

mod common;

use common::{args, report};
use serde_json::Value;
use std::process::Command;

fn shuffle(line: &str) -> (std::process::Output, Value) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plexus"));
    command.args(["shuffle", "--json"]).args(args(line));
    report(command)
}

#[test]
fn q1_over_the_shuffle_matches_the_one_process_answer_on_both_systems() {
    let (out, r) = shuffle(
        "--scale-factor 0.01 --nodes 3 --producers 1 --consumers 2 --stall-consumers 1 --baseline flight --first-ip 127.0.81.1 --timeout-s 60",
    );
    assert!(
        out.status.success(),
        "{r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["verified"], true, "{r}");
    // Every generated row reached a consumer, and Q1 counted the shipped ones.
    let generated = r["rows_generated"].as_u64().expect("rows");
    assert!(generated > 50_000, "{generated}");
    assert_eq!(r["rows_total"], generated);
    let q1_rows = r["q1_rows"].as_u64().expect("q1 rows");
    assert!(q1_rows > 0 && q1_rows < generated);
    let groups = r["q1"].as_array().expect("q1");
    assert_eq!(groups.len(), 4, "A/F, N/F, N/O, R/F: {r}");
    let counted: u64 = groups
        .iter()
        .filter_map(|g| g["count_order"].as_u64())
        .sum();
    assert_eq!(counted, q1_rows);
    // One link per node pair.
    assert!(r["links_per_node_max"].as_u64().expect("links") <= 2, "{r}");
    // The stalled run verified too, the others kept going.
    assert_eq!(r["stall_outcome"], "verified", "{r}");
    assert!(r["stall_healthy_ratio"].as_f64().expect("ratio") > 0.0);
    let flight = &r["baselines"][0];
    assert_eq!(flight["system"], "flight");
    assert_eq!(flight["verified"], true, "{flight}");
    assert_eq!(flight["rows_total"], generated);
    assert!(flight["links_per_node_max"].as_u64().expect("links") <= 2);
    assert!(flight["stall_outcome"].is_string(), "{flight}");
    assert!(r["ratio_vs_flight"].as_f64().expect("ratio") > 0.0);
}

#[test]
fn shuffle_refuses_what_it_cannot_run() {
    for line in [
        "--scale-factor 0",
        "--nodes 0",
        "--nodes 2 --consumers 1 --stall-consumers 2",
        "--baseline carrier-pigeon",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
            .args(["shuffle", "--json"])
            .args(args(line))
            .output()
            .expect("run plexus");
        assert_eq!(out.status.code(), Some(2), "{line}");
        assert!(out.stdout.is_empty(), "{line}");
    }
}
