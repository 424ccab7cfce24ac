//! Fair sharing of one link among the channels that have data ready to send.
//!
//! Deficit round robin by bytes: each ready channel, when it comes to the head of the round,
//! earns `quantum` bytes of deficit and sends messages while its head message fits the
//! deficit. Over any stretch of time in which two channels are both ready, the bytes they
//! send differ by at most `quantum + largest message` (plus one frame header per message),
//! however their message sizes differ.
//!
//! Invariants: a channel is in the round exactly when its queue is non-empty; a channel's
//! items leave in the order they were pushed; `queued_bytes` is the sum of the queued
//! items' weights.

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

/// Deficit round robin over channels keyed by `K`.
#[derive(Debug)]
pub struct Scheduler<K, T> {
    quantum: usize,
    /// Channels with queued items, in round order; the front is being served.
    round: VecDeque<K>,
    /// Whether the front channel already earned its quantum this turn.
    front_served: bool,
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
            round: VecDeque::new(),
            front_served: false,
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
            self.round.push_back(key);
        }
        queue.items.push_back(item);
    }

    /// The next item to send, in fair order.
    pub fn pop(&mut self) -> Option<(K, T)> {
        loop {
            let key = *self.round.front()?;
            let Some(queue) = self.queues.get_mut(&key) else {
                self.round.pop_front();
                self.front_served = false;
                continue;
            };
            if !self.front_served {
                queue.deficit += self.quantum;
                self.front_served = true;
            }
            let head_weight = match queue.items.front() {
                Some(item) => item.weight(),
                None => {
                    self.retire_front(key);
                    continue;
                }
            };
            if head_weight <= queue.deficit {
                queue.deficit -= head_weight;
                let item = queue.items.pop_front()?;
                self.queued_bytes -= head_weight;
                if queue.items.is_empty() {
                    self.retire_front(key);
                }
                return Some((key, item));
            }
            self.round.rotate_left(1);
            self.front_served = false;
        }
    }

    /// After [`Scheduler::pop`] returned an item of `key`: the channel's next item as well,
    /// if `key` is still being served, `accept` takes its head and the deficit left this
    /// turn covers it. Lets a caller pack a channel's consecutive items into one frame
    /// without changing how the link is shared.
    pub fn pop_next_of(&mut self, key: K, accept: impl FnOnce(&T) -> bool) -> Option<T> {
        if self.round.front() != Some(&key) || !self.front_served {
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
            self.retire_front(key);
        }
        Some(item)
    }

    /// Takes `key`, whose queue is empty, off the front of the round, keeping its queue for
    /// reuse.
    fn retire_front(&mut self, key: K) {
        if let Some(queue) = self.queues.remove(&key) {
            if self.spare.len() < SPARE_QUEUES && queue.items.capacity() <= SPARE_QUEUE_ITEMS {
                self.spare.push(queue.items);
            }
        }
        self.round.pop_front();
        self.front_served = false;
    }

    /// Removes every queued item of `key`, returning them in order.
    pub fn remove(&mut self, key: K) -> Vec<T> {
        let Some(queue) = self.queues.remove(&key) else {
            return Vec::new();
        };
        if self.round.front() == Some(&key) {
            self.front_served = false;
        }
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
        self.round.is_empty()
    }

    /// Number of channels with queued items.
    pub fn ready_channels(&self) -> usize {
        self.round.len()
    }
}
