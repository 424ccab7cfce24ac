//! Incoming channels whose consumer does not exist yet ("parked"), by consumer, with
//! their count and the order in which they were parked, for expiry.
//!
//! Invariants: `count` = Σ lengths of the lists in `by_consumer`, and no list is empty;
//! every parked channel has an entry in `order` with the time it was (re)parked (entries
//! of channels that left meanwhile stay until they reach the front, where the caller skips
//! them by comparing times).

use std::collections::VecDeque;
use std::time::Instant;

use super::state::{InKey, LocalKey};
use crate::ids::JobId;
use crate::map::Map;

/// The parked channels of a node.
#[derive(Debug, Default)]
pub(crate) struct ParkedChannels {
    by_consumer: Map<LocalKey, Vec<InKey>>,
    count: usize,
    order: VecDeque<(Instant, InKey)>,
}

impl ParkedChannels {
    /// Parks `in_key` for `consumer` at `now`.
    pub fn park(&mut self, consumer: LocalKey, in_key: InKey, now: Instant) {
        self.by_consumer.entry(consumer).or_default().push(in_key);
        self.count += 1;
        self.order.push_back((now, in_key));
    }

    /// Unparks every channel of `consumer` (it opened).
    pub fn take(&mut self, consumer: LocalKey) -> Vec<InKey> {
        let list = self.by_consumer.remove(&consumer).unwrap_or_default();
        self.count -= list.len();
        list
    }

    /// Unparks every channel of `job`'s consumers (a scan: for rare events only).
    pub fn take_job(&mut self, job: JobId) -> Vec<InKey> {
        let consumers: Vec<LocalKey> = self
            .by_consumer
            .keys()
            .filter(|k| k.0 == job)
            .copied()
            .collect();
        consumers.into_iter().flat_map(|c| self.take(c)).collect()
    }

    /// Unparks `in_key` of `consumer`, if parked.
    pub fn unpark(&mut self, consumer: LocalKey, in_key: InKey) {
        if let Some(list) = self.by_consumer.get_mut(&consumer) {
            let before = list.len();
            list.retain(|k| *k != in_key);
            self.count -= before - list.len();
            if list.is_empty() {
                self.by_consumer.remove(&consumer);
            }
        }
    }

    /// Channels parked.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The oldest entry of the expiry order, if parked at or before `at`: removed.
    pub fn pop_parked_by(&mut self, at: Instant) -> Option<(Instant, InKey)> {
        let &(since, in_key) = self.order.front()?;
        if since > at {
            return None;
        }
        self.order.pop_front();
        Some((since, in_key))
    }

    /// Puts a parked channel back at the end of the expiry order, as parked `now`.
    pub fn repark(&mut self, in_key: InKey, now: Instant) {
        self.order.push_back((now, in_key));
    }
}
