//! A process's side of the attach protocol: the connection to the agent, and the job and
//! endpoint backends that run over it.
//!
//! One reader task reads what the agent sends and files it where the handles find it
//! (answers to requests, windows and failures of producers, deliveries to consumers),
//! waking whoever waits; one writer task sends what the handles queue. When the
//! connection is lost, every waiting handle wakes with [`Error::AgentLost`], and every
//! later call fails with it.
//!
//! Invariants: a producer sends a message only within the window the agent granted for
//! its channel (see `agent`), and asks for credit once per exhausted window; a consumer
//! has at most one `Take` outstanding, and its next `Take` says how many messages of the
//! last delivery it read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{poll_fn, Future};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use plexus_proto::credit::message_cost;
use plexus_proto::node::{ConsumerCredit, Role};
use plexus_proto::{Endpoint, ExchangeError, JobId, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::frames::{
    decode_from_agent, encode_control, encode_send_chunks, encode_send_many,
    room_for_rest_of_frame, Failure, FromAgent, Outcome, Send, SendMany, ToAgent, ToClient,
    VERSION,
};
use super::pipe::{PipeReader, PipeWriter};
use crate::error::Error;
use crate::job::{Job, TrySend};
use crate::port::{BoxFuture, ConsumerPort, JobPort, ProducerPort};
use crate::topology::Topology;

/// Largest frame the agent may send: a delivery of up to 256 KiB of whole arrivals, or one
/// large message, with room to spare.
const FRAME_LIMIT: usize = 1 << 30;

/// A process attached to its machine's agent: opens jobs on the agent's node.
#[derive(Clone, Debug)]
pub struct AttachedNode {
    conn: Arc<Connection>,
}

impl AttachedNode {
    /// Connects to the agent listening on `socket` and introduces this process.
    pub async fn connect(socket: &Path) -> Result<Self, Error> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| Error::AgentLost(format!("cannot attach to {}: {e}", socket.display())))?;
        let (mut rd, mut wr) = super::pipe::accept(stream)
            .await
            .map_err(|e| Error::AgentLost(format!("attaching to {}: {e}", socket.display())))?;
        let mut hello = BytesMut::new();
        encode_control(
            &ToAgent::Hello {
                version: VERSION,
                pid: std::process::id(),
            },
            &mut hello,
        );
        wr.write_all(&hello)
            .await
            .map_err(|e| Error::AgentLost(format!("attaching: {e}")))?;
        let mut buf = BytesMut::new();
        let node = loop {
            match decode_from_agent(&mut buf, FRAME_LIMIT) {
                Ok(Some(FromAgent::Control(ToClient::Welcome { node, .. }))) => break node,
                Ok(Some(_)) => return Err(Error::AgentLost("the agent did not welcome us".into())),
                Ok(None) => {}
                Err(e) => return Err(Error::AgentLost(format!("attaching: {e}"))),
            }
            let n = rd
                .read_buf(&mut buf)
                .await
                .map_err(|e| Error::AgentLost(format!("attaching: {e}")))?;
            if n == 0 {
                return Err(Error::AgentLost("the agent refused this process".into()));
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Connection {
            node,
            out: tx,
            state: Mutex::new(State::default()),
        });
        tokio::spawn(write_loop(wr, rx));
        // The reader holds the connection weakly: once the process dropped every handle,
        // the writer ends, the agent sees the connection close, and so does the reader.
        tokio::spawn(read_loop(Arc::downgrade(&conn), rd, buf));
        Ok(Self { conn })
    }

    /// The agent's node.
    pub fn id(&self) -> NodeId {
        self.conn.node
    }

    /// The status of the agent's node: links, jobs, buffers, and the consumers that keep
    /// its producers waiting for credit.
    pub async fn status(&self) -> Result<crate::Status, Error> {
        self.conn
            .ask(|st| &mut st.status_replies, |req| ToAgent::Status { req })
            .await
    }

    /// A handle to job `id` with the given topology, on the agent's node.
    pub fn job(&self, id: JobId, topology: Topology) -> Job {
        let (req, reply) = self.conn.request();
        self.conn.send(ToAgent::OpenJob {
            req,
            job: id,
            producers: topology.producers().to_vec(),
            consumers: topology.consumers().to_vec(),
        });
        let port = AttachedJob {
            conn: self.conn.clone(),
            id,
            topology: topology.clone(),
            progress: Mutex::new(JobProgress::Opening(reply)),
        };
        Job::new(Box::new(port), id, topology)
    }
}

