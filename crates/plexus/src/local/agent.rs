//! The agent's side of the attach protocol: accepting processes on the Unix socket,
//! checking who they are, and running their requests on the node.
//!
//! Each connection has a reader (this module's [`serve_connection`]), a writer task, and
//! one task per endpoint the process opened, which owns the node's handle for it; a
//! producer's task grants the process windows from its channels' credit, a consumer's
//! task hands it arrivals when asked. When the connection ends, for whatever reason, the
//! tasks end and their handles drop: producers not closed abort their channels,
//! consumers cancel theirs, job handles close.
//!
//! Invariants: the windows a producer's process holds for a channel never exceed the
//! channel's unspent credit (less what the agent holds back for lack of send room); a
//! message a process sends beyond its window breaks the protocol and ends the connection;
//! nothing a process sends is buffered beyond its windows and one request per endpoint.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use plexus_proto::credit::message_cost;
use plexus_proto::{Endpoint, JobId};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::frames::{
    decode_from_client, encode_control, encode_delivery_chunks, room_for_rest_of_frame, Delivery,
    Failure, FromClient, Outcome, ToAgent, ToClient, VERSION,
};
use super::pipe::{self, PipeWriter};
use crate::embedded::{EmbeddedJob, EmbeddedProducer, Taken};
use crate::error::Error;
use crate::port::{JobPort, ProducerPort};
use crate::shared::Shared;
use crate::topology::Topology;

/// Who may attach: processes of these users, or of this group.
#[derive(Clone, Debug)]
pub struct AttachPolicy {
    /// User ids allowed to attach.
    pub uids: Vec<u32>,
    /// A group whose members may attach too; the socket is then readable and writable by
    /// that group (otherwise by its owner only).
    pub gid: Option<u32>,
}

impl AttachPolicy {
    /// Processes of the user running the node only.
    pub fn owner_only() -> std::io::Result<Self> {
        let uid = std::fs::metadata("/proc/self")?.uid();
        Ok(Self {
            uids: vec![uid],
            gid: None,
        })
    }

    fn allows(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gid == Some(gid)
    }
}

/// Binds the agent's socket at `path` (replacing a stale one) with owner-only (or group)
/// permissions.
pub(crate) fn bind(path: &Path, policy: &AttachPolicy) -> std::io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let mode = if policy.gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = policy.gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(listener)
}

/// Accepts processes until the node stops.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: UnixListener, policy: AttachPolicy) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(node = shared.node.0, error = %e, "accepting a local process failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(node = shared.node.0, error = %e, "no credentials for a local process");
                continue;
            }
        };
        let pid = cred.pid().unwrap_or(0);
        if !policy.allows(cred.uid(), cred.gid()) {
            tracing::warn!(
                node = shared.node.0,
                uid = cred.uid(),
                gid = cred.gid(),
                pid,
                "refused a local process: its user may not attach"
            );
            continue;
        }
        tracing::info!(
            node = shared.node.0,
            uid = cred.uid(),
            pid,
            "process attached"
        );
        let task = shared
            .runtime
            .spawn(serve_connection(shared.clone(), stream, pid));
        shared.track(task.abort_handle());
    }
}

/// What the agent sends a process.
enum Outgoing {
    Control(ToClient),
    /// Messages for a consumer, and who to tell once they are written to the socket.
    Delivery(Delivery, oneshot::Sender<()>),
}

/// The writer's side of a connection, shared by the tasks of its endpoints.
#[derive(Clone)]
struct Out(mpsc::UnboundedSender<Outgoing>);

impl Out {
    fn control(&self, frame: ToClient) {
        // A closed channel means the connection is ending: nothing is left to tell.
        let _ = self.0.send(Outgoing::Control(frame));
    }

    /// Tells a producer's process that its channel to `consumer` takes no more messages.
    fn send_failed(&self, producer: &EmbeddedProducer, consumer: Endpoint, e: Error) {
        let (job, slot) = producer.key();
        self.control(ToClient::SendFailed {
            job,
            slot,
            consumer,
            error: failure(e),
        });
    }

