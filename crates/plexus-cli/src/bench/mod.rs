//! `plexus bench`: the all-to-all job on loopback.
//!
//! n nodes run, node i listening on its own loopback address `127.0.0.(i+1)`, so the
//! operating system attributes every socket to a node: all in this process
//! ([`inproc`], the default), each in a process of its own (`--spawn`: [`spawn`] is the
//! coordinator, [`child`] a node process), or as a machine's processes use plexus
//! (`--agent`: one agent per node, [`agents`], and every endpoint in a process of its own
//! attached to its node's agent, [`endpoint`]; [`attached`] is the coordinator). The
//! processes of both multi-process modes are children the bench never leaves behind
//! ([`fleet`]). Each of the k jobs uses N of the nodes (see
//! [`shape`]), with m producers and m consumers on each; every producer spreads its bytes
//! over every consumer of its job, and every consumer verifies that it got every message of
//! every producer exactly once, in order, intact ([`roles`], [`workload`]), reading them
//! interleaved, as a k-way merge, or build side before probe side ([`consume`]; an ordered
//! reading is then compared with an interleaved run of the same shape). Links per node
//! are counted from the OS socket table while the job runs ([`monitor`]); links can be
//! aborted from outside ([`chaos`]) and a node's process killed (`--kill-node`), and the
//! run is judged by what every endpoint reported ([`verdict`]). Each node asks for its jobs
//! in the same order or in a random order of its own ([`arrival`]); with `--waves`, the k
//! jobs run again and again on the same nodes, one wave after another ([`waves`]).
//!
//! With `--baseline`, the same workload then runs over other systems in this process
//! ([`baseline`]: raw TCP, one connection per channel, ZeroMQ, RabbitMQ) and the report compares
//! them; `--latency RATE` measures one-way latency at a fixed rate instead ([`latency`]),
//! for plexus and raw TCP (with `--agent`, through Unix-socket attaches to the nodes of
//! this process, beside the embedded run; with `--cluster`, through the cluster's agents;
//! with `--latency-load`, beside a bulk job on the same links). Both run on
//! [`transport`]'s harness. `--report DIR` also writes
//! the run to DIR, in Markdown, JSON and SVG charts ([`export`]), among them the bytes
//! delivered over time, sampled while the plexus run goes ([`timeline`]).
//!
//! Invariants: options are checked before anything starts (a node kill needs `--spawn` or
//! `--agent`, an endpoint kill `--agent`, chaos needs `ss`, baselines and latency run
//! without failures or stalls, the `embedded` baseline needs `--agent`, zmq and rabbitmq
//! need their features, the broker's URL is on loopback, waves repeat the plain workload,
//! an ordered reading goes without stalls, kills, baselines and latency, `--agent` goes
//! without `--spawn`, waves, random arrivals, a memory budget and crowds of nodes), and so is the shape against the file descriptors each process may open
//! ([`fds`]); every mode shares the roles and the judging, so they report the same fields
//! with the same meaning.

mod agents;
mod arrival;
mod attached;
mod baseline;
mod certs;
mod chaos;
pub mod child;
mod compare;
mod consume;
mod delivered;
pub mod endpoint;
mod export;
mod fds;
mod fleet;
mod flows;
mod host;
mod impostor;
mod inproc;
mod latency;
pub mod memory;
mod monitor;
mod report;
mod roles;
mod shape;
pub mod size;
mod sockets;
mod spawn;
mod timeline;
mod transport;
mod udp_cut;
mod verdict;
mod waves;
mod wire;
pub mod workload;

use std::process::ExitCode;

use clap::Args;

// What `plexus shuffle` reuses: the links count and the one-line JSON report.
#[cfg(feature = "shuffle")]
pub use monitor::max_links_in;
#[cfg(feature = "shuffle")]
pub use report::print_json;

