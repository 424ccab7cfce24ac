//! The `grpc` baseline: the workload over gRPC streams (tonic), built as a Rust engine's
//! exchange builds it: every node runs a gRPC server on its own address, every pair of
//! nodes that share a job talks over one HTTP/2 connection (a tonic `Channel`, dialled by
//! the lower-numbered node from its own address), and every channel is one streaming call
//! on that connection:
//!
//! - a channel from the dialling node to the other is a client-streaming `Push` call: the
//!   producer streams its messages, the server forwards them to the consumer;
//! - a channel the other way is a server-streaming `Pull` call: the consumer asks for it,
//!   and the server streams what the producer sends;
//! - a channel within one node is an in-process queue, as an engine's local exchange is.
//!
//! Messages travel as raw bytes under a codec of this module's own (no protobuf, no code
//! generation); the call's `x-channel` header names `job/producer/consumer`. Flow control is
//! HTTP/2's: per stream and per connection windows, the stacks' defaults (hyper's: 1 MiB
//! each on the server, 2 MiB per stream and 5 MiB per connection on the client), or
//! `--grpc-window SIZE` for both on both sides. Each producer feeds each of its calls
//! through a queue of [`CALL_QUEUE`] messages, and each consumer reads every stream of its
//! job through one queue of [`CONSUMER_QUEUE`] messages that the streams' readers fill, so
//! a consumer that stops reading stops its streams, and HTTP/2 pushes back from there.
//!
//! Invariants: a consumer's stream ends once every producer of its job ended its channel
//! to it (each channel reports its end, or its failure, exactly once); a failed call, a
//! broken connection or a malformed request reaches the consumer (or the producer) as an
//! error naming the channel, never as a silent end; nothing here retries a call, since
//! gRPC has no resume of a stream: a connection that breaks fails the streams it carried.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use plexus::Endpoint;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint as Dial, Server};
use tonic::{Request, Response, Status, Streaming};

use super::super::shape::Shape;
use super::super::transport::{Faults, Sink, Source, Transport};
use super::raw_tcp::listen;
use crate::fan_in::{FanIn, Item};

/// The method a producer streams a channel's messages to its consumer's node with.
const PUSH: &str = "/plexus.bench.Exchange/Push";
/// The method a consumer asks a producer's node for a channel's messages with.
const PULL: &str = "/plexus.bench.Exchange/Pull";
/// The request header naming the channel, `job/producer/consumer`.
const CHANNEL_HEADER: &str = "x-channel";

/// Messages a producer queues for one call before it waits.
const CALL_QUEUE: usize = 4;
/// Messages queued for a consumer, from all its streams, before they wait.
const CONSUMER_QUEUE: usize = 16;

/// The HTTP/2 flow-control windows: the stacks' defaults, or one size for every stream
/// and connection.
#[derive(Clone, Copy, Debug)]
pub struct Windows(pub Option<u32>);

/// What a consumer's queue holds: messages with their producer's workload id.
type Delivery = Item<(u32, Bytes)>;
/// Where a consumer's streams hand over what they carry.
type ToConsumer = mpsc::Sender<Delivery>;
/// A consumer's queue.
type ConsumerQueue = mpsc::Receiver<Delivery>;

/// A channel `(job index, producer id, consumer id)`.
type ChannelKey = (u32, u32, u32);

/// What one node's server and producers share.
#[derive(Default)]
struct NodeState {
    /// Its consumers' queues, by `(job index, consumer id)`.
    consumers: HashMap<(u32, u32), ToConsumer>,
    /// The producer side of channels a peer pulls, not yet pulled.
    pulls: Mutex<HashMap<ChannelKey, mpsc::Receiver<Bytes>>>,
}

