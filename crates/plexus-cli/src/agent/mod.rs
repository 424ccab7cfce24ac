//! `plexus agent`: the daemon that runs one machine's node from a configuration file.
//!
//! It reads and checks the file (see [`config`]; `--check-config` stops there), starts the
//! node on the configured address with the cluster's members, lets the machine's
//! processes attach through its Unix socket (`Node::attach`; only the users and group the
//! file allows, the socket owner-only or group-only), logs what it does (set `RUST_LOG`,
//! e.g. `info`), and runs until SIGTERM or SIGINT (or, with the hidden
//! `--stop-with-stdin`, the end of its stdin: a parent that started it is gone), when it
//! shuts the node down cleanly: every link sends `GoAway(Shutdown)`, so peers fail the
//! jobs spanning this node at once. With the hidden `--figures-on-stop` it first writes
//! its node's figures on stdout ([`StopFigures`], for `plexus bench --agent`). A configuration that cannot work stops it before anything starts, with the
//! file, the field and the reason, and a non-zero exit status.

pub mod config;
pub mod metrics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use plexus::{AttachPolicy, Membership, Node};
use serde::{Deserialize, Serialize};

use config::AgentConfig;

/// Options of `plexus agent`.
#[derive(Clone, Debug, Args)]
pub struct AgentArgs {
    /// The configuration file (TOML; see deploy/plexus.toml for every field).
    #[arg(long)]
    pub config: PathBuf,
    /// Check the configuration and exit: 0 if it can be used, 1 (with the reason) if not.
    #[arg(long)]
    pub check_config: bool,
    /// Also stop, cleanly, when stdin ends: for a parent that starts the agent through a
    /// pipe and must not leave it running once gone (`plexus bench --agent`).
    #[arg(long, hide = true)]
    pub stop_with_stdin: bool,
    /// As it stops, write the node's figures ([`StopFigures`]) on stdout, as one JSON
    /// line (`plexus bench --agent`).
    #[arg(long, hide = true)]
    pub figures_on_stop: bool,
}

/// What an agent started with `--figures-on-stop` writes on stdout as it stops: its
/// node's figures over its whole life, as one JSON line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StopFigures {
    /// How long each link that resumed after a loss was down, in µs.
    pub resume_us: Vec<u64>,
    /// The most bytes the node had buffered at once.
    pub peak_buffered_bytes: u64,
    /// The longest a job waited for admission on the node, in µs.
    pub admission_wait_us: u64,
}

impl StopFigures {
    /// The figures of `node` now.
    fn of(node: &Node) -> StopFigures {
        let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        StopFigures {
            resume_us: node.resume_times().into_iter().map(us).collect(),
            peak_buffered_bytes: node.peak_buffered(),
            admission_wait_us: us(node.longest_admission_wait()),
        }
    }
}

/// Runs `plexus agent`.
pub fn main(args: AgentArgs) -> ExitCode {
    let config = match AgentConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("plexus agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        println!(
            "{}: valid (node {}, {} members, listening on {})",
            args.config.display(),
            config.core.node.0,
            config.members.len(),
            config.listen
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("plexus agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, &args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plexus agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the node and runs it until a signal (or with `--stop-with-stdin`, the end of
/// stdin) asks it to stop.
async fn run(config: AgentConfig, args: &AgentArgs) -> Result<(), String> {
    let membership = Membership::new();
    for (node, addr) in &config.members {
        membership.insert(*node, *addr);
    }
    let id = config.core.node;
    let mut builder = Node::builder()
        .config(config.core.clone())
        .listen(config.listen)
        .membership(membership)
        .transport(config.transport);
    if let Some(identity) = &config.tls {
        builder = builder.tls(identity.clone());
    }
    let node = builder.start().await.map_err(|e| e.to_string())?;
    if let Some(socket) = &config.socket {
        let mut policy =
            AttachPolicy::owner_only().map_err(|e| format!("reading our own user: {e}"))?;
        if !config.users.is_empty() {
            policy.uids = config.users.clone();
        }
        policy.gid = config.group;
        node.serve_local(socket, policy)
            .map_err(|e| e.to_string())?;
    }
    if let Some(addr) = config.metrics {
        metrics::serve(addr, node.clone())?;
    }
    tracing::info!(
        node = id.0,
        listen = %node.local_addr(),
        members = config.members.len(),
        socket = ?config.socket,
        metrics = ?config.metrics,
        "agent started"
    );
    let why = wait_for_stop(args.stop_with_stdin)
        .await
        .map_err(|e| format!("cannot watch signals: {e}"))?;
    if args.figures_on_stop {
        let line = serde_json::to_string(&StopFigures::of(&node))
            .map_err(|e| format!("cannot encode the node's figures: {e}"))?;
        println!("{line}");
    }
    tracing::info!(node = id.0, why, "stopping: telling peers");
    node.shutdown().await;
    if let Some(socket) = &config.socket {
        let _ = std::fs::remove_file(socket);
    }
    tracing::info!(node = id.0, "agent stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT, or with `stdin` for the end of stdin; returns which.
async fn wait_for_stop(stdin: bool) -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let eof = async {
        if stdin {
            stdin_ended().await
        } else {
            std::future::pending().await
        }
    };
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        () = eof => "end of stdin",
    })
}

/// Returns once stdin ends (or breaks); what it carries is ignored.
async fn stdin_ended() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    let _ = rx.await;
}
