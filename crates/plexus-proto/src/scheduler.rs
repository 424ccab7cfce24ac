//! Fair sharing of one link among the channels that have data ready to send.
//!
//! Deficit round robin by bytes: each ready channel, when its turn comes, earns `quantum`
//! bytes of deficit and sends messages while its head message fits the deficit. Over any
//! stretch of time in which two channels are both ready, the bytes they send differ by at
//! most `quantum + largest message` (plus one frame header per message), however their
//! message sizes differ.
//!
//! A channel that becomes ready after it was idle is *fresh*: it takes its first turn
//! before the channels already in the round (after the turn in progress), as fq_codel
//! serves new flows; if it is still ready after that turn it joins the back of the round.
//! So a channel that sends now and then waits for one turn, not for a whole round of bulk
//! channels; a channel is fresh again only after it emptied, at most once per burst.
//!
//! Invariants: a channel is in exactly one of the two lists (fresh, round) exactly when its
//! queue is non-empty; a channel's items leave in the order they were pushed;
//! `queued_bytes` is the sum of the queued items' weights.

use std::collections::VecDeque;

use crate::map::Map;
use std::hash::Hash;

/// Something a channel sends, in order with its other items.
pub trait Weighted {
    /// Bytes the item occupies on the link.
    fn weight(&self) -> usize;
}

#[derive(Debug)]
struct Queue<T> {
    items: VecDeque<T>,
    deficit: usize,
}

/// Deficit round robin over channels keyed by `K`, fresh channels first.
#[derive(Debug)]
pub struct Scheduler<K, T> {
    quantum: usize,
    /// Channels that became ready after being idle and have not had their turn, in the
    /// order they became ready.
    fresh: VecDeque<K>,
    /// Channels that had a turn and are still ready, in round order.
    round: VecDeque<K>,
    /// The turn in progress, if any: its channel is the front of `fresh` (true) or of
    /// `round` (false), and has earned its quantum.
    turn: Option<bool>,
    queues: Map<K, Queue<T>>,
    queued_bytes: usize,
    /// Emptied queues kept for reuse, so a channel whose queue drains at every turn does
    /// not allocate one anew for each message (at most [`SPARE_QUEUES`]).
    spare: Vec<VecDeque<T>>,
}

/// Emptied queues a scheduler keeps for reuse...
const SPARE_QUEUES: usize = 64;
/// ...when they hold at most this many items.
const SPARE_QUEUE_ITEMS: usize = 64;

impl<K: Copy + Eq + Hash, T: Weighted> Scheduler<K, T> {
    /// A scheduler granting `quantum` bytes per channel per round.
    pub fn new(quantum: usize) -> Self {
        Self {
            quantum: quantum.max(1),
            fresh: VecDeque::new(),
            round: VecDeque::new(),
            turn: None,
            queues: Map::default(),
            queued_bytes: 0,
            spare: Vec::new(),
        }
    }

    /// Queues `item` behind the channel's earlier items.
    pub fn push(&mut self, key: K, item: T) {
        self.queued_bytes += item.weight();
        let spare = &mut self.spare;
        let queue = self.queues.entry(key).or_insert_with(|| Queue {
            items: spare.pop().unwrap_or_default(),
            deficit: 0,
        });
        if queue.items.is_empty() {
            self.fresh.push_back(key);
        }
        queue.items.push_back(item);
    }

    /// The channel whose turn is in progress or comes next, and whether it is fresh.
    fn next_turn(&self) -> Option<(K, bool)> {
        match self.turn {
            Some(true) => self.fresh.front().map(|&k| (k, true)),
            Some(false) => self.round.front().map(|&k| (k, false)),
            None => (self.fresh.front().map(|&k| (k, true)))
                .or_else(|| self.round.front().map(|&k| (k, false))),
        }
    }

    /// The list a channel's turn is taken from.
    fn list(&mut self, fresh: bool) -> &mut VecDeque<K> {
        if fresh {
            &mut self.fresh
        } else {
            &mut self.round
        }
    }

    /// The next item to send, in fair order.
    pub fn pop(&mut self) -> Option<(K, T)> {
        loop {
            let (key, fresh) = self.next_turn()?;
            let Some(queue) = self.queues.get_mut(&key) else {
                self.list(fresh).pop_front();
                self.turn = None;
                continue;
            };
            if self.turn.is_none() {
                queue.deficit += self.quantum;
                self.turn = Some(fresh);
            }
            let head_weight = match queue.items.front() {
                Some(item) => item.weight(),
                None => {
                    self.retire_current(key, fresh);
                    continue;
                }
            };
            if head_weight <= queue.deficit {
                queue.deficit -= head_weight;
                let item = queue.items.pop_front()?;
                self.queued_bytes -= head_weight;
                if queue.items.is_empty() {
                    self.retire_current(key, fresh);
                }
                return Some((key, item));
            }
            // The turn is over: to the back of the round.
            self.list(fresh).pop_front();
            self.round.push_back(key);
            self.turn = None;
        }
    }

    /// After [`Scheduler::pop`] returned an item of `key`: the channel's next item as well,
    /// if `key`'s turn is still in progress, `accept` takes its head and the deficit left
    /// this turn covers it. Lets a caller pack a channel's consecutive items into one frame
    /// without changing how the link is shared.
    pub fn pop_next_of(&mut self, key: K, accept: impl FnOnce(&T) -> bool) -> Option<T> {
        let fresh = self.turn?;
        if self.next_turn() != Some((key, fresh)) {
            return None;
        }
        let queue = self.queues.get_mut(&key)?;
        let head = queue.items.front()?;
        let head_weight = head.weight();
        if head_weight > queue.deficit || !accept(head) {
            return None;
        }
        queue.deficit -= head_weight;
        let item = queue.items.pop_front()?;
        self.queued_bytes -= head_weight;
        if queue.items.is_empty() {
            self.retire_current(key, fresh);
        }
        Some(item)
    }

    /// Takes `key`, whose queue is empty and whose turn it is, off the front of its list,
    /// keeping its queue for reuse.
    fn retire_current(&mut self, key: K, fresh: bool) {
        if let Some(queue) = self.queues.remove(&key) {
            if self.spare.len() < SPARE_QUEUES && queue.items.capacity() <= SPARE_QUEUE_ITEMS {
                self.spare.push(queue.items);
            }
        }
        self.list(fresh).pop_front();
        self.turn = None;
    }

    /// Removes every queued item of `key`, returning them in order.
    pub fn remove(&mut self, key: K) -> Vec<T> {
        let Some(queue) = self.queues.remove(&key) else {
            return Vec::new();
        };
        if self.turn.is_some() && self.next_turn().map(|(k, _)| k) == Some(key) {
            self.turn = None;
        }
        self.fresh.retain(|k| *k != key);
        self.round.retain(|k| *k != key);
        let items: Vec<T> = queue.items.into();
        self.queued_bytes -= items.iter().map(Weighted::weight).sum::<usize>();
        items
    }

    /// Total weight queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.fresh.is_empty() && self.round.is_empty()
    }

    /// Number of channels with queued items.
    pub fn ready_channels(&self) -> usize {
        self.fresh.len() + self.round.len()
    }
}
