//! Runs one bench: starts the nodes, the consumers and the producers, samples the OS
//! socket table while they run, and gathers the report.
//!
//! Invariants: the run is bounded by `--timeout-s`; a consumer passes only if its verifier
//! accepted every message and found every channel complete; stalled consumers start
//! reading only after every healthy consumer finished.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use plexus::{Config, Endpoint, JobId, Membership, Node, NodeId, Topology, TrySend};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::report::Report;
use super::workload::{ChannelVerifier, MessageFactory, Plan};
use super::{memory, BenchArgs};
use plexus::sockets;

const CLUSTER_ID: u64 = 0x706c_6578_7573_0001;

/// What one consumer task found.
struct ConsumerOutcome {
    stalled: bool,
    bytes: u64,
    messages: u64,
    /// Peak credit outstanding (bytes held anywhere for it).
    peak_buffered: u64,
    error: Option<String>,
}

/// The address of node `i`.
fn node_ip(first: Ipv4Addr, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(first).wrapping_add(i))
}

/// The id the workload gives endpoint `e` within a job with `per_node` endpoints per node.
fn global_id(e: Endpoint, per_node: u32) -> u32 {
    e.node.0 * per_node + e.slot
}

/// Runs the bench described by `args`.
pub fn run(args: &BenchArgs) -> Result<Report, String> {
    if args.nodes == 0 || args.producers == 0 || args.consumers == 0 || args.jobs == 0 {
        return Err("nodes, producers, consumers and jobs must all be at least 1".into());
    }
    let total_consumers = args.nodes * args.consumers * args.jobs;
    if args.stall_consumers >= total_consumers {
        return Err(format!(
            "--stall-consumers {} leaves no healthy consumer out of {total_consumers}",
            args.stall_consumers
        ));
    }
    let message_size = u32::try_from(args.message_size)
        .map_err(|_| format!("message size {} is too large", args.message_size))?;
    let consumers_per_job = u64::from(args.nodes * args.consumers);
    let plan = Plan::new(args.bytes_per_producer / consumers_per_job, message_size)
        .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run_async(args, plan))
}

