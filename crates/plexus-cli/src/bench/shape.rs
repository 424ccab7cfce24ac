//! The shape of a bench run: which nodes take part in which job, how many endpoints each
//! runs, what every channel carries, and which consumers stall.
//!
//! Job `j` (0-based index; its [`JobId`] is `j + 1`) uses `N = nodes_per_job` of the `n`
//! nodes, spread round robin: nodes `(j·N + i) mod n` for `i` in `0..N`. Every node of a job
//! runs `m_p` producers (slots `0..m_p`) and `m_c` consumers (slots `0..m_c`) for it, and the
//! job is all-to-all over those endpoints; every consumer reads its producers as the
//! shape's [`ConsumeMode`] says. With `--waves`, indexes go on across waves: the
//! `j`-th job of wave `w` has index `w·k + j` (its id one more) and is placed, and stalls,
//! like job `j` of the first wave, so every wave runs the same jobs on the same nodes.
//!
//! Invariants: a [`Shape`] is only built through validation ([`Shape::new`], also on
//! deserialisation), so every count is at least 1, `N <= n` (a job's nodes are distinct),
//! fewer consumers stall than exist, a job read build side then probe side has at least two
//! producers, and its [`Plan`] is valid. The coordinator and every
//! node process derive the same jobs, topologies and stalled consumers from the same shape.

use std::net::Ipv4Addr;
use std::time::Duration;

use plexus::{Config, Endpoint, JobId, NodeId, Topology};
use serde::{Deserialize, Serialize};

use super::consume::ConsumeMode;
use super::roles::{EndpointKey, Role};
use super::workload::{ChannelVerifier, Plan};

/// Beyond this many nodes on one machine, liveness timers are relaxed (see `node_config`).
pub const CROWDED_NODES: u32 = 64;

/// How long a job may wait for admission to a node's memory budget.
const ADMISSION_TIMEOUT: Duration = Duration::from_secs(600);

/// Cluster id every bench node uses.
const CLUSTER_ID: u64 = 0x706c_6578_7573_0001;

/// The parameters a [`Shape`] is built from; what travels to node processes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShapeSpec {
    /// Nodes in the cluster.
    pub nodes: u32,
    /// Producers per node and job.
    pub producers: u32,
    /// Consumers per node and job.
    pub consumers: u32,
    /// Jobs running at once.
    pub jobs: u32,
    /// Nodes each job uses; `None` means all of them.
    pub nodes_per_job: Option<u32>,
    /// Bytes each producer sends, spread over every consumer of its job.
    pub bytes_per_producer: u64,
    /// Size of every message but a channel's last, header included.
    pub message_size: u64,
    /// Credit pool of each consumer (raised to one message if smaller).
    pub credit_pool: u64,
    /// Consumers that read nothing until every other consumer finished.
    pub stall_consumers: u32,
    /// Address of node 0; node `i` listens on this address plus `i`.
    pub first_ip: Ipv4Addr,
    /// Bytes each node may buffer in all, if limited.
    #[serde(default)]
    pub memory_budget: Option<u64>,
    /// How every consumer reads the producers of its job.
    #[serde(default)]
    pub consume: ConsumeMode,
    /// The file holding the cluster's secret (owner-only); without one, a fresh secret
    /// (good for nodes of this process only).
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// Where each node's TLS files are (see `certs`), if links use TLS.
    #[serde(default)]
    pub tls_dir: Option<std::path::PathBuf>,
    /// What links run over.
    #[serde(default)]
    pub transport: LinkTransport,
    /// Added to every job id on the nodes (`--cluster`: agents that outlive a run never
    /// take an id twice, so each run's ids are fresh).
    #[serde(default)]
    pub job_base: u64,
}

/// A validated run shape; see the module docs.
/// What links run over, as the bench names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LinkTransport {
    /// One TCP connection per node pair.
    #[default]
    Tcp,
    /// One QUIC connection per node pair (TLS 1.3 always: the run makes certificates).
    Quic,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "ShapeSpec", into = "ShapeSpec")]
pub struct Shape {
    spec: ShapeSpec,
    nodes_per_job: u32,
    plan: Plan,
    credit_pool: u64,
    /// `(job index, consumer)` of every stalled consumer.
    stalled: Vec<(u32, Endpoint)>,
    /// The cluster's secret.
    secret: plexus::Secret,
}