    fn done(&self, req: u64, outcome: Result<(), Error>) {
        let outcome = outcome.map_err(failure);
        self.control(ToClient::Done { req, outcome });
    }
}

/// A request for a producer's task.
enum ProducerCmd {
    /// Messages for a consumer, in order.
    Send(Endpoint, Vec<Bytes>),
    WantCredit(Endpoint, u64),
    Close {
        req: u64,
        finish: bool,
    },
}

/// A request for a consumer's task.
struct TakeCmd {
    consumed: u64,
    among: Option<Vec<Endpoint>>,
}

/// Requests that are not messages count this much against a producer's inbox.
const REQUEST_WEIGHT: u64 = 64;

/// What a connection's reader queues for a producer's task, bounded: messages within the
/// process's windows never exceed the credit of the job's channels, so more than that
/// (and a margin for requests) waiting for the task is a process flooding the agent.
struct ProducerInbox {
    tx: mpsc::UnboundedSender<ProducerCmd>,
    /// Weight queued and not yet taken by the task.
    queued: Arc<AtomicU64>,
    limit: u64,
}

impl ProducerInbox {
    fn push(&self, cmd: ProducerCmd) -> Result<(), String> {
        let weight = cmd.weight();
        if self.queued.fetch_add(weight, Ordering::AcqRel) + weight > self.limit {
            return Err("a producer floods the agent beyond its credit".into());
        }
        // A closed inbox means the task ended (the producer is gone): nothing to do.
        let _ = self.tx.send(cmd);
        Ok(())
    }
}

impl ProducerCmd {
    /// What the command weighs in its producer's inbox.
    fn weight(&self) -> u64 {
        match self {
            ProducerCmd::Send(_, messages) => messages
                .iter()
                .map(|m| message_cost(m.len()))
                .sum::<u64>()
                .max(REQUEST_WEIGHT),
            ProducerCmd::WantCredit(..) | ProducerCmd::Close { .. } => REQUEST_WEIGHT,
        }
    }
}

/// Takes a consumer's process may have outstanding: one (the protocol asks no more), and
/// a margin; beyond, it floods the agent and is cut off.
const TAKES_QUEUED: usize = 4;

/// The endpoints one connection opened.
#[derive(Default)]
struct Endpoints {
    jobs: HashMap<JobId, Vec<EmbeddedJob>>,
    producers: HashMap<(JobId, u32), ProducerInbox>,
    consumers: HashMap<(JobId, u32), mpsc::Sender<TakeCmd>>,
}

/// Bytes of each of a process's two rings: room for several deliveries of up to 256 KiB
/// in flight to it, and for its producers' windows' worth of messages towards the agent.
const RING_BYTES: usize = 1 << 20;

/// Serves one attached process until it goes (or breaks the protocol).
async fn serve_connection(shared: Arc<Shared>, stream: UnixStream, pid: i32) {
    let _counted = Attached::count(&shared);
    serve_attached(&shared, stream, pid).await;
}

/// Counts an attached process while it lives (however its task ends).
struct Attached(Arc<Shared>);

