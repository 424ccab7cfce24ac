//! The `zmq` baseline (cargo feature `zmq`): the workload over ZeroMQ, used the way a
//! ZeroMQ user would: every consumer binds a PULL socket on its node's address, every
//! producer connects one PUSH socket to each consumer of its job (from its own node's
//! address) and sends two-part messages, `[producer id (u32 LE), message]`, so the
//! consumer knows the sender. Each node has its own context (one I/O thread), as it would
//! in a process of its own; endpoints are threads, since the ZeroMQ API blocks.
//!
//! Invariants: everything is bounded by the deadline: sends, receives and the lingering
//! of unsent messages time out by then, so every thread ends by itself; a consumer stops
//! as soon as its verifier found every channel complete (PUSH/PULL has no end of stream);
//! high-water marks hold about 1 MiB per pipe (at most ZeroMQ's default of 1000 messages),
//! so a slow consumer blocks its producers instead of growing queues without bound.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus::Endpoint;
use tokio::sync::mpsc;

use super::super::delivered::Delivered;
use super::super::fds;
use super::super::host::BODY_SEED;
use super::super::monitor::{self, Monitor};
use super::super::roles::{EndpointError, EndpointOutcome, Moved, Role};
use super::super::shape::Shape;
use super::super::transport::endpoint_outcome;
use super::super::verdict::RunRecord;
use super::super::workload::MessageFactory;
use super::{BaselineResult, System};

/// File descriptors each channel costs: its PUSH socket's mailbox and both connection ends.
const FDS_PER_CHANNEL: u64 = 3;

/// Sockets a ZeroMQ context may hold by default (`ZMQ_MAX_SOCKETS`), less a margin.
const MAX_SOCKETS_PER_CONTEXT: u64 = 1000;

/// Bytes of messages a pipe's high-water mark allows, roughly.
const PIPE_BYTES: u64 = 1 << 20;

/// Runs the workload of `shape` over ZeroMQ, within `timeout`.
pub fn run(shape: &Shape, json: bool, timeout: Duration) -> BaselineResult {
    if let Some(note) = fds::too_many(shape.channels(), FDS_PER_CHANNEL, fds::soft_limit()) {
        return BaselineResult::skipped(System::Zmq, note);
    }
    if let Some(note) = too_many_sockets(shape) {
        return BaselineResult::skipped(System::Zmq, note);
    }
    super::on_runtime(System::Zmq, measure(shape, json, timeout))
}

async fn measure(shape: &Shape, json: bool, timeout: Duration) -> BaselineResult {
    let deadline = Instant::now() + timeout;
    let delivered = Arc::new(Delivered::default());
    let monitor = Monitor::start(shape, &delivered, json);
    let sample = Arc::new(LinkSample::new(shape));
    let start = Instant::now();
    let (outcomes, errors) = match launch(shape, deadline, &delivered, &sample) {
        Ok((expected, events)) => gather(expected, events, deadline).await,
        Err(e) => (Vec::new(), vec![e]),
    };
    let record = RunRecord {
        outcomes,
        errors,
        elapsed_s: start.elapsed().as_secs_f64(),
        links_per_node_max: monitor
            .finish()
            .max(sample.links_max.load(Ordering::Relaxed)),
        processes: 1,
        ..RunRecord::default()
    };
    BaselineResult::judged(System::Zmq, shape, record, shape.channels())
}

/// Why some node would need more sockets than a context holds, if it would.
fn too_many_sockets(shape: &Shape) -> Option<String> {
    let per_job = u64::from(shape.consumers())
        + u64::from(shape.producers())
            * u64::from(shape.nodes_per_job())
            * u64::from(shape.consumers());
    (0..shape.nodes()).find_map(|v| {
        let sockets = shape.jobs_of(v).len() as u64 * per_job;
        (sockets > MAX_SOCKETS_PER_CONTEXT).then(|| {
            format!("skipped: node {v} would need {sockets} ZeroMQ sockets, more than a context's {MAX_SOCKETS_PER_CONTEXT}")
        })
    })
}