impl TryFrom<ShapeSpec> for Shape {
    type Error = String;

    fn try_from(spec: ShapeSpec) -> Result<Shape, String> {
        Shape::new(spec)
    }
}

impl From<Shape> for ShapeSpec {
    fn from(shape: Shape) -> ShapeSpec {
        shape.spec
    }
}

impl Shape {
    /// Validates `spec` and derives the run from it.
    pub fn new(spec: ShapeSpec) -> Result<Shape, String> {
        if spec.nodes == 0 || spec.producers == 0 || spec.consumers == 0 || spec.jobs == 0 {
            return Err("nodes, producers, consumers and jobs must all be at least 1".into());
        }
        let nodes_per_job = spec.nodes_per_job.unwrap_or(spec.nodes);
        if nodes_per_job == 0 || nodes_per_job > spec.nodes {
            return Err(format!(
                "--nodes-per-job {nodes_per_job} must be between 1 and --nodes {}",
                spec.nodes
            ));
        }
        let consumers_per_job = u64::from(nodes_per_job) * u64::from(spec.consumers);
        let producers_per_job = u64::from(nodes_per_job) * u64::from(spec.producers);
        if spec.consume == ConsumeMode::BuildThenProbe && producers_per_job < 2 {
            return Err(format!(
                "--consume build-then-probe splits each job's producers into a build side and a probe side: it needs at least 2 producers per job, not {producers_per_job}"
            ));
        }
        let total_consumers = consumers_per_job * u64::from(spec.jobs);
        if u64::from(spec.stall_consumers) >= total_consumers {
            return Err(format!(
                "--stall-consumers {} leaves no healthy consumer out of {total_consumers}",
                spec.stall_consumers
            ));
        }
        let message_size = u32::try_from(spec.message_size)
            .map_err(|_| format!("message size {} is too large", spec.message_size))?;
        let plan = Plan::new(spec.bytes_per_producer / consumers_per_job, message_size)
            .map_err(|e| e.to_string())?;
        // A pool must hold at least one whole message and its overhead.
        let credit_pool = spec
            .credit_pool
            .max(plexus::message_cost(message_size as usize));
        if let Some(budget) = spec.memory_budget {
            let send = (budget / 4).max(plexus::message_cost(message_size as usize));
            if budget < send + credit_pool {
                return Err(format!(
                    "--memory-budget {budget} cannot hold its send share ({send}) and one credit pool ({credit_pool})"
                ));
            }
        }
        // Stalled consumer s: job s mod k, then spread over the job's nodes, then its slots.
        // `s < k·N·m_c`, so the mapping is one-to-one.
        let stalled = (0..spec.stall_consumers)
            .map(|s| {
                let job = s % spec.jobs;
                let rest = s / spec.jobs;
                let node = job_node(&spec, nodes_per_job, job, rest % nodes_per_job);
                (
                    job,
                    Endpoint::new(node, (rest / nodes_per_job) % spec.consumers),
                )
            })
            .collect();
        let secret = match &spec.secret_file {
            Some(path) => plexus::read_secret_file(path).map_err(|e| e.to_string())?,
            None => plexus::generate_secret()
                .map_err(|e| format!("cannot make a cluster secret: {e}"))?,
        };
        Ok(Shape {
            spec,
            nodes_per_job,
            plan,
            credit_pool,
            stalled,
            secret,
        })
    }

    /// Node `i`'s TLS identity, if links use TLS.
    pub fn node_tls(&self, i: u32) -> Result<Option<plexus::TlsIdentity>, String> {
        let Some(dir) = &self.spec.tls_dir else {
            return Ok(None);
        };
        let [cert, key, ca] = super::certs::files(dir, i);
        plexus::TlsIdentity::from_pem_files(&cert, &key, &ca)
            .map(Some)
            .map_err(|e| format!("node {i}'s TLS identity: {e}"))
    }

    /// What links run over.
    pub fn transport(&self) -> plexus::Transport {
        match self.spec.transport {
            LinkTransport::Tcp => plexus::Transport::Tcp,
            LinkTransport::Quic => plexus::Transport::Quic,
        }
    }

    /// The directory of the run's TLS files, if links use TLS.
    pub fn tls_dir(&self) -> Option<&std::path::Path> {
        self.spec.tls_dir.as_deref()
    }

