//! plexus: data exchange for distributed jobs.
//!
//! Every producer of a job sends to every consumer of the job over logical channels; the
//! channels between two nodes share one TCP link, and each channel has its own credit, so
//! a consumer that stops reading holds up nobody else. The protocol lives in the sans-IO
//! crate `plexus-proto`; this crate runs it on tokio and exposes the API:
//!
//! ```no_run
//! # async fn demo() -> Result<(), plexus::Error> {
//! use plexus::{Config, JobId, Node, NodeId, Topology};
//! let secret = plexus::read_secret_file("/etc/plexus/cluster.secret".as_ref()).unwrap();
//! let node = Node::builder()
//!     .config(Config::new(NodeId(0), 7, secret))
//!     .listen("127.0.0.1:0".parse().unwrap())
//!     .start()
//!     .await?;
//! let job = node.job(JobId(1), Topology::all_to_all(&[NodeId(0)], 1, 1));
//! let mut tx = job.producer(0).await?;
//! let mut rx = job.consumer(0).await?;
//! tx.send(rx.endpoint(), bytes::Bytes::from_static(b"hello")).await?;
//! tx.close().await?;
//! while let Some(item) = rx.recv().await {
//!     let (_producer, _message) = item?;
//! }
//! # Ok(()) }
//! ```

mod driver;
mod embedded;
mod error;
mod job;
mod local;
mod membership;
mod metrics;
mod node;
mod port;
mod quic;
mod secret;
mod shared;
mod status;
mod tls;
mod topology;
mod udp_probe;

pub use error::{Error, ExchangeError, LinkCause, Scope};
pub use job::{Consumer, Job, Producer, TrySend};
pub use local::{AttachPolicy, AttachedNode};
pub use membership::Membership;
pub use metrics::Metrics;
pub use node::Transport;
pub use node::{Node, NodeBuilder};
pub use plexus_proto::config::ConfigError;
pub use plexus_proto::credit::message_cost;
pub use plexus_proto::node::metrics::{
    job_failure_kind, link_cause_kind, Counters, PeerCounters, Starving, WaitHistogram,
    ADMISSION_WAIT_BUCKETS,
};
pub use plexus_proto::node::{ConsumerCredit, Stats};
pub use plexus_proto::{Config, Endpoint, JobId, NodeId};
pub use quic::QuicError;
pub use secret::{generate_secret, read_secret_file, write_new_secret_file, Secret, SecretError};
pub use status::{JobStatus, LinkStatus, StarvedBy, Status};
pub use tls::{node_name, TlsError, TlsIdentity};
pub use topology::Topology;
