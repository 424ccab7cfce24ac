//! The consumers open on a node, and the totals over them that the memory budget reads:
//! credit granted and not back, and bytes received and not yet read.
//!
//! A consumer keeps what it received in one queue per producer, with each arrival's
//! number, so the application can read every producer interleaved in arrival order
//! (`recv`), or only some producers (a merge reads the next message of a chosen producer;
//! a hash join reads its build side before its probe side). What it reads decides which
//! channels are *wanted*, and so how its credit pool grants (see `credit`): the channels
//! it does not read may read ahead only in the room above the pool's reserve.
//!
//! Invariants, kept by [`ConsumerTable`] whatever the caller does:
//! - `granted` = Σ over consumers of `pool.outstanding()`;
//! - `unread` = Σ over consumers of [`Consumer::unread`] (queued plus taken);
//! - a consumer's pool, queues and taken bytes change only inside
//!   [`ConsumerTable::change`], which adjusts both totals by the consumer's own change;
//!   inserting or removing a consumer adds or subtracts its share.
//!
//! And per consumer: `queued` = Σ cost of the arrivals in `queues` (a batch's cost shrinks
//! as its messages are read); `heads` holds exactly the first arrival of each non-empty
//! queue (a producer's queue stays once it exists, empty or not, so an arrival does not
//! allocate one); arrival numbers increase along each queue;
//! `unread ≤ pool.outstanding()`, since every byte received was granted first.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;

use super::consumer::Arrival;
use super::state::{InKey, LocalKey};
use super::table::JobTable;
use crate::credit::{message_cost, CreditPool};
use crate::ids::{Endpoint, JobId};
use crate::map::{Map, Set};
use crate::node::error::ExchangeError;

/// Which producers the application reads now: whose channels its pool serves in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// It has not read yet.
    Nothing,
    /// Every producer, interleaved (`recv`).
    All,
    /// These producers only (sorted).
    Only(Vec<Endpoint>),
}

impl Wanted {
    /// What a read of the producers `among` (all: `None`) wants.
    pub fn of(among: Option<&[Endpoint]>) -> Self {
        match among {
            None => Wanted::All,
            Some(producers) => {
                let mut set = producers.to_vec();
                set.sort_unstable();
                set.dedup();
                Wanted::Only(set)
            }
        }
    }

    /// Whether this is what a read of `among` wants (compared without building it: a
    /// reader that keeps its choice pays nothing per read).
    pub fn is(&self, among: Option<&[Endpoint]>) -> bool {
        match (self, among) {
            (Wanted::All, None) => true,
            (Wanted::Only(set), Some(producers)) => {
                producers.iter().all(|p| set.binary_search(p).is_ok())
                    && set.iter().all(|p| producers.contains(p))
            }
            _ => false,
        }
    }

    /// Whether `producer` is read now.
    pub fn contains(&self, producer: &Endpoint) -> bool {
        match self {
            Wanted::Nothing => false,
            Wanted::All => true,
            Wanted::Only(set) => set.binary_search(producer).is_ok(),
        }
    }

    /// Whether, for a consumer that reads this and `waiting` (its last read found
    /// nothing), the channel from `producer` may be granted its need from all the pool's
    /// room, reserve included. A consumer reading everything reads every channel in turn,
    /// so all may. A consumer reading some producers grants the reserve only to those,
    /// and only while it waits for them: the reserve then goes to the message it waits
    /// for, which it reads next, so the reserve comes back before it turns to other
    /// producers (granting a read producer ahead from the reserve could leave the next
    /// producer it reads no room).
    pub fn may_use_reserve(&self, waiting: bool, producer: &Endpoint) -> bool {
        match self {
            Wanted::All => true,
            Wanted::Only(_) => waiting && self.contains(producer),
            Wanted::Nothing => false,
        }
    }
}

/// Arrival numbers of arrivals handed back by the application start here and go down;
/// new arrivals are numbered from here up, so handed-back ones come first.
const FIRST_ARRIVAL: u64 = 1 << 62;

