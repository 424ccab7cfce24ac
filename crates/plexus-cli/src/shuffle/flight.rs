//! The shuffle over Arrow Flight, as Flight-based engines shuffle: every node runs a
//! Flight server on its own address; every pair of nodes talks over one gRPC connection
//! (a tonic `Channel`, dialled by the lower-numbered node from its own address); every
//! channel is one Flight stream on it:
//!
//! - a channel from the dialling node to the other is a `do_put`: the producer streams
//!   its batches, the server hands them to the consumer;
//! - a channel the other way is a `do_get`: the consumer asks for it with a ticket naming
//!   it, and the server streams what the producer sends;
//! - a channel within one node is an in-process queue.
//!
//! Batches are encoded by arrow-flight's `FlightDataEncoder` (Arrow IPC, split as it
//! splits) and decoded by its `FlightRecordBatchStream`. A producer queues each
//! consumer's batches without waiting (its streams take them as HTTP/2's flow control
//! lets them go); each consumer reads all its streams through one queue of
//! [`CONSUMER_QUEUE`] batches, so a consumer that stops reading stops its streams.
//!
//! Invariants: a consumer's stream ends once every producer's channel to it ended (each
//! reports its end or its failure once, [`crate::fan_in`]); a failed stream reaches the
//! consumer as an error naming the channel; the servers stop when the run ends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightClient, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint as Dial, Server};
use tonic::{Request, Response, Status, Streaming};

use super::data::batch_bytes;
use super::drive::{drive, RunResult};
use super::endpoints::{BatchSink, BatchSource, Generation};
use super::progress::Progress;
use super::Spec;
use crate::fan_in::{FanIn, Item};

/// Batches queued for a consumer, from all its streams, before they wait.
const CONSUMER_QUEUE: usize = 16;
/// The request header of a `do_put` naming its channel, `producer/consumer`.
const CHANNEL_HEADER: &str = "x-channel";

/// A channel: (producer index, consumer index).
type ChannelKey = (usize, usize);

/// What one node's server and endpoints share.
#[derive(Default)]
struct NodeState {
    /// Its consumers' queues, by consumer index.
    consumers: HashMap<usize, mpsc::Sender<Item<RecordBatch>>>,
    /// The producer side of channels a peer pulls, not yet pulled.
    pulls: Mutex<HashMap<ChannelKey, mpsc::UnboundedReceiver<RecordBatch>>>,
}