async fn run_async(args: &BenchArgs, plan: Plan) -> Result<Report, String> {
    let n = args.nodes;
    let (m_p, m_c) = (args.producers, args.consumers);
    let membership = Membership::new();
    // A pool must hold at least one message.
    let credit_pool = args.credit_pool.max(u64::from(plan.message_size()));
    let mut nodes = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut config = Config::new(NodeId(i), CLUSTER_ID);
        // The bench's messages are never larger than its message size.
        config.max_message = plan.message_size();
        config.credit_pool = credit_pool;
        config.max_grant = config.max_grant.max(u64::from(config.max_message));
        let ip = node_ip(args.first_ip, i);
        let node = Node::builder()
            .config(config)
            .listen(SocketAddr::new(IpAddr::V4(ip), 0))
            .membership(membership.clone())
            .start()
            .await
            .map_err(|e| format!("starting node {i} on {ip}: {e}"))?;
        nodes.push(node);
    }
    let node_ids: Vec<NodeId> = (0..n).map(NodeId).collect();
    let topology = Topology::all_to_all(&node_ids, m_p, m_c);
    let stalled: Vec<(u32, Endpoint)> = (0..args.stall_consumers)
        .map(|s| (s % args.jobs, Endpoint::new(NodeId(s % n), (s / n) % m_c)))
        .collect();

    let delivered = Arc::new(AtomicU64::new(0));
    let healthy_left = Arc::new(AtomicUsize::new(
        (n * m_c * args.jobs - args.stall_consumers) as usize,
    ));
    let (release_tx, release_rx) = watch::channel(false);
    let release_tx = Arc::new(release_tx);
    let healthy_done_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let start = Instant::now();

    // Consumers first, so that no channel has to wait parked for its consumer.
    let mut consumer_tasks: JoinSet<ConsumerOutcome> = JoinSet::new();
    for job_index in 0..args.jobs {
        let job_id = JobId(u64::from(job_index) + 1);
        for node in &nodes {
            let job = node.job(job_id, topology.clone());
            for slot in 0..m_c {
                let me = Endpoint::new(node.id(), slot);
                let is_stalled = stalled.contains(&(job_index, me));
                let rx = job
                    .consumer(slot)
                    .await
                    .map_err(|e| format!("opening consumer {me}: {e}"))?;
                let producers = topology.producers().iter().map(|&p| global_id(p, m_p));
                let verifier = ChannelVerifier::new(global_id(me, m_c), producers, plan);
                let ctx = ConsumerCtx {
                    node: node.clone(),
                    job: job_id,
                    stalled: is_stalled,
                    release: release_rx.clone(),
                    release_tx: release_tx.clone(),
                    healthy_left: healthy_left.clone(),
                    healthy_done_at: healthy_done_at.clone(),
                    delivered: delivered.clone(),
                    producers_per_node: m_p,
                    counted: false,
                };
                consumer_tasks.spawn(consume(rx, verifier, ctx));
            }
        }
    }

    let factory = MessageFactory::new(0x5eed);
    let mut producer_tasks: JoinSet<Result<(), String>> = JoinSet::new();
    for job_index in 0..args.jobs {
        let job_id = JobId(u64::from(job_index) + 1);
        for node in &nodes {
            let job = node.job(job_id, topology.clone());
            for slot in 0..m_p {
                let tx = job
                    .producer(slot)
                    .await
                    .map_err(|e| format!("opening producer {}/{slot}: {e}", node.id().0))?;
                let consumers: Vec<Endpoint> = topology.consumers().to_vec();
                producer_tasks.spawn(produce(tx, consumers, plan, factory.clone(), m_p, m_c));
            }
        }
    }

    let bytes_total =
        plan.channel_bytes() * u64::from(n * m_p) * u64::from(n * m_c) * u64::from(args.jobs);
    let progress = progress_bar(bytes_total, args.json);
    let ips: Vec<Ipv4Addr> = (0..n).map(|i| node_ip(args.first_ip, i)).collect();
    let links_max = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn(sample_links(
        ips.clone(),
        links_max.clone(),
        delivered.clone(),
        progress.clone(),
    ));

    let mut errors = Vec::new();
    let deadline = Duration::from_secs(args.timeout_s);
    let outcomes = tokio::time::timeout(deadline, async {
        let mut outcomes = Vec::new();
        while let Some(joined) = producer_tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("producer task failed: {e}")),
            }
        }
        while let Some(joined) = consumer_tasks.join_next().await {
            match joined {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => errors.push(format!("consumer task failed: {e}")),
            }
        }
        outcomes
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    sampler.abort();
    // The links are still up: one last look, for runs shorter than the sampling period.
    links_max.fetch_max(max_links(&ips), Ordering::Relaxed);
    progress.finish_and_clear();
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(_) => {
            errors.push(format!("timed out after {} s", args.timeout_s));
            Vec::new()
        }
    };
    let healthy_elapsed = healthy_done_at
        .lock()
        .ok()
        .and_then(|t| *t)
        .map_or(elapsed, |t| t.duration_since(start).as_secs_f64());
    for node in &nodes {
        node.shutdown();
    }

    let mut messages_total = 0;
    let mut bytes_received = 0;
    let mut healthy_bytes = 0;
    let mut stalled_peak = 0;
    for o in &outcomes {
        if let Some(e) = &o.error {
            errors.push(e.clone());
        }
        messages_total += o.messages;
        bytes_received += o.bytes;
        if o.stalled {
            stalled_peak = stalled_peak.max(o.peak_buffered);
        } else {
            healthy_bytes += o.bytes;
        }
    }
    let expected_consumers = (n * m_c * args.jobs) as usize;
    if errors.is_empty() && outcomes.len() != expected_consumers {
        errors.push(format!(
            "{} of {expected_consumers} consumers reported",
            outcomes.len()
        ));
    }
    if errors.is_empty() && bytes_received != bytes_total {
        errors.push(format!(
            "received {bytes_received} bytes, expected {bytes_total}"
        ));
    }
    let verified = errors.is_empty();
    let per_job_endpoints = u64::from(m_p) + u64::from(m_c);
    Ok(Report {
        verified,
        errors,
        nodes: n,
        producers_per_node: m_p,
        consumers_per_node: m_c,
        jobs: args.jobs,
        channels: u64::from(args.jobs) * u64::from(n * m_p) * u64::from(n * m_c),
        message_size: u64::from(plan.message_size()),
        bytes_total: bytes_received,
        messages_total,
        elapsed_s: elapsed,
        throughput_bytes_per_s: bytes_received as f64 / elapsed,
        messages_per_s: messages_total as f64 / elapsed,
        links_per_node_max: links_max.load(Ordering::Relaxed),
        // Each of the node's m producers and m consumers per job holds one connection to
        // each of the job's n·m counterparts: 2·k·m·(m·n) when producers = consumers = m.
        naive_connections_per_node: u64::from(args.jobs)
            * per_job_endpoints.max(1)
            * u64::from(n)
            * u64::from(m_p.max(m_c)),
        stalled_consumers: args.stall_consumers,
        healthy_throughput_bytes_per_s: healthy_bytes as f64 / healthy_elapsed,
        healthy_elapsed_s: healthy_elapsed,
        stalled_buffered_bytes_max: stalled_peak,
        credit_pool_bytes: credit_pool,
        rss_peak_bytes: memory::peak_rss_bytes().unwrap_or(0),
    })
}