/// A consumer on this node.
#[derive(Debug)]
pub(crate) struct Consumer {
    pub pool: CreditPool<InKey>,
    /// Per producer that sent, what it sent and the application has not taken: arrival
    /// number and messages, oldest first. Bounded by the job's producers.
    queues: Map<Endpoint, VecDeque<(u64, Arrival)>>,
    /// The first arrival of each producer's queue, by arrival number.
    heads: BTreeSet<(u64, Endpoint)>,
    /// The next arrival's number.
    next_arrival: u64,
    /// The number for the next arrival handed back (see [`Consumer::give_back`]).
    next_returned: u64,
    /// Credit of the arrivals in `queues`.
    queued: u64,
    /// Credit of the messages the application took in bulk and has not finished reading.
    taken: u64,
    /// What the application reads now.
    pub wanted: Wanted,
    /// Its last read found nothing of what it reads: it waits. Only then may the channels
    /// it reads (when it reads some, not all) take the pool's reserve (see
    /// [`Wanted::may_use_reserve`]).
    pub waiting: bool,
    /// The job's producers, sorted (a set without a hash table's slack).
    pub expected: Vec<Endpoint>,
    /// Producers whose channel has not ended yet.
    pub remaining: Set<Endpoint>,
    /// Errors to report once the messages already received have been read.
    pub errors: VecDeque<ExchangeError>,
    /// Incoming channels attached to this consumer, with their producer.
    pub channels: Map<InKey, Endpoint>,
    /// Producers that ever attached a channel: a second channel from one is refused.
    pub attached_from: Set<Endpoint>,
}

impl Consumer {
    /// A consumer with `pool`, expecting `expected` (sorted, without duplicates).
    pub fn new(pool: CreditPool<InKey>, expected: Vec<Endpoint>) -> Self {
        Self {
            pool,
            queues: Map::default(),
            heads: BTreeSet::new(),
            next_arrival: FIRST_ARRIVAL,
            next_returned: FIRST_ARRIVAL - 1,
            queued: 0,
            taken: 0,
            wanted: Wanted::Nothing,
            waiting: false,
            remaining: expected.iter().copied().collect(),
            expected,
            errors: VecDeque::new(),
            channels: Map::default(),
            attached_from: Set::default(),
        }
    }

    /// Bytes received and not read yet: queued, or taken and not finished.
    pub fn unread(&self) -> u64 {
        self.queued + self.taken
    }

    /// Whether something of `producer` waits.
    pub fn has_queued_from(&self, producer: &Endpoint) -> bool {
        self.queues.get(producer).is_some_and(|q| !q.is_empty())
    }

    /// Queues messages that arrived from `from`. Returns whether a reader waiting for what
    /// it reads now should be woken: the first message it can take arrived.
    pub fn push(&mut self, from: Endpoint, arrival: Arrival) -> bool {
        let wake = match &self.wanted {
            Wanted::All | Wanted::Nothing => self.heads.is_empty(),
            Wanted::Only(_) => self.wanted.contains(&from) && !self.has_queued_from(&from),
        };
        self.queued += arrival.cost();
        let number = self.next_arrival;
        self.next_arrival += 1;
        let queue = self.queues.entry(from).or_default();
        if queue.is_empty() {
            self.heads.insert((number, from));
        }
        queue.push_back((number, arrival));
        wake
    }

    /// Puts back arrivals the application took and did not read, at the front of their
    /// producers' queues, in their order: their credit counts as queued again.
    pub fn give_back(&mut self, arrivals: &mut VecDeque<(Endpoint, Arrival)>) {
        while let Some((from, arrival)) = arrivals.pop_back() {
            let cost = arrival.cost();
            self.taken -= cost.min(self.taken);
            self.queued += cost;
            let number = self.next_returned;
            self.next_returned -= 1;
            let queue = self.queues.entry(from).or_default();
            if let Some(&(old, _)) = queue.front() {
                self.heads.remove(&(old, from));
            }
            self.heads.insert((number, from));
            queue.push_front((number, arrival));
        }
    }

