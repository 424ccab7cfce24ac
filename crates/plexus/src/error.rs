//! The runtime's error type. Each variant says its scope: a channel, a link to a peer, the
//! caller's usage (all carried by [`ExchangeError`]), the node's sockets, or its setup.

pub use plexus_proto::node::{ExchangeError, LinkCause, Scope};

/// An error from the plexus runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A channel, link or usage error reported by the protocol core.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// The node could not bind or use its listening socket.
    #[error("node {node}: {what}: {source}")]
    Io {
        /// The node.
        node: u32,
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(#[from] plexus_proto::config::ConfigError),
    /// The connection of this process to its machine's agent is lost (or was refused).
    #[error("the agent: {0}")]
    AgentLost(String),
    /// The agent could not do what this process asked.
    #[error("the agent reports: {0}")]
    Agent(String),
    /// The TLS identity cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The QUIC endpoint cannot be made.
    #[error(transparent)]
    Quic(#[from] crate::quic::QuicError),
    /// The builder lacks a required setting.
    #[error("node builder: {0} is required")]
    Missing(&'static str),
    /// The endpoint is not part of the job's topology on this node.
    #[error("{role} slot {slot} is not part of job {job} on node {node}")]
    NotInTopology {
        /// The job.
        job: u64,
        /// The node.
        node: u32,
        /// The slot asked for.
        slot: u32,
        /// "producer" or "consumer".
        role: &'static str,
    },
}

impl Error {
    /// The protocol-level error, if this is one.
    pub fn exchange(&self) -> Option<&ExchangeError> {
        match self {
            Error::Exchange(e) => Some(e),
            _ => None,
        }
    }
}