use arrival::{Arrival, ArrivalOrder};
use consume::ConsumeMode;
use report::Report;
use shape::{Shape, ShapeSpec};

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
    /// Bytes each producer sends, spread over every consumer of its job (KiB/MiB/GiB);
    /// default 8MiB, or 32MiB with --compare (so that a stalled consumer is owed more than
    /// the systems' buffers hide).
    #[arg(long, value_parser = parse_size_arg)]
    pub bytes_per_producer: Option<u64>,
    /// Size of each message, header included (at least 24 bytes).
    #[arg(long, default_value = "32KiB", value_parser = parse_size_arg)]
    pub message_size: u64,
    /// Nodes each job uses, spread round robin: job j uses nodes (j·N + i) mod n, i < N
    /// (default: every node).
    #[arg(long)]
    pub nodes_per_job: Option<u32>,
    /// Consumers that read nothing until every other consumer has finished.
    #[arg(long, default_value_t = 0)]
    pub stall_consumers: u32,
    /// How every consumer reads its job's producers: `interleaved` (whatever arrives
    /// first), `merge` (a k-way merge by key over every producer, one `recv_from` at a
    /// time) or `build-then-probe` (the first half of the producers to their end with
    /// `recv_from_any`, then the second half). An ordered reading is then compared with the
    /// same shape read interleaved, run right after.
    #[arg(long, value_enum, default_value_t = ConsumeMode::Interleaved)]
    pub consume: ConsumeMode,
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
    /// Run every node in an OS process of its own.
    #[arg(long)]
    pub spawn: bool,
    /// With --spawn, run this many nodes (consecutive ids) in each OS process, so that
    /// more nodes than one process's file descriptors allow can run on one machine.
    #[arg(long, default_value_t = 1)]
    pub nodes_per_process: u32,
    /// SIGKILL this node's process, or with --agent its agent (needs --spawn or --agent,
    /// and --kill-at-ms).
    #[arg(long)]
    pub kill_node: Option<u32>,
    /// With --agent, SIGKILL the process of this endpoint (needs --kill-at-ms). Endpoints
    /// are numbered from 0 by job, then node (ascending id), then producers before
    /// consumers, then slot.
    #[arg(long)]
    pub kill_endpoint: Option<usize>,
    /// When to kill --kill-node or --kill-endpoint, in ms after the endpoints were told to
    /// start (default 300).
    #[arg(long)]
    pub kill_at_ms: Option<u64>,
    /// Run plexus as a machine's processes use it: one `plexus agent` per node (its
    /// configuration and Unix socket in a temporary directory), and every endpoint in an
    /// OS process of its own, attached to its node's agent.
    #[arg(long)]
    pub agent: bool,
    /// Bytes each node may buffer in all (send share plus its consumers' credit pools);
    /// jobs whose pools do not fit wait for admission.
    #[arg(long, value_parser = parse_size_arg)]
    pub memory_budget: Option<u64>,
    /// Every this many ms, abort one random live link between nodes with `ss -K`.
    #[arg(long)]
    pub chaos_link_kill_ms: Option<u64>,
    /// Throughout the run, an outsider without the cluster's secret keeps dialling every
    /// node, claiming to be another node just restarted (with a wrong proof, or none): the
    /// run must verify and every attempt must be refused (`impostor_attempts`,
    /// `impostor_refused`).
    #[arg(long)]
    pub impostor: bool,
    /// Encrypt every link with mutual TLS 1.3 under a throwaway certificate authority made
    /// for the run (certificates naming each node). With `--baseline plaintext`, the same
    /// run without TLS follows, and the report gives `ratio_vs_plaintext`.
    #[arg(long)]
    pub tls: bool,
    /// After the plexus run, run the same workload, with the same stalled consumers and
    /// link kills, over these systems too, and compare: raw-tcp (one connection per node
    /// pair), naive-tcp (one per channel), grpc (one HTTP/2 connection per node pair, a
    /// streaming call per channel), zmq (needs the `zmq` feature), rabbitmq (a broker at
    /// --amqp-url; needs the `rabbitmq` feature), all in this process; embedded (with
    /// --agent only: plexus embedded, one node per process, as --spawn runs it).
    /// Comma-separated.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub baseline: Vec<baseline::System>,
    /// The HTTP/2 flow-control window of `--baseline grpc`, for every stream and every
    /// connection on both sides (default: the stacks' own, 1 MiB on servers, 2 MiB per
    /// stream and 5 MiB per connection on clients).
    #[arg(long, value_name = "SIZE", value_parser = parse_window_arg)]
    pub grpc_window: Option<u32>,
    /// Run the comparison matrix instead: plexus and every other system this build has
    /// (raw-tcp, naive-tcp, grpc, zmq, and rabbitmq when a broker answers at --amqp-url),
    /// each on the plain workload, with --stall-consumers consumers stalled (default 2),
    /// and with a link killed every --chaos-link-kill-ms (default 100), on this shape; the
    /// report is one row per system.
    #[arg(long)]
    pub compare: bool,
    /// The RabbitMQ broker of `--baseline rabbitmq` (on loopback only; see
    /// scripts/rabbitmq.sh).
    #[arg(long, default_value = baseline::amqp_url::DEFAULT)]
    pub amqp_url: String,
    /// Measure one-way latency instead: 128-byte messages at this many messages per second
    /// in all, for --latency-secs (with --baseline raw-tcp, over raw TCP too; with
    /// --transport quic --baseline tcp, over plexus's TCP links too); --bytes-per-producer
    /// does not apply, nor --message-size without --latency-load.
    #[arg(long, value_name = "RATE")]
    pub latency: Option<u64>,
    /// How long --latency sends, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub latency_secs: f64,
    /// With --latency: bulk shares the links while the schedule runs. One more job on the
    /// same nodes sends --message-size messages from each of its producers to its
    /// consumers as fast as the transport takes them, until the last latency message is
    /// sent; the report adds the load's goodput.
    #[arg(long, requires = "latency")]
    pub latency_load: bool,
    /// The order in which each node asks for admission of its jobs and opens them: `same`
    /// (job 1, job 2, … on every node) or `per-node-random` (an order of each node's own,
    /// with a random 0-2 ms pause between jobs, as when coordinators' start messages cross).
    #[arg(long, value_enum, default_value_t = ArrivalOrder::Same)]
    pub arrival_order: ArrivalOrder,
    /// Seed of the run's randomness (the arrival orders); default: taken from the clock.
    /// The report gives the one used.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run the k jobs this many times, one wave after another, on the same nodes (started
    /// once): wave w's job j has id w·k + j + 1, and a wave starts when every job of the
    /// previous one has ended on every node.
    #[arg(long, default_value_t = 1)]
    pub waves: u32,
    /// Also write the run to this directory (created if missing): report.md (the command,
    /// the machine, the shape and every figure, in tables), report.json (what --json
    /// prints), goodput.svg, delivered.svg and delivered.csv (bytes delivered over time to
    /// healthy and stalled consumers), or with --latency latency.svg.
    #[arg(long, value_name = "DIR")]
    pub report: Option<std::path::PathBuf>,
    /// The run's cluster secret, made afresh by `main` in a directory of the run's own.
    #[arg(skip)]
    pub secret_file: Option<std::path::PathBuf>,
    /// Run through the agents already running whose configurations are `DIR/node<i>.toml`
    /// (as `scripts/netns-cluster.sh up` makes them, in network namespaces): the nodes and
    /// their addresses come from there; every endpoint runs in a process of its own
    /// attached to its node's agent, as with `--agent`.
    #[arg(long, value_name = "DIR")]
    pub cluster: Option<std::path::PathBuf>,
    /// Added to the job ids on the nodes (set by `main` with `--cluster`).
    #[arg(skip)]
    pub job_base: u64,
    /// With `--tls` or QUIC, where `main` wrote the run's certificates.
    #[arg(skip)]
    pub tls_dir: Option<std::path::PathBuf>,
    /// What links run over: `tcp`, or `quic` (one QUIC connection per node pair over UDP,
    /// always TLS 1.3 under a throwaway certificate authority made for the run; with
    /// `--baseline tcp`, the same run over TCP with TLS follows, and the report gives
    /// `ratio_vs_tcp`).
    #[arg(long, value_enum, default_value_t = shape::LinkTransport::Tcp)]
    pub transport: shape::LinkTransport,
}

