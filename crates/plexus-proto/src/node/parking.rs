//! Incoming channels whose consumer does not exist yet ("parked"), by consumer, with the
//! order in which they were parked, for expiry.
//!
//! Invariants: a channel is parked exactly when it has an entry in `parked_at` and is in
//! its consumer's list in `by_consumer` (so the count is `parked_at.len()`), and no list
//! is empty; every parked channel has an entry in `order` with the time in `parked_at`.
//! Entries of `order` whose channel left (or was parked again later) are dropped as soon
//! as they reach the front, which every change does: `order` holds the parked channels
//! and at most the entries behind the oldest one, never a history of all channels parked.

use std::collections::VecDeque;
use std::time::Instant;

use super::state::{InKey, LocalKey};
use crate::ids::JobId;
use crate::map::Map;

/// The parked channels of a node.
#[derive(Debug, Default)]
pub(crate) struct ParkedChannels {
    by_consumer: Map<LocalKey, Vec<InKey>>,
    parked_at: Map<InKey, Instant>,
    order: VecDeque<(Instant, InKey)>,
}

impl ParkedChannels {
    /// Parks `in_key` for `consumer` at `now`.
    pub fn park(&mut self, consumer: LocalKey, in_key: InKey, now: Instant) {
        self.by_consumer.entry(consumer).or_default().push(in_key);
        self.parked_at.insert(in_key, now);
        self.order.push_back((now, in_key));
        self.drop_stale_front();
    }

    /// Unparks every channel of `consumer` (it opened).
    pub fn take(&mut self, consumer: LocalKey) -> Vec<InKey> {
        let list = self.by_consumer.remove(&consumer).unwrap_or_default();
        for in_key in &list {
            self.parked_at.remove(in_key);
        }
        self.drop_stale_front();
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
        if self.parked_at.remove(&in_key).is_none() {
            return;
        }
        if let Some(list) = self.by_consumer.get_mut(&consumer) {
            list.retain(|k| *k != in_key);
            if list.is_empty() {
                self.by_consumer.remove(&consumer);
            }
        }
        self.drop_stale_front();
    }

    /// Channels parked.
    pub fn len(&self) -> usize {
        self.parked_at.len()
    }

    /// The channel parked longest, if parked at or before `at`: taken off the expiry
    /// order (it stays parked: the caller expires it, or parks it again with `repark`).
    pub fn pop_parked_by(&mut self, at: Instant) -> Option<InKey> {
        self.drop_stale_front();
        let &(since, in_key) = self.order.front()?;
        if since > at {
            return None;
        }
        self.order.pop_front();
        Some(in_key)
    }

    /// Puts a parked channel back at the end of the expiry order, as parked `now`.
    pub fn repark(&mut self, in_key: InKey, now: Instant) {
        if let Some(at) = self.parked_at.get_mut(&in_key) {
            *at = now;
            self.order.push_back((now, in_key));
        }
    }

    /// Drops the entries at the front of the expiry order whose channel is no longer
    /// parked at that time.
    fn drop_stale_front(&mut self) {
        while let Some(&(since, in_key)) = self.order.front() {
            if self.parked_at.get(&in_key) == Some(&since) {
                return;
            }
            self.order.pop_front();
        }
    }
}
