//! The `raw-tcp` baseline: one plain TCP connection per pair of nodes that share a job,
//! carrying length-prefixed messages tagged with their channel, and nothing else — no
//! credit, no scheduler, no acknowledgement: the upper bound a multiplexer can approach.
//!
//! Node i listens on its own address, like a plexus node, and the lower-numbered node of
//! every pair dials the higher one from its own address (so the OS attributes both ends),
//! announcing its node id in 4 bytes. Each connection end has one writer task draining an
//! [`Outbox`] that the node's producers fill (small frames gathered into one buffer, large
//! messages by reference; bounded, so producers feel the socket's back-pressure), writing
//! whatever is queued in one vectored write; and one reader task that splits the stream
//! into messages (without copying) and hands each to its consumer's unbounded queue. A
//! producer hands messages for consumers of its own node straight to their queue.
//!
//! Frame: `len u32 | job u32 | producer id u32 | consumer id u32` (little-endian), then
//! `len` bytes of message.
//!
//! Invariants: a reader never blocks on a consumer (its queues are unbounded), so links
//! always drain; a consumer's stream ends once every producer that could reach it is gone
//! (its local producers dropped their sinks, and every link writer toward its node shut
//! its connection down after the last producer of the other node dropped its sink); a
//! malformed frame, an unknown channel or a broken connection is reported as a fault and
//! ends that connection, so the affected consumers come out incomplete, never hang.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use plexus::Endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::super::shape::Shape;
use super::super::transport::{Faults, Sink, Source, Transport};
use super::outbox::{outbox, Drain, Outbox};

/// Bytes of a frame's header.
const FRAME_HEADER: usize = 16;

/// Bytes a link's reader asks the OS for at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Bytes a link's outbox holds before producers wait.
const OUTBOX_BYTES: usize = 4 << 20;

/// Where a node's incoming messages go: its consumers' queues, by job and consumer id.
struct Dispatch {
    /// Consumer ids per job (every id is below it).
    per_job: usize,
    queues: Vec<Option<mpsc::UnboundedSender<(u32, Bytes)>>>,
}

impl Dispatch {
    fn new(shape: &Shape) -> Dispatch {
        let per_job = shape.nodes() as usize * shape.consumers() as usize;
        Dispatch {
            per_job,
            queues: vec![None; per_job * shape.jobs() as usize],
        }
    }

    fn slot(&self, job: u32, id: u32) -> Option<usize> {
        let id = id as usize;
        (id < self.per_job).then(|| job as usize * self.per_job + id)
    }

    fn insert(&mut self, job: u32, id: u32, queue: mpsc::UnboundedSender<(u32, Bytes)>) {
        if let Some(entry) = self.slot(job, id).and_then(|i| self.queues.get_mut(i)) {
            *entry = Some(queue);
        }
    }

    /// The queue of consumer `id` of job index `job`, if it is on this node.
    fn get(&self, job: u32, id: u32) -> Option<&mpsc::UnboundedSender<(u32, Bytes)>> {
        self.queues.get(self.slot(job, id)?)?.as_ref()
    }
}

/// The raw-tcp system of a shape, connected; see the module docs.
pub struct RawTcp {
    /// Per node: its consumers' queues.
    dispatch: Vec<Arc<Dispatch>>,
    /// Per node: the outbox of its link to each peer, by peer.
    links: Vec<Vec<Option<Outbox>>>,
    /// Consumer queues not yet handed out.
    sources: PendingQueues,
    shape: Shape,
}

