//! End-to-end tests of `plexus bench --baseline rabbitmq` (cargo feature `rabbitmq`) that
//! need no broker: one where nothing listens is skipped with a note and the run still
//! verifies, and a broker off loopback is refused before anything runs. Uses the
//! 127.0.66.x addresses.

#![cfg(feature = "rabbitmq")]

mod common;

use common::{bench_command, bench_verified};

#[test]
fn rabbitmq_without_a_broker_is_skipped_with_a_note_and_the_run_verifies() {
    let r = bench_verified(&[
        "--nodes",
        "2",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--jobs",
        "1",
        "--bytes-per-producer",
        "64KiB",
        "--message-size",
        "4KiB",
        "--first-ip",
        "127.0.66.1",
        "--baseline",
        "raw-tcp,rabbitmq",
        "--amqp-url",
        "amqp://guest:guest@127.0.0.1:1/%2f",
    ]);
    let rabbit = r["baselines"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["system"] == "rabbitmq"))
        .unwrap_or_else(|| panic!("no rabbitmq baseline in {r}"));
    assert_eq!(rabbit["skipped"], true, "{rabbit}");
    assert_eq!(rabbit["verified"], false, "{rabbit}");
    assert_eq!(rabbit["connections"], 0, "{rabbit}");
    let note = rabbit["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("skipped: no broker answers at amqp://guest:***@127.0.0.1:1/%2f"),
        "{note}"
    );
    assert!(note.contains("scripts/rabbitmq.sh start"), "{note}");
    assert!(r["ratio_vs_rabbitmq"].is_null(), "{r}");
    assert!(
        r["ratio_vs_raw_tcp"].as_f64().is_some_and(|v| v > 0.0),
        "{r}"
    );
}

#[test]
fn rabbitmq_refuses_a_broker_off_loopback() {
    let url = "amqp://guest:secret@192.0.2.1:5672/%2f";
    let out = bench_command(&["--baseline", "rabbitmq", "--amqp-url", url])
        .output()
        .expect("run plexus");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must be on loopback"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}
