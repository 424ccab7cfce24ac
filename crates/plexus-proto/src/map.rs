//! The hash maps of the core. Many keys come from the network (channel numbers, node ids),
//! so each thread's maps are seeded from a random per-process seed, which keeps a peer from
//! choosing keys that collide; the hasher is also several times faster than the standard
//! library's SipHash.
//!
//! A thread may fix its seed with [`seed_this_thread`]: the deterministic test harness
//! does, so that iteration orders, and so a whole run, replay bit for bit from the test's
//! seed.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::OnceLock;

thread_local! {
    /// The seed this thread's new maps take, if fixed.
    static THREAD_SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Fixes the seed of the maps this thread creates from now on.
pub fn seed_this_thread(seed: u64) {
    THREAD_SEED.with(|s| s.set(Some(seed)));
}

/// The process's random seed, chosen once.
fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u64))
}

/// The maps' hasher factory: foldhash, seeded from this thread's seed if fixed, else the
/// process's random seed.
#[derive(Clone, Debug)]
pub struct HashState(foldhash::fast::FixedState);

impl Default for HashState {
    fn default() -> Self {
        let seed = THREAD_SEED.with(Cell::get).unwrap_or_else(process_seed);
        Self(foldhash::fast::FixedState::with_seed(seed))
    }
}

impl BuildHasher for HashState {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// A hash map with the core's hasher.
pub type Map<K, V> = std::collections::HashMap<K, V, HashState>;
/// A hash set with the core's hasher.
pub type Set<K> = std::collections::HashSet<K, HashState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_seed_gives_the_same_order_every_time() {
        let order = |seed| {
            seed_this_thread(seed);
            let set: Set<u64> = (0..64).collect();
            set.into_iter().collect::<Vec<_>>()
        };
        assert_eq!(order(7), order(7));
        assert_ne!(order(7), order(8), "the seed changes the order");
    }
}
