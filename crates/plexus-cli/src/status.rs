//! `plexus status`: one snapshot of a running agent's node, over its local socket (as any
//! attached process would ask): links, jobs, buffers, and the consumers that keep its
//! producers waiting for credit. `--json` prints it as one object for scripts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;

/// How long the agent gets to answer.
const ANSWER_BOUND: Duration = Duration::from_secs(10);

/// Options of `plexus status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's configuration file: its socket is read from it.
    #[arg(long, conflicts_with = "socket", required_unless_present = "socket")]
    config: Option<PathBuf>,
    /// The agent's socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print the snapshot as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The one field of an agent's configuration this command needs.
#[derive(Deserialize)]
struct SocketOf {
    socket: Option<PathBuf>,
}

/// The agent's socket: `socket` if given, else the one its configuration `config` names.
pub fn socket_of(
    config: Option<&std::path::Path>,
    socket: Option<&std::path::Path>,
) -> Result<PathBuf, String> {
    if let Some(socket) = socket {
        return Ok(socket.to_owned());
    }
    let file = config.ok_or("--config or --socket is required")?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{}: cannot read it: {e}", file.display()))?;
    let parsed: SocketOf = toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    parsed
        .socket
        .ok_or_else(|| format!("{}: the agent serves no local socket", file.display()))
}

/// Prints the status of the agent's node; fails if it cannot be had.
pub fn main(args: StatusArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plexus status: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &StatusArgs) -> Result<(), String> {
    let socket = socket_of(args.config.as_deref(), args.socket.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let status = runtime.block_on(async {
        tokio::time::timeout(ANSWER_BOUND, async {
            let node = plexus::Node::attach(&socket)
                .await
                .map_err(|e| e.to_string())?;
            node.status().await.map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| {
            format!(
                "the agent at {} did not answer within {ANSWER_BOUND:?}",
                socket.display()
            )
        })?
    })?;
    if args.json {
        let line = serde_json::to_string(&status).map_err(|e| e.to_string())?;
        println!("{line}");
        return Ok(());
    }
    print!("{}", human(&status));
    Ok(())
}

/// The snapshot as a few lines for a terminal.
pub fn human(status: &plexus::Status) -> String {
    let mut out = format!(
        "node {}: {} jobs, {} waiting for admission, {} bytes buffered{}, {} processes attached\n",
        status.node,
        status.jobs_active,
        status.admission_waiting,
        status.buffered_bytes,
        status
            .memory_budget
            .map_or(String::new(), |b| format!(" of {b}")),
        status.attached_processes
    );
    for link in &status.links {
        let rtt = link.rtt_us.map_or(String::new(), |us| {
            format!(", round trip {:.2} ms", us as f64 / 1000.0)
        });
        out.push_str(&format!(
            "  peer {}: {}, {} bytes sent, {} received, {} resumes{rtt}\n",
            link.peer,
            if link.up { "up" } else { "down" },
            link.bytes_sent,
            link.bytes_received,
            link.resumes
        ));
    }
    for job in &status.jobs {
        out.push_str(&format!(
            "  job {}: {} producers, {} consumers here, {}, {} bytes sent, {} received\n",
            job.job,
            job.producers,
            job.consumers,
            job.admission,
            job.bytes_sent,
            job.bytes_received
        ));
    }
    if status.starving.is_empty() {
        out.push_str("  no producer waits for credit\n");
    }
    for starved in &status.starving {
        out.push_str(&format!("  {}\n", starved.describe()));
    }
    out
}
