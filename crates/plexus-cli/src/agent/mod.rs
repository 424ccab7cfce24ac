//! `plexus agent`: the daemon that runs one machine's node from a configuration file.
//!
//! It reads and checks the file (see [`config`]; `--check-config` stops there), starts the
//! node on the configured address with the cluster's members, lets the machine's
//! processes attach through its Unix socket (`Node::attach`; only the users and group the
//! file allows, the socket owner-only or group-only), logs what it does (set `RUST_LOG`,
//! e.g. `info`), and runs until SIGTERM or SIGINT, when it shuts the node down
//! cleanly: every link sends `GoAway(Shutdown)`, so peers fail the jobs spanning this node
//! at once. A configuration that cannot work stops it before anything starts, with the
//! file, the field and the reason, and a non-zero exit status.

pub mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use plexus::{AttachPolicy, Membership, Node};

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
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plexus agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the node and runs it until a signal asks it to stop.
async fn run(config: AgentConfig) -> Result<(), String> {
    let membership = Membership::new();
    for (node, addr) in &config.members {
        membership.insert(*node, *addr);
    }
    let id = config.core.node;
    let node = Node::builder()
        .config(config.core.clone())
        .listen(config.listen)
        .membership(membership)
        .start()
        .await
        .map_err(|e| e.to_string())?;
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
    tracing::info!(
        node = id.0,
        listen = %node.local_addr(),
        members = config.members.len(),
        socket = ?config.socket,
        "agent started"
    );
    let signal = wait_for_stop()
        .await
        .map_err(|e| format!("cannot watch signals: {e}"))?;
    tracing::info!(node = id.0, signal, "stopping: telling peers");
    node.shutdown().await;
    if let Some(socket) = &config.socket {
        let _ = std::fs::remove_file(socket);
    }
    tracing::info!(node = id.0, "agent stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT; returns which.
async fn wait_for_stop() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