/// What a process queues for the agent.
enum Outgoing {
    Control(ToAgent),
    Send(Send),
}

/// The connection to the agent, shared by every handle of the process.
#[derive(Debug)]
struct Connection {
    node: NodeId,
    out: mpsc::UnboundedSender<Outgoing>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outgoing::Control(_) => "Control",
            Outgoing::Send(_) => "Send",
        })
    }
}

/// An answer to a request.
type Reply = oneshot::Receiver<Result<(), Failure>>;

#[derive(Debug, Default)]
struct State {
    next_req: u64,
    replies: HashMap<u64, oneshot::Sender<Result<(), Failure>>>,
    /// Answers awaited to `Credit` requests.
    credit_replies: HashMap<u64, oneshot::Sender<Result<ConsumerCredit, Failure>>>,
    status_replies: HashMap<u64, oneshot::Sender<crate::Status>>,
    producers: HashMap<(JobId, u32), ProducerSide>,
    consumers: HashMap<(JobId, u32), ConsumerSide>,
    /// Why the connection is lost, once it is.
    lost: Option<String>,
}

/// What the agent told a producer.
#[derive(Debug, Default)]
struct ProducerSide {
    windows: HashMap<Endpoint, u64>,
    /// Channels that asked for credit and wait for a window.
    asked: HashSet<Endpoint>,
    /// Channels that can make progress, not yet taken by the producer.
    ready: Vec<Endpoint>,
    failed: HashMap<Endpoint, Failure>,
    waker: Option<Waker>,
}

/// What the agent delivered to a consumer and it has not picked up.
#[derive(Debug, Default)]
struct ConsumerSide {
    delivery: Option<Result<Vec<(Endpoint, Bytes)>, Outcome>>,
    waker: Option<Waker>,
}

impl Connection {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, frame: ToAgent) {
        // A closed channel means the connection is lost; the reader reports it.
        let _ = self.out.send(Outgoing::Control(frame));
    }

    /// A request id and where its answer will come.
    fn request(&self) -> (u64, Reply) {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        st.next_req += 1;
        let req = st.next_req;
        if st.lost.is_none() {
            st.replies.insert(req, tx);
        }
        (req, rx)
    }

    /// The error every call gets once the connection is lost.
    fn lost(&self) -> Option<Error> {
        self.lock().lost.clone().map(Error::AgentLost)
    }

    /// Sends the request `make` builds with a fresh id and waits for its answer, filed
    /// by the reader in the table `replies` picks; an error once the connection is lost.
    async fn ask<T>(
        &self,
        replies: fn(&mut State) -> &mut HashMap<u64, oneshot::Sender<T>>,
        make: impl FnOnce(u64) -> ToAgent,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        let req = {
            let mut st = self.lock();
            if let Some(lost) = st.lost.clone() {
                return Err(Error::AgentLost(lost));
            }
            st.next_req += 1;
            let req = st.next_req;
            replies(&mut st).insert(req, tx);
            req
        };
        self.send(make(req));
        rx.await.map_err(|_| {
            self.lost()
                .unwrap_or_else(|| Error::AgentLost("the connection is lost".into()))
        })
    }

    /// Sends `frame` and waits for its answer.
    async fn call(&self, make: impl FnOnce(u64) -> ToAgent) -> Result<(), Error> {
        let (req, reply) = self.request();
        self.send(make(req));
        answer(self, reply).await
    }
}

/// Waits for the answer to a request.
async fn answer(conn: &Connection, reply: Reply) -> Result<(), Error> {
    match reply.await {
        Ok(outcome) => outcome.map_err(from_failure),
        Err(_) => Err(conn
            .lost()
            .unwrap_or_else(|| Error::AgentLost("the connection is lost".into()))),
    }
}

/// An error the agent reported, as the application gets it.
fn from_failure(failure: Failure) -> Error {
    match failure {
        Failure::Exchange(e) => Error::Exchange(e),
        Failure::NotInTopology {
            job,
            node,
            slot,
            role,
        } => Error::NotInTopology {
            job,
            node,
            slot,
            role: if role == "producer" {
                "producer"
            } else {
                "consumer"
            },
        },
        Failure::Other(text) => Error::Agent(text),
    }
}

