//! The `zmq` baseline (cargo feature `zmq`): the workload over ZeroMQ, used the way a
//! ZeroMQ user would: every consumer binds a PULL socket on its node's address, every
//! producer connects one PUSH socket to each consumer of its job (from its own node's
//! address) and sends two-part messages, `[producer id (u32 LE), message]`, so the
//! consumer knows the sender. Each node has its own context (one I/O thread), as it would
//! in a process of its own; endpoints are threads, since the ZeroMQ API blocks.
//!
//! A producer serves its PUSH sockets as plexus's producers serve their consumers: it
//! sends to every socket that takes a message without waiting, and waits (polling) only
//! when none does. ZeroMQ reconnects a broken connection by itself; what was in flight on
//! it is gone, and the consumers' verification says so.
//!
//! Invariants: everything is bounded by the deadline: sends, receives, polls, the stalled
//! consumers' wait and the lingering of unsent messages time out by then, so every thread
//! ends by itself; a consumer stops as soon as its verifier found every channel complete
//! (PUSH/PULL has no end of stream); high-water marks hold about 1 MiB per pipe (at most
//! ZeroMQ's default of 1000 messages), so a slow consumer blocks its producers' pipes to
//! it instead of growing queues without bound.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use plexus::Endpoint;
use tokio::sync::mpsc;

use super::super::chaos::Chaos;
use super::super::delivered::Delivered;
use super::super::fds;
use super::super::host::BODY_SEED;
use super::super::monitor::{self, Monitor};
use super::super::roles::{EndpointError, EndpointOutcome, Moved, Role};
use super::super::shape::Shape;
use super::super::transport::endpoint_outcome;
use super::super::verdict::RunRecord;
use super::super::workload::MessageFactory;
use super::roles::RunState;
use super::{BaselineResult, Conditions, Fates, Measured, System};

/// File descriptors each channel costs: its PUSH socket's mailbox and both connection ends.
const FDS_PER_CHANNEL: u64 = 3;

/// Sockets a ZeroMQ context may hold by default (`ZMQ_MAX_SOCKETS`), less a margin.
const MAX_SOCKETS_PER_CONTEXT: u64 = 1000;

/// Bytes of messages a pipe's high-water mark allows, roughly.
const PIPE_BYTES: u64 = 1 << 20;

/// Runs the workload of `shape` over ZeroMQ, under `conditions`.
pub fn run(shape: &Shape, conditions: Conditions) -> BaselineResult {
    if let Some(note) = fds::too_many(shape.channels(), FDS_PER_CHANNEL, fds::soft_limit()) {
        return BaselineResult::skipped(System::Zmq, note);
    }
    if let Some(note) = too_many_sockets(shape) {
        return BaselineResult::skipped(System::Zmq, note);
    }
    super::on_runtime(System::Zmq, measure(shape, conditions))
}

