//! The hash maps of the core. Many keys come from the network (channel numbers, node ids),
//! so the hasher is seeded randomly per process, which keeps a peer from choosing keys that
//! collide; it is also several times faster than the standard library's SipHash.

/// A hash map with the core's hasher.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A hash set with the core's hasher.
pub type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