/// The grpc system of a shape, connected; see the module docs.
pub struct Grpc {
    shape: Shape,
    /// Per node, what its server and endpoints share.
    nodes: Vec<Arc<NodeState>>,
    /// The connection between each pair of nodes that talk, by `(lower, higher)`.
    connections: HashMap<(u32, u32), Channel>,
    /// Consumer queues not yet handed out, by `(job index, node, slot)`.
    sources: Mutex<HashMap<(u32, u32, u32), ConsumerQueue>>,
    /// The producer side of pulled channels, by channel, not yet handed out.
    pull_senders: Mutex<HashMap<ChannelKey, mpsc::Sender<Bytes>>>,
    /// The servers, stopped when the system goes.
    servers: Vec<JoinHandle<()>>,
    max_message: usize,
}

impl Drop for Grpc {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

impl Grpc {
    /// Starts every node's server, makes every queue and pulled channel of `shape`, and
    /// connects every pair of nodes that share a job. Returns the system and its
    /// connections.
    pub async fn open(
        shape: &Shape,
        windows: Windows,
        faults: &Faults,
    ) -> Result<(Grpc, u64), String> {
        let n = shape.nodes();
        let mut states: Vec<NodeState> = (0..n).map(|_| NodeState::default()).collect();
        let mut sources = HashMap::new();
        let mut pull_senders = HashMap::new();
        for j in 0..shape.jobs() {
            for node in shape.job_nodes(j) {
                for slot in 0..shape.consumers() {
                    let me = Endpoint::new(node, slot);
                    let (tx, rx) = mpsc::channel(CONSUMER_QUEUE);
                    states[node.0 as usize]
                        .consumers
                        .insert((j, shape.consumer_id(me)), tx);
                    sources.insert((j, node.0, slot), rx);
                }
            }
            for from in shape.job_nodes(j) {
                for to in shape.job_nodes(j) {
                    if from.0 <= to.0 {
                        continue;
                    }
                    // The consumer's node dialled: it pulls these channels.
                    for p in 0..shape.producers() {
                        for c in 0..shape.consumers() {
                            let key = (
                                j,
                                shape.producer_id(Endpoint::new(from, p)),
                                shape.consumer_id(Endpoint::new(to, c)),
                            );
                            let (tx, rx) = mpsc::channel(CALL_QUEUE);
                            pull_senders.insert(key, tx);
                            if let Ok(pulls) = states[from.0 as usize].pulls.get_mut() {
                                pulls.insert(key, rx);
                            }
                        }
                    }
                }
            }
        }
        let max_message = shape.plan().message_size() as usize;
        let nodes: Vec<Arc<NodeState>> = states.into_iter().map(Arc::new).collect();
        let mut servers = Vec::with_capacity(n as usize);
        let mut addrs = Vec::with_capacity(n as usize);
        for (i, state) in nodes.iter().enumerate() {
            let ip = shape.node_ip(i as u32);
            let listener = listen(SocketAddr::new(IpAddr::V4(ip), 0))
                .map_err(|e| format!("grpc: listening on {ip}: {e}"))?;
            addrs.push(
                listener
                    .local_addr()
                    .map_err(|e| format!("grpc: listening on {ip}: {e}"))?,
            );
            let service = ExchangeService {
                state: state.clone(),
                max_message,
            };
            let server = Server::builder()
                .initial_stream_window_size(windows.0)
                .initial_connection_window_size(windows.0);
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let (faults, name) = (faults.clone(), format!("grpc server of node {i}"));
            servers.push(tokio::spawn(async move {
                if let Err(e) = server.serve_with_incoming(service, incoming).await {
                    faults.report(format!("{name}: {e}"));
                }
            }));
        }
        let mut grpc = Grpc {
            shape: shape.clone(),
            nodes,
            connections: HashMap::new(),
            sources: Mutex::new(sources),
            pull_senders: Mutex::new(pull_senders),
            servers,
            max_message,
        };
        for a in 0..n {
            for b in a + 1..n {
                if !(0..shape.jobs()).any(|j| shape.job_uses(j, a) && shape.job_uses(j, b)) {
                    continue;
                }
                let to = addrs[b as usize];
                let channel = Dial::from_shared(format!("http://{to}"))
                    .map_err(|e| format!("grpc: node {b}'s address: {e}"))?
                    .local_address(Some(IpAddr::V4(shape.node_ip(a))))
                    .initial_stream_window_size(windows.0)
                    .initial_connection_window_size(windows.0)
                    .connect()
                    .await
                    .map_err(|e| format!("grpc: node {a} connecting to node {b}: {e}"))?;
                grpc.connections.insert((a, b), channel);
            }
        }
        let connections = grpc.connections.len() as u64;
        Ok((grpc, connections))
    }