/// Writes what the handles queue, until the connection ends.
async fn write_loop(mut wr: PipeWriter, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut scratch = BytesMut::new();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut run: Option<SendMany> = None;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut queued = 0;
        // What is already queued leaves in one vectored write (up to about 1 MiB), small
        // messages of one channel that follow each other in one frame.
        while let Some(item) = next {
            match item {
                Outgoing::Control(frame) => {
                    flush_run(&mut run, &mut scratch);
                    encode_control(&frame, &mut scratch);
                }
                Outgoing::Send(send) => {
                    queued += send.payload.len();
                    if send.payload.len() < SMALL {
                        add_to_run(&mut run, send, &mut scratch);
                    } else {
                        flush_run(&mut run, &mut scratch);
                        encode_send_chunks(&send, &mut scratch, &mut chunks);
                    }
                }
            }
            if queued > 1 << 20 {
                break;
            }
            next = rx.try_recv().ok();
        }
        flush_run(&mut run, &mut scratch);
        chunks.push(scratch.split().freeze());
        if crate::driver::write_all_vectored(&mut wr, &mut chunks)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Messages below this size travel in runs (one frame per run of one channel).
const SMALL: usize = 4096;
/// The most messages one run carries (under 1 MiB, since each is below [`SMALL`]).
const RUN_MESSAGES: usize = 256;

/// Adds a small message to the run being built, starting a new one if it is for another
/// channel or the run is full.
fn add_to_run(run: &mut Option<SendMany>, send: Send, scratch: &mut BytesMut) {
    let same = run.as_ref().is_some_and(|r| {
        r.job == send.job
            && r.slot == send.slot
            && r.consumer == send.consumer
            && r.messages.len() < RUN_MESSAGES
    });
    if !same {
        flush_run(run, scratch);
    }
    run.get_or_insert_with(|| SendMany {
        job: send.job,
        slot: send.slot,
        consumer: send.consumer,
        messages: Vec::new(),
    })
    .messages
    .push(send.payload);
}

/// Encodes the run being built, if any.
fn flush_run(run: &mut Option<SendMany>, scratch: &mut BytesMut) {
    if let Some(many) = run.take() {
        encode_send_many(&many, scratch);
    }
}

/// Reads what the agent sends, until the connection ends; then fails every wait.
async fn read_loop(conn: std::sync::Weak<Connection>, mut rd: PipeReader, mut buf: BytesMut) {
    let reason = 'conn: loop {
        loop {
            match decode_from_agent(&mut buf, FRAME_LIMIT) {
                Ok(Some(frame)) => match conn.upgrade() {
                    Some(conn) => file(&conn, frame),
                    None => return,
                },
                Ok(None) => break,
                Err(e) => break 'conn format!("the agent broke the attach protocol: {e}"),
            }
        }
        let want = room_for_rest_of_frame(&mut buf, FRAME_LIMIT);
        match rd.read_buf(&mut (&mut buf).limit(want)).await {
            Ok(0) => break "the agent closed the connection".to_string(),
            Ok(_) => {}
            Err(e) => break format!("the connection to the agent failed: {e}"),
        }
    };
    let Some(conn) = conn.upgrade() else {
        return;
    };
    let mut wakers = Vec::new();
    {
        let mut st = conn.lock();
        st.lost = Some(reason);
        st.replies.clear();
        st.credit_replies.clear();
        st.status_replies.clear();
        for p in st.producers.values_mut() {
            wakers.extend(p.waker.take());
        }
        for c in st.consumers.values_mut() {
            wakers.extend(c.waker.take());
        }
    }
    wakers.into_iter().for_each(Waker::wake);
}