    /// The file holding the cluster's secret, if the run has one.
    pub fn secret_file(&self) -> Option<&std::path::Path> {
        self.spec.secret_file.as_deref()
    }

    /// Nodes in the cluster.
    pub fn nodes(&self) -> u32 {
        self.spec.nodes
    }

    /// Producers per node and job.
    pub fn producers(&self) -> u32 {
        self.spec.producers
    }

    /// Consumers per node and job.
    pub fn consumers(&self) -> u32 {
        self.spec.consumers
    }

    /// Jobs running at once.
    pub fn jobs(&self) -> u32 {
        self.spec.jobs
    }

    /// Nodes each job uses (N).
    pub fn nodes_per_job(&self) -> u32 {
        self.nodes_per_job
    }

    /// Consumers that stall.
    pub fn stall_consumers(&self) -> u32 {
        self.spec.stall_consumers
    }

    /// How every consumer reads the producers of its job.
    pub fn consume(&self) -> ConsumeMode {
        self.spec.consume
    }

    /// The parameters the shape was built from.
    pub fn spec(&self) -> &ShapeSpec {
        &self.spec
    }

    /// What every channel carries.
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// Each consumer's credit pool in bytes.
    pub fn credit_pool(&self) -> u64 {
        self.credit_pool
    }

    /// The address node `i` listens on.
    pub fn node_ip(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.spec.first_ip).wrapping_add(i))
    }

    /// Every node's address, in node order.
    pub fn node_ips(&self) -> Vec<Ipv4Addr> {
        (0..self.spec.nodes).map(|i| self.node_ip(i)).collect()
    }

    /// The protocol configuration of node `i`.
    pub fn node_config(&self, i: u32) -> Config {
        let mut config = Config::new(NodeId(i), CLUSTER_ID, self.secret.clone());
        // The bench's messages are never larger than its message size.
        config.max_message = self.plan.message_size();
        config.credit_pool = self.credit_pool;
        config.max_grant = config.max_grant.max(u64::from(config.max_message));
        if self.spec.nodes > CROWDED_NODES {
            // This many nodes share one machine's two cores: a node can go seconds without
            // being scheduled while thousands of handshakes and millions of channels are set
            // up, so the liveness timers get room a real cluster would not need, growing
            // with the nodes beyond 128 (at 512, a node process's tasks wait up to ~12 s for
            // a core).
            let crowding = (self.spec.nodes / 128).max(1);
            config.idle_timeout = Duration::from_secs(15) * crowding;
            // Idle links are pinged as often relative to the idle timeout as by default:
            // at every 500 ms, the pings of 130 k idle links alone would take both cores.
            config.ping_interval = config.idle_timeout / 4;
            config.handshake_timeout = Duration::from_secs(30) * crowding;
            config.grace_period = Duration::from_secs(60) * crowding;
            config.dial_defer = Duration::from_secs(5);
        }
        if let Some(budget) = self.spec.memory_budget {
            config.memory_budget = Some(budget);
            config.send_buffer = self.send_buffer();
            // Jobs queued for admission wait as long as the run may (`--timeout-s` bounds it).
            config.admission_timeout = ADMISSION_TIMEOUT;
        }
        config
    }

    /// Each node's memory budget, if limited.
    pub fn memory_budget(&self) -> Option<u64> {
        self.spec.memory_budget
    }

    /// With a memory budget, the share of it for data being sent: a quarter, but at least
    /// one message.
    pub fn send_buffer(&self) -> u64 {
        let budget = self.spec.memory_budget.unwrap_or(0);
        (budget / 4).max(plexus::message_cost(self.plan.message_size() as usize))
    }

    /// The library's id of job `j`.
    pub fn job_id(j: u32) -> JobId {
        JobId(u64::from(j) + 1)
    }

    /// The id job `j` has on the nodes: [`Shape::job_id`] after the run's base.
    pub fn node_job_id(&self, j: u32) -> JobId {
        JobId(self.spec.job_base + Self::job_id(j).0)
    }

    /// The index of job `j` within its wave: the first wave's job it repeats.
    pub fn in_wave(&self, j: u32) -> u32 {
        j % self.spec.jobs
    }

    /// The jobs (indexes) of wave `wave`.
    pub fn wave_jobs(&self, wave: u32) -> std::ops::Range<u32> {
        let first = wave.saturating_mul(self.spec.jobs);
        first..first.saturating_add(self.spec.jobs)
    }

    /// The nodes job `j` uses, in round-robin order.
    pub fn job_nodes(&self, j: u32) -> Vec<NodeId> {
        (0..self.nodes_per_job)
            .map(|i| job_node(&self.spec, self.nodes_per_job, self.in_wave(j), i))
            .collect()
    }

    /// Whether job `j` uses node `node`.
    pub fn job_uses(&self, j: u32, node: u32) -> bool {
        self.job_nodes(j).contains(&NodeId(node))
    }

    /// The jobs of the first wave that use node `node`.
    pub fn jobs_of(&self, node: u32) -> Vec<u32> {
        (0..self.spec.jobs)
            .filter(|&j| self.job_uses(j, node))
            .collect()
    }

    /// The all-to-all topology of job `j` over its nodes.
    pub fn topology(&self, j: u32) -> Topology {
        Topology::all_to_all(&self.job_nodes(j), self.spec.producers, self.spec.consumers)
    }

    /// Every endpoint of job `j`: its nodes in ascending id, on each its producers before
    /// its consumers, each in slot order.
    pub fn job_endpoints(&self, j: u32) -> Vec<EndpointKey> {
        let mut nodes: Vec<u32> = self.job_nodes(j).iter().map(|n| n.0).collect();
        nodes.sort_unstable();
        let mut out = Vec::with_capacity(
            nodes.len() * (self.spec.producers as usize + self.spec.consumers as usize),
        );
        for node in nodes {
            let at = |role, slot| EndpointKey {
                job: j,
                role,
                node,
                slot,
            };
            out.extend((0..self.spec.producers).map(|s| at(Role::Producer, s)));
            out.extend((0..self.spec.consumers).map(|s| at(Role::Consumer, s)));
        }
        out
    }

    /// Every endpoint of the first wave, in one fixed order (that of `--kill-endpoint`):
    /// jobs, then nodes in ascending id, then producers before consumers, then slots.
    pub fn endpoints(&self) -> Vec<EndpointKey> {
        (0..self.spec.jobs)
            .flat_map(|j| self.job_endpoints(j))
            .collect()
    }

    /// Whether consumer `c` of job `j` stalls.
    pub fn is_stalled(&self, j: u32, c: Endpoint) -> bool {
        self.stalled.contains(&(self.in_wave(j), c))
    }

    /// Endpoints (producers and consumers) node `node` runs in each wave.
    pub fn endpoints_on(&self, node: u32) -> usize {
        self.jobs_of(node).len() * (self.spec.producers as usize + self.spec.consumers as usize)
    }

    /// Consumers on node `node` that do not stall, in each wave.
    pub fn healthy_consumers_on(&self, node: u32) -> usize {
        let all = self.jobs_of(node).len() * self.spec.consumers as usize;
        let stalled = self
            .stalled
            .iter()
            .filter(|(_, c)| c.node == NodeId(node))
            .count();
        all - stalled
    }

    /// The workload's id of producer `e` (unique within a job).
    pub fn producer_id(&self, e: Endpoint) -> u32 {
        e.node.0 * self.spec.producers + e.slot
    }

    /// The workload's id of consumer `e` (unique within a job).
    pub fn consumer_id(&self, e: Endpoint) -> u32 {
        e.node.0 * self.spec.consumers + e.slot
    }

    /// Job `j`'s consumers, each with its workload id: whom a producer of `j` sends to.
    pub fn addressed_consumers(&self, j: u32) -> Vec<(Endpoint, u32)> {
        self.topology(j)
            .consumers()
            .iter()
            .map(|&c| (c, self.consumer_id(c)))
            .collect()
    }

    /// The verifier of consumer `me` of job `j`: expects every producer of `j`'s plan.
    pub fn consumer_verifier(&self, j: u32, me: Endpoint) -> ChannelVerifier {
        let producers = self
            .topology(j)
            .producers()
            .iter()
            .map(|&p| self.producer_id(p))
            .collect::<Vec<_>>();
        ChannelVerifier::new(self.consumer_id(me), producers, self.plan())
    }

    /// Logical channels of a wave: k · (N·m_p) · (N·m_c).
    pub fn channels(&self) -> u64 {
        u64::from(self.spec.jobs) * self.producers_per_job() * self.consumers_per_job()
    }

    /// Bytes every consumer of a job receives when the job completes.
    pub fn bytes_per_consumer(&self) -> u64 {
        self.plan.channel_bytes() * self.producers_per_job()
    }

    /// Bytes all consumers of a wave receive when every job completes.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_per_consumer() * self.consumers_per_job() * u64::from(self.spec.jobs)
    }

    /// Connections per node with one connection per producer-consumer pair: the maximum
    /// over nodes v of k_v · (m_p·N·m_c + m_c·N·m_p), k_v being the jobs that use v.
    pub fn naive_connections_per_node(&self) -> u64 {
        let (m_p, m_c) = (
            u64::from(self.spec.producers),
            u64::from(self.spec.consumers),
        );
        let per_job = m_p * self.consumers_per_job() + m_c * self.producers_per_job();
        (0..self.spec.nodes)
            .map(|v| self.jobs_of(v).len() as u64 * per_job)
            .max()
            .unwrap_or(0)
    }

    fn producers_per_job(&self) -> u64 {
        u64::from(self.nodes_per_job) * u64::from(self.spec.producers)
    }

    fn consumers_per_job(&self) -> u64 {
        u64::from(self.nodes_per_job) * u64::from(self.spec.consumers)
    }
}