/// Sends the producer's whole plan to every consumer, serving whichever consumers have
/// credit and waiting only when none has.
async fn produce(
    mut tx: plexus::Producer,
    consumers: Vec<Endpoint>,
    plan: Plan,
    factory: MessageFactory,
    producers_per_node: u32,
    consumers_per_node: u32,
) -> Result<(), String> {
    let me = tx.endpoint();
    let my_id = global_id(me, producers_per_node);
    let messages = plan.messages();
    let mut next_seq = vec![0u32; consumers.len()];
    let index: HashMap<Endpoint, usize> =
        consumers.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    // Consumers worth trying now; the others wait for their credit.
    let mut runnable: Vec<usize> = (0..consumers.len()).collect();
    let mut next_round: Vec<usize> = Vec::with_capacity(consumers.len());
    let mut unfinished = consumers.len();
    while unfinished > 0 {
        if runnable.is_empty() {
            for consumer in tx.ready().await {
                if let Some(&i) = index.get(&consumer) {
                    runnable.push(i);
                }
            }
            continue;
        }
        // One message to each runnable consumer per round, so they progress evenly.
        for &i in &runnable {
            let consumer = consumers[i];
            let len = plan.message_len(next_seq[i]) as usize;
            match tx.has_credit(consumer, len) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Err(format!("producer {me}: {e}")),
            }
            let message = factory.message(
                &plan,
                my_id,
                global_id(consumer, consumers_per_node),
                next_seq[i],
            );
            match tx.try_send(consumer, message) {
                Ok(()) => {
                    next_seq[i] += 1;
                    if next_seq[i] == messages {
                        unfinished -= 1;
                    } else {
                        next_round.push(i);
                    }
                }
                Err(TrySend::NoCredit(_)) => {
                    return Err(format!(
                        "producer {me}: credit vanished between check and send"
                    ))
                }
                Err(TrySend::Failed(e)) => return Err(format!("producer {me}: {e}")),
            }
        }
        std::mem::swap(&mut runnable, &mut next_round);
        next_round.clear();
        tokio::task::yield_now().await;
    }
    tx.close()
        .await
        .map_err(|e| format!("closing producer {me}: {e}"))
}