    /// A gRPC client on the connection between nodes `a` and `b`.
    fn client(&self, a: u32, b: u32) -> Result<tonic::client::Grpc<Channel>, String> {
        let channel = self
            .connections
            .get(&(a.min(b), a.max(b)))
            .ok_or_else(|| format!("no connection between nodes {a} and {b}"))?;
        Ok(tonic::client::Grpc::new(channel.clone())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message))
    }
}

impl Transport for Grpc {
    type Sink = GrpcSink;
    type Source = GrpcSource;

    async fn producer(&self, job: u32, me: Endpoint) -> Result<GrpcSink, String> {
        let my_id = self.shape.producer_id(me);
        let mut channels = Vec::new();
        for &c in self.shape.topology(job).consumers() {
            let to_id = self.shape.consumer_id(c);
            let key = (job, my_id, to_id);
            let tx = if c.node == me.node {
                let queue = self.nodes[me.node.0 as usize]
                    .consumers
                    .get(&(job, to_id))
                    .ok_or_else(|| format!("no consumer {c} here"))?;
                ChannelTx::Local(queue.clone(), my_id)
            } else if me.node.0 < c.node.0 {
                let client = self.client(me.node.0, c.node.0)?;
                let (tx, rx) = mpsc::channel(CALL_QUEUE);
                ChannelTx::Push(tx, tokio::spawn(push(client, key, rx)))
            } else {
                let tx = lock(&self.pull_senders)
                    .remove(&key)
                    .ok_or_else(|| format!("the channel to consumer {c} was opened twice"))?;
                ChannelTx::Pull(tx)
            };
            channels.push((to_id, tx));
        }
        Ok(GrpcSink { channels })
    }

    async fn consumer(&self, job: u32, me: Endpoint) -> Result<GrpcSource, String> {
        let queue = lock(&self.sources)
            .remove(&(job, me.node.0, me.slot))
            .ok_or("not in the shape, or opened twice")?;
        let my_id = self.shape.consumer_id(me);
        let to_me = self.nodes[me.node.0 as usize]
            .consumers
            .get(&(job, my_id))
            .ok_or("no queue for it")?;
        let mut producers = 0;
        for node in self.shape.job_nodes(job) {
            for p in 0..self.shape.producers() {
                producers += 1;
                if node.0 <= me.node.0 {
                    continue;
                }
                // This consumer's node dialled the producer's: pull the channel.
                let producer = self.shape.producer_id(Endpoint::new(node, p));
                let client = self.client(me.node.0, node.0)?;
                tokio::spawn(pull(client, (job, producer, my_id), to_me.clone()));
            }
        }
        Ok(GrpcSource(FanIn::new(queue, producers)))
    }
}

/// How a producer reaches one consumer.
enum ChannelTx {
    /// The consumer is on the same node: its queue, and the producer's id.
    Local(ToConsumer, u32),
    /// A `Push` call: its request stream, and the call.
    Push(mpsc::Sender<Bytes>, JoinHandle<Result<(), String>>),
    /// A `Pull` call the consumer made: its response stream.
    Pull(mpsc::Sender<Bytes>),
}

/// A grpc producer: one way to each consumer of its job, by consumer id.
pub struct GrpcSink {
    channels: Vec<(u32, ChannelTx)>,
}