async fn measure(shape: &Shape, conditions: Conditions) -> BaselineResult {
    let deadline = Instant::now() + conditions.timeout;
    let delivered = Arc::new(Delivered::default());
    let monitor = Monitor::start(shape, &delivered, conditions.json);
    let state = Arc::new(RunState::new(shape, delivered));
    let sample = Arc::new(LinkSample::new(shape));
    let chaos = conditions
        .chaos
        .map(|period| Chaos::start(shape.node_ips(), period));
    let start = Instant::now();
    let (mut outcomes, errors) = match launch(shape, deadline, &state, &sample) {
        Ok((expected, events)) => gather(expected, events, deadline).await,
        Err(e) => (Vec::new(), vec![e]),
    };
    let elapsed_s = start.elapsed().as_secs_f64();
    let timed_out = Instant::now() >= deadline;
    let link_kills = chaos.map_or(0, Chaos::stop);
    state.annotate(shape, &mut outcomes);
    let healthy_elapsed_s = if shape.stall_consumers() > 0 {
        state.healthy_elapsed_since(start.into())
    } else {
        None
    };
    let record = RunRecord {
        outcomes,
        errors,
        elapsed_s,
        healthy_elapsed_s,
        link_kills,
        links_per_node_max: monitor
            .finish()
            .max(sample.links_max.load(Ordering::Relaxed)),
        processes: 1,
        ..RunRecord::default()
    };
    let measured = Measured {
        record,
        fates: Fates {
            duplicated: state.duplicated(),
            lost: state.lost(),
            timed_out,
        },
        stalled_buffered_max: state.stalled_unread_max(shape),
    };
    BaselineResult::judged(System::Zmq, shape, measured, shape.channels())
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
    state: &Arc<RunState>,
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
                let (shape, events, state) = (shape.clone(), events.clone(), state.clone());
                expected += 1;
                spawn(format!("zmq-c{j}-{me}"), move || {
                    let (moved, error) = consume(&socket, &shape, j, me, &state, deadline);
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
                let (sample, state) = (sample.clone(), state.clone());
                expected += 1;
                spawn(format!("zmq-p{j}-{me}"), move || {
                    let sending = Sending {
                        shape: &shape,
                        job: j,
                        me,
                        factory: &factory,
                        state: &state,
                        deadline,
                    };
                    let (moved, error) = sending.run(&sockets, &sample);
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

/// What a producer thread sends, and to whom it reports.
struct Sending<'a> {
    shape: &'a Shape,
    job: u32,
    me: Endpoint,
    factory: &'a MessageFactory,
    state: &'a RunState,
    deadline: Instant,
}

impl Sending<'_> {
    /// Sends the producer's plan over `sockets` (one per consumer id), to every socket
    /// that takes a message without waiting, polling only when none does.
    fn run(
        &self,
        sockets: &[(u32, zmq::Socket)],
        sample: &LinkSample,
    ) -> (Moved, Option<EndpointError>) {
        let (plan, me) = (self.shape.plan(), self.me);
        let my_id = self.shape.producer_id(me);
        let tag = my_id.to_le_bytes();
        let fail = |e: String| {
            let context = format!("job {} producer {me}", Shape::job_id(self.job).0);
            Some(EndpointError::other(format!("{context}: {e}")))
        };
        let unread: Vec<_> = sockets
            .iter()
            .map(|(id, _)| self.state.unread(self.job, *id))
            .collect();
        let mut moved = Moved::default();
        let mut next = vec![0u32; sockets.len()];
        let mut held: Vec<Option<bytes::Bytes>> = vec![None; sockets.len()];
        let mut sampled = false;
        while next.iter().any(|&n| n < plan.messages()) {
            let mut progressed = false;
            for (i, (id, socket)) in sockets.iter().enumerate() {
                if next[i] == plan.messages() {
                    continue;
                }
                let message = held[i]
                    .take()
                    .unwrap_or_else(|| self.factory.message(&plan, my_id, *id, next[i]));
                match socket.send(&tag[..], zmq::SNDMORE | zmq::DONTWAIT) {
                    Ok(()) => {}
                    Err(zmq::Error::EAGAIN) => {
                        held[i] = Some(message);
                        continue;
                    }
                    Err(e) => return (moved, fail(format!("sending to consumer id {id}: {e}"))),
                }
                // The first part went: ZeroMQ takes the rest of the message.
                if let Err(e) = socket.send(&message[..], 0) {
                    return (moved, fail(format!("sending to consumer id {id}: {e}")));
                }
                if let Some(unread) = unread[i] {
                    unread.sent(message.len() as u64);
                }
                moved.bytes += message.len() as u64;
                moved.messages += 1;
                next[i] += 1;
                progressed = true;
            }
            if !sampled && next.iter().all(|&n| n > 0) {
                sampled = true;
                sample.first_round_done();
            }
            if !progressed {
                let mut items: Vec<zmq::PollItem<'_>> = sockets
                    .iter()
                    .zip(&next)
                    .filter(|(_, &n)| n < plan.messages())
                    .map(|((_, socket), _)| socket.as_poll_item(zmq::POLLOUT))
                    .collect();
                match zmq::poll(&mut items, i64::from(millis_until(self.deadline))) {
                    Ok(0) => {
                        return (
                            moved,
                            fail("timed out waiting for a consumer to take a message".into()),
                        )
                    }
                    Ok(_) => {}
                    Err(e) => return (moved, fail(format!("polling: {e}"))),
                }
            }
        }
        (moved, None)
    }
}

fn consume(
    socket: &zmq::Socket,
    shape: &Shape,
    job: u32,
    me: Endpoint,
    state: &RunState,
    deadline: Instant,
) -> (Moved, Option<EndpointError>) {
    let stalled = shape.is_stalled(job, me);
    if stalled {
        state.wait_release_blocking(deadline.saturating_duration_since(Instant::now()));
    }
    let read = read(socket, shape, job, me, state, stalled);
    if !stalled {
        // Done, complete or not: the stalled consumers must not wait on a failure.
        state.healthy_done();
    }
    read
}

/// Reads and verifies until the consumer has every message of every producer.
fn read(
    socket: &zmq::Socket,
    shape: &Shape,
    job: u32,
    me: Endpoint,
    state: &RunState,
    stalled: bool,
) -> (Moved, Option<EndpointError>) {
    let context = format!("job {} consumer {me}", Shape::job_id(job).0);
    let fail = |e: String| Some(EndpointError::other(format!("{context}: {e}")));
    let mut verifier = shape.consumer_verifier(job, me);
    let unread = state.unread(job, shape.consumer_id(me));
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
        if let Some(unread) = unread {
            unread.read(message.len() as u64);
        }
        state.delivered(stalled, message.len() as u64);
        if let Err(e) = verifier.accept(from, &message) {
            state.rejected(&e);
            return (moved, fail(e.to_string()));
        }
        moved.bytes += message.len() as u64;
        moved.messages += 1;
    }
    match verifier.finish() {
        Ok(_) => (moved, None),
        Err(e) => (moved, fail(e.to_string())),
    }
}
