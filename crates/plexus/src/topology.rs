//! Which endpoints take part in a job: its producers and its consumers.
//!
//! Invariant: endpoints are unique within each role; every producer may send to every
//! consumer, and every consumer expects an end of stream from every producer.

use std::sync::Arc;

use plexus_proto::{Endpoint, NodeId};

/// The producers and consumers of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    producers: Arc<[Endpoint]>,
    consumers: Arc<[Endpoint]>,
}

impl Topology {
    /// A topology with explicit endpoint lists (duplicates are dropped).
    pub fn new(
        producers: impl IntoIterator<Item = Endpoint>,
        consumers: impl IntoIterator<Item = Endpoint>,
    ) -> Self {
        let mut p: Vec<Endpoint> = producers.into_iter().collect();
        let mut c: Vec<Endpoint> = consumers.into_iter().collect();
        p.sort();
        p.dedup();
        c.sort();
        c.dedup();
        Self {
            producers: p.into(),
            consumers: c.into(),
        }
    }

    /// Every node runs `producers` producers (slots `0..producers`) and `consumers`
    /// consumers (slots `0..consumers`).
    pub fn all_to_all(nodes: &[NodeId], producers: u32, consumers: u32) -> Self {
        let p = nodes
            .iter()
            .flat_map(|&n| (0..producers).map(move |s| Endpoint::new(n, s)));
        let c = nodes
            .iter()
            .flat_map(|&n| (0..consumers).map(move |s| Endpoint::new(n, s)));
        Self::new(p, c)
    }

    /// The producers.
    pub fn producers(&self) -> &[Endpoint] {
        &self.producers
    }

    /// The consumers.
    pub fn consumers(&self) -> &[Endpoint] {
        &self.consumers
    }

    /// How many consumers run on each node with any, by node: what the job's admission
    /// reserves where.
    pub fn consumers_per_node(&self) -> Vec<(NodeId, u32)> {
        let mut counts: Vec<(NodeId, u32)> = Vec::new();
        // Consumers are sorted, so each node's run is contiguous.
        for c in self.consumers.iter() {
            match counts.last_mut() {
                Some((node, n)) if *node == c.node => *n += 1,
                _ => counts.push((c.node, 1)),
            }
        }
        counts
    }

    /// A fingerprint of the endpoint lists, the same in every process: two handles of one
    /// job must agree on it.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: stable across processes of one build.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new();
        self.producers.hash(&mut hasher);
        self.consumers.hash(&mut hasher);
        hasher.finish()
    }

    /// Every node with an endpoint of the job.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .producers
            .iter()
            .chain(self.consumers.iter())
            .map(|e| e.node)
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }
}