/// Files one frame from the agent where its handle finds it.
fn file(conn: &Connection, frame: FromAgent) {
    let mut st = conn.lock();
    let waker = match frame {
        FromAgent::Control(ToClient::Done { req, outcome }) => {
            if let Some(tx) = st.replies.remove(&req) {
                let _ = tx.send(outcome);
            }
            None
        }
        FromAgent::Control(ToClient::Window {
            job,
            slot,
            consumer,
            bytes,
        }) => st.producers.get_mut(&(job, slot)).and_then(|p| {
            *p.windows.entry(consumer).or_insert(0) += bytes;
            // Ready, as for an embedded producer, only if a send was refused for want of
            // it (a top-up while sending needs no wake-up).
            if p.asked.remove(&consumer) {
                p.ready.push(consumer);
                p.waker.take()
            } else {
                None
            }
        }),
        FromAgent::Control(ToClient::SendFailed {
            job,
            slot,
            consumer,
            error,
        }) => st.producers.get_mut(&(job, slot)).and_then(|p| {
            p.failed.insert(consumer, error);
            p.ready.push(consumer);
            p.waker.take()
        }),
        FromAgent::Control(ToClient::Taken { job, slot, outcome }) => {
            st.consumers.get_mut(&(job, slot)).and_then(|c| {
                c.delivery = Some(Err(outcome));
                c.waker.take()
            })
        }
        FromAgent::Delivery(delivery) => st
            .consumers
            .get_mut(&(delivery.job, delivery.slot))
            .and_then(|c| {
                c.delivery = Some(Ok(delivery.messages));
                c.waker.take()
            }),
        FromAgent::Control(ToClient::Credit { req, figures }) => {
            if let Some(tx) = st.credit_replies.remove(&req) {
                let _ = tx.send(figures);
            }
            None
        }
        FromAgent::Control(ToClient::Status { req, status }) => {
            if let Some(tx) = st.status_replies.remove(&req) {
                let _ = tx.send(*status);
            }
            None
        }
        FromAgent::Control(ToClient::Welcome { .. }) => None,
    };
    drop(st);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Where an attached job handle's admission stands.
#[derive(Debug)]
enum JobProgress {
    /// Waiting for the agent to take the handle.
    Opening(Reply),
    /// Taken; not admitted yet.
    Open,
    /// Asked for admission; waiting for the answer.
    Admitting(Reply),
    /// Decided.
    Decided(Result<(), Failure>),
}

/// A job handle on the agent's node.
#[derive(Debug)]
struct AttachedJob {
    conn: Arc<Connection>,
    id: JobId,
    topology: Topology,
    progress: Mutex<JobProgress>,
}

impl AttachedJob {
    fn progress(&self) -> MutexGuard<'_, JobProgress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AttachedJob {
    /// Waits for admission, then opens endpoint `slot` in `role` on the agent's node, with
    /// the place where the agent's news for it will be filed.
    async fn open(&self, slot: u32, role: Role) -> Result<(), Error> {
        poll_fn(|cx| self.poll_admit(cx)).await?;
        let key = (self.id, slot);
        let (job, conn) = (self.id, &self.conn);
        match role {
            Role::Producer => drop(conn.lock().producers.insert(key, ProducerSide::default())),
            Role::Consumer => drop(conn.lock().consumers.insert(key, ConsumerSide::default())),
        }
        let opened = conn
            .call(|req| match role {
                Role::Producer => ToAgent::OpenProducer { req, job, slot },
                Role::Consumer => ToAgent::OpenConsumer { req, job, slot },
            })
            .await;
        if opened.is_err() {
            let mut st = conn.lock();
            match role {
                Role::Producer => drop(st.producers.remove(&key)),
                Role::Consumer => drop(st.consumers.remove(&key)),
            }
        }
        opened
    }
}

impl JobPort for AttachedJob {
    fn poll_admit(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut progress = self.progress();
        loop {
            let opening = matches!(*progress, JobProgress::Opening(_));
            let next = match &mut *progress {
                JobProgress::Opening(reply) | JobProgress::Admitting(reply) => {
                    match std::pin::Pin::new(reply).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(_)) => {
                            return Poll::Ready(Err(self.conn.lost().unwrap_or_else(|| {
                                Error::AgentLost("the connection is lost".into())
                            })))
                        }
                        Poll::Ready(Ok(Err(failure))) => JobProgress::Decided(Err(failure)),
                        Poll::Ready(Ok(Ok(()))) if opening => JobProgress::Open,
                        Poll::Ready(Ok(Ok(()))) => JobProgress::Decided(Ok(())),
                    }
                }
                JobProgress::Open => {
                    let (req, reply) = self.conn.request();
                    self.conn.send(ToAgent::Admit { req, job: self.id });
                    JobProgress::Admitting(reply)
                }
                JobProgress::Decided(outcome) => {
                    return Poll::Ready(outcome.clone().map_err(from_failure))
                }
            };
            *progress = next;
        }
    }

    fn try_admit(&self) -> Result<bool, Error> {
        match self.poll_admit(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(outcome) => outcome.map(|()| true),
            Poll::Pending => Ok(false),
        }
    }

    fn open_producer(&self, slot: u32) -> BoxFuture<'_, Result<Box<dyn ProducerPort>, Error>> {
        Box::pin(async move {
            self.open(slot, Role::Producer).await?;
            Ok(Box::new(AttachedProducer {
                conn: self.conn.clone(),
                job: self.id,
                slot,
            }) as Box<dyn ProducerPort>)
        })
    }

    fn open_consumer(&self, slot: u32) -> BoxFuture<'_, Result<Box<dyn ConsumerPort>, Error>> {
        Box::pin(async move {
            self.open(slot, Role::Consumer).await?;
            Ok(Box::new(AttachedConsumer {
                conn: self.conn.clone(),
                job: self.id,
                slot,
                messages: VecDeque::new(),
                read: 0,
                taking: false,
                ended: false,
            }) as Box<dyn ConsumerPort>)
        })
    }

    fn cancel(&self) {
        self.conn.send(ToAgent::Cancel { job: self.id });
    }

    fn reopen(&self) -> Box<dyn JobPort> {
        AttachedNode {
            conn: self.conn.clone(),
        }
        .job(self.id, self.topology.clone())
        .into_port()
    }
}

