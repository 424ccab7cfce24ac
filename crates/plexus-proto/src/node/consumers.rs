//! The consumers open on a node, and the totals over them that the memory budget reads:
//! credit granted and not back, and bytes received and not yet read.
//!
//! Invariants, kept by [`ConsumerTable`] whatever the caller does:
//! - `granted` = Σ over consumers of `pool.outstanding()`;
//! - `unread` = Σ over consumers of [`Consumer::unread`] (queued plus taken);
//! - a consumer's pool, queue and taken bytes change only inside [`ConsumerTable::change`],
//!   which adjusts both totals by the consumer's own change; inserting or removing a
//!   consumer adds or subtracts its share.
//!
//! And per consumer: `queued` = Σ cost of the arrivals in `queue` (a batch's cost shrinks
//! as its messages are read); `unread ≤ pool.outstanding()`, since every byte received was
//! granted first.

use std::collections::VecDeque;

use bytes::Bytes;

use super::consumer::Arrival;
use super::state::{InKey, LocalKey};
use super::table::JobTable;
use crate::credit::{message_cost, CreditPool};
use crate::ids::{Endpoint, JobId};
use crate::map::Set;
use crate::node::error::ExchangeError;

/// A consumer on this node.
#[derive(Debug)]
pub(crate) struct Consumer {
    pub pool: CreditPool<InKey>,
    /// Messages received and not yet taken, in arrival order.
    queue: VecDeque<(Endpoint, Arrival)>,
    /// Credit of the arrivals in `queue`.
    queued: u64,
    /// Credit of the messages the application took in bulk and has not finished reading.
    taken: u64,
    /// The job's producers, sorted (a set without a hash table's slack).
    pub expected: Vec<Endpoint>,
    /// Producers whose channel has not ended yet.
    pub remaining: Set<Endpoint>,
    /// Errors to report once the messages already received have been read.
    pub errors: VecDeque<ExchangeError>,
    /// Incoming channels attached to this consumer.
    pub channels: Set<InKey>,
    /// Producers that ever attached a channel: a second channel from one is refused.
    pub attached_from: Set<Endpoint>,
}

impl Consumer {
    /// A consumer with `pool`, expecting `expected` (sorted, without duplicates).
    pub fn new(pool: CreditPool<InKey>, expected: Vec<Endpoint>) -> Self {
        Self {
            pool,
            queue: VecDeque::new(),
            queued: 0,
            taken: 0,
            remaining: expected.iter().copied().collect(),
            expected,
            errors: VecDeque::new(),
            channels: Set::default(),
            attached_from: Set::default(),
        }
    }

    /// Bytes received and not read yet: queued, or taken and not finished.
    pub fn unread(&self) -> u64 {
        self.queued + self.taken
    }

    /// Whether nothing waits in the queue.
    pub fn queue_is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues messages that arrived from `from`.
    pub fn push(&mut self, from: Endpoint, arrival: Arrival) {
        self.queued += arrival.cost();
        self.queue.push_back((from, arrival));
    }

    /// The next message, read now: its credit goes back to the pool.
    pub fn read_one(&mut self) -> Option<(Endpoint, Bytes)> {
        let (from, arrival) = self.queue.pop_front()?;
        let payload = match arrival {
            Arrival::Message(m) => m,
            Arrival::Batch(mut batch) => {
                // A batch holds at least one message until it is emptied here.
                let m = batch.pop_front().unwrap_or_default();
                if !batch.is_empty() {
                    self.queue.push_front((from, Arrival::Batch(batch)));
                }
                m
            }
        };
        let cost = message_cost(payload.len());
        self.queued -= cost;
        self.pool.release(cost);
        Some((from, payload))
    }

    /// Moves whole arrivals into `out` until their credit reaches `max_cost` (at least one
    /// when there is any); their credit stays out until [`Consumer::finished_reading`].
    pub fn take(&mut self, max_cost: u64, out: &mut VecDeque<(Endpoint, Arrival)>) -> usize {
        let mut cost = 0;
        let mut moved = 0;
        while cost < max_cost {
            let Some((from, arrival)) = self.queue.pop_front() else {
                break;
            };
            cost += arrival.cost();
            moved += 1;
            out.push_back((from, arrival));
        }
        self.queued -= cost;
        self.taken += cost;
        moved
    }

    /// The application read everything it took: its credit goes back to the pool.
    /// Returns how much.
    pub fn finished_reading(&mut self) -> u64 {
        let taken = std::mem::take(&mut self.taken);
        self.pool.release(taken);
        taken
    }

    /// Drops everything received and not read (the consumer failed): its credit goes
    /// back to the pool.
    pub fn discard_unread(&mut self) {
        self.queue.clear();
        let unread = std::mem::take(&mut self.queued) + std::mem::take(&mut self.taken);
        self.pool.release(unread);
    }
}

/// The consumers, by job and slot, with the totals the budget reads.
#[derive(Debug)]
pub(crate) struct ConsumerTable {
    rows: JobTable<LocalKey, Consumer>,
    /// Credit granted by all consumers and not yet back.
    granted: u64,
    /// Bytes received by all consumers and not yet read.
    unread: u64,
}

impl ConsumerTable {
    pub fn new() -> Self {
        Self {
            rows: JobTable::new(|key, _| key.0),
            granted: 0,
            unread: 0,
        }
    }

    pub fn insert(&mut self, key: LocalKey, consumer: Consumer) {
        self.granted += consumer.pool.outstanding();
        self.unread += consumer.unread();
        if let Some(old) = self.rows.remove(&key) {
            self.granted -= old.pool.outstanding();
            self.unread -= old.unread();
        }
        self.rows.insert(key, consumer);
    }

    pub fn remove(&mut self, key: &LocalKey) -> Option<Consumer> {
        let consumer = self.rows.remove(key)?;
        self.granted -= consumer.pool.outstanding();
        self.unread -= consumer.unread();
        Some(consumer)
    }

    /// Runs `f` on consumer `key`, keeping the totals up to date with what it changed.
    pub fn change<R>(&mut self, key: &LocalKey, f: impl FnOnce(&mut Consumer) -> R) -> Option<R> {
        let c = self.rows.get_mut(key)?;
        let (granted, unread) = (c.pool.outstanding(), c.unread());
        let result = f(c);
        self.granted = self.granted + c.pool.outstanding() - granted;
        self.unread = self.unread + c.unread() - unread;
        Some(result)
    }

    pub fn get(&self, key: &LocalKey) -> Option<&Consumer> {
        self.rows.get(key)
    }

    pub fn contains_key(&self, key: &LocalKey) -> bool {
        self.rows.contains_key(key)
    }

    /// Consumers of `job`.
    pub fn count(&self, job: JobId) -> usize {
        self.rows.count(job)
    }

    /// The consumers of `job` (a scan: for rare events only).
    pub fn keys_of(&self, job: JobId) -> Vec<LocalKey> {
        self.rows.keys_of(job)
    }

    pub fn values(&self) -> impl Iterator<Item = &Consumer> {
        self.rows.values()
    }

    /// Credit granted by all consumers and not yet back.
    pub fn granted(&self) -> u64 {
        self.granted
    }

    /// Bytes received by all consumers and not yet read.
    pub fn unread(&self) -> u64 {
        self.unread
    }
}
