//! `plexus bench`: the all-to-all job on loopback.
//!
//! n nodes run in this process, node i listening on its own loopback address
//! `127.0.0.(i+1)`, so the operating system attributes every socket to a node. Each of the
//! k jobs has m producers and m consumers on every node; every producer spreads its bytes
//! over every consumer of its job, and every consumer verifies that it got every message of
//! every producer exactly once, in order, intact. Links per node are counted from the OS
//! socket table while the job runs.

pub mod memory;
mod report;
mod run;
pub mod size;
pub mod workload;

use std::process::ExitCode;

use clap::Args;

/// Options of `plexus bench`.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// Number of nodes (each on its own loopback address).
    #[arg(long, default_value_t = 8)]
    pub nodes: u32,
    /// Producers per node and job.
    #[arg(long, default_value_t = 4)]
    pub producers: u32,
    /// Consumers per node and job.
    #[arg(long, default_value_t = 4)]
    pub consumers: u32,
    /// Jobs running at once.
    #[arg(long, default_value_t = 2)]
    pub jobs: u32,
    /// Bytes each producer sends, spread over every consumer of its job (KiB/MiB/GiB).
    #[arg(long, default_value = "8MiB", value_parser = parse_size_arg)]
    pub bytes_per_producer: u64,
    /// Size of each message, header included (at least 24 bytes).
    #[arg(long, default_value = "32KiB", value_parser = parse_size_arg)]
    pub message_size: u64,
    /// Consumers that read nothing until every other consumer has finished.
    #[arg(long, default_value_t = 0)]
    pub stall_consumers: u32,
    /// Credit pool of each consumer.
    #[arg(long, default_value = "4MiB", value_parser = parse_size_arg)]
    pub credit_pool: u64,
    /// The first node's address; node i uses this address plus i.
    #[arg(long, default_value = "127.0.0.1")]
    pub first_ip: std::net::Ipv4Addr,
    /// Give up (and report failure) after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Print exactly one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    size::parse_size(s).map_err(|e| e.to_string())
}

/// Runs the bench and prints its report; fails when the run did not verify.
pub fn main(args: BenchArgs) -> ExitCode {
    match run::run(&args) {
        Ok(report) => {
            report.print(args.json);
            if report.verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("plexus bench: {e}");
            ExitCode::from(2)
        }
    }
}