/// Runs the shuffle of `spec` over Arrow Flight.
pub async fn run(
    spec: &Spec,
    parts: Arc<Vec<Arc<Vec<RecordBatch>>>>,
    progress: Arc<Progress>,
) -> Result<RunResult, String> {
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let n = spec.nodes as usize;
    let (consumers, producers) = (spec.consumers_total(), spec.producers_total());
    let node_of_consumer = |c: usize| spec.consumer(c).node.0 as usize;
    let node_of_producer = |p: usize| spec.producer(p).node.0 as usize;
    let mut states: Vec<NodeState> = (0..n).map(|_| NodeState::default()).collect();
    let mut queues = Vec::new();
    for c in 0..consumers {
        let (tx, rx) = mpsc::channel(CONSUMER_QUEUE);
        states[node_of_consumer(c)].consumers.insert(c, tx);
        queues.push(rx);
    }
    let mut pull_senders = HashMap::new();
    for p in 0..producers {
        for c in 0..consumers {
            if node_of_producer(p) > node_of_consumer(c) {
                // The consumer's node dialled: it pulls this channel.
                let (tx, rx) = mpsc::unbounded_channel();
                pull_senders.insert((p, c), tx);
                if let Ok(pulls) = states[node_of_producer(p)].pulls.get_mut() {
                    pulls.insert((p, c), rx);
                }
            }
        }
    }
    let states: Vec<Arc<NodeState>> = states.into_iter().map(Arc::new).collect();
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let ip = spec.node_ip(i as u32);
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .await
            .map_err(|e| format!("flight: listening on {ip}: {e}"))?;
        addrs.push(listener.local_addr().map_err(|e| format!("flight: {e}"))?);
        let service = FlightServiceServer::new(Exchange(state.clone()));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        servers.push(tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        }));
    }
    let mut connections: HashMap<(usize, usize), Channel> = HashMap::new();
    for a in 0..n {
        for (b, to) in addrs.iter().enumerate().skip(a + 1) {
            let channel = Dial::from_shared(format!("http://{to}"))
                .map_err(|e| format!("flight: node {b}'s address: {e}"))?
                .local_address(Some(IpAddr::V4(spec.node_ip(a as u32))))
                .connect()
                .await
                .map_err(|e| format!("flight: node {a} connecting to node {b}: {e}"))?;
            connections.insert((a, b), channel);
        }
    }
    let client = |a: usize, b: usize| -> Result<FlightClient, String> {
        connections
            .get(&(a.min(b), a.max(b)))
            .map(|channel| FlightClient::new(channel.clone()))
            .ok_or_else(|| format!("no connection between nodes {a} and {b}"))
    };
    // Consumers first: those on a dialling node ask for their pulled channels.
    let mut sources = Vec::new();
    for (c, queue) in queues.into_iter().enumerate() {
        let me = node_of_consumer(c);
        let to_me = states[me]
            .consumers
            .get(&c)
            .ok_or("no queue for a consumer")?;
        for p in (0..producers).filter(|&p| node_of_producer(p) > me) {
            let client = client(me, node_of_producer(p))?;
            tokio::spawn(pull(client, (p, c), to_me.clone()));
        }
        sources.push(Source(FanIn::new(queue, producers)));
    }
    let mut sinks = Vec::new();
    for p in 0..producers {
        let me = node_of_producer(p);
        let queued = Arc::new(AtomicU64::new(0));
        let mut channels = Vec::with_capacity(consumers);
        let mut calls = Vec::new();
        for c in 0..consumers {
            let there = node_of_consumer(c);
            let tx = if there == me {
                let (tx, rx) = mpsc::unbounded_channel();
                let queue = states[me]
                    .consumers
                    .get(&c)
                    .ok_or("no queue for a consumer")?;
                calls.push(tokio::spawn(forward_local(
                    rx,
                    queue.clone(),
                    queued.clone(),
                )));
                tx
            } else if me < there {
                let (tx, rx) = mpsc::unbounded_channel();
                let mut client = client(me, there)?;
                client
                    .add_header(CHANNEL_HEADER, &format!("{p}/{c}"))
                    .map_err(|e| e.to_string())?;
                calls.push(tokio::spawn(put(client, rx, queued.clone())));
                tx
            } else {
                pull_senders
                    .remove(&(p, c))
                    .ok_or("a pulled channel was opened twice")?
            };
            channels.push(tx);
        }
        sinks.push(Sink {
            channels,
            calls,
            queued,
        });
    }
    let generation = Generation { parts, consumers };
    // Pulled channels' senders left here would keep their streams open.
    drop(pull_senders);
    let result = drive(
        generation,
        sources,
        sinks,
        progress,
        spec.node_ips(),
        deadline,
    )
    .await;
    for server in servers {
        server.abort();
    }
    Ok(result)
}

/// Batches of `queue` as a stream, taking them off the producer's queued count as they go.
fn counted(
    queue: mpsc::UnboundedReceiver<RecordBatch>,
    queued: Arc<AtomicU64>,
) -> impl futures_util::Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static {
    UnboundedReceiverStream::new(queue).map(move |batch| {
        queued.fetch_sub(batch_bytes(&batch), Ordering::Relaxed);
        Ok(batch)
    })
}

/// Streams a channel's batches in a `do_put` until the producer ends it.
async fn put(
    mut client: FlightClient,
    queue: mpsc::UnboundedReceiver<RecordBatch>,
    queued: Arc<AtomicU64>,
) -> Result<(), String> {
    let data = FlightDataEncoderBuilder::new().build(counted(queue, queued));
    let mut results = client
        .do_put(data)
        .await
        .map_err(|e| format!("do_put: {e}"))?;
    while let Some(result) = results.next().await {
        result.map_err(|e| format!("do_put: {e}"))?;
    }
    Ok(())
}

/// Hands a channel within one node to its consumer's queue, then its end.
async fn forward_local(
    mut queue: mpsc::UnboundedReceiver<RecordBatch>,
    to: mpsc::Sender<Item<RecordBatch>>,
    queued: Arc<AtomicU64>,
) -> Result<(), String> {
    while let Some(batch) = queue.recv().await {
        queued.fetch_sub(batch_bytes(&batch), Ordering::Relaxed);
        if to.send(Item::Message(batch)).await.is_err() {
            return Ok(());
        }
    }
    let _ = to.send(Item::End).await;
    Ok(())
}