/// Bytes each producer sends by default.
const BYTES_PER_PRODUCER: u64 = 8 << 20;
/// Bytes each producer sends by default with `--compare`.
const COMPARE_BYTES_PER_PRODUCER: u64 = 32 << 20;

impl BenchArgs {
    /// Bytes each producer sends: `--bytes-per-producer`, or the mode's default.
    pub fn bytes_per_producer(&self) -> u64 {
        self.bytes_per_producer.unwrap_or(if self.compare {
            COMPARE_BYTES_PER_PRODUCER
        } else {
            BYTES_PER_PRODUCER
        })
    }

    /// The run's shape, validated.
    fn shape(&self) -> Result<Shape, String> {
        Shape::new(self.spec())
    }

    /// The run's shape, as asked for.
    fn spec(&self) -> ShapeSpec {
        ShapeSpec {
            nodes: self.nodes,
            producers: self.producers,
            consumers: self.consumers,
            jobs: self.jobs,
            nodes_per_job: self.nodes_per_job,
            bytes_per_producer: self.bytes_per_producer(),
            message_size: self.message_size,
            credit_pool: self.credit_pool,
            stall_consumers: self.stall_consumers,
            first_ip: self.first_ip,
            memory_budget: self.memory_budget,
            consume: self.consume,
            secret_file: self.secret_file.clone(),
            tls_dir: self.tls_dir.clone(),
            transport: self.transport,
            job_base: self.job_base,
        }
    }

