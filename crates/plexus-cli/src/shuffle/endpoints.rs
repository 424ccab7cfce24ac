//! The shuffle's producers and consumers, the same over every system: a producer's
//! thread partitions each batch of its part of `lineitem` (generated beforehand, in
//! memory) by consumer;
//! its task queues the partitions on the system's sink, pushing whatever the consumers
//! can take as it goes; a consumer's task reads batches from the system's source and adds
//! them to its part of Q1.
//!
//! Invariants: a producer counts what it owes each consumer before it queues it, and says
//! it has generated everything only after its last batch was queued; a stalled consumer
//! reads nothing before the release; a consumer that fails says so, so the stalled ones
//! are still released; every task ends by itself once its system ends its streams.

use std::future::Future;
use std::sync::Arc;

use arrow_array::RecordBatch;
use tokio::sync::mpsc;

use super::data;
use super::progress::Progress;
use super::q1::Q1;

/// Where a producer's batches go, per consumer index.
pub trait BatchSink: Send + 'static {
    /// Queues `batch` for consumer `c`, behind what is queued for it.
    fn queue(&mut self, c: usize, batch: &RecordBatch) -> Result<(), String>;
    /// Hands over what the consumers can take now; how many still have some queued.
    fn push(&mut self) -> Result<usize, String>;
    /// Waits until a consumer that could not take more might.
    fn ready(&mut self) -> impl Future<Output = ()> + Send;
    /// Bytes queued and not yet handed over.
    fn queued_bytes(&self) -> usize;
    /// Hands over everything queued and ends the producer's streams.
    fn finish(self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Where a consumer's batches come from.
pub trait BatchSource: Send + 'static {
    /// The next batch, an error, or `None` once every producer's stream ended.
    fn next(&mut self) -> impl Future<Output = Option<Result<RecordBatch, String>>> + Send;
}

/// What a run's data is: every producer's part, and how many consumers share it.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Per producer, the batches of its part.
    pub parts: Arc<Vec<Arc<Vec<RecordBatch>>>>,
    /// Consumers in all: the partitions of every batch.
    pub consumers: usize,
}

/// Starts the thread that partitions part `part`; its batches arrive on the returned queue
/// (a few at a time: the thread waits while they are not taken).
pub fn generate(
    generation: &Generation,
    part: usize,
) -> mpsc::Receiver<Result<Vec<(usize, RecordBatch)>, String>> {
    let (tx, rx) = mpsc::channel(2);
    let batches = generation.parts.get(part).cloned().unwrap_or_default();
    let consumers = generation.consumers;
    let spawned = std::thread::Builder::new()
        .name(format!("partition-{part}"))
        .spawn(move || {
            for batch in batches.iter() {
                let parts = data::partition(batch, consumers);
                let failed = parts.is_err();
                if tx.blocking_send(parts).is_err() || failed {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        // The producer sees its queue end at once, with this error first.
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Err(format!("cannot start the partitioning thread: {e}")));
        return rx;
    }
    rx
}

/// A producer: queues every partition its generator makes, pushing as consumers take
/// them, then finishes its sink.
pub async fn produce<S: BatchSink>(
    mut sink: S,
    mut batches: mpsc::Receiver<Result<Vec<(usize, RecordBatch)>, String>>,
    progress: Arc<Progress>,
) -> Result<(), String> {
    let mut waiting = 0;
    loop {
        tokio::select! {
            next = batches.recv() => match next {
                Some(parts) => {
                    for (c, batch) in parts? {
                        progress.owed(c, batch.num_rows() as u64);
                        sink.queue(c, &batch)?;
                    }
                    progress.queued(sink.queued_bytes() as u64);
                    waiting = sink.push()?;
                }
                None => break,
            },
            () = sink.ready(), if waiting > 0 => waiting = sink.push()?,
        }
    }
    progress.generated();
    sink.finish().await
}

/// What a consumer got.
#[derive(Debug, Default)]
pub struct Consumed {
    /// Its part of Q1.
    pub q1: Q1,
    /// Rows received.
    pub rows: u64,
    /// Bytes of Arrow data received (the rows' buffers).
    pub bytes: u64,
    /// Its first error.
    pub error: Option<String>,
}

/// Consumer `c`: reads (after the release, if it stalls) every batch and adds it to its
/// part of Q1.
pub async fn consume<R: BatchSource>(mut source: R, c: usize, progress: Arc<Progress>) -> Consumed {
    if progress.is_stalled(c) {
        progress.released().await;
    }
    let mut consumed = Consumed::default();
    while let Some(batch) = source.next().await {
        let added = batch.and_then(|b| {
            consumed.q1.add(&b)?;
            Ok(b)
        });
        match added {
            Ok(batch) => {
                consumed.rows += batch.num_rows() as u64;
                consumed.bytes += data::batch_bytes(&batch);
                progress.got(c, batch.num_rows() as u64);
            }
            Err(e) => {
                consumed.error = Some(format!("consumer {c}: {e}"));
                progress.failed(c);
                break;
            }
        }
    }
    consumed
}