impl RawTcp {
    /// Listens on every node's address, connects every pair of nodes that share a job and
    /// starts the links' readers and writers. Returns the system and its connections.
    pub async fn open(shape: &Shape, faults: &Faults) -> Result<(RawTcp, u64), String> {
        let n = shape.nodes();
        let mut dispatch: Vec<Dispatch> = (0..n).map(|_| Dispatch::new(shape)).collect();
        let mut sources = PendingQueues::default();
        for j in 0..shape.jobs() {
            for node in shape.job_nodes(j) {
                for slot in 0..shape.consumers() {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let me = Endpoint::new(node, slot);
                    dispatch[node.0 as usize].insert(j, shape.consumer_id(me), tx);
                    sources.insert(j, me, rx);
                }
            }
        }
        let dispatch: Vec<Arc<Dispatch>> = dispatch.into_iter().map(Arc::new).collect();
        let pairs = talking_pairs(shape);
        let mut listeners = Vec::with_capacity(n as usize);
        for i in 0..n {
            let addr = SocketAddr::new(IpAddr::V4(shape.node_ip(i)), 0);
            let listener =
                listen(addr).map_err(|e| format!("raw-tcp: listening on {addr}: {e}"))?;
            listeners.push(listener);
        }
        let mut streams: Vec<(u32, u32, TcpStream)> = Vec::with_capacity(2 * pairs.len());
        let accept_all = async {
            let mut accepted = Vec::new();
            for (i, listener) in listeners.iter().enumerate() {
                let expected = pairs.iter().filter(|&&(_, b)| b as usize == i).count();
                for _ in 0..expected {
                    let (mut stream, _) = listener
                        .accept()
                        .await
                        .map_err(|e| format!("raw-tcp: node {i} accepting: {e}"))?;
                    let peer = stream
                        .read_u32_le()
                        .await
                        .map_err(|e| format!("raw-tcp: node {i} reading a hello: {e}"))?;
                    accepted.push((i as u32, peer, stream));
                }
            }
            Ok::<_, String>(accepted)
        };
        let dial_all = async {
            let mut dialed = Vec::new();
            for &(a, b) in &pairs {
                let to = listeners[b as usize]
                    .local_addr()
                    .map_err(|e| format!("raw-tcp: node {b}: {e}"))?;
                let mut stream = dial(shape, a, to)
                    .await
                    .map_err(|e| format!("raw-tcp: node {a} dialing node {b}: {e}"))?;
                stream
                    .write_u32_le(a)
                    .await
                    .map_err(|e| format!("raw-tcp: node {a} greeting node {b}: {e}"))?;
                dialed.push((a, b, stream));
            }
            Ok::<_, String>(dialed)
        };
        let (accepted, dialed) = tokio::try_join!(accept_all, dial_all)?;
        streams.extend(accepted);
        streams.extend(dialed);
        let mut links: Vec<Vec<Option<Outbox>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let max_len = shape.plan().message_size() as usize;
        for (me, peer, stream) in streams {
            if peer >= n || peer == me {
                return Err(format!("raw-tcp: node {me} got a hello from node {peer}"));
            }
            stream
                .set_nodelay(true)
                .map_err(|e| format!("raw-tcp: node {me}: {e}"))?;
            let (read, write) = stream.into_split();
            let (tx, rx) = outbox(OUTBOX_BYTES);
            links[me as usize][peer as usize] = Some(tx);
            let link = format!("raw-tcp link node {me} -> node {peer}");
            tokio::spawn(write_link(write, rx, faults.clone(), link.clone()));
            let to_me = dispatch[me as usize].clone();
            tokio::spawn(read_link(read, to_me, max_len, faults.clone(), link));
        }
        let connections = pairs.len() as u64;
        let raw = RawTcp {
            dispatch,
            links,
            sources,
            shape: shape.clone(),
        };
        Ok((raw, connections))
    }
}

/// Pairs `(a, b)`, `a < b`, of nodes that share at least one job.
fn talking_pairs(shape: &Shape) -> Vec<(u32, u32)> {
    let mut pairs = Vec::new();
    for a in 0..shape.nodes() {
        for b in a + 1..shape.nodes() {
            if (0..shape.jobs()).any(|j| shape.job_uses(j, a) && shape.job_uses(j, b)) {
                pairs.push((a, b));
            }
        }
    }
    pairs
}