    /// The run's arrival order, with the seed given or one from the clock.
    fn arrival(&self) -> Arrival {
        Arrival {
            order: self.arrival_order,
            seed: self.seed.unwrap_or_else(arrival::seed_from_time),
        }
    }

    /// Checks the options that go together.
    fn check(&self) -> Result<(), String> {
        if self.cluster.is_some()
            && (self.spawn
                || self.kill_node.is_some()
                || self.chaos_link_kill_ms.is_some()
                || self.tls
                || self.impostor
                || !self.baseline.is_empty())
        {
            return Err("--cluster runs through agents someone else started, in other network namespaces: it does not go with --spawn, --kill-node, --chaos-link-kill-ms, --tls, --impostor or --baseline".into());
        }
        self.check_compare()?;
        self.check_waves()?;
        self.check_consume()?;
        self.check_agent()?;
        if self.nodes_per_process == 0 || (self.nodes_per_process > 1 && !self.spawn) {
            return Err("--nodes-per-process needs --spawn and must be at least 1".into());
        }
        self.check_kill()?;
        if let Some(ms) = self.chaos_link_kill_ms {
            if ms == 0 {
                return Err("--chaos-link-kill-ms must be at least 1".into());
            }
            match self.transport {
                shape::LinkTransport::Tcp => chaos::check_ss()?,
                shape::LinkTransport::Quic => udp_cut::check_nft()?,
            }
        }
        if !self.baseline.is_empty() {
            if self.spawn {
                return Err(
                    "--baseline runs every system in this process: it does not go with --spawn"
                        .into(),
                );
            }
            if self.agent && (self.stall_consumers > 0 || self.chaos_link_kill_ms.is_some()) {
                return Err("--baseline with --agent compares the plain workload: it does not go with --stall-consumers or --chaos-link-kill-ms".into());
            }
            if self.baseline.contains(&baseline::System::Tcp)
                && self.transport != shape::LinkTransport::Quic
            {
                return Err("--baseline tcp compares plexus over QUIC with plexus over TCP: it needs --transport quic".into());
            }
            if self.baseline.contains(&baseline::System::Plaintext) && !self.tls {
                return Err("--baseline plaintext compares plexus over TLS with plexus without: it needs --tls".into());
            }
            if self.baseline.contains(&baseline::System::Embedded) && !self.agent {
                return Err("--baseline embedded compares plexus through agents with plexus embedded: it needs --agent".into());
            }
            baseline::check(&self.baseline, &self.amqp_url)?;
        }
        if let Some(rate) = self.latency {
            if rate == 0 {
                return Err("--latency must be at least 1 message per second".into());
            }
            if !(self.latency_secs > 0.0 && self.latency_secs <= 3600.0) {
                return Err("--latency-secs must be more than 0 and at most 3600".into());
            }
            if self.spawn || self.stall_consumers > 0 || self.chaos_link_kill_ms.is_some() {
                return Err("--latency runs in one process without failures or stalls: it does not go with --spawn, --stall-consumers or --chaos-link-kill-ms".into());
            }
            if self
                .baseline
                .iter()
                .any(|&s| s != baseline::System::RawTcp && s != baseline::System::Tcp)
            {
                return Err("--latency compares with raw-tcp (--baseline raw-tcp) and, over QUIC, with plexus over TCP (--baseline tcp) only".into());
            }
            if self.kill_node.is_some() || self.kill_endpoint.is_some() {
                return Err("--latency runs without failures: it does not go with --kill-node or --kill-endpoint".into());
            }
        }
        Ok(())
    }