struct ConsumerCtx {
    node: Node,
    job: JobId,
    stalled: bool,
    release: watch::Receiver<bool>,
    release_tx: Arc<watch::Sender<bool>>,
    healthy_left: Arc<AtomicUsize>,
    healthy_done_at: Arc<std::sync::Mutex<Option<Instant>>>,
    delivered: Arc<AtomicU64>,
    producers_per_node: u32,
    /// This consumer was already counted as finished.
    counted: bool,
}

/// Reads and verifies everything for one consumer (after the release, if it stalls).
async fn consume(
    mut rx: plexus::Consumer,
    mut verifier: ChannelVerifier,
    mut ctx: ConsumerCtx,
) -> ConsumerOutcome {
    let me = rx.endpoint();
    let mut outcome = ConsumerOutcome {
        stalled: ctx.stalled,
        bytes: 0,
        messages: 0,
        peak_buffered: 0,
        error: None,
    };
    if ctx.stalled {
        let _ = ctx.release.wait_for(|released| *released).await;
    }
    while let Some(item) = rx.recv().await {
        match item {
            Ok((from, message)) => {
                if let Err(e) = verifier.accept(global_id(from, ctx.producers_per_node), &message) {
                    outcome.error = Some(format!("consumer {me}: {e}"));
                    break;
                }
                outcome.bytes += message.len() as u64;
                outcome.messages += 1;
                ctx.delivered
                    .fetch_add(message.len() as u64, Ordering::Relaxed);
                if verifier.is_complete() {
                    // Every planned message is in: the consumer's work is done, though its
                    // stream ends only when every producer has closed (after the stalled
                    // consumers drained).
                    ctx.mark_healthy_done();
                }
            }
            Err(e) => {
                outcome.error = Some(format!("consumer {me}: {e}"));
                break;
            }
        }
    }
    if outcome.error.is_none() {
        if let Err(e) = verifier.finish() {
            outcome.error = Some(format!("consumer {me}: {e}"));
        }
    }
    outcome.peak_buffered = ctx
        .node
        .consumer_credit(ctx.job, me.slot)
        .map_or(0, |c| c.peak);
    // A consumer that failed is done too: the run will not verify, but must not hang.
    ctx.mark_healthy_done();
    outcome
}

impl ConsumerCtx {
    /// Counts this (healthy) consumer as finished, once; the last one releases the stalled.
    fn mark_healthy_done(&mut self) {
        if self.stalled || self.counted {
            return;
        }
        self.counted = true;
        if self.healthy_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut at) = self.healthy_done_at.lock() {
                *at = Some(Instant::now());
            }
            let _ = self.release_tx.send(true);
        }
    }
}

/// Samples established connections per node address from the OS, keeping the maximum, and
/// updates the progress bar. Reading the socket table costs time in proportion to its size
/// (hundreds of milliseconds with thousands of sockets), so samples are spaced to keep that
/// cost to about a quarter of one core.
async fn sample_links(
    ips: Vec<Ipv4Addr>,
    links_max: Arc<AtomicUsize>,
    delivered: Arc<AtomicU64>,
    progress: ProgressBar,
) {
    loop {
        progress.set_position(delivered.load(Ordering::Relaxed));
        let ips = ips.clone();
        let started = Instant::now();
        if let Ok(max) = tokio::task::spawn_blocking(move || max_links(&ips)).await {
            links_max.fetch_max(max, Ordering::Relaxed);
        }
        let pause = (started.elapsed() * 3).max(Duration::from_millis(50));
        tokio::time::sleep(pause).await;
    }
}

/// Most established connections any of `ips` holds, per the OS socket table.
fn max_links(ips: &[Ipv4Addr]) -> usize {
    let Ok(counts) = sockets::established_by_local_ip() else {
        return 0;
    };
    ips.iter()
        .map(|ip| counts.get(ip).copied().unwrap_or(0))
        .max()
        .unwrap_or(0)
}

fn progress_bar(total: u64, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