    /// The producer whose first arrival is the oldest, among `among` (all: `None`).
    fn oldest_head(&self, among: Option<&[Endpoint]>) -> Option<Endpoint> {
        match among {
            None => self.heads.first().map(|&(_, from)| from),
            Some(producers) => producers
                .iter()
                .filter_map(|p| {
                    self.queues
                        .get(p)
                        .and_then(|q| q.front())
                        .map(|(n, _)| (*n, *p))
                })
                .min()
                .map(|(_, p)| p),
        }
    }

    /// Takes the first arrival of `from`'s queue.
    fn pop_arrival(&mut self, from: Endpoint) -> Option<Arrival> {
        let queue = self.queues.get_mut(&from)?;
        let (number, arrival) = queue.pop_front()?;
        self.heads.remove(&(number, from));
        if let Some(&(next, _)) = queue.front() {
            self.heads.insert((next, from));
        }
        self.queued -= arrival.cost();
        Some(arrival)
    }

    /// The next message, read now, of the producers `among` (all: `None`), the oldest
    /// first: its credit goes back to the pool.
    pub fn read_one(&mut self, among: Option<&[Endpoint]>) -> Option<(Endpoint, Bytes)> {
        let from = self.oldest_head(among)?;
        let (_, front) = self.queues.get_mut(&from)?.front_mut()?;
        let payload = if let Arrival::Batch(batch) = front {
            // A batch holds at least one message until it is emptied here.
            let m = batch.pop_front().unwrap_or_default();
            let emptied = batch.is_empty();
            self.queued -= message_cost(m.len());
            if emptied {
                self.pop_arrival(from);
            }
            m
        } else {
            match self.pop_arrival(from) {
                Some(Arrival::Message(m)) => m,
                _ => return None,
            }
        };
        self.pool.release(message_cost(payload.len()));
        Some((from, payload))
    }

    /// Moves whole arrivals, oldest first over all producers, into `out` until their
    /// credit reaches `max_cost` (at least one when there is any); their credit stays out
    /// until [`Consumer::finished_reading`].
    pub fn take(&mut self, max_cost: u64, out: &mut VecDeque<(Endpoint, Arrival)>) -> usize {
        let mut cost = 0;
        let mut moved = 0;
        while cost < max_cost {
            let Some(from) = self.oldest_head(None) else {
                break;
            };
            let Some(arrival) = self.pop_arrival(from) else {
                break;
            };
            cost += arrival.cost();
            moved += 1;
            out.push_back((from, arrival));
        }
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
        self.queues.clear();
        self.heads.clear();
        let unread = std::mem::take(&mut self.queued) + std::mem::take(&mut self.taken);
        self.pool.release(unread);
    }

    /// Whether every producer among `among` (all: `None`) ended and nothing of theirs
    /// waits.
    pub fn ended(&self, among: Option<&[Endpoint]>) -> bool {
        match among {
            None => self.remaining.is_empty() && self.heads.is_empty(),
            Some(producers) => producers
                .iter()
                .all(|p| !self.remaining.contains(p) && !self.has_queued_from(p)),
        }
    }

    /// The first error that concerns the producers `among` (all: `None`), taken.
    pub fn take_error(&mut self, among: Option<&[Endpoint]>) -> Option<ExchangeError> {
        let at = match among {
            None => 0,
            Some(producers) => self
                .errors
                .iter()
                .position(|e| producers.iter().any(|p| e.concerns(*p)))?,
        };
        self.errors.remove(at)
    }
}