impl Sink for GrpcSink {
    async fn send(&mut self, to: Endpoint, to_id: u32, message: Bytes) -> Result<(), String> {
        let index = self
            .channels
            .iter()
            .position(|(id, _)| *id == to_id)
            .ok_or_else(|| format!("no channel to consumer {to}"))?;
        let sent = match &self.channels[index].1 {
            ChannelTx::Local(queue, me) => queue.send(Item::Message((*me, message))).await.is_ok(),
            ChannelTx::Push(stream, _) | ChannelTx::Pull(stream) => {
                stream.send(message).await.is_ok()
            }
        };
        if sent {
            return Ok(());
        }
        match self.channels.swap_remove(index).1 {
            // The call ended early: its outcome says why.
            ChannelTx::Push(_, call) => Err(call_outcome(call).await.err().unwrap_or_else(|| {
                "the consumer's side ended the call before the producer finished".into()
            })),
            _ => Err(format!("the stream to consumer {to} ended early")),
        }
    }

    async fn finish(self) -> Result<(), String> {
        let mut calls = Vec::new();
        for (_, channel) in self.channels {
            match channel {
                ChannelTx::Local(queue, _) => {
                    let _ = queue.send(Item::End).await;
                }
                ChannelTx::Push(stream, call) => {
                    drop(stream);
                    calls.push(call);
                }
                ChannelTx::Pull(_) => {}
            }
        }
        for call in calls {
            call_outcome(call).await?;
        }
        Ok(())
    }

    fn split(self, _to: &[u32]) -> Vec<(Vec<u32>, Self)> {
        self.channels
            .into_iter()
            .map(|channel| {
                let to = vec![channel.0];
                let sink = GrpcSink {
                    channels: vec![channel],
                };
                (to, sink)
            })
            .collect()
    }
}

/// What a `Push` call came to.
async fn call_outcome(call: JoinHandle<Result<(), String>>) -> Result<(), String> {
    call.await
        .unwrap_or_else(|e| Err(format!("the call's task failed: {e}")))
}

/// Streams channel `key`'s messages from `messages` in a `Push` call until the producer
/// ends the channel.
async fn push(
    mut client: tonic::client::Grpc<Channel>,
    key: ChannelKey,
    messages: mpsc::Receiver<Bytes>,
) -> Result<(), String> {
    let fail = |e: Status| format!("push call of channel {}: {e}", channel_name(key));
    client
        .ready()
        .await
        .map_err(|e| fail(Status::from_error(e.into())))?;
    let request = with_channel(Request::new(ReceiverStream::new(messages)), key);
    client
        .client_streaming::<_, Bytes, Bytes, _>(request, path(PUSH), BytesCodec)
        .await
        .map(|_| ())
        .map_err(fail)
}

/// Asks for channel `key` in a `Pull` call and forwards its messages to the consumer's
/// `queue`, then its end or its failure.
async fn pull(mut client: tonic::client::Grpc<Channel>, key: ChannelKey, queue: ToConsumer) {
    let (_, producer, _) = key;
    let fail = |e: Status| Item::Failed(format!("pull call of channel {}: {e}", channel_name(key)));
    if let Err(e) = client.ready().await {
        let _ = queue.send(fail(Status::from_error(e.into()))).await;
        return;
    }
    let request = with_channel(Request::new(Bytes::new()), key);
    let stream = client
        .server_streaming::<Bytes, Bytes, _>(request, path(PULL), BytesCodec)
        .await;
    let end = match stream {
        Ok(response) => forward(response.into_inner(), producer, &queue).await,
        Err(e) => Err(e),
    };
    let _ = queue.send(end.map_or_else(fail, |()| Item::End)).await;
}