/// The `i`-th node of job `j`: `(j·N + i) mod n`.
fn job_node(spec: &ShapeSpec, nodes_per_job: u32, j: u32, i: u32) -> NodeId {
    let n = u64::from(spec.nodes);
    let index = (u64::from(j) * u64::from(nodes_per_job) + u64::from(i)) % n;
    // `index < n`, which is a u32.
    NodeId(u32::try_from(index).unwrap_or(0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid spec of `nodes` nodes and `jobs` jobs (2 producers, 3 consumers per
    /// node and job), for tests here and in sibling modules.
    pub(crate) fn spec(nodes: u32, nodes_per_job: Option<u32>, jobs: u32) -> ShapeSpec {
        ShapeSpec {
            nodes,
            producers: 2,
            consumers: 3,
            jobs,
            nodes_per_job,
            bytes_per_producer: 1 << 20,
            message_size: 4096,
            credit_pool: 1 << 16,
            stall_consumers: 0,
            first_ip: Ipv4Addr::new(127, 0, 0, 1),
            memory_budget: None,
            secret_file: None,
            tls_dir: None,
            transport: LinkTransport::Tcp,
            job_base: 0,
            consume: ConsumeMode::Interleaved,
        }
    }

    #[test]
    fn a_memory_budget_must_hold_the_send_share_and_one_pool() {
        let mut small = spec(2, None, 1);
        small.memory_budget = Some(1 << 16);
        assert!(Shape::new(small).is_err());
        let mut roomy = spec(2, None, 1);
        roomy.memory_budget = Some(1 << 20);
        let shape = Shape::new(roomy).expect("valid");
        let config = shape.node_config(0);
        assert_eq!(config.memory_budget, Some(1 << 20));
        assert_eq!(config.send_buffer, 1 << 18);
        config.validate().expect("the node configuration is valid");
    }

    #[test]
    fn liveness_timers_relax_with_crowding() {
        let default = Config::new(
            NodeId(0),
            CLUSTER_ID,
            plexus::generate_secret().expect("random"),
        );
        let timers = |nodes| {
            let c = Shape::new(spec(nodes, None, 1))
                .expect("valid")
                .node_config(0);
            (
                c.idle_timeout,
                c.ping_interval,
                c.handshake_timeout,
                c.grace_period,
            )
        };
        let secs = Duration::from_secs;
        assert_eq!(
            timers(64),
            (
                default.idle_timeout,
                default.ping_interval,
                default.handshake_timeout,
                default.grace_period
            )
        );
        assert_eq!(timers(128), (secs(15), secs(15) / 4, secs(30), secs(60)));
        assert_eq!(timers(512), (secs(60), secs(15), secs(120), secs(240)));
    }

    #[test]
    fn jobs_spread_round_robin() {
        let s = Shape::new(spec(5, Some(2), 3)).expect("valid");
        let ids = |j| s.job_nodes(j).iter().map(|n| n.0).collect::<Vec<_>>();
        assert_eq!(ids(0), [0, 1]);
        assert_eq!(ids(1), [2, 3]);
        assert_eq!(ids(2), [4, 0]);
        assert_eq!(s.jobs_of(0), [0, 2]);
        assert_eq!(s.jobs_of(3), [1]);
        assert_eq!(s.endpoints_on(0), 2 * 5);
        assert_eq!(s.channels(), 3 * 4 * 6);
        // Node 0 is in two jobs: 2 · (2·2·3 + 3·2·2).
        assert_eq!(s.naive_connections_per_node(), 48);
    }

    #[test]
    fn endpoints_are_numbered_by_job_node_role_and_slot() {
        // Job 2 uses nodes 4 and 0: node 0 comes first.
        let s = Shape::new(spec(5, Some(2), 3)).expect("valid");
        let all = s.endpoints();
        assert_eq!(all.len(), 3 * 2 * (2 + 3));
        let key = |job, role, node, slot| EndpointKey {
            job,
            role,
            node,
            slot,
        };
        assert_eq!(all[0], key(0, Role::Producer, 0, 0));
        assert_eq!(all[2], key(0, Role::Consumer, 0, 0));
        assert_eq!(all[5], key(0, Role::Producer, 1, 0));
        assert_eq!(all[10], key(1, Role::Producer, 2, 0));
        assert_eq!(all[20], key(2, Role::Producer, 0, 0));
        assert_eq!(all[29], key(2, Role::Consumer, 4, 2));
    }

    #[test]
    fn later_waves_repeat_the_first_waves_placement() {
        let mut sp = spec(5, Some(2), 3);
        sp.stall_consumers = 1;
        let s = Shape::new(sp).expect("valid");
        assert_eq!(s.wave_jobs(2), 6..9);
        assert_eq!(Shape::job_id(7), JobId(8));
        assert_eq!(s.job_nodes(7), s.job_nodes(1));
        let stalled = s.stalled[0];
        assert!(s.is_stalled(stalled.0 + 3, stalled.1));
    }

    #[test]
    fn default_is_every_node_in_every_job() {
        let mut sp = spec(4, None, 2);
        sp.consumers = 2;
        let s = Shape::new(sp).expect("valid");
        assert_eq!(s.nodes_per_job(), 4);
        // 2·k·m·(m·n) with m = 2, k = 2, n = 4.
        assert_eq!(s.naive_connections_per_node(), 64);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(Shape::new(spec(3, Some(4), 1)).is_err());
        assert!(Shape::new(spec(3, Some(0), 1)).is_err());
        assert!(Shape::new(spec(0, None, 1)).is_err());
        let mut sp = spec(2, Some(1), 2);
        sp.stall_consumers = 2 * 3;
        assert!(Shape::new(sp).is_err());
    }

    #[test]
    fn build_then_probe_needs_two_producers_per_job() {
        let mut sp = spec(2, Some(1), 1);
        sp.producers = 1;
        sp.consume = ConsumeMode::BuildThenProbe;
        let err = Shape::new(sp.clone()).expect_err("one producer per job");
        assert!(err.contains("at least 2 producers"), "{err}");
        sp.nodes_per_job = Some(2);
        assert_eq!(
            Shape::new(sp).expect("two producers").consume(),
            ConsumeMode::BuildThenProbe
        );
    }

    #[test]
    fn stalled_consumers_are_distinct_members_of_their_jobs() {
        let mut sp = spec(4, Some(2), 2);
        sp.stall_consumers = 11;
        let s = Shape::new(sp).expect("valid");
        let mut seen = s.stalled.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 11);
        for (j, c) in &s.stalled {
            assert!(s.job_uses(*j, c.node.0), "{j} {c}");
        }
        let healthy: usize = (0..4).map(|v| s.healthy_consumers_on(v)).sum();
        assert_eq!(healthy, 2 * 2 * 3 - 11);
    }

    #[test]
    fn survives_a_json_round_trip_with_validation() {
        let s = Shape::new(spec(3, Some(2), 2)).expect("valid");
        let text = serde_json::to_string(&s).expect("encode");
        let back: Shape = serde_json::from_str(&text).expect("decode");
        assert_eq!(back.job_nodes(1), s.job_nodes(1));
        let bad = text.replace("\"nodes_per_job\":2", "\"nodes_per_job\":7");
        assert!(serde_json::from_str::<Shape>(&bad).is_err());
    }
}
