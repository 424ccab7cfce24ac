//! The shuffle over plexus: n nodes in this process, node i on its own loopback address,
//! one job whose producers send Arrow batches with [`plexus_arrow::BatchSender`] and whose
//! consumers read them with [`plexus_arrow::BatchReceiver`].
//!
//! Invariants: every node runs with the same configuration (messages of at most
//! [`MAX_MESSAGE`]; the default credit pool); consumer index c is slot c mod m of node
//! c div m, and producer index p slot p mod m of node p div m; the nodes shut down when
//! the run ends.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use plexus::{Config, Endpoint, JobId, Membership, Node, NodeId, Topology};
use plexus_arrow::{BatchReceiver, BatchSender};

use super::drive::{drive, RunResult};
use super::endpoints::{BatchSink, BatchSource, Generation};
use super::progress::Progress;
use super::Spec;

/// The largest message, as the nodes are configured.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Runs the shuffle of `spec` over plexus.
pub async fn run(
    spec: &Spec,
    schema: SchemaRef,
    parts: Arc<Vec<Arc<Vec<RecordBatch>>>>,
    progress: Arc<Progress>,
) -> Result<RunResult, String> {
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let secret = plexus::generate_secret().map_err(|e| format!("a cluster secret: {e}"))?;
    let membership = Membership::new();
    let mut nodes = Vec::new();
    for i in 0..spec.nodes {
        let mut config = Config::new(NodeId(i), 0x5_0ff1e, secret.clone());
        config.max_message = MAX_MESSAGE as u32;
        let addr = SocketAddr::new(IpAddr::V4(spec.node_ip(i)), 0);
        let node = Node::builder()
            .config(config)
            .listen(addr)
            .membership(membership.clone())
            .start()
            .await
            .map_err(|e| format!("starting node {i}: {e}"))?;
        nodes.push(node);
    }
    let ids: Vec<NodeId> = (0..spec.nodes).map(NodeId).collect();
    let topology = Topology::all_to_all(&ids, spec.producers, spec.consumers);
    let jobs: Vec<_> = nodes
        .iter()
        .map(|n| n.job(JobId(1), topology.clone()))
        .collect();
    let to: Vec<Endpoint> = (0..spec.consumers_total())
        .map(|c| spec.consumer(c))
        .collect();
    let mut sources = Vec::new();
    for &c in &to {
        let consumer = jobs[c.node.0 as usize]
            .consumer(c.slot)
            .await
            .map_err(|e| format!("opening consumer {c}: {e}"))?;
        sources.push(Source(BatchReceiver::new(consumer)));
    }
    let mut sinks = Vec::new();
    for p in 0..spec.producers_total() {
        let me = spec.producer(p);
        let producer = jobs[me.node.0 as usize]
            .producer(me.slot)
            .await
            .map_err(|e| format!("opening producer {me}: {e}"))?;
        let tx = BatchSender::new(producer, schema.clone(), MAX_MESSAGE);
        sinks.push(Sink { tx, to: to.clone() });
    }
    let generation = Generation {
        parts,
        consumers: to.len(),
    };
    let result = drive(
        generation,
        sources,
        sinks,
        progress,
        spec.node_ips(),
        deadline,
    )
    .await;
    // Every endpoint is gone: the job is over on every node before the nodes go.
    drop(jobs);
    for node in nodes {
        node.shutdown().await;
    }
    Ok(result)
}

/// A producer's batches, through its [`BatchSender`].
struct Sink {
    tx: BatchSender,
    to: Vec<Endpoint>,
}

impl BatchSink for Sink {
    fn queue(&mut self, c: usize, batch: &RecordBatch) -> Result<(), String> {
        self.tx.queue(self.to[c], batch).map_err(|e| e.to_string())
    }

    fn push(&mut self) -> Result<usize, String> {
        self.tx.push().map_err(|e| e.to_string())
    }

    async fn ready(&mut self) {
        self.tx.ready().await;
    }

    fn queued_bytes(&self) -> usize {
        self.tx.queued_bytes()
    }

    async fn finish(self) -> Result<(), String> {
        self.tx.finish().await.map_err(|e| e.to_string())
    }
}

/// A consumer's batches, from its [`BatchReceiver`].
struct Source(BatchReceiver);

impl BatchSource for Source {
    async fn next(&mut self) -> Option<Result<RecordBatch, String>> {
        let item = self.0.recv().await?;
        Some(item.map(|(_, batch)| batch).map_err(|e| e.to_string()))
    }
}
