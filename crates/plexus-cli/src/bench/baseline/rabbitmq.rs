//! The `rabbitmq` baseline (cargo feature `rabbitmq`): the workload through a RabbitMQ
//! broker on loopback (`--amqp-url`, started apart by `scripts/rabbitmq.sh`), used the way
//! a RabbitMQ user would, over AMQP 0-9-1 with the `lapin` client:
//!
//! - each node opens one connection to the broker, as a process would, from its own
//!   loopback address (so the socket table attributes it to the node);
//! - each consumer has a channel and a queue of its own (non-durable, auto-delete, named
//!   uniquely per run), with a prefetch window (`basic.qos`), and acknowledges what it got;
//! - each producer has a channel and publishes to the default exchange with its
//!   consumer's queue as routing key, its producer id in the message headers; when done it
//!   publishes an empty message to each queue as its end of stream (workload messages are
//!   never empty), then closes its channel.
//!
//! Producers do not ask for publisher confirms: like the other baselines they trust their
//! connection, and the broker still holds them back (its flow control blocks their
//! connection's socket) when queues grow; confirms would only slow RabbitMQ down, and every
//! consumer verifies what it got anyway.
//!
//! Invariants: a broker that cannot be reached skips the system with a note, it does not
//! fail the run; every broker operation is bounded by the run's deadline; a consumer's
//! stream ends once it got the end of every producer of its job, with everything it got
//! acknowledged; a consumer acknowledges at least once per half prefetch window (with
//! `multiple`), so the broker never waits on it; the connections are closed at the end,
//! which also deletes any queue left over.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_compat::Compat;
use bytes::Bytes;
use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Acker, AsyncTcpStream, BasicProperties, Channel, Connection, ConnectionProperties};
use plexus::Endpoint;
use tokio::net::TcpSocket;
use tokio::time::{timeout_at, Instant};

use super::super::shape::Shape;
use super::super::transport::{Faults, Sink, Source, Transport};
use super::{amqp_url, failed, BaselineResult, Conditions, System};

/// Bytes of messages a consumer's prefetch window allows, roughly.
const PREFETCH_BYTES: u64 = 1 << 20;

/// The message header that carries the producer's id.
const PRODUCER_HEADER: &str = "producer";

/// How long closing the connections may take after the run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the workload of `shape` through the broker at `url`, under `conditions`; link
/// kills aim at the nodes' connections to the broker.
pub fn run(shape: &Shape, url: &str, conditions: Conditions) -> BaselineResult {
    super::on_runtime(System::Rabbitmq, measure(shape, url, conditions))
}

