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

/// A configuration for node `node` of a two-node cluster on `127.0.101.{1,2}:7101`, whose
/// processes attach at `dir/node{node}.sock`.
fn write_config(dir: &Path, node: u32, extra: &str) -> PathBuf {
    write_config_on(dir, 101, node, extra)
}

/// The same, on `127.0.<subnet>.{1,2}`.
fn write_config_on(dir: &Path, subnet: u8, node: u32, extra: &str) -> PathBuf {
    make_secret(dir);
    let path = dir.join(format!("node{node}.toml"));
    let socket = dir.join(format!("node{node}.sock"));
    let text = format!(
        "node = {node}\ncluster = 9\nsecret_file = \"cluster.secret\"\nlisten = \"127.0.{subnet}.{}:7101\"\n\
         members = [{{ id = 0, address = \"127.0.{subnet}.1:7101\" }}, {{ id = 1, address = \"127.0.{subnet}.2:7101\" }}]\n\
         socket = \"{}\"\n{extra}\n",
        node + 1,
        socket.display()
    );
    std::fs::write(&path, text).expect("write the configuration");
    path
}

/// `dir/cluster.secret`, made with `plexus secret` unless it is there already.
fn make_secret(dir: &Path) -> PathBuf {
    let path = dir.join("cluster.secret");
    if !path.exists() {
        let out = plexus()
            .args(["secret", "--out"])
            .arg(&path)
            .output()
            .expect("run plexus secret");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plexus-agent-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The sample, with its secret file where this test made one.
#[test]
fn the_sample_configuration_checks_out() {
    let dir = temp_dir("sample");
    let secret = make_secret(&dir);
    let text = std::fs::read_to_string(sample()).expect("the sample");
    let named = "secret_file = \"/etc/plexus/cluster.secret\"";
    assert!(text.contains(named), "the sample names its secret file");
    let config = dir.join("plexus.toml");
    let text = text.replace(named, &format!("secret_file = {:?}", secret));
    std::fs::write(&config, text).expect("write");
    let out = plexus()
        .args(["agent", "--check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run plexus agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    std::fs::remove_dir_all(dir).ok();
}

/// A secret other users could read stops the agent at once, naming the field and the fix;
/// so does a missing one.
#[test]
fn an_exposed_or_missing_secret_stops_the_agent() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("exposed");
    let path = write_config(&dir, 0, "");
    let secret = dir.join("cluster.secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    for expected in ["chmod 600", "cannot read"] {
        let out = plexus()
            .args(["agent", "--config"])
            .arg(&path)
            .output()
            .expect("run plexus agent");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("`secret_file`") && stderr.contains(expected),
            "{stderr}"
        );
        // Then the same without the file.
        std::fs::remove_file(&secret).ok();
    }
    std::fs::remove_dir_all(dir).ok();
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

/// The body of `GET /metrics` at `addr`.
fn scrape(addr: &str) -> String {
    use std::io::Write;
    let mut stream = TcpStream::connect(addr).expect("the metrics address answers");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: plexus\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1."), "{response}");
    assert!(response.contains(" 200 "), "{response}");
    response
}

/// A job between processes attached to two agents: every message arrives.
fn run_a_job_through(dir: &Path) {
    use plexus::{Endpoint, JobId, Node, NodeId, Topology};
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let p = Endpoint::new(NodeId(0), 0);
        let c = Endpoint::new(NodeId(1), 0);
        let topology = Topology::new([p], [c]);
        let sender = Node::attach(dir.join("node0.sock"))
            .await
            .expect("attach to node 0");
        let receiver = Node::attach(dir.join("node1.sock"))
            .await
            .expect("attach to node 1");
        let mut rx = receiver
            .job(JobId(1), topology.clone())
            .consumer(0)
            .await
            .expect("consumer");
        let mut tx = sender
            .job(JobId(1), topology)
            .producer(0)
            .await
            .expect("producer");
        for i in 0..100u32 {
            tx.send(c, bytes::Bytes::from(i.to_le_bytes().to_vec()))
                .await
                .expect("send");
        }
        tx.finish().await.expect("delivered");
        let mut next = 0u32;
        while let Some(item) = rx.recv().await {
            let (from, message) = item.expect("no error");
            assert_eq!(from, p);
            assert_eq!(message.as_ref(), next.to_le_bytes());
            next += 1;
        }
        assert_eq!(next, 100);
    });
}

#[test]
fn agents_run_until_sigterm_or_sigint_and_stop_cleanly() {
    let dir = temp_dir("run");
    let mut agents = Vec::new();
    for node in 0..2 {
        let metrics = format!("metrics = \"127.0.101.{}:7102\"", node + 1);
        let path = write_config(&dir, node, &metrics);
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
    run_a_job_through(&dir);
    let text = scrape("127.0.101.1:7102");
    for family in [
        "plexus_peer_sent_bytes_total{peer=\"1\"}",
        "plexus_peer_sent_messages_total{peer=\"1\"} 100",
        "plexus_peer_link_up{peer=\"1\"} 1",
        "plexus_jobs_completed_total",
        "plexus_admission_wait_seconds_bucket{le=\"+Inf\"}",
        "plexus_attached_processes",
        "plexus_unauthenticated_connections_total 0",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }
    let received = scrape("127.0.101.2:7102");
    let line = received
        .lines()
        .find(|l| l.starts_with("plexus_peer_received_bytes_total{peer=\"0\"}"))
        .unwrap_or_else(|| panic!("no bytes received from node 0:\n{received}"));
    let bytes: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a figure");
    assert!(bytes > 0, "{line}");
    for (child, signal) in agents.into_iter().zip(["-TERM", "-INT"]) {
        let (status, log) = stop(child, signal);
        assert!(status.success(), "{status}: {log}");
        assert!(log.contains("agent started"), "{log}");
        assert!(log.contains("agent stopped"), "{log}");
        assert!(log.contains("process attached"), "{log}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// A consumer that does not read keeps its producer waiting for credit: `plexus status`
/// against the producer's agent names that consumer and the waiting producer.
#[test]
fn status_names_the_consumer_that_keeps_producers_waiting() {
    use plexus::{Endpoint, JobId, Node, NodeId, Topology, TrySend};
    let dir = temp_dir("status");
    let mut agents = Vec::new();
    for node in 0..2u32 {
        let path = write_config_on(
            &dir,
            102,
            node,
            "[limits]\nmax_message = \"64KiB\"\ncredit_pool = \"256KiB\"",
        );
        let child = plexus()
            .args(["agent", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start plexus agent");
        agents.push(child);
    }
    for (node, child) in agents.iter_mut().enumerate() {
        wait_listening(&format!("127.0.102.{}:7101", node + 1), child);
        let socket = dir.join(format!("node{node}.sock"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "no socket at {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (_rx, _tx) = runtime.block_on(async {
        let (p, c) = (Endpoint::new(NodeId(0), 3), Endpoint::new(NodeId(1), 2));
        let topology = Topology::new([p], [c]);
        let sender = Node::attach(dir.join("node0.sock"))
            .await
            .expect("attach 0");
        let receiver = Node::attach(dir.join("node1.sock"))
            .await
            .expect("attach 1");
        let rx = receiver
            .job(JobId(7), topology.clone())
            .consumer(2)
            .await
            .expect("consumer");
        let mut tx = sender
            .job(JobId(7), topology)
            .producer(3)
            .await
            .expect("producer");
        // Until the pool is full: the consumer reads nothing, so refusals go on (a refusal
        // alone may only mean that credit has not come yet).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut refused_since: Option<Instant> = None;
        while refused_since.is_none_or(|since| since.elapsed() < Duration::from_millis(300)) {
            match tx.try_send(c, bytes::Bytes::from(vec![1u8; 16 * 1024])) {
                Ok(()) => refused_since = None,
                Err(TrySend::NoCredit(_)) => {
                    refused_since.get_or_insert_with(Instant::now);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "the pool never filled");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        (rx, tx)
    });
    let out = plexus()
        .args(["status", "--json", "--config"])
        .arg(dir.join("node0.toml"))
        .output()
        .expect("run plexus status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let starving = &status["starving"][0];
    assert_eq!(starving["job"], 7, "{status}");
    assert_eq!(
        (
            starving["consumer_node"].as_u64(),
            starving["consumer_slot"].as_u64()
        ),
        (Some(1), Some(2)),
        "{status}"
    );
    assert_eq!(starving["producers"], serde_json::json!([3]), "{status}");
    assert!(
        starving["longest_wait_ms"].as_u64() >= Some(200),
        "{status}"
    );
    let job = &status["jobs"][0];
    assert_eq!(job["job"], 7, "{status}");
    assert_eq!(job["producers"], 1, "{status}");
    assert_eq!(job["admission"], "admitted", "{status}");
    assert!(job["bytes_sent"].as_u64() > Some(0), "{status}");
    assert!(job["producers_blocked_ms"].is_u64(), "{status}");
    let human = plexus()
        .args(["status", "--socket"])
        .arg(dir.join("node0.sock"))
        .output()
        .expect("run plexus status");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("job 7: consumer 1/2 keeps 1 producer here waiting"),
        "{text}"
    );
    drop(runtime);
    for child in agents {
        let (status, log) = stop(child, "-TERM");
        assert!(status.success(), "{log}");
    }
    std::fs::remove_dir_all(dir).ok();
}