/// Counts the producers down to the end of their first round (one message to each of
/// their consumers, so every socket of theirs is connected); the last one counts the
/// links. The monitor's sampler competes for the CPU with every endpoint thread and may
/// miss the moment every connection is up; this sample does not.
struct LinkSample {
    left: AtomicUsize,
    ips: Vec<Ipv4Addr>,
    links_max: AtomicUsize,
}

impl LinkSample {
    fn new(shape: &Shape) -> LinkSample {
        let producers = (0..shape.jobs())
            .map(|j| shape.job_nodes(j).len() * shape.producers() as usize)
            .sum();
        LinkSample {
            left: AtomicUsize::new(producers),
            ips: shape.node_ips(),
            links_max: AtomicUsize::new(0),
        }
    }

    /// A producer finished its first round.
    fn first_round_done(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let links = monitor::max_links_in(&self.ips, &[std::path::PathBuf::from("/proc/net")]);
            self.links_max.fetch_max(links, Ordering::Relaxed);
        }
    }
}

/// Binds every consumer, then starts one thread per endpoint. Returns how many outcomes
/// to expect and where they arrive.
fn launch(
    shape: &Shape,
    deadline: Instant,
    delivered: &Arc<Delivered>,
    sample: &Arc<LinkSample>,
) -> Result<(usize, mpsc::UnboundedReceiver<EndpointOutcome>), String> {
    let contexts: Vec<zmq::Context> = (0..shape.nodes()).map(|_| zmq::Context::new()).collect();
    let hwm = (PIPE_BYTES / u64::from(shape.plan().message_size())).clamp(16, 1000) as i32;
    let zmq_err = |what: String| move |e: zmq::Error| format!("zmq: {what}: {e}");
    let (events, rx) = mpsc::unbounded_channel();
    let mut expected = 0;
    let mut bound = Vec::new();
    for j in 0..shape.jobs() {
        for node in shape.job_nodes(j) {
            for slot in 0..shape.consumers() {
                let me = Endpoint::new(node, slot);
                let socket = contexts[node.0 as usize]
                    .socket(zmq::PULL)
                    .map_err(zmq_err(format!("consumer {me}")))?;
                socket
                    .set_rcvhwm(hwm)
                    .and_then(|()| socket.set_linger(0))
                    .and_then(|()| socket.set_rcvtimeo(millis_until(deadline)))
                    .and_then(|()| socket.bind(&format!("tcp://{}:*", shape.node_ip(node.0))))
                    .map_err(zmq_err(format!("binding consumer {me}")))?;
                let endpoint = socket
                    .get_last_endpoint()
                    .map_err(zmq_err(format!("consumer {me}")))?
                    .map_err(|_| format!("zmq: consumer {me}: an endpoint that is not text"))?;
                let address = endpoint.trim_start_matches("tcp://").to_string();
                bound.push((j, me, address));
                let (shape, events, delivered) = (shape.clone(), events.clone(), delivered.clone());
                expected += 1;
                spawn(format!("zmq-c{j}-{me}"), move || {
                    let (moved, error) = consume(&socket, &shape, j, me, &delivered);
                    drop(socket);
                    let _ = events.send(endpoint_outcome(j, me, Role::Consumer, moved, error));
                })?;
            }
        }
    }
    let factory = Arc::new(MessageFactory::new(BODY_SEED));
    for j in 0..shape.jobs() {
        let targets: Vec<(u32, String)> = bound
            .iter()
            .filter(|(job, _, _)| *job == j)
            .map(|(_, c, address)| (shape.consumer_id(*c), address.clone()))
            .collect();
        for node in shape.job_nodes(j) {
            for slot in 0..shape.producers() {
                let me = Endpoint::new(node, slot);
                let mut sockets = Vec::with_capacity(targets.len());
                for (id, address) in &targets {
                    let socket = contexts[node.0 as usize]
                        .socket(zmq::PUSH)
                        .map_err(zmq_err(format!("producer {me}")))?;
                    let from = shape.node_ip(node.0);
                    socket
                        .set_sndhwm(hwm)
                        .and_then(|()| socket.set_sndtimeo(millis_until(deadline)))
                        .and_then(|()| socket.set_linger(millis_until(deadline)))
                        .and_then(|()| socket.connect(&format!("tcp://{from}:0;{address}")))
                        .map_err(zmq_err(format!("producer {me} connecting to {address}")))?;
                    sockets.push((*id, socket));
                }
                let (shape, events, factory) = (shape.clone(), events.clone(), factory.clone());
                let sample = sample.clone();
                expected += 1;
                spawn(format!("zmq-p{j}-{me}"), move || {
                    let (moved, error) = produce(&sockets, &shape, j, me, &factory, &sample);
                    drop(sockets);
                    let _ = events.send(endpoint_outcome(j, me, Role::Producer, moved, error));
                })?;
            }
        }
    }
    Ok((expected, rx))
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map(drop)
        .map_err(|e| format!("zmq: starting thread {name}: {e}"))
}

