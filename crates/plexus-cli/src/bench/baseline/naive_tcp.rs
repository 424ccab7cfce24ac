//! The `naive-tcp` baseline: one TCP connection per channel (producer → consumer), what
//! users do without a multiplexer.
//!
//! Every consumer listens on its own port of its node's address; every producer dials
//! each consumer of its job from its own node's address, says who it is (its producer id,
//! 4 bytes), then sends length-prefixed messages (`len u32` little-endian, then the
//! message) through a buffered writer: small messages are gathered into 64 KiB writes,
//! large ones go out in one vectored write with their prefix. Each connection has a reader
//! task that hands messages to its consumer's unbounded queue.
//!
//! Invariants: the producers' connections are made after the clock starts (they are part
//! of what this way of working costs); a consumer's stream ends once every connection of
//! its job's producers was accepted and ended; a malformed stream or a failed accept is
//! reported as a fault, so the consumer comes out incomplete, never hangs. The caller
//! checks beforehand that the connections fit under the process's descriptor limit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use plexus::Endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::super::shape::Shape;
use super::super::transport::{Faults, Sink, Transport};
use super::raw_tcp::{dial, listen, write_all_vectored, PendingQueues, QueueSource};

/// Capacity of a producer's buffer per connection.
const WRITE_BUFFER: usize = 64 * 1024;

/// Messages at least this large skip the buffer.
const LARGE: usize = 8 * 1024;

/// Bytes a connection's reader asks the OS for at least.
const READ_CHUNK: usize = 64 * 1024;

/// The naive-tcp system of a shape: every consumer listening; see the module docs.
pub struct NaiveTcp {
    shape: Shape,
    /// Each consumer's address, by `(job, node, slot)`.
    addrs: HashMap<(u32, u32, u32), SocketAddr>,
    /// Consumer queues not yet handed out.
    sources: PendingQueues,
    /// Connections made so far.
    connections: Arc<AtomicU64>,
}

impl NaiveTcp {
    /// Opens a listener for every consumer, accepting its job's producers. Returns the
    /// system and the count of connections its producers will have made.
    pub fn open(shape: &Shape, faults: &Faults) -> Result<(NaiveTcp, Arc<AtomicU64>), String> {
        let mut addrs = HashMap::new();
        let mut sources = PendingQueues::default();
        let max_len = shape.plan().message_size() as usize;
        for j in 0..shape.jobs() {
            let producers = shape.job_nodes(j).len() * shape.producers() as usize;
            for node in shape.job_nodes(j) {
                for slot in 0..shape.consumers() {
                    let ip = shape.node_ip(node.0);
                    let listener = listen(SocketAddr::new(IpAddr::V4(ip), 0))
                        .map_err(|e| format!("naive-tcp: listening on {ip}: {e}"))?;
                    let addr = listener
                        .local_addr()
                        .map_err(|e| format!("naive-tcp: listening on {ip}: {e}"))?;
                    let (tx, rx) = mpsc::unbounded_channel();
                    let name = format!(
                        "naive-tcp consumer {} of job index {j}",
                        Endpoint::new(node, slot)
                    );
                    tokio::spawn(accept(
                        listener,
                        producers,
                        tx,
                        max_len,
                        faults.clone(),
                        name,
                    ));
                    addrs.insert((j, node.0, slot), addr);
                    sources.insert(j, Endpoint::new(node, slot), rx);
                }
            }
        }
        let connections = Arc::new(AtomicU64::new(0));
        let naive = NaiveTcp {
            shape: shape.clone(),
            addrs,
            sources,
            connections: connections.clone(),
        };
        Ok((naive, connections))
    }
}

/// Accepts `expected` producers' connections and starts a reader for each.
async fn accept(
    listener: TcpListener,
    expected: usize,
    queue: mpsc::UnboundedSender<(u32, Bytes)>,
    max_len: usize,
    faults: Faults,
    name: String,
) {
    for _ in 0..expected {
        match listener.accept().await {
            Ok((stream, _)) => {
                let name = name.clone();
                tokio::spawn(read_channel(
                    stream,
                    queue.clone(),
                    max_len,
                    faults.clone(),
                    name,
                ));
            }
            Err(e) => {
                faults.report(format!("{name}: accepting: {e}"));
                return;
            }
        }
    }
}