impl Attached {
    fn count(shared: &Arc<Shared>) -> Self {
        shared.attached.fetch_add(1, Ordering::Relaxed);
        Self(shared.clone())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.attached.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves the process attached on `stream` until it goes.
async fn serve_attached(shared: &Arc<Shared>, stream: UnixStream, pid: i32) {
    let (mut rd, wr) = match pipe::offer(stream, RING_BYTES).await {
        Ok(halves) => halves,
        Err(e) => {
            tracing::warn!(node = shared.node.0, pid, error = %e, "could not share rings with a process");
            return;
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let out = Out(tx);
    let mut tasks = JoinSet::new();
    tasks.spawn(write_loop(wr, rx));
    let limit = frame_limit(shared);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut endpoints = Endpoints::default();
    let mut hello = false;
    let reason = 'conn: loop {
        let want = room_for_rest_of_frame(&mut buf, limit);
        match rd.read_buf(&mut (&mut buf).limit(want)).await {
            Ok(0) => break "the process closed the connection".to_string(),
            Ok(_) => {}
            Err(e) => break format!("read failed: {e}"),
        }
        loop {
            let frame = match decode_from_client(&mut buf, limit) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => break 'conn format!("protocol violation: {e}"),
            };
            let result = match frame {
                FromClient::Control(ToAgent::Hello { version, .. }) if !hello => {
                    hello = true;
                    if version != VERSION {
                        break 'conn format!("attach protocol {version}, we speak {VERSION}");
                    }
                    out.control(ToClient::Welcome {
                        node: shared.node,
                        version: VERSION,
                    });
                    Ok(())
                }
                _ if !hello => Err("a request before Hello".to_string()),
                FromClient::Control(request) => {
                    handle_request(shared, &out, &mut endpoints, &mut tasks, request)
                }
                FromClient::Send(send) => endpoints
                    .producers
                    .get(&(send.job, send.slot))
                    .ok_or_else(|| "a message for a producer it did not open".to_string())
                    .and_then(|p| p.push(ProducerCmd::Send(send.consumer, vec![send.payload]))),
                FromClient::SendMany(many) => endpoints
                    .producers
                    .get(&(many.job, many.slot))
                    .ok_or_else(|| "messages for a producer it did not open".to_string())
                    .and_then(|p| p.push(ProducerCmd::Send(many.consumer, many.messages))),
            };
            if let Err(reason) = result {
                break 'conn format!("protocol violation: {reason}");
            }
        }
    };
    tracing::info!(node = shared.node.0, pid, %reason, "process detached");
    // Dropping the endpoints' tasks drops their handles: producers abort, consumers
    // cancel, job handles close.
    tasks.abort_all();
}

/// The largest frame a process may send.
fn frame_limit(shared: &Shared) -> usize {
    let max_message = shared.lock().core.config().max_message as usize;
    (max_message + 64 * 1024).max(16 << 20)
}

fn handle_request(
    shared: &Arc<Shared>,
    out: &Out,
    endpoints: &mut Endpoints,
    tasks: &mut JoinSet<()>,
    request: ToAgent,
) -> Result<(), String> {
    match request {
        ToAgent::Hello { .. } => return Err("a second Hello".into()),
        ToAgent::OpenJob {
            req,
            job,
            producers,
            consumers,
        } => {
            let handle = EmbeddedJob::new(shared.clone(), job, Topology::new(producers, consumers));
            let outcome = handle.opened();
            if outcome.is_ok() {
                endpoints.jobs.entry(job).or_default().push(handle);
            }
            out.done(req, outcome);
        }
        ToAgent::CloseJob { job } => {
            if let Some(handles) = endpoints.jobs.get_mut(&job) {
                handles.pop();
                if handles.is_empty() {
                    endpoints.jobs.remove(&job);
                }
            }
        }
        ToAgent::Admit { req, job } => {
            let handle = job_handle(endpoints, job)?;
            let out = out.clone();
            tasks.spawn(async move {
                let outcome = handle.admit().await;
                out.done(req, outcome);
            });
        }
        ToAgent::Cancel { job } => {
            if let Some(handle) = endpoints.jobs.get(&job).and_then(|h| h.first()) {
                handle.cancel();
            }
        }
        ToAgent::OpenProducer { req, job, slot } => {
            let handle = job_handle(endpoints, job)?;
            let (tx, rx) = mpsc::unbounded_channel();
            let consumers = handle.topology().consumers().len() as u64;
            let pool = shared.lock().core.config().credit_pool;
            let queued = Arc::new(AtomicU64::new(0));
            endpoints.producers.insert(
                (job, slot),
                ProducerInbox {
                    tx,
                    queued: queued.clone(),
                    limit: consumers * pool + (1 << 20),
                },
            );
            tasks.spawn(run_producer(handle, slot, rx, queued, out.clone(), req));
        }
        ToAgent::WantCredit {
            job,
            slot,
            consumer,
            len,
        } => producer_cmd(endpoints, job, slot, ProducerCmd::WantCredit(consumer, len))?,
        ToAgent::Close {
            req,
            job,
            slot,
            finish,
        } => producer_cmd(endpoints, job, slot, ProducerCmd::Close { req, finish })?,
        ToAgent::DropProducer { job, slot } => {
            // Its task ends when its requests end, dropping the producer.
            endpoints.producers.remove(&(job, slot));
        }
        ToAgent::OpenConsumer { req, job, slot } => {
            let handle = job_handle(endpoints, job)?;
            let (tx, rx) = mpsc::channel(TAKES_QUEUED);
            endpoints.consumers.insert((job, slot), tx);
            tasks.spawn(run_consumer(handle, slot, rx, out.clone(), req));
        }
        ToAgent::Take {
            job,
            slot,
            consumed,
            among,
        } => {
            let consumer = endpoints
                .consumers
                .get(&(job, slot))
                .ok_or("a take for a consumer it did not open")?;
            if let Err(mpsc::error::TrySendError::Full(_)) =
                consumer.try_send(TakeCmd { consumed, among })
            {
                return Err("takes while earlier ones are unanswered".into());
            }
        }
        ToAgent::Credit { req, job, slot } => {
            let figures = if endpoints.consumers.contains_key(&(job, slot)) {
                shared
                    .lock()
                    .core
                    .consumer_credit(job, slot)
                    .ok_or_else(|| {
                        Failure::Other(format!("consumer {slot} of {job} is not open yet"))
                    })
            } else {
                Err(Failure::Other(format!(
                    "consumer {slot} of {job} was not opened by this process"
                )))
            };
            out.control(ToClient::Credit { req, figures });
        }
        ToAgent::DropConsumer { job, slot } => {
            endpoints.consumers.remove(&(job, slot));
        }
        ToAgent::Status { req } => out.control(ToClient::Status {
            req,
            status: Box::new(shared.status()),
        }),
    }
    Ok(())
}

/// Another handle on a job the process opened.
fn job_handle(endpoints: &Endpoints, job: JobId) -> Result<EmbeddedJob, String> {
    endpoints
        .jobs
        .get(&job)
        .and_then(|h| h.first())
        .map(EmbeddedJob::another)
        .ok_or_else(|| format!("a request for {job}, which it did not open"))
}

fn producer_cmd(
    endpoints: &Endpoints,
    job: JobId,
    slot: u32,
    cmd: ProducerCmd,
) -> Result<(), String> {
    endpoints
        .producers
        .get(&(job, slot))
        .ok_or("a request for a producer it did not open")?
        .push(cmd)
}

/// Writes what the agent sends a process, until the connection ends.
async fn write_loop(mut wr: PipeWriter, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut buf = BytesMut::new();
    let mut chunks: Vec<Bytes> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut written = Vec::new();
        // Everything already queued leaves in one vectored write.
        while let Some(item) = next {
            match item {
                Outgoing::Control(frame) => encode_control(&frame, &mut buf),
                Outgoing::Delivery(delivery, done) => {
                    encode_delivery_chunks(&delivery, &mut buf, &mut chunks);
                    written.push(done);
                }
            }
            next = rx.try_recv().ok();
        }
        chunks.push(buf.split().freeze());
        if crate::driver::write_all_vectored(&mut wr, &mut chunks)
            .await
            .is_err()
        {
            return;
        }
        for done in written {
            let _ = done.send(());
        }
    }
}

/// The windows a producer's process holds, and what the agent holds back for it.
#[derive(Default)]
struct Windows {
    /// Per consumer: bytes the process may still send.
    given: HashMap<Endpoint, u64>,
    /// Per consumer: messages received from the process and not yet queued on the
    /// channel (a batch in the making, or held back while the node's send share is full),
    /// in order, with their credit (not spent yet).
    held: HashMap<Endpoint, (VecDeque<Bytes>, u64)>,
}

impl Windows {
    /// Takes a message the process sent within its window; `false` if beyond it.
    fn take(&mut self, consumer: Endpoint, message: Bytes) -> bool {
        let cost = message_cost(message.len());
        let given = self.given.entry(consumer).or_insert(0);
        if cost > *given {
            return false;
        }
        *given -= cost;
        let (queue, held) = self.held.entry(consumer).or_default();
        queue.push_back(message);
        *held += cost;
        true
    }

