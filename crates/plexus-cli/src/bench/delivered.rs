//! Payload bytes the consumers of a run received so far, kept apart for consumers that
//! stall and those that do not: what the progress bar shows (their sum) and what the
//! timeline samples (each class).
//!
//! Invariants: each count only grows during a run (with `--spawn`, the coordinator
//! [`Delivered::set`]s the sums its node processes reported, which only grow too); adding
//! costs one relaxed atomic addition, so a consumer can count every message it verifies.

use std::sync::atomic::{AtomicU64, Ordering};

/// The counts; see the module docs.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Bytes received by consumers that do not stall.
    healthy: AtomicU64,
    /// Bytes received by consumers that stall until the release.
    stalled: AtomicU64,
}

impl Delivered {
    /// Counts `bytes` received by a consumer that stalls or not.
    pub fn add(&self, stalled: bool, bytes: u64) {
        let count = if stalled {
            &self.stalled
        } else {
            &self.healthy
        };
        count.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Sets both counts, as node processes reported them.
    pub fn set(&self, healthy: u64, stalled: u64) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.stalled.store(stalled, Ordering::Relaxed);
    }

    /// Bytes received by consumers that do not stall.
    pub fn healthy(&self) -> u64 {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Bytes received by consumers that stall.
    pub fn stalled(&self) -> u64 {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Bytes received by every consumer.
    pub fn total(&self) -> u64 {
        self.healthy().saturating_add(self.stalled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_counted_apart_and_summed() {
        let d = Delivered::default();
        d.add(false, 10);
        d.add(true, 3);
        d.add(false, 5);
        assert_eq!((d.healthy(), d.stalled(), d.total()), (15, 3, 18));
        d.set(100, 7);
        assert_eq!((d.healthy(), d.stalled(), d.total()), (100, 7, 107));
    }
}