    /// When a kill comes, in ms after the start: `--kill-at-ms`, or [`KILL_AT_MS`].
    fn kill_delay_ms(&self) -> u64 {
        self.kill_at_ms.unwrap_or(KILL_AT_MS)
    }

    /// Checks the kills: one at most, a time only with a kill, a node's only where nodes
    /// have processes of their own, an endpoint's only where endpoints do (`--agent`).
    fn check_kill(&self) -> Result<(), String> {
        if self.kill_node.is_some() && self.kill_endpoint.is_some() {
            return Err(
                "--kill-node and --kill-endpoint do not go together: one kill per run".into(),
            );
        }
        let kill = self.kill_node.is_some() || self.kill_endpoint.is_some();
        if !kill {
            if self.kill_at_ms.is_some() {
                return Err(
                    "--kill-at-ms says when to kill --kill-node or --kill-endpoint: give one"
                        .into(),
                );
            }
            return Ok(());
        }
        if let Some(node) = self.kill_node {
            if self.nodes_per_process > 1 {
                return Err(
                    "--kill-node needs one node per process (--nodes-per-process 1)".into(),
                );
            }
            if !self.spawn && !self.agent {
                return Err("--kill-node needs --spawn or --agent: only a node in a process of its own can be killed".into());
            }
            if node >= self.nodes {
                return Err(format!(
                    "--kill-node {node}: there are only nodes 0 to {}",
                    self.nodes.saturating_sub(1)
                ));
            }
        }
        if self.kill_endpoint.is_some() && !self.agent {
            return Err("--kill-endpoint needs --agent: only an endpoint in a process of its own can be killed".into());
        }
        Ok(())
    }

    /// Checks `--compare` against the options it does not go with: it runs every system in
    /// this process, three times, on the plain interleaved workload plus its own faults.
    fn check_compare(&self) -> Result<(), String> {
        if !self.compare {
            if self.grpc_window.is_some() && !self.baseline.contains(&baseline::System::Grpc) {
                return Err(
                    "--grpc-window sets the windows of --baseline grpc (or --compare): give one"
                        .into(),
                );
            }
            return Ok(());
        }
        let refused = [
            (self.spawn, "--spawn"),
            (self.agent, "--agent"),
            (self.cluster.is_some(), "--cluster"),
            (!self.baseline.is_empty(), "--baseline"),
            (self.latency.is_some(), "--latency"),
            (self.waves > 1, "--waves"),
            (self.consume.is_ordered(), "an ordered --consume"),
            (
                self.kill_node.is_some() || self.kill_endpoint.is_some(),
                "--kill-node or --kill-endpoint",
            ),
            (self.tls, "--tls"),
            (self.impostor, "--impostor"),
            (self.memory_budget.is_some(), "--memory-budget"),
        ];
        match refused.iter().find(|(refused, _)| *refused) {
            Some((_, what)) => Err(format!(
                "--compare runs every system in this process on the plain workload, stalled and with links killed: it does not go with {what}"
            )),
            None => chaos::check_ss(),
        }
    }

    /// Checks `--agent` against the options it does not go with.
    fn check_agent(&self) -> Result<(), String> {
        if !self.agent {
            return Ok(());
        }
        let refused = [
            (self.spawn, "--spawn: the agents are the nodes' processes"),
            (self.waves > 1, "--waves: it runs one wave of jobs"),
            (
                self.arrival_order != ArrivalOrder::Same,
                "--arrival-order per-node-random: each endpoint process opens its own job",
            ),
            (
                self.memory_budget.is_some(),
                "--memory-budget: the agents' configuration sets no budget",
            ),
            (
                self.nodes > shape::CROWDED_NODES,
                "more than 64 nodes: the relaxed liveness timers such crowds need are not in an agent's configuration",
            ),
        ];
        match refused.iter().find(|(refused, _)| *refused) {
            Some((_, why)) => Err(format!("--agent does not go with {why}")),
            None => Ok(()),
        }
    }