/// A listener on `addr` with a backlog that takes a burst of connections.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Connects from node `from`'s address to `to`.
pub async fn dial(shape: &Shape, from: u32, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(shape.node_ip(from)), 0))?;
    socket.connect(to).await
}

/// Writes everything queued for a link, as much as is waiting in one vectored write,
/// until every producer of its node is gone; then shuts the connection's sending side.
/// Before each write it lets the other runnable tasks go once, so that producers with a
/// message ready add it to the batch: on a busy link that doubles the bytes per write
/// (small messages), on an idle one it costs one pass of the scheduler.
async fn write_link(mut half: OwnedWriteHalf, mut drain: Drain, faults: Faults, link: String) {
    loop {
        tokio::task::yield_now().await;
        let Some(chunks) = drain.next().await else {
            break;
        };
        let parts: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
        if let Err(e) = write_all_vectored(&mut half, &parts).await {
            drain.broken();
            faults.report(format!("{link}: writing: {e}"));
            return;
        }
        drain.written(parts.iter().map(|p| p.len()).sum());
    }
    let _ = half.shutdown().await;
}

/// The header of a frame carrying `len` bytes of message.
fn frame_header(len: usize, job: u32, producer: u32, consumer: u32) -> [u8; FRAME_HEADER] {
    let mut out = [0u8; FRAME_HEADER];
    // Messages are at most the plan's message size, a u32.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    for (chunk, word) in out.chunks_exact_mut(4).zip([len, job, producer, consumer]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// Writes all of `parts`, in order, with as few vectored writes as the socket allows.
pub async fn write_all_vectored(
    half: &mut (impl AsyncWriteExt + Unpin),
    parts: &[&[u8]],
) -> std::io::Result<()> {
    // The first part not fully written, and how much of it was.
    let (mut index, mut offset) = (0, 0);
    while index < parts.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&parts[index][offset..])
            .chain(parts[index + 1..].iter().copied())
            .map(IoSlice::new)
            .collect();
        let mut written = half.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while index < parts.len() && written >= parts[index].len() - offset {
            written -= parts[index].len() - offset;
            index += 1;
            offset = 0;
        }
        offset += written;
    }
    Ok(())
}

/// Splits a link's stream into frames and hands each message to its consumer's queue,
/// until the other end shuts the connection down.
async fn read_link(
    mut half: OwnedReadHalf,
    dispatch: Arc<Dispatch>,
    max_len: usize,
    faults: Faults,
    link: String,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        while buf.len() >= FRAME_HEADER {
            let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
            let (len, job, producer, consumer) = (word(0) as usize, word(4), word(8), word(12));
            if len > max_len {
                faults.report(format!("{link}: a {len}-byte message, over {max_len}"));
                return;
            }
            if buf.len() < FRAME_HEADER + len {
                buf.reserve(FRAME_HEADER + len - buf.len());
                break;
            }
            buf.advance(FRAME_HEADER);
            let message = buf.split_to(len).freeze();
            let Some(queue) = dispatch.get(job, consumer) else {
                faults.report(format!(
                    "{link}: a message for unknown consumer {consumer} of job index {job}"
                ));
                return;
            };
            // A consumer that stopped early is judged by what it got.
            let _ = queue.send((producer, message));
        }
        if buf.capacity() - buf.len() < FRAME_HEADER {
            buf.reserve(READ_CHUNK);
        }
        match half.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return,
            Ok(0) => {
                faults.report(format!("{link}: the connection ended inside a frame"));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                faults.report(format!("{link}: reading: {e}"));
                return;
            }
        }
    }
}

impl Transport for RawTcp {
    type Sink = RawSink;
    type Source = QueueSource;

