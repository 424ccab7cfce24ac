//! `plexus`: the command line of the plexus data-exchange layer.

#![forbid(unsafe_code)]

mod agent;
mod bench;
mod fan_in;
#[cfg(feature = "shuffle")]
mod shuffle;
mod status;
mod top;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// plexus: data exchange for distributed jobs, one link per node pair.
#[derive(Debug, Parser)]
#[command(name = "plexus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run this machine's node from a configuration file, until SIGTERM or SIGINT.
    Agent(agent::AgentArgs),
    /// One snapshot of a running agent's node: links, jobs, buffers, and the consumers
    /// that keep its producers waiting for credit.
    Status(status::StatusArgs),
    /// A live view of a running agent's node: links, jobs, and the channels starved of
    /// credit, naming the consumers that hold them (`q` quits).
    Top(top::TopArgs),
    /// Make a new cluster secret: 32 random bytes in a new file only its owner can read.
    Secret(SecretArgs),
    /// Run the all-to-all job on loopback and report throughput, links and memory.
    Bench(Box<bench::BenchArgs>),
    /// A TPC-H shuffle of Apache Arrow batches between nodes on loopback, each consumer
    /// computing Q1 over its partition, checked against the one-process answer (and with
    /// `--baseline flight`, the same over Arrow Flight).
    #[cfg(feature = "shuffle")]
    Shuffle(Box<shuffle::ShuffleArgs>),
    /// One node of `plexus bench --spawn`, driven by the bench over stdin and stdout.
    #[command(hide = true, name = "bench-node")]
    BenchNode(bench::child::NodeArgs),
    /// One endpoint of `plexus bench --agent`, attached to its node's agent, driven by the
    /// bench over stdin and stdout.
    #[command(hide = true, name = "bench-endpoint")]
    BenchEndpoint(bench::endpoint::EndpointArgs),
}

#[derive(Debug, clap::Args)]
struct SecretArgs {
    /// The file to create (never replaced); copy it to every member of the cluster.
    #[arg(long)]
    out: std::path::PathBuf,
}

fn make_secret(args: &SecretArgs) -> ExitCode {
    match plexus::write_new_secret_file(&args.out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plexus secret: {}: {e}", args.out.display());
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => agent::main(args),
        Command::Secret(args) => make_secret(&args),
        Command::Status(args) => status::main(args),
        Command::Top(args) => top::main(args),
        Command::Bench(args) => bench::main(*args),
        #[cfg(feature = "shuffle")]
        Command::Shuffle(args) => shuffle::main(*args),
        Command::BenchNode(args) => bench::child::main(args),
        Command::BenchEndpoint(args) => bench::endpoint::main(args),
    }
}
