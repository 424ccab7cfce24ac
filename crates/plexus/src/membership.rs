//! Where each node of the cluster listens. Shared by the nodes of one process, or filled
//! from configuration in a deployment.
//!
//! Invariant: an address, once published for a node, is what dialers use for it until it is
//! replaced.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use plexus_proto::NodeId;

/// The cluster's directory of listening addresses.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    addrs: Arc<RwLock<HashMap<NodeId, SocketAddr>>>,
}

impl Membership {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes (or replaces) the address of `node`.
    pub fn insert(&self, node: NodeId, addr: SocketAddr) {
        let mut map = self.addrs.write().unwrap_or_else(|e| e.into_inner());
        map.insert(node, addr);
    }

    /// Every node with a published address.
    pub fn nodes(&self) -> Vec<NodeId> {
        let map = self.addrs.read().unwrap_or_else(|e| e.into_inner());
        map.keys().copied().collect()
    }

    /// The address of `node`, if known.
    pub fn get(&self, node: NodeId) -> Option<SocketAddr> {
        let map = self.addrs.read().unwrap_or_else(|e| e.into_inner());
        map.get(&node).copied()
    }
}