    /// Checks an ordered `--consume` against the options it does not go with: it is
    /// compared with an interleaved run of the plain workload, which stalls, a kill, other
    /// systems and latency would not be.
    fn check_consume(&self) -> Result<(), String> {
        if self.consume.is_ordered()
            && (self.stall_consumers > 0
                || self.kill_node.is_some()
                || self.kill_endpoint.is_some()
                || !self.baseline.is_empty()
                || self.latency.is_some())
        {
            return Err(format!(
                "--consume {} is compared with interleaved reading of the plain workload: it does not go with --stall-consumers, --kill-node, --baseline or --latency",
                self.consume.name()
            ));
        }
        Ok(())
    }

    /// Checks `--waves` and `--arrival-order` against the options they do not go with.
    fn check_waves(&self) -> Result<(), String> {
        if self.waves == 0 {
            return Err("--waves must be at least 1".into());
        }
        if self.waves.checked_mul(self.jobs).is_none() {
            return Err(format!(
                "--waves {} of --jobs {} are more jobs than the bench can number ({})",
                self.waves,
                self.jobs,
                u32::MAX
            ));
        }
        if self.waves > 1
            && (self.kill_node.is_some()
                || self.kill_endpoint.is_some()
                || self.stall_consumers > 0
                || !self.baseline.is_empty()
                || self.latency.is_some())
        {
            return Err("--waves repeats the plain workload: it does not go with --kill-node, --stall-consumers, --baseline or --latency".into());
        }
        if self.arrival_order != ArrivalOrder::Same && self.latency.is_some() {
            return Err("--latency opens its jobs in job order: it does not go with --arrival-order per-node-random".into());
        }
        Ok(())
    }
}

/// When a kill comes without `--kill-at-ms`, in ms after the start. Producers hold their
/// close until the kill has played out, so any time finds every job in progress.
const KILL_AT_MS: u64 = 300;

fn parse_size_arg(s: &str) -> Result<u64, String> {
    size::parse_size(s).map_err(|e| e.to_string())
}

/// An HTTP/2 window: at least the protocol's initial 65,535 bytes, at most 2^31 − 1.
fn parse_window_arg(s: &str) -> Result<u32, String> {
    let size = parse_size_arg(s)?;
    match u32::try_from(size) {
        Ok(window) if (65_535..=0x7fff_ffff).contains(&window) => Ok(window),
        _ => Err(format!(
            "an HTTP/2 window is 64KiB - 1 (65535) to 2GiB - 1 bytes, not {size}"
        )),
    }
}