impl Drop for AttachedJob {
    fn drop(&mut self) {
        self.conn.send(ToAgent::CloseJob { job: self.id });
    }
}

/// A producer on the agent's node.
#[derive(Debug)]
struct AttachedProducer {
    conn: Arc<Connection>,
    job: JobId,
    slot: u32,
}

impl AttachedProducer {
    /// Whether the window for `consumer` covers a message of `len` bytes (taking it from
    /// the window if `spend`); if not, asks the agent for credit, once per exhausted
    /// window. An error if the channel or the connection failed.
    fn claim(&self, consumer: Endpoint, len: usize, spend: bool) -> Result<bool, Error> {
        let cost = message_cost(len);
        let mut st = self.conn.lock();
        if let Some(lost) = st.lost.clone() {
            return Err(Error::AgentLost(lost));
        }
        let Some(p) = st.producers.get_mut(&(self.job, self.slot)) else {
            return Err(ExchangeError::Closed.into());
        };
        if let Some(e) = p.failed.get(&consumer) {
            return Err(from_failure(e.clone()));
        }
        let window = p.windows.entry(consumer).or_insert(0);
        if *window >= cost {
            if spend {
                *window -= cost;
            }
            return Ok(true);
        }
        if p.asked.insert(consumer) {
            drop(st);
            self.conn.send(ToAgent::WantCredit {
                job: self.job,
                slot: self.slot,
                consumer,
                len: len as u64,
            });
        }
        Ok(false)
    }
}

impl ProducerPort for AttachedProducer {
    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.conn.node, self.slot)
    }

    fn try_send(&mut self, consumer: Endpoint, message: Bytes) -> Result<(), TrySend> {
        match self.claim(consumer, message.len(), true) {
            Ok(true) => {}
            Ok(false) => return Err(TrySend::NoCredit(message)),
            Err(e) => return Err(TrySend::Failed(e, message)),
        }
        let _ = self.conn.out.send(Outgoing::Send(Send {
            job: self.job,
            slot: self.slot,
            consumer,
            payload: message,
        }));
        Ok(())
    }

    fn try_send_many(
        &mut self,
        consumer: Endpoint,
        messages: &mut VecDeque<Bytes>,
    ) -> Result<usize, Error> {
        let mut taken = 0;
        while let Some(message) = messages.pop_front() {
            match self.try_send(consumer, message) {
                Ok(()) => taken += 1,
                Err(TrySend::NoCredit(message)) => {
                    messages.push_front(message);
                    break;
                }
                Err(TrySend::Failed(e, message)) => {
                    messages.push_front(message);
                    if taken == 0 {
                        return Err(e);
                    }
                    break;
                }
            }
        }
        Ok(taken)
    }

    fn has_credit(&mut self, consumer: Endpoint, len: usize) -> Result<bool, Error> {
        self.claim(consumer, len, false)
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>, only: Option<Endpoint>) -> Poll<Vec<Endpoint>> {
        let mut st = self.conn.lock();
        let lost = st.lost.is_some();
        let Some(p) = st.producers.get_mut(&(self.job, self.slot)) else {
            return Poll::Ready(only.into_iter().collect());
        };
        if lost {
            // Every channel can "make progress": its next try_send reports the loss.
            let mut all: Vec<Endpoint> = p.windows.keys().copied().collect();
            all.extend(only);
            return Poll::Ready(all);
        }
        let taken: Vec<Endpoint> = match only {
            None => std::mem::take(&mut p.ready),
            Some(c) => match p.ready.iter().position(|e| *e == c) {
                Some(i) => vec![p.ready.swap_remove(i)],
                None => Vec::new(),
            },
        };
        if taken.is_empty() {
            p.waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(taken)
        }
    }

    fn close(&mut self, finish: bool) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if let Some(e) = self.conn.lost() {
                return Err(e);
            }
            self.conn
                .call(|req| ToAgent::Close {
                    req,
                    job: self.job,
                    slot: self.slot,
                    finish,
                })
                .await
        })
    }
}