    /// Takes messages the process sent within its window; `false` if beyond it.
    fn take_all(&mut self, consumer: Endpoint, messages: Vec<Bytes>) -> bool {
        messages.into_iter().all(|m| self.take(consumer, m))
    }

    /// Queues what is held for each consumer (one lock per consumer), as far as the node
    /// takes it, then grants the process what credit it does not hold yet.
    fn flush(&mut self, producer: &mut EmbeddedProducer, out: &Out) {
        let consumers: Vec<Endpoint> = self.held.keys().copied().collect();
        for consumer in consumers {
            self.flush_one(producer, consumer, out);
            self.top_up(producer, consumer, out);
        }
    }

    fn flush_one(&mut self, producer: &mut EmbeddedProducer, consumer: Endpoint, out: &Out) {
        let Some((queue, held)) = self.held.get_mut(&consumer) else {
            return;
        };
        match producer.try_send_many(consumer, queue) {
            Ok(_) => {
                *held = queue.iter().map(|m| message_cost(m.len())).sum();
            }
            Err(e) => {
                // The channel takes no more: what is held for it is dropped, as an
                // embedded producer's failed message is.
                queue.clear();
                *held = 0;
                out.send_failed(producer, consumer, e);
            }
        }
        if queue.is_empty() {
            self.held.remove(&consumer);
        }
    }