/// Milliseconds from now until `deadline`, at least 1, as ZeroMQ's options take them.
fn millis_until(deadline: Instant) -> i32 {
    let ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis();
    i32::try_from(ms).unwrap_or(i32::MAX).max(1)
}

/// Waits for `expected` outcomes, or the deadline.
async fn gather(
    expected: usize,
    mut events: mpsc::UnboundedReceiver<EndpointOutcome>,
    deadline: Instant,
) -> (Vec<EndpointOutcome>, Vec<String>) {
    let mut outcomes = Vec::with_capacity(expected);
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::from_std(deadline);
    while outcomes.len() < expected {
        tokio::select! {
            event = events.recv() => match event {
                Some(o) => outcomes.push(o),
                None => {
                    errors.push("the endpoint threads ended without reporting".to_string());
                    break;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                errors.push("timed out before every endpoint finished".to_string());
                break;
            }
        }
    }
    (outcomes, errors)
}

fn produce(
    sockets: &[(u32, zmq::Socket)],
    shape: &Shape,
    job: u32,
    me: Endpoint,
    factory: &MessageFactory,
    sample: &LinkSample,
) -> (Moved, Option<EndpointError>) {
    let plan = shape.plan();
    let my_id = shape.producer_id(me);
    let tag = my_id.to_le_bytes();
    let mut moved = Moved::default();
    for seq in 0..plan.messages() {
        for (id, socket) in sockets {
            let message = factory.message(&plan, my_id, *id, seq);
            let sent = socket
                .send(&tag[..], zmq::SNDMORE)
                .and_then(|()| socket.send(&message[..], 0));
            if let Err(e) = sent {
                let context = format!("job {} producer {me}", Shape::job_id(job).0);
                let error = format!("{context}: sending to consumer id {id}: {e}");
                return (moved, Some(EndpointError::other(error)));
            }
            moved.bytes += message.len() as u64;
            moved.messages += 1;
        }
        if seq == 0 {
            sample.first_round_done();
        }
    }
    (moved, None)
}

fn consume(
    socket: &zmq::Socket,
    shape: &Shape,
    job: u32,
    me: Endpoint,
    delivered: &Delivered,
) -> (Moved, Option<EndpointError>) {
    let context = format!("job {} consumer {me}", Shape::job_id(job).0);
    let fail = |e: String| Some(EndpointError::other(format!("{context}: {e}")));
    let mut verifier = shape.consumer_verifier(job, me);
    let mut moved = Moved::default();
    let (mut tag, mut message) = (zmq::Message::new(), zmq::Message::new());
    while !verifier.is_complete() {
        let received = socket
            .recv(&mut tag, 0)
            .and_then(|()| socket.recv(&mut message, 0));
        if let Err(e) = received {
            return (moved, fail(format!("receiving: {e}")));
        }
        let from = match <[u8; 4]>::try_from(&tag[..]) {
            Ok(id) if tag.get_more() => u32::from_le_bytes(id),
            _ => return (moved, fail("a message without its producer id".into())),
        };
        if let Err(e) = verifier.accept(from, &message) {
            return (moved, fail(e.to_string()));
        }
        moved.bytes += message.len() as u64;
        moved.messages += 1;
        delivered.add(false, message.len() as u64);
    }
    match verifier.finish() {
        Ok(_) => (moved, None),
        Err(e) => (moved, fail(e.to_string())),
    }
}