/// Runs the bench and prints its report; fails when the run did not verify.
pub fn main(mut args: BenchArgs) -> ExitCode {
    // Every node of the run, in this process or another, proves membership with this
    // secret; the directory (and the secret) go when the run ends.
    let secret_dir = match agents::TempDir::create() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("plexus bench: {e}");
            return ExitCode::from(2);
        }
    };
    let secret_file = secret_dir.path().join("cluster.secret");
    if let Err(e) = plexus::write_new_secret_file(&secret_file) {
        eprintln!(
            "plexus bench: cannot write the run's secret {}: {e}",
            secret_file.display()
        );
        return ExitCode::from(2);
    }
    args.secret_file = Some(secret_file);
    if let Some(dir) = args.cluster.clone() {
        match cluster_nodes(&dir) {
            Ok((nodes, first_ip)) => {
                args.nodes = nodes;
                args.first_ip = first_ip;
                args.agent = true;
                // The agents outlive the run: its jobs take ids no earlier run took (a
                // thousand per millisecond of the clock, more than a run opens per
                // millisecond it lasts; and ids stay below 2^53, exact in any JSON reader).
                args.job_base = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| {
                        u64::try_from(d.as_millis())
                            .unwrap_or(u64::MAX / 1000)
                            .saturating_mul(1000)
                    });
            }
            Err(e) => {
                eprintln!("plexus bench: --cluster {}: {e}", dir.display());
                return ExitCode::from(2);
            }
        }
    }
    if args.tls || args.transport == shape::LinkTransport::Quic {
        if let Err(e) = certs::write(secret_dir.path(), args.nodes) {
            eprintln!("plexus bench: {e}");
            return ExitCode::from(2);
        }
        args.tls_dir = Some(secret_dir.path().to_owned());
    }
    // QUIC links are UDP flows: the kernel tracks them for the run, so they can be
    // counted from the OS like TCP connections.
    let _flows = if args.transport == shape::LinkTransport::Quic {
        match flows::FlowTracking::start() {
            Ok(tracking) => Some(tracking),
            Err(e) => {
                eprintln!("plexus bench: QUIC links will not be counted: {e}");
                None
            }
        }
    } else {
        None
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("plexus bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// The nodes of the cluster whose agents' configurations are in `dir` (`node0.toml`,
/// `node1.toml`, ...), and node 0's address: the run's `--nodes` and `--first-ip`.
fn cluster_nodes(dir: &std::path::Path) -> Result<(u32, std::net::Ipv4Addr), String> {
    let mut nodes = 0;
    while dir.join(format!("node{nodes}.toml")).exists() {
        nodes += 1;
    }
    if nodes < 2 {
        return Err("no node0.toml and node1.toml there: is the cluster up?".into());
    }
    let config = crate::agent::config::AgentConfig::load(&dir.join("node0.toml"))
        .map_err(|e| e.to_string())?;
    match config.listen.ip() {
        std::net::IpAddr::V4(ip) => Ok((nodes, ip)),
        other => Err(format!("node 0 listens on {other}: the bench needs IPv4")),
    }
}

/// Checks the options, runs the bench in the mode they ask for and prints its report;
/// tells whether the run verified.
fn run(args: &BenchArgs) -> Result<bool, String> {
    args.check()?;
    let shape = args.shape()?;
    if args.agent {
        fds::check_attached(&shape, fds::open_files())?;
    } else {
        let group = args.spawn.then_some(args.nodes_per_process);
        fds::check_nodes(&shape, group, fds::open_files())?;
    }
    if args.baseline.contains(&baseline::System::Embedded) {
        // The same shape as --spawn runs it.
        fds::check_nodes(&shape, Some(1), fds::open_files())?;
    }
    if let Some(index) = args.kill_endpoint {
        let endpoints = shape.endpoints().len();
        if index >= endpoints {
            return Err(format!(
                "--kill-endpoint {index}: the run has endpoints 0 to {}",
                endpoints.saturating_sub(1)
            ));
        }
    }
    if let Some(dir) = &args.report {
        export::prepare(dir)?;
    }
    if args.compare {
        let report = compare::run(args)?;
        report.print(args.json);
        if let Some(dir) = &args.report {
            export::compare(dir, &report)?;
            written(dir, args.json);
        }
        return Ok(report.verified);
    }
    if let Some(rate) = args.latency {
        let report = latency::run(args, rate)?;
        report.print(args.json);
        if let Some(dir) = &args.report {
            export::latency(dir, &report)?;
            written(dir, args.json);
        }
        return Ok(report.verified);
    }
    let arrival = args.arrival();
    let mut report = run_nodes(&shape, args, arrival)?;
    if args.consume.is_ordered() && report.verified {
        // The same shape again, read interleaved; no report of its own.
        let interleaved = BenchArgs {
            consume: ConsumeMode::Interleaved,
            report: None,
            ..args.clone()
        };
        let again = interleaved
            .shape()
            .and_then(|shape| run_nodes(&shape, &interleaved, arrival));
        consume::compare(&mut report, again);
    }
    baseline::run_all(&shape, args, &mut report);
    report.print(args.json);
    if let Some(dir) = &args.report {
        export::throughput(
            dir,
            &report,
            args.bytes_per_producer(),
            args.spawn || args.agent,
        )?;
        written(dir, args.json);
    }
    Ok(report.verified)
}

/// Runs the nodes of `shape` in the mode `args` ask for (in this process, one process per
/// node, or agents with one process per endpoint) and judges the run.
fn run_nodes(shape: &Shape, args: &BenchArgs, arrival: Arrival) -> Result<Report, String> {
    if args.agent {
        attached::run(shape, args, arrival)
    } else if args.spawn {
        spawn::run(shape, args, arrival)
    } else {
        inproc::run(shape, args, arrival)
    }
}

/// Tells where the report went (in the summary only: with --json, stdout is the object).
fn written(dir: &std::path::Path, json: bool) {
    if !json {
        println!("  report written to {}", dir.join("report.md").display());
    }
}