/// Hands every message of `stream` (from producer `producer`) to `queue`, until the
/// stream ends or fails (or the consumer is gone).
async fn forward(
    mut stream: Streaming<Bytes>,
    producer: u32,
    queue: &ToConsumer,
) -> Result<(), Status> {
    while let Some(message) = stream.message().await? {
        if queue
            .send(Item::Message((producer, message)))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// A grpc consumer: its queue, fed by every stream of its job.
pub struct GrpcSource(FanIn<(u32, Bytes)>);

impl Source for GrpcSource {
    async fn recv(&mut self) -> Option<Result<(u32, Bytes), String>> {
        self.0.next().await
    }
}

/// A node's server: the two methods, routed by hand.
#[derive(Clone)]
struct ExchangeService {
    state: Arc<NodeState>,
    max_message: usize,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<Body>> for ExchangeService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let state = self.state.clone();
        let grpc = move || {
            tonic::server::Grpc::new(BytesCodec)
                .max_decoding_message_size(self.max_message)
                .max_encoding_message_size(self.max_message)
        };
        match request.uri().path() {
            PUSH => {
                let mut grpc = grpc();
                Box::pin(
                    async move { Ok(grpc.client_streaming(PushHandler(state), request).await) },
                )
            }
            PULL => {
                let mut grpc = grpc();
                Box::pin(
                    async move { Ok(grpc.server_streaming(PullHandler(state), request).await) },
                )
            }
            other => {
                let status = Status::unimplemented(format!("no method {other}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// Serves `Push`: forwards the channel's messages to its consumer here.
struct PushHandler(Arc<NodeState>);

impl tonic::server::ClientStreamingService<Bytes> for PushHandler {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let (job, producer, consumer) = channel_of(&request)?;
            let queue = state
                .consumers
                .get(&(job, consumer))
                .ok_or_else(|| {
                    Status::not_found(format!("no consumer {consumer} of job index {job}"))
                })?
                .clone();
            let forwarded = forward(request.into_inner(), producer, &queue).await;
            let name = channel_name((job, producer, consumer));
            let item = match &forwarded {
                Ok(()) => Item::End,
                Err(e) => Item::Failed(format!("push stream of channel {name}: {e}")),
            };
            let _ = queue.send(item).await;
            forwarded.map(|()| Response::new(Bytes::new()))
        })
    }
}

/// Serves `Pull`: streams what the channel's producer here sends.
struct PullHandler(Arc<NodeState>);

impl tonic::server::ServerStreamingService<Bytes> for PullHandler {
    type Response = Bytes;
    type ResponseStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let key = channel_of(&request)?;
            let messages = lock(&state.pulls).remove(&key).ok_or_else(|| {
                Status::not_found(format!("no channel {} to pull", channel_name(key)))
            })?;
            let stream: Self::ResponseStream = Box::pin(ReceiverStream::new(messages).map(Ok));
            Ok(Response::new(stream))
        })
    }
}

/// The channel a request's header names.
fn channel_of<T>(request: &Request<T>) -> Result<ChannelKey, Status> {
    let bad = || Status::invalid_argument(format!("no valid {CHANNEL_HEADER} header"));
    let value = request
        .metadata()
        .get(CHANNEL_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(bad)?;
    let mut words = value.split('/').map(str::parse::<u32>);
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some(Ok(job)), Some(Ok(producer)), Some(Ok(consumer)), None) => {
            Ok((job, producer, consumer))
        }
        _ => Err(bad()),
    }
}

/// `request`, naming channel `key` in its header.
fn with_channel<T>(mut request: Request<T>, key: ChannelKey) -> Request<T> {
    let (job, producer, consumer) = key;
    if let Ok(value) = format!("{job}/{producer}/{consumer}").parse() {
        request.metadata_mut().insert(CHANNEL_HEADER, value);
    }
    request
}

/// "job index 0, producer 3 → consumer 5".
fn channel_name((job, producer, consumer): ChannelKey) -> String {
    format!("job index {job}, producer {producer} -> consumer {consumer}")
}

fn path(method: &'static str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(method)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps: a panic while holding the lock leaves them usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Messages as they are: the bytes of a gRPC message are the workload's message.
#[derive(Clone, Copy, Debug, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> BytesCodec {
        BytesCodec
    }

    fn decoder(&mut self) -> BytesCodec {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_header_names_three_numbers() {
        let request = with_channel(Request::new(()), (1, 22, 333));
        assert_eq!(channel_of(&request).expect("valid"), (1, 22, 333));
        let mut bad = Request::new(());
        bad.metadata_mut()
            .insert(CHANNEL_HEADER, "1/2".parse().expect("ascii"));
        assert_eq!(
            channel_of(&bad).expect_err("two numbers").code(),
            tonic::Code::InvalidArgument
        );
        assert!(channel_of(&Request::new(())).is_err());
    }
}
