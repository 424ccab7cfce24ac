//! Identifiers shared by every layer: nodes, jobs, endpoints and wire channel ids.
//!
//! Invariant: identifiers are plain values with no hidden state; an [`Endpoint`] names one
//! producer or consumer instance as `(node, slot)` and is unique within a job.

use std::fmt;

/// One machine (or, in tests, one process or network namespace) of the cluster.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub u32);

/// One computation; jobs are independent of each other.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct JobId(pub u64);

/// A producer or consumer instance: `(node, slot)`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Endpoint {
    /// The node the endpoint runs on.
    pub node: NodeId,
    /// The endpoint's slot on that node, unique per job and role.
    pub slot: u32,
}

impl Endpoint {
    /// The endpoint at `slot` on `node`.
    pub const fn new(node: NodeId, slot: u32) -> Self {
        Self { node, slot }
    }
}

/// The sender-assigned number of a channel on one link direction. Each side numbers the
/// channels it sends on; the receiver maps them to its consumers when it sees `Open`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WireChannel(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.0)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node.0, self.slot)
    }
}
