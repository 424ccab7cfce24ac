//! Errors the core reports to endpoints, each saying its scope: one channel, one job,
//! a link to a peer, or the local node's usage.

use std::fmt;

use crate::frame::{CancelCode, GoAwayCode, RefuseCode};
use crate::ids::{Endpoint, JobId, NodeId};

/// How far an error reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One channel; the endpoint's other channels go on.
    Channel,
    /// Every channel that crosses one link.
    Link,
    /// Every endpoint of one job, on every node.
    Job,
    /// A misuse of the API by the caller; nothing else is affected.
    Usage,
}

/// Why a link failed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LinkCause {
    /// Dialling failed every attempt; the last error is given.
    Unreachable(String),
    /// The peer sent something that breaks the protocol.
    Protocol(String),
    /// The peer closed the link, saying why.
    GoAway(GoAwayCode),
    /// Nothing was heard from the peer for the idle timeout.
    Silent,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// Another connection carried the session while this one was in its handshake, so
    /// what its `Hello` said about the session is out of date; a fresh connection is needed.
    Superseded,
    /// The peer restarted (or dropped our session): what was in flight with it is lost.
    Restarted(String),
    /// Another node of the job declared the peer dead.
    ReportedDead {
        /// The node that declared it.
        by: NodeId,
    },
    /// The connection broke (reset, EOF, I/O error).
    Io(String),
    /// This node is shutting down.
    Shutdown,
    /// The link carried nothing for this long; the session is kept for the next use.
    Idle(std::time::Duration),
    /// The other side did not prove it holds the cluster's secret.
    Unauthenticated(String),
}

impl fmt::Display for LinkCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkCause::Unreachable(e) => write!(f, "unreachable: {e}"),
            LinkCause::Protocol(e) => write!(f, "protocol violation: {e}"),
            LinkCause::GoAway(code) => write!(f, "peer closed the link: {code:?}"),
            LinkCause::Silent => write!(f, "peer silent past the idle timeout"),
            LinkCause::HandshakeTimeout => write!(f, "handshake timed out"),
            LinkCause::Superseded => {
                write!(f, "handshake superseded: the session moved on meanwhile")
            }
            LinkCause::Restarted(e) => write!(f, "peer restarted: {e}"),
            LinkCause::ReportedDead { by } => write!(f, "declared dead by {by}"),
            LinkCause::Io(e) => write!(f, "connection lost: {e}"),
            LinkCause::Shutdown => write!(f, "this node is shutting down"),
            LinkCause::Idle(after) => write!(f, "idle for {after:?}"),
            LinkCause::Unauthenticated(e) => write!(f, "not authenticated: {e}"),
        }
    }
}

/// Which side of a channel an endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// It sends.
    Producer,
    /// It receives.
    Consumer,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        })
    }
}