/// Asks for channel `key` with a `do_get` and hands its batches to the consumer's queue,
/// then its end or its failure.
async fn pull(mut client: FlightClient, key: ChannelKey, to: mpsc::Sender<Item<RecordBatch>>) {
    let ticket = Ticket::new(format!("{}/{}", key.0, key.1));
    let end = match client.do_get(ticket).await {
        Ok(stream) => forward(stream, &to).await,
        Err(e) => Err(e.to_string()),
    };
    let item = match end {
        Ok(()) => Item::End,
        Err(e) => Item::Failed(format!("do_get of channel {}/{}: {e}", key.0, key.1)),
    };
    let _ = to.send(item).await;
}

/// Hands every batch of `stream` to `to` until it ends or fails (or the consumer is gone).
async fn forward(
    mut stream: FlightRecordBatchStream,
    to: &mpsc::Sender<Item<RecordBatch>>,
) -> Result<(), String> {
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| e.to_string())?;
        if to.send(Item::Message(batch)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// A producer: an unbounded queue per consumer, drained by its stream.
struct Sink {
    channels: Vec<mpsc::UnboundedSender<RecordBatch>>,
    calls: Vec<JoinHandle<Result<(), String>>>,
    queued: Arc<AtomicU64>,
}

impl BatchSink for Sink {
    fn queue(&mut self, c: usize, batch: &RecordBatch) -> Result<(), String> {
        self.queued.fetch_add(batch_bytes(batch), Ordering::Relaxed);
        self.channels[c]
            .send(batch.clone())
            .map_err(|_| format!("the stream to consumer {c} ended early"))
    }

    fn push(&mut self) -> Result<usize, String> {
        // The streams take what they can by themselves.
        Ok(0)
    }

    async fn ready(&mut self) {
        std::future::pending::<()>().await;
    }

    fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed) as usize
    }

    async fn finish(self) -> Result<(), String> {
        drop(self.channels);
        for call in self.calls {
            call.await
                .map_err(|e| format!("a stream's task failed: {e}"))??;
        }
        Ok(())
    }
}

/// A consumer: its queue, fed by every stream of the job.
struct Source(FanIn<RecordBatch>);

impl BatchSource for Source {
    async fn next(&mut self) -> Option<Result<RecordBatch, String>> {
        self.0.next().await
    }
}

/// A node's Flight server: `do_put` and `do_get` of the shuffle's channels.
struct Exchange(Arc<NodeState>);

/// A parsed `producer/consumer` channel name.
fn channel_key(text: &str) -> Result<ChannelKey, Status> {
    let bad = || Status::invalid_argument(format!("not a channel: {text:?}"));
    let (p, c) = text.split_once('/').ok_or_else(bad)?;
    Ok((p.parse().map_err(|_| bad())?, c.parse().map_err(|_| bad())?))
}

type Boxed<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for Exchange {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;
    type DoExchangeStream = Boxed<FlightData>;

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let name = request
            .metadata()
            .get(CHANNEL_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::invalid_argument("no channel header"))?
            .to_string();
        let (p, c) = channel_key(&name)?;
        let to = self
            .0
            .consumers
            .get(&c)
            .ok_or_else(|| Status::not_found(format!("no consumer {c} here")))?
            .clone();
        let data = request.into_inner().map_err(FlightError::from);
        let stream = FlightRecordBatchStream::new_from_flight_data(data);
        let end = forward(stream, &to).await;
        let item = match &end {
            Ok(()) => Item::End,
            Err(e) => Item::Failed(format!("do_put of channel {p}/{c}: {e}")),
        };
        let _ = to.send(item).await;
        end.map_err(Status::aborted)?;
        Ok(Response::new(futures_util::stream::empty().boxed()))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let name = String::from_utf8_lossy(&request.get_ref().ticket).to_string();
        let key = channel_key(&name)?;
        let queue = self
            .0
            .pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
            .ok_or_else(|| Status::not_found(format!("no channel {name} to pull")))?;
        let batches = UnboundedReceiverStream::new(queue).map(Ok);
        let data = FlightDataEncoderBuilder::new()
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(data.boxed()))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("handshake"))
    }

    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("list_flights"))
    }

    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("get_flight_info"))
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info"))
    }

    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema"))
    }

    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }

    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("do_action"))
    }

    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented("list_actions"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_two_numbers() {
        assert_eq!(channel_key("3/14").expect("valid"), (3, 14));
        assert!(channel_key("3").is_err());
        assert!(channel_key("a/1").is_err());
    }
}