/// Reads one channel: the producer's id, then its messages, until it shuts down.
async fn read_channel(
    mut stream: TcpStream,
    queue: mpsc::UnboundedSender<(u32, Bytes)>,
    max_len: usize,
    faults: Faults,
    name: String,
) {
    let producer = match stream.read_u32_le().await {
        Ok(id) => id,
        Err(e) => {
            faults.report(format!("{name}: reading a producer's hello: {e}"));
            return;
        }
    };
    let name = format!("{name}, from producer {producer}");
    let mut buf = BytesMut::new();
    loop {
        while buf.len() >= 4 {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > max_len {
                faults.report(format!("{name}: a {len}-byte message, over {max_len}"));
                return;
            }
            if buf.len() < 4 + len {
                buf.reserve(4 + len - buf.len());
                break;
            }
            buf.advance(4);
            // A consumer that stopped early is judged by what it got.
            let _ = queue.send((producer, buf.split_to(len).freeze()));
        }
        if buf.capacity() - buf.len() < 4 {
            buf.reserve(READ_CHUNK);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return,
            Ok(0) => {
                faults.report(format!("{name}: the connection ended inside a message"));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                faults.report(format!("{name}: reading: {e}"));
                return;
            }
        }
    }
}

impl Transport for NaiveTcp {
    type Sink = NaiveSink;
    type Source = QueueSource;

    async fn producer(&self, job: u32, me: Endpoint) -> Result<NaiveSink, String> {
        let my_id = self.shape.producer_id(me);
        let mut conns = HashMap::new();
        for &c in self.shape.topology(job).consumers() {
            let addr = self
                .addrs
                .get(&(job, c.node.0, c.slot))
                .ok_or_else(|| format!("consumer {c} does not listen"))?;
            let mut stream = dial(&self.shape, me.node.0, *addr)
                .await
                .map_err(|e| format!("dialing consumer {c} at {addr}: {e}"))?;
            self.connections.fetch_add(1, Ordering::Relaxed);
            stream
                .set_nodelay(true)
                .map_err(|e| format!("consumer {c}: {e}"))?;
            stream
                .write_u32_le(my_id)
                .await
                .map_err(|e| format!("greeting consumer {c}: {e}"))?;
            let id = self.shape.consumer_id(c);
            conns.insert(id, BufWriter::with_capacity(WRITE_BUFFER, stream));
        }
        Ok(NaiveSink { conns })
    }

    async fn consumer(&self, job: u32, me: Endpoint) -> Result<QueueSource, String> {
        self.sources.take(job, me)
    }
}

/// A naive-tcp producer: one buffered connection per consumer of its job, by consumer id.
pub struct NaiveSink {
    conns: HashMap<u32, BufWriter<TcpStream>>,
}

impl Sink for NaiveSink {
    async fn send(&mut self, to: Endpoint, to_id: u32, message: Bytes) -> Result<(), String> {
        let conn = self
            .conns
            .get_mut(&to_id)
            .ok_or_else(|| format!("no connection to consumer {to}"))?;
        let len = u32::try_from(message.len())
            .map_err(|_| format!("a {}-byte message is too long", message.len()))?
            .to_le_bytes();
        let sent = if message.len() >= LARGE {
            // A large message goes straight out with its prefix, after what is buffered.
            match conn.flush().await {
                Ok(()) => write_all_vectored(conn.get_mut(), &[&len, &message]).await,
                Err(e) => Err(e),
            }
        } else {
            match conn.write_all(&len).await {
                Ok(()) => conn.write_all(&message).await,
                Err(e) => Err(e),
            }
        };
        sent.map_err(|e| format!("sending to consumer {to}: {e}"))
    }

    async fn finish(mut self) -> Result<(), String> {
        for (id, conn) in &mut self.conns {
            conn.flush()
                .await
                .map_err(|e| format!("flushing to consumer id {id}: {e}"))?;
            conn.shutdown()
                .await
                .map_err(|e| format!("closing the connection to consumer id {id}: {e}"))?;
        }
        Ok(())
    }

    fn split(self, _to: &[u32]) -> Vec<(Vec<u32>, Self)> {
        self.conns
            .into_iter()
            .map(|(id, conn)| {
                (
                    vec![id],
                    NaiveSink {
                        conns: HashMap::from([(id, conn)]),
                    },
                )
            })
            .collect()
    }
}
