//! Runs one shuffle over one system: its consumers and producers as tasks (producers'
//! generators as threads), the nodes' links sampled from the OS meanwhile, everything
//! bounded by a deadline; then adds up what the consumers got.
//!
//! Invariants: every consumer's task starts before any producer's; at the deadline the
//! tasks still running are aborted and the run is marked timed out, with what was gathered
//! so far; the result's Q1 is the merge of every consumer's part.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use super::endpoints::{self, BatchSink, BatchSource, Consumed, Generation};
use super::progress::Progress;
use super::q1::Q1;

/// How a run over one system went, before it is judged.
#[derive(Debug, Default)]
pub struct RunResult {
    /// From the first producer's start to the last consumer's end.
    pub elapsed_s: f64,
    /// Until the last non-stalled consumer had everything, with stalled consumers.
    pub healthy_elapsed_s: Option<f64>,
    /// Rows the consumers got.
    pub rows_total: u64,
    /// Rows the non-stalled consumers got.
    pub healthy_rows: u64,
    /// Bytes of Arrow data the consumers got.
    pub bytes_total: u64,
    /// Every consumer's part, merged.
    pub q1: Q1,
    /// Most established connections any node's address held.
    pub links_per_node_max: usize,
    /// Most bytes a producer held queued for its consumers.
    pub queued_bytes_max: u64,
    /// What went wrong.
    pub errors: Vec<String>,
    /// The deadline passed first.
    pub timed_out: bool,
}

/// Runs `sources` (by consumer index) and `sinks` (by producer index, each generating
/// that part of the data) until every one ended, or `deadline`.
pub async fn drive<S: BatchSink, R: BatchSource>(
    generation: Generation,
    sources: Vec<R>,
    sinks: Vec<S>,
    progress: Arc<Progress>,
    ips: Vec<Ipv4Addr>,
    deadline: tokio::time::Instant,
) -> RunResult {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampler = {
        let progress = progress.clone();
        tokio::spawn(async move { progress.sample_links(ips, stopped).await })
    };
    let start = Instant::now();
    let mut consumers = JoinSet::new();
    for (c, source) in sources.into_iter().enumerate() {
        let progress = progress.clone();
        consumers.spawn(async move { (c, endpoints::consume(source, c, progress).await) });
    }
    let mut producers = JoinSet::new();
    for (part, sink) in sinks.into_iter().enumerate() {
        let batches = endpoints::generate(&generation, part);
        let progress = progress.clone();
        producers.spawn(async move { (part, endpoints::produce(sink, batches, progress).await) });
    }
    let mut result = RunResult::default();
    let mut consumed: Vec<(usize, Consumed)> = Vec::new();
    let gathered = tokio::time::timeout_at(deadline, async {
        while let Some(joined) = producers.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((part, Err(e))) => result.errors.push(format!("producer {part}: {e}")),
                Err(e) => result.errors.push(format!("a producer's task failed: {e}")),
            }
        }
        while let Some(joined) = consumers.join_next().await {
            match joined {
                Ok(done) => consumed.push(done),
                Err(e) => result.errors.push(format!("a consumer's task failed: {e}")),
            }
        }
    })
    .await;
    if gathered.is_err() {
        result.timed_out = true;
        result
            .errors
            .push("timed out before every producer and consumer ended".into());
        producers.abort_all();
        consumers.abort_all();
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    result.healthy_elapsed_s = progress
        .healthy_done_at()
        .map(|at| at.saturating_duration_since(start).as_secs_f64());
    let _ = stop.send(true);
    let _ = sampler.await;
    result.links_per_node_max = progress.links_max();
    result.queued_bytes_max = progress.queued_max();
    for (c, part) in &consumed {
        result.rows_total += part.rows;
        result.bytes_total += part.bytes;
        if !progress.is_stalled(*c) {
            result.healthy_rows += part.rows;
        }
        result.q1.merge(&part.q1);
        if let Some(e) = &part.error {
            result.errors.push(e.clone());
        }
    }
    result
}