    /// Grants the process the credit of `consumer`'s channel it does not hold yet.
    fn top_up(&mut self, producer: &mut EmbeddedProducer, consumer: Endpoint, out: &Out) {
        let (job, slot) = producer.key();
        match producer.credit_available(consumer) {
            Ok(available) => {
                let held = self.held.get(&consumer).map_or(0, |(_, held)| *held);
                let grantable = available.saturating_sub(held);
                let given = self.given.entry(consumer).or_insert(0);
                if grantable > *given {
                    out.control(ToClient::Window {
                        job,
                        slot,
                        consumer,
                        bytes: grantable - *given,
                    });
                    *given = grantable;
                }
            }
            Err(e) => out.send_failed(producer, consumer, e),
        }
    }
}

/// An error as a process receives it.
fn failure(e: Error) -> Failure {
    match e {
        Error::Exchange(e) => Failure::Exchange(e),
        Error::NotInTopology {
            job,
            node,
            slot,
            role,
        } => Failure::NotInTopology {
            job,
            node,
            slot,
            role: role.to_string(),
        },
        other => Failure::Other(other.to_string()),
    }
}

/// Runs a producer for its process: opens it, then queues what the process sends within
/// its windows, grants windows as credit comes, and closes it when asked.
async fn run_producer(
    job: EmbeddedJob,
    slot: u32,
    mut cmds: mpsc::UnboundedReceiver<ProducerCmd>,
    queued: Arc<AtomicU64>,
    out: Out,
    req: u64,
) {
    let Some(mut producer) = answer_open(job.producer(slot).await, req, &out) else {
        return;
    };
    drop(job);
    let mut windows = Windows::default();
    loop {
        tokio::select! {
            cmd = cmds.recv() => {
                // None: the process dropped the producer, or went away; an unclosed
                // producer aborts its channels as it drops.
                let Some(cmd) = cmd else { return };
                queued.fetch_sub(cmd.weight(), Ordering::AcqRel);
                let ProducerCmd::Send(consumer, messages) = cmd else {
                    other_cmd(&mut producer, &mut windows, cmd, &out).await;
                    continue;
                };
                let mut within = windows.take_all(consumer, messages);
                // Whatever else the process sent already goes in the same batch.
                let mut others = Vec::new();
                while within {
                    let Ok(cmd) = cmds.try_recv() else { break };
                    queued.fetch_sub(cmd.weight(), Ordering::AcqRel);
                    match cmd {
                        ProducerCmd::Send(consumer, messages) => {
                            within = windows.take_all(consumer, messages);
                        }
                        other => {
                            others.push(other);
                            break;
                        }
                    }
                }
                if !within {
                    tracing::warn!(
                        node = producer.endpoint().node.0,
                        "an attached producer sent beyond its window: its messages stop"
                    );
                    return;
                }
                windows.flush(&mut producer, &out);
                for cmd in others {
                    other_cmd(&mut producer, &mut windows, cmd, &out).await;
                }
            }
            ready = producer.ready() => {
                windows.flush(&mut producer, &out);
                for consumer in ready {
                    windows.top_up(&mut producer, consumer, &out);
                }
            }
        }
    }
}

/// Handles a producer's request other than a message.
async fn other_cmd(
    producer: &mut EmbeddedProducer,
    windows: &mut Windows,
    cmd: ProducerCmd,
    out: &Out,
) {
    match cmd {
        ProducerCmd::Send(..) => {}
        ProducerCmd::WantCredit(consumer, len) => {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            match producer.has_credit(consumer, len) {
                Ok(true) => windows.top_up(producer, consumer, out),
                // `ready` reports the channel when credit comes.
                Ok(false) => {}
                Err(e) => {
                    out.send_failed(producer, consumer, e);
                }
            }
        }
        ProducerCmd::Close { req, finish } => {
            while !windows.held.is_empty() {
                producer.ready().await;
                windows.flush(producer, out);
            }
            let outcome = producer.close_now(finish).await;
            out.done(req, outcome);
        }
    }
}

/// Answers the request that opened an endpoint; the endpoint if it opened.
fn answer_open<T>(opened: Result<T, Error>, req: u64, out: &Out) -> Option<T> {
    match opened {
        Ok(endpoint) => {
            out.done(req, Ok(()));
            Some(endpoint)
        }
        Err(e) => {
            out.done(req, Err(e));
            None
        }
    }
}

/// Runs a consumer for its process: opens it, then answers each `Take` with what comes
/// next.
async fn run_consumer(
    job: EmbeddedJob,
    slot: u32,
    mut cmds: mpsc::Receiver<TakeCmd>,
    out: Out,
    req: u64,
) {
    let Some(mut consumer) = answer_open(job.consumer(slot).await, req, &out) else {
        return;
    };
    drop(job);
    let (job, slot) = consumer.key();
    while let Some(TakeCmd { consumed, among }) = cmds.recv().await {
        consumer.mark_read(consumed);
        let taken = tokio::select! {
            taken = poll_fn(|cx| consumer.poll_take(cx, among.as_deref())) => taken,
            // Dropped (or gone) while waiting.
            _ = cmds.recv() => return,
        };
        match taken {
            Taken::Messages(messages) => {
                // The next take (which returns this one's credit) waits until these are
                // in the socket: a process that does not read its socket holds at most
                // one delivery in the agent, whatever it claims to have read.
                let (done, written) = oneshot::channel();
                let _ = out.0.send(Outgoing::Delivery(
                    Delivery {
                        job,
                        slot,
                        messages,
                    },
                    done,
                ));
                if written.await.is_err() {
                    return;
                }
            }
            Taken::Error(error) => out.control(ToClient::Taken {
                job,
                slot,
                outcome: Outcome::Error(Failure::Exchange(error)),
            }),
            Taken::Finished => out.control(ToClient::Taken {
                job,
                slot,
                outcome: Outcome::Finished,
            }),
        }
    }
}
