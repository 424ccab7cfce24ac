//! `plexus agent` as an operator meets it: the sample configuration checks out, a bad field
//! stops it at once naming the field, and agents started from generated files run until
//! SIGTERM or SIGINT and then stop cleanly.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn plexus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_plexus"))
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/plexus.toml")
}

/// A configuration for node `node` of a two-node cluster on `127.0.101.{1,2}:7101`.
fn write_config(dir: &Path, node: u32, extra: &str) -> PathBuf {
    let path = dir.join(format!("node{node}.toml"));
    let text = format!(
        "node = {node}\ncluster = 9\nlisten = \"127.0.101.{}:7101\"\n\
         members = [{{ id = 0, address = \"127.0.101.1:7101\" }}, {{ id = 1, address = \"127.0.101.2:7101\" }}]\n\
         {extra}\n",
        node + 1
    );
    std::fs::write(&path, text).expect("write the configuration");
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plexus-agent-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn the_sample_configuration_checks_out() {
    let out = plexus()
        .args(["agent", "--check-config", "--config"])
        .arg(sample())
        .output()
        .expect("run plexus agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn a_bad_field_stops_the_agent_at_once_naming_the_field() {
    let dir = temp_dir("bad");
    let path = write_config(&dir, 0, "[limits]\ncredit_pool = \"100B\"");
    let start = Instant::now();
    let out = plexus()
        .args(["agent", "--config"])
        .arg(&path)
        .output()
        .expect("run plexus agent");
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("node0.toml") && stderr.contains("`limits.credit_pool`"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Waits until something accepts connections at `addr`.
fn wait_listening(addr: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the agent exited"
        );
        assert!(Instant::now() < deadline, "nothing listens at {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to `child` and returns its exit status and its log.
fn stop(mut child: Child, signal: &str) -> (std::process::ExitStatus, String) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll") {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut log).ok();
    }
    (status, log)
}

#[test]
fn agents_run_until_sigterm_or_sigint_and_stop_cleanly() {
    let dir = temp_dir("run");
    let mut agents = Vec::new();
    for node in 0..2 {
        let path = write_config(&dir, node, "");
        let mut child = plexus()
            .args(["agent", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start plexus agent");
        wait_listening(&format!("127.0.101.{}:7101", node + 1), &mut child);
        agents.push(child);
    }
    for (child, signal) in agents.into_iter().zip(["-TERM", "-INT"]) {
        let (status, log) = stop(child, signal);
        assert!(status.success(), "{status}: {log}");
        assert!(log.contains("agent started"), "{log}");
        assert!(log.contains("agent stopped"), "{log}");
    }
    std::fs::remove_dir_all(dir).ok();
}