async fn measure(shape: &Shape, url: &str, conditions: Conditions) -> BaselineResult {
    let deadline = Instant::now() + conditions.timeout;
    let broker = match broker(url).await {
        Ok(broker) => broker,
        Err(e) => return failed(System::Rabbitmq, e),
    };
    let connections = match timeout_at(deadline, connect_nodes(shape, &broker)).await {
        Ok(Ok(connections)) => connections,
        Ok(Err(Connect::Unreachable(e))) => {
            let note = format!(
                "skipped: no broker answers at {} ({e}); `scripts/rabbitmq.sh start` starts one",
                amqp_url::without_password(url)
            );
            return BaselineResult::skipped(System::Rabbitmq, note);
        }
        Ok(Err(Connect::Failed(e))) => return failed(System::Rabbitmq, e),
        Err(_) => {
            return failed(
                System::Rabbitmq,
                "timed out connecting to the broker".into(),
            )
        }
    };
    let rabbit = RabbitMq {
        shape: shape.clone(),
        run: run_id(),
        connections: connections.clone(),
        prefetch: prefetch(shape),
    };
    // The system reports its failures through its endpoints.
    let (_faults, log) = Faults::new();
    // The only links are the nodes' connections to the broker: those are what break.
    let mut chaos_ips = shape.node_ips();
    if let IpAddr::V4(ip) = broker.addr.ip() {
        chaos_ips.push(ip);
    }
    let measured = super::measure(rabbit, shape, conditions, &chaos_ips, deadline, log).await;
    for connection in &connections {
        let close = connection.close(200, ShortString::from("done"));
        // The run is judged already; a connection that does not close cleanly is dropped.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    }
    BaselineResult::judged(System::Rabbitmq, shape, measured, connections.len() as u64)
}

/// The broker's URL, parsed, and its address.
struct Broker {
    uri: AMQPUri,
    addr: SocketAddr,
}

/// Parses `url`, checks that it names a loopback host and resolves it.
async fn broker(url: &str) -> Result<Broker, String> {
    let shown = amqp_url::without_password(url);
    let uri: AMQPUri = url
        .parse()
        .map_err(|e| format!("--amqp-url {shown}: {e}"))?;
    let host = uri.authority.host.clone();
    if !amqp_url::is_loopback(&host) {
        return Err(format!(
            "--amqp-url {shown}: the broker must be on loopback"
        ));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = tokio::net::lookup_host((host, uri.authority.port))
        .await
        .map_err(|e| format!("--amqp-url {shown}: resolving {host}: {e}"))?
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| format!("--amqp-url {shown}: {host} has no loopback address"))?;
    Ok(Broker { uri, addr })
}

/// Why the nodes could not all connect.
enum Connect {
    /// The broker did not answer the first node: there is none to measure.
    Unreachable(String),
    /// Something else went wrong.
    Failed(String),
}

/// Opens one connection per node, each from its node's address.
async fn connect_nodes(shape: &Shape, broker: &Broker) -> Result<Vec<Arc<Connection>>, Connect> {
    let mut connections = Vec::with_capacity(shape.nodes() as usize);
    for node in 0..shape.nodes() {
        let from = shape.node_ip(node);
        match connect(broker, from).await {
            Ok(connection) => connections.push(Arc::new(connection)),
            Err(e) if node == 0 => return Err(Connect::Unreachable(e.to_string())),
            Err(e) => {
                let error = format!("rabbitmq: node {node} connecting from {from}: {e}");
                return Err(Connect::Failed(error));
            }
        }
    }
    Ok(connections)
}

/// Opens an AMQP connection to `broker` from address `from`.
async fn connect(broker: &Broker, from: Ipv4Addr) -> lapin::Result<Connection> {
    let to = broker.addr;
    let dial = async move |_uri: AMQPUri, _runtime| -> lapin::Result<_> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
        let stream = socket.connect(to).await?;
        stream.set_nodelay(true)?;
        Ok(AsyncTcpStream::Plain(Compat::new(stream)))
    };
    let runtime = async_rs::Runtime::tokio_current();
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("plexus bench node {from}").into());
    Connection::connector(broker.uri.clone(), runtime, dial, properties).await
}

/// A name no other run's queues have: this process and the time it started the run.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("plexus-bench.{}.{nanos}", std::process::id())
}

/// Messages a consumer may hold unacknowledged: about [`PREFETCH_BYTES`], 16 to 1000.
fn prefetch(shape: &Shape) -> u16 {
    let messages = PREFETCH_BYTES / u64::from(shape.plan().message_size()).max(1);
    messages.clamp(16, 1000) as u16
}

/// The rabbitmq system of a shape: every node connected; see the module docs.
struct RabbitMq {
    shape: Shape,
    /// The prefix of this run's queue names.
    run: String,
    /// Each node's connection, by node id.
    connections: Vec<Arc<Connection>>,
    /// Each consumer's prefetch window, in messages.
    prefetch: u16,
}

impl RabbitMq {
    /// The queue of consumer `c` of job index `job`.
    fn queue(&self, job: u32, c: Endpoint) -> ShortString {
        format!("{}.j{job}.n{}.s{}", self.run, c.node.0, c.slot).into()
    }

    async fn channel(&self, node: u32) -> Result<Channel, String> {
        let connection = self
            .connections
            .get(node as usize)
            .ok_or_else(|| format!("node {node} has no connection"))?;
        connection
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel: {e}"))
    }
}

impl Transport for RabbitMq {
    type Sink = RabbitSink;
    type Source = RabbitSource;

    async fn producer(&self, job: u32, me: Endpoint) -> Result<RabbitSink, String> {
        let channel = self.channel(me.node.0).await?;
        let queues = self
            .shape
            .topology(job)
            .consumers()
            .iter()
            .map(|&c| (self.shape.consumer_id(c), self.queue(job, c)))
            .collect();
        let mut headers = FieldTable::default();
        let id = AMQPValue::LongUInt(self.shape.producer_id(me));
        headers.insert(PRODUCER_HEADER.into(), id);
        let properties = BasicProperties::default().with_headers(headers);
        Ok(RabbitSink {
            channel,
            queues,
            properties,
        })
    }