    async fn producer(&self, job: u32, me: Endpoint) -> Result<RawSink, String> {
        let node = me.node.0;
        let mut links: Vec<Option<Outbox>> = (0..self.shape.nodes()).map(|_| None).collect();
        for peer in self.shape.job_nodes(job) {
            if peer.0 == node {
                continue;
            }
            let outbox = self.links[node as usize][peer.0 as usize]
                .as_ref()
                .ok_or_else(|| format!("no link from node {node} to node {}", peer.0))?;
            links[peer.0 as usize] = Some(outbox.clone());
        }
        Ok(RawSink {
            node,
            job,
            producer: self.shape.producer_id(me),
            local: self.dispatch[node as usize].clone(),
            links,
        })
    }

    async fn consumer(&self, job: u32, me: Endpoint) -> Result<QueueSource, String> {
        self.sources.take(job, me)
    }
}

/// A raw-tcp producer: local consumers' queues and its node's links.
#[derive(Clone)]
pub struct RawSink {
    node: u32,
    job: u32,
    producer: u32,
    local: Arc<Dispatch>,
    /// The outbox of the link to each peer of its job, by peer.
    links: Vec<Option<Outbox>>,
}

impl Sink for RawSink {
    async fn send(&mut self, to: Endpoint, to_id: u32, message: Bytes) -> Result<(), String> {
        if to.node.0 == self.node {
            let queue = self
                .local
                .get(self.job, to_id)
                .ok_or_else(|| format!("no consumer {to} here"))?;
            // A consumer that stopped early is judged by what it got.
            let _ = queue.send((self.producer, message));
            return Ok(());
        }
        let link = self
            .links
            .get(to.node.0 as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("no link to node {}", to.node.0))?;
        let header = frame_header(message.len(), self.job, self.producer, to_id);
        link.push(&header, message)
            .await
            .map_err(|e| format!("to node {}: {e}", to.node.0))
    }

    async fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn split(self, to: &[u32]) -> Vec<(Vec<u32>, Self)> {
        to.iter().map(|&id| (vec![id], self.clone())).collect()
    }
}

/// A consumer's in-process queue of `(producer id, message)`.
type Queue = mpsc::UnboundedReceiver<(u32, Bytes)>;

/// Consumer queues not yet handed out, by `(job, node, slot)`.
#[derive(Default)]
pub struct PendingQueues(Mutex<HashMap<(u32, u32, u32), Queue>>);

impl PendingQueues {
    /// Keeps the queue of consumer `me` of job index `job`.
    pub fn insert(&mut self, job: u32, me: Endpoint, queue: Queue) {
        if let Ok(queues) = self.0.get_mut() {
            queues.insert((job, me.node.0, me.slot), queue);
        }
    }

    /// Hands out the queue of consumer `me` of job index `job`, once.
    pub fn take(&self, job: u32, me: Endpoint) -> Result<QueueSource, String> {
        let mut queues = self.0.lock().map_err(|_| "a poisoned lock")?;
        queues
            .remove(&(job, me.node.0, me.slot))
            .map(QueueSource)
            .ok_or_else(|| "not in the shape, or opened twice".to_string())
    }
}

/// A consumer fed by an in-process queue of `(producer id, message)`.
pub struct QueueSource(Queue);

impl Source for QueueSource {
    async fn recv(&mut self) -> Option<Result<(u32, Bytes), String>> {
        self.0.recv().await.map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn vectored_writes_survive_partial_writes() {
        // A duplex pipe of 7 bytes forces many partial writes.
        let (mut a, mut b) = tokio::io::duplex(7);
        let parts: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; usize::from(i) * 3]).collect();
        let expected: Vec<u8> = parts.concat();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.map(|_| got)
        });
        let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        write_all_vectored(&mut a, &slices).await.expect("write");
        drop(a);
        let got = reader.await.expect("join").expect("read");
        assert_eq!(got, expected);
    }

    #[test]
    fn frame_headers_are_four_little_endian_words() {
        let h = frame_header(0x0102, 3, 4, 5);
        assert_eq!(h[..4], [2, 1, 0, 0]);
        assert_eq!(h[4..], [3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0]);
    }
}