impl Consumer {
    /// Checks the consumer's own invariants (see the module docs).
    pub fn check(&self) -> Result<(), String> {
        let mut queued = 0;
        let mut heads = BTreeSet::new();
        for (from, queue) in &self.queues {
            if !self.expected.contains(from) {
                return Err(format!("a queue for {from:?}, not a producer of the job"));
            }
            if let Some(&(first, _)) = queue.front() {
                heads.insert((first, *from));
            }
            if queue
                .iter()
                .zip(queue.iter().skip(1))
                .any(|(a, b)| a.0 >= b.0)
            {
                return Err(format!("arrival numbers out of order for {from:?}"));
            }
            queued += queue.iter().map(|(_, a)| a.cost()).sum::<u64>();
        }
        if heads != self.heads {
            return Err("the heads do not match the queues".into());
        }
        if queued != self.queued {
            return Err(format!(
                "{} bytes queued, but the queues hold {queued}",
                self.queued
            ));
        }
        if self.unread() > self.pool.outstanding() {
            return Err(format!(
                "{} bytes unread but only {} granted",
                self.unread(),
                self.pool.outstanding()
            ));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ids::NodeId;

    /// What a test does to a consumer.
    #[derive(Clone, Debug)]
    enum Op {
        /// A producer's message (or batch of that many) arrives.
        Arrive { from: u32, count: usize },
        /// Read one message of these producers (all: empty).
        Read { among: Vec<u32> },
        /// Take whole arrivals in bulk, then hand back what was not read.
        TakeAndGiveBack { max_cost: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..3, 1usize..4).prop_map(|(from, count)| Op::Arrive { from, count }),
            proptest::collection::vec(0u32..3, 0..3).prop_map(|among| Op::Read { among }),
            (1u64..200).prop_map(|max_cost| Op::TakeAndGiveBack { max_cost }),
        ]
    }

    fn producer(i: u32) -> Endpoint {
        Endpoint::new(NodeId(i), 0)
    }

    #[test]
    fn a_choice_of_producers_is_recognised_whatever_its_order() {
        let (a, b, c) = (producer(0), producer(1), producer(2));
        let wanted = Wanted::of(Some(&[b, a, b]));
        assert!(wanted.is(Some(&[a, b])));
        assert!(wanted.is(Some(&[b, a, a])));
        assert!(!wanted.is(Some(&[a])));
        assert!(!wanted.is(Some(&[a, b, c])));
        assert!(!wanted.is(None));
        assert!(Wanted::of(None).is(None));
        assert!(!Wanted::Nothing.is(None));
    }

    proptest! {
        /// Whatever the mix of interleaved, selective and bulk reads: each producer's
        /// messages come out once each, in the order sent; an interleaved read takes the
        /// oldest message of all; the books balance after every step.
        #[test]
        fn every_producer_stays_in_order_and_the_books_balance(ops in proptest::collection::vec(op(), 1..80)) {
            let mut c = Consumer::new(CreditPool::new(1 << 30, 64, 1 << 30), (0..3).map(producer).collect());
            let mut sent = [0u32; 3];
            let mut read = [0u32; 3];
            for op in ops {
                match op {
                    Op::Arrive { from, count } => {
                        let mut batch = crate::batch::BatchBuilder::default();
                        batch.start(crate::batch::BATCH_BODY_MAX);
                        for _ in 0..count {
                            batch.push(&Bytes::from(sent[from as usize].to_le_bytes().to_vec()));
                            sent[from as usize] += 1;
                        }
                        let arrival = Arrival::Batch(batch.finish());
                        c.pool.request((NodeId(from), crate::ids::WireChannel(0)), 0, 1 << 20).ok();
                        let mut grants = Vec::new();
                        c.pool.poll_grants(&mut grants);
                        c.pool.forget((NodeId(from), crate::ids::WireChannel(0)));
                        c.push(producer(from), arrival);
                    }
                    Op::Read { among } => {
                        let among: Vec<Endpoint> = among.into_iter().map(producer).collect();
                        let oldest = c.heads.first().map(|&(_, p)| p);
                        let got = c.read_one(if among.is_empty() { None } else { Some(&among) });
                        if let Some((from, m)) = got {
                            if among.is_empty() {
                                prop_assert_eq!(Some(from), oldest);
                            } else {
                                prop_assert!(among.contains(&from));
                            }
                            let n = u32::from_le_bytes(m[..4].try_into().unwrap());
                            prop_assert_eq!(n, read[from.node.0 as usize], "out of order");
                            read[from.node.0 as usize] += 1;
                        } else if among.is_empty() {
                            prop_assert!(c.heads.is_empty());
                        }
                    }
                    Op::TakeAndGiveBack { max_cost } => {
                        let mut taken = VecDeque::new();
                        c.take(max_cost, &mut taken);
                        c.give_back(&mut taken);
                        prop_assert_eq!(c.taken, 0);
                    }
                }
                c.check().map_err(TestCaseError::fail)?;
            }
        }
    }
}