    async fn consumer(&self, job: u32, me: Endpoint) -> Result<RabbitSource, String> {
        let channel = self.channel(me.node.0).await?;
        let queue = self.queue(job, me);
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| format!("setting the prefetch: {e}"))?;
        let options = QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.clone(), options, FieldTable::default())
            .await
            .map_err(|e| format!("declaring queue {queue}: {e}"))?;
        let consumer = channel
            .basic_consume(
                queue.clone(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consuming queue {queue}: {e}"))?;
        let producers = self.shape.job_nodes(job).len() * self.shape.producers() as usize;
        Ok(RabbitSource {
            channel,
            consumer,
            ends_left: producers,
            unacked: None,
            ack_every: (usize::from(self.prefetch) / 2).max(1),
        })
    }
}

/// A rabbitmq producer: its channel and its consumers' queues, by consumer id.
pub struct RabbitSink {
    channel: Channel,
    queues: HashMap<u32, ShortString>,
    /// Every message's properties: the producer's id in the headers.
    properties: BasicProperties,
}

impl RabbitSink {
    async fn publish(&self, queue: &ShortString, body: &[u8]) -> Result<(), String> {
        self.channel
            .basic_publish(
                ShortString::from(""),
                queue.clone(),
                BasicPublishOptions::default(),
                body,
                self.properties.clone(),
            )
            .await
            .map(drop)
            .map_err(|e| format!("publishing to queue {queue}: {e}"))
    }
}

impl Sink for RabbitSink {
    async fn send(&mut self, to: Endpoint, to_id: u32, message: Bytes) -> Result<(), String> {
        let queue = self
            .queues
            .get(&to_id)
            .ok_or_else(|| format!("no queue for consumer {to}"))?;
        self.publish(queue, &message).await
    }

    async fn finish(self) -> Result<(), String> {
        for queue in self.queues.values() {
            self.publish(queue, &[]).await?;
        }
        self.channel
            .close(200, ShortString::from("done"))
            .await
            .map_err(|e| format!("closing the channel: {e}"))
    }
}

/// A rabbitmq consumer: its channel and its queue's deliveries.
pub struct RabbitSource {
    channel: Channel,
    consumer: lapin::Consumer,
    /// Producers whose end of stream has not arrived yet.
    ends_left: usize,
    /// The last delivery not acknowledged yet, and how many are not.
    unacked: Option<(Acker, usize)>,
    /// Acknowledge once this many deliveries are not.
    ack_every: usize,
}

impl RabbitSource {
    /// Acknowledges every delivery so far.
    async fn ack(&mut self) -> Result<(), String> {
        match self.unacked.take() {
            Some((acker, _)) => acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map(drop)
                .map_err(|e| format!("acknowledging: {e}")),
            None => Ok(()),
        }
    }

    /// After the last end of stream: acknowledges everything and closes the channel,
    /// which cancels the consumer and so deletes the queue.
    async fn end(&mut self) -> Result<(), String> {
        self.ack().await?;
        self.channel
            .close(200, ShortString::from("done"))
            .await
            .map_err(|e| format!("closing the channel: {e}"))
    }
}

impl Source for RabbitSource {
    async fn recv(&mut self) -> Option<Result<(u32, Bytes), String>> {
        while self.ends_left > 0 {
            let delivery = match poll_fn(|cx| Pin::new(&mut self.consumer).poll_next(cx)).await {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Some(Err(format!("receiving: {e}"))),
                None => {
                    let left = self.ends_left;
                    return Some(Err(format!(
                        "the broker ended the consumer with {left} producers not done"
                    )));
                }
            };
            let producer = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(PRODUCER_HEADER))
                .and_then(|v| match v {
                    AMQPValue::LongUInt(id) => Some(*id),
                    _ => None,
                });
            let count = self.unacked.take().map_or(0, |(_, n)| n) + 1;
            self.unacked = Some((delivery.acker, count));
            if count >= self.ack_every {
                if let Err(e) = self.ack().await {
                    return Some(Err(e));
                }
            }
            let Some(producer) = producer else {
                return Some(Err("a message without its producer id".into()));
            };
            if delivery.data.is_empty() {
                self.ends_left -= 1;
                if self.ends_left == 0 {
                    if let Err(e) = self.end().await {
                        return Some(Err(e));
                    }
                }
                continue;
            }
            return Some(Ok((producer, Bytes::from(delivery.data))));
        }
        None
    }
}