/// An error an endpoint sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ExchangeError {
    /// The link to a peer failed; every channel crossing it fails.
    #[error("link to {peer} failed: {cause}")]
    LinkFailed {
        /// The peer.
        peer: NodeId,
        /// Why.
        cause: LinkCause,
    },
    /// The consumer side refused or stopped taking the channel.
    #[error("channel to consumer {consumer} was cancelled: {code:?}")]
    Cancelled {
        /// The consumer.
        consumer: Endpoint,
        /// Why.
        code: CancelCode,
    },
    /// An endpoint of the job cancelled it.
    #[error("{job} was cancelled from {by}")]
    JobCancelled {
        /// The job.
        job: JobId,
        /// The node whose endpoint cancelled it.
        by: NodeId,
    },
    /// The producer's channel waited, parked, for this consumer to open, and expired.
    #[error("the channel from producer {producer} expired before this consumer opened")]
    ParkExpired {
        /// The producer.
        producer: Endpoint,
    },
    /// The producer dropped its channel without closing it.
    #[error("producer {producer} aborted before closing its channel")]
    ProducerAborted {
        /// The producer.
        producer: Endpoint,
    },
    /// The endpoint is not part of the job's topology.
    #[error("{endpoint} is not a {role} of {job}")]
    NotInJob {
        /// The job.
        job: JobId,
        /// The endpoint named.
        endpoint: Endpoint,
        /// Producer or consumer.
        role: Role,
    },
    /// The job's consumers here need more credit pool than the budget can ever hold.
    #[error(
        "{job} needs {need} bytes of credit pools on this node; its budget for pools is {budget}"
    )]
    OverBudget {
        /// The job.
        job: JobId,
        /// Bytes its consumers here need.
        need: u64,
        /// What the budget has for pools.
        budget: u64,
    },
    /// The job waited too long for room in the budget.
    #[error(
        "{job} waited {waited:?} for {need} bytes of the {budget}-byte pool budget and gave up"
    )]
    AdmissionTimeout {
        /// The job.
        job: JobId,
        /// How long it waited.
        waited: std::time::Duration,
        /// Bytes it needed.
        need: u64,
        /// What the budget has for pools.
        budget: u64,
    },
    /// Another node of the job could not admit it, so it failed everywhere.
    #[error("{job} was refused by {node}: {reason}")]
    JobRefused {
        /// The job.
        job: JobId,
        /// The node that refused it.
        node: NodeId,
        /// Why.
        reason: RefuseCode,
    },
    /// The job is over on this node: its id is not reused.
    #[error("{job} already finished on this node; job ids are not reused")]
    JobFinished {
        /// The job.
        job: JobId,
    },
    /// The job is live on this node with another topology.
    #[error("{job} is open on this node with another topology")]
    TopologyMismatch {
        /// The job.
        job: JobId,
    },
    /// This node shut down.
    #[error("{node} shut down")]
    NodeShutdown {
        /// This node.
        node: NodeId,
    },
    /// An endpoint of a job not admitted (yet) on this node.
    #[error("{job} is not admitted on this node yet")]
    NotAdmitted {
        /// The job.
        job: JobId,
    },
    /// The slot is already in use.
    #[error("{role} slot {slot} of {job} is already open on this node")]
    SlotInUse {
        /// The job.
        job: JobId,
        /// The slot.
        slot: u32,
        /// Producer or consumer.
        role: Role,
    },
    /// A message above the configured maximum.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: u32,
    },
    /// The producer was closed already.
    #[error("the producer is closed")]
    Closed,
    /// No such endpoint is open on this node.
    #[error("no {role} at slot {slot} of {job} on this node")]
    NoSuchEndpoint {
        /// The job.
        job: JobId,
        /// The slot.
        slot: u32,
        /// Producer or consumer.
        role: Role,
    },
}

impl ExchangeError {
    /// The peer node the error names as its cause, if any.
    pub fn peer(&self) -> Option<NodeId> {
        match self {
            ExchangeError::LinkFailed { peer, .. } => Some(*peer),
            ExchangeError::JobRefused { node, .. } => Some(*node),
            _ => None,
        }
    }

    /// Whether the error concerns what `producer` sends: its own channel's failure, its
    /// node's link failing, or anything that fails the whole job.
    pub fn concerns(&self, producer: Endpoint) -> bool {
        match self {
            ExchangeError::ProducerAborted { producer: p }
            | ExchangeError::ParkExpired { producer: p } => *p == producer,
            ExchangeError::LinkFailed { peer, .. } => *peer == producer.node,
            ExchangeError::Cancelled { .. } => false,
            _ => true,
        }
    }

    /// How far the error reaches.
    pub fn scope(&self) -> Scope {
        match self {
            ExchangeError::LinkFailed { .. } => Scope::Link,
            ExchangeError::JobCancelled { .. }
            | ExchangeError::JobRefused { .. }
            | ExchangeError::NodeShutdown { .. }
            | ExchangeError::OverBudget { .. }
            | ExchangeError::AdmissionTimeout { .. } => Scope::Job,
            ExchangeError::Cancelled { .. }
            | ExchangeError::ProducerAborted { .. }
            | ExchangeError::ParkExpired { .. } => Scope::Channel,
            ExchangeError::NotInJob { .. }
            | ExchangeError::SlotInUse { .. }
            | ExchangeError::MessageTooLarge { .. }
            | ExchangeError::Closed
            | ExchangeError::NotAdmitted { .. }
            | ExchangeError::JobFinished { .. }
            | ExchangeError::TopologyMismatch { .. }
            | ExchangeError::NoSuchEndpoint { .. } => Scope::Usage,
        }
    }
}