impl Drop for AttachedProducer {
    fn drop(&mut self) {
        self.conn.lock().producers.remove(&(self.job, self.slot));
        self.conn.send(ToAgent::DropProducer {
            job: self.job,
            slot: self.slot,
        });
    }
}

/// A consumer on the agent's node.
#[derive(Debug)]
struct AttachedConsumer {
    conn: Arc<Connection>,
    job: JobId,
    slot: u32,
    /// The last delivery's messages not read yet.
    messages: VecDeque<(Endpoint, Bytes)>,
    /// Messages of the last delivery read so far.
    read: u64,
    /// A `Take` is outstanding.
    taking: bool,
    /// The stream ended (or the connection was lost and that was reported).
    ended: bool,
}

impl ConsumerPort for AttachedConsumer {
    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.conn.node, self.slot)
    }

    fn credit(&self) -> BoxFuture<'_, Result<ConsumerCredit, Error>> {
        Box::pin(async move {
            let (job, slot) = (self.job, self.slot);
            self.conn
                .ask(
                    |st| &mut st.credit_replies,
                    |req| ToAgent::Credit { req, job, slot },
                )
                .await?
                .map_err(from_failure)
        })
    }

    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        among: Option<&[Endpoint]>,
    ) -> Poll<Option<Result<(Endpoint, Bytes), Error>>> {
        loop {
            // Messages leave the last delivery from its front only, so the agent knows
            // which were read: the count of them.
            let fits = self
                .messages
                .front()
                .is_some_and(|(from, _)| among.is_none_or(|a| a.contains(from)));
            if fits {
                if let Some(message) = self.messages.pop_front() {
                    self.read += 1;
                    return Poll::Ready(Some(Ok(message)));
                }
            }
            if self.ended {
                return Poll::Ready(None);
            }
            let key = (self.job, self.slot);
            if !self.taking {
                // What the last delivery left unread goes back to the node.
                self.messages.clear();
                self.taking = true;
                self.conn.send(ToAgent::Take {
                    job: self.job,
                    slot: self.slot,
                    consumed: std::mem::take(&mut self.read),
                    among: among.map(<[Endpoint]>::to_vec),
                });
            }
            let mut st = self.conn.lock();
            if let Some(lost) = st.lost.clone() {
                self.ended = true;
                return Poll::Ready(Some(Err(Error::AgentLost(lost))));
            }
            let Some(side) = st.consumers.get_mut(&key) else {
                return Poll::Ready(None);
            };
            match side.delivery.take() {
                None => {
                    side.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Some(delivery) => {
                    self.taking = false;
                    match delivery {
                        Ok(messages) => self.messages = messages.into(),
                        Err(Outcome::Error(failure)) => {
                            return Poll::Ready(Some(Err(from_failure(failure))))
                        }
                        Err(Outcome::Finished) => {
                            if among.is_none() {
                                self.ended = true;
                            }
                            return Poll::Ready(None);
                        }
                    }
                }
            }
        }
    }
}

impl Drop for AttachedConsumer {
    fn drop(&mut self) {
        self.conn.lock().consumers.remove(&(self.job, self.slot));
        self.conn.send(ToAgent::DropConsumer {
            job: self.job,
            slot: self.slot,
        });
    }
}
