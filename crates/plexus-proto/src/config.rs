//! Tunables of a node's protocol core, with defaults that suit a data center.
//!
//! Invariant (checked by [`Config::validate`]): the credit reserve, and so the largest
//! message, fits in a consumer's pool; a blocked sender can always be served eventually.

use std::time::Duration;

use crate::auth::Secret;
use crate::ids::NodeId;

/// Configuration of one node's protocol core.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id, unique in the cluster.
    pub node: NodeId,
    /// Chosen anew (at random) each time the node starts, so peers can tell a restart,
    /// which lost all state, from a reconnect. Never 0.
    pub incarnation: u64,
    /// Shared by all members; a peer with another value is refused.
    pub cluster: u64,
    /// The cluster's shared secret: every link starts with both sides proving they know
    /// it (see [`crate::auth`]).
    pub secret: Secret,
    /// Accepted connections that have not proved membership yet, at most, in total; a
    /// runtime drops further ones at once. Each is bounded by `handshake_timeout` and a
    /// frame of a few dozen bytes.
    pub max_unproved_connections: usize,
    /// The same, from one source address.
    pub max_unproved_per_address: usize,
    /// Channels one peer may have open to this node's consumers (parked ones included),
    /// in all; beyond, its link closes with `GoAway(Limit)` and it is declared dead here.
    pub max_channels_per_peer: usize,
    /// The same, per job.
    pub max_channels_per_peer_job: usize,
    /// Channel opens, cancels and aborts one peer may send per second, on average...
    pub max_channel_churn_per_s: u32,
    /// ...and at once (the bucket's depth): a peer that opens and ends channels faster
    /// for longer is cut off as above (the "rapid reset" class of attack).
    pub channel_churn_burst: u32,
    /// Largest message a producer may send, in bytes.
    pub max_message: u32,
    /// Credit pool of each consumer, in bytes: the most its channels can hold anywhere.
    pub credit_pool: u64,
    /// Largest single grant from a pool, in bytes.
    pub max_grant: u64,
    /// How much a sender asks for beyond its immediate need.
    pub credit_want: u32,
    /// A sender asks ahead once its unused credit falls below this.
    pub credit_low_water: u32,
    /// Deficit round robin quantum of a link's scheduler, in bytes.
    pub quantum: usize,
    /// A ping is sent on a link that sent nothing for this long.
    pub ping_interval: Duration,
    /// A link that received nothing (not even a ping) for this long is considered broken
    /// and reconnected.
    pub idle_timeout: Duration,
    /// A peer with no working link for this long is declared dead: the jobs that touch it
    /// fail. A link that heals within it is invisible to jobs.
    pub grace_period: Duration,
    /// A peer whose address refuses this many dials in a row (nothing listens there: its
    /// process is gone) is declared dead at once.
    pub dead_after_refusals: u32,
    /// Received frames are acknowledged at most this late.
    pub ack_delay: Duration,
    /// A connection must complete its handshake within this time.
    pub handshake_timeout: Duration,
    /// How long a node that needs a link to a lower-id peer, which needs the link too (it
    /// runs producers for consumers here), waits for that peer's dial before dialling
    /// itself. The lower id dials at once. Avoids a second connection when both sides need
    /// the link at the same moment.
    pub dial_defer: Duration,
    /// Delay before the first redial; doubles on each further attempt, with jitter.
    pub dial_backoff: Duration,
    /// Longest delay between two redials.
    pub dial_backoff_max: Duration,
    /// Most dials in flight at once (connecting, or connected and in their handshake);
    /// further peers wait their turn, in order (see `node::dial`). Bounds the half-open
    /// connections and handshakes a node adds to the network's queues when it must reach
    /// many peers at once. At least 1.
    pub max_dials_in_flight: usize,
    /// Channels opened by peers for consumers that do not exist yet, held (without data)
    /// until the consumer appears. Beyond this, new ones are refused.
    pub max_parked_channels: usize,
    /// A parked channel whose consumer does not appear within this time is refused; its
    /// producer gets an error.
    pub park_timeout: Duration,
    /// Bytes this node may buffer in all (see `node::budget`); `None`: no limit beyond the
    /// consumers' pools.
    pub memory_budget: Option<u64>,
    /// The share of `memory_budget` for data queued to send and kept until acknowledged.
    pub send_buffer: u64,
    /// A job waiting for admission longer than this fails, on every node it spans.
    pub admission_timeout: Duration,
    /// How many ids of finished jobs a node remembers, to drop late frames for them and
    /// refuse reuse of an id. Bounds what a node keeps of the jobs it has seen.
    pub finished_jobs_kept: usize,
    /// A link that carried no channel frame for this long, with nothing in flight and no
    /// live job spanning its peer, is closed; the next channel to the peer dials again and
    /// resumes the session. `None`: links stay open.
    pub link_idle_close: Option<Duration>,
}

/// A configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The pool cannot hold the largest message.
    #[error(
        "credit pool of {pool} bytes cannot hold a message of {max_message} bytes and its overhead"
    )]
    PoolTooSmall {
        /// Pool size.
        pool: u64,
        /// Largest message.
        max_message: u32,
    },
    /// The budget cannot hold its send share and one consumer's pool.
    #[error("a memory budget of {budget} bytes cannot hold the send buffer ({send_buffer}) and one credit pool ({pool})")]
    BudgetTooSmall {
        /// The budget.
        budget: u64,
        /// The send share.
        send_buffer: u64,
        /// One pool.
        pool: u64,
    },
    /// The incarnation must not be 0, which means "none" on the wire.
    #[error("the incarnation must not be 0")]
    ZeroIncarnation,
    /// Messages must fit a frame.
    #[error("max_message of {0} bytes is out of range (1 ..= 256 MiB)")]
    MessageSize(u32),
    /// A node that may not dial cannot reach its peers.
    #[error("max_dials_in_flight must be at least 1")]
    NoDials,
}

impl Config {
    /// Defaults for node `node` of cluster `cluster`, whose members share `secret`. The
    /// incarnation is 1; a runtime sets a fresh random one each time it starts a node.
    pub fn new(node: NodeId, cluster: u64, secret: Secret) -> Self {
        Self {
            node,
            incarnation: 1,
            cluster,
            secret,
            max_unproved_connections: 256,
            max_unproved_per_address: 32,
            max_channels_per_peer: 1 << 20,
            max_channels_per_peer_job: 1 << 16,
            max_channel_churn_per_s: 100_000,
            channel_churn_burst: 1 << 16,
            max_message: 1 << 20,
            credit_pool: 4 << 20,
            max_grant: 1 << 20,
            credit_want: 256 << 10,
            credit_low_water: 64 << 10,
            quantum: 64 << 10,
            ping_interval: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(2),
            grace_period: Duration::from_secs(10),
            dead_after_refusals: 2,
            ack_delay: Duration::from_millis(10),
            handshake_timeout: Duration::from_secs(5),
            dial_defer: Duration::from_secs(1),
            dial_backoff: Duration::from_millis(20),
            dial_backoff_max: Duration::from_secs(1),
            max_dials_in_flight: 32,
            max_parked_channels: 1 << 20,
            park_timeout: Duration::from_secs(30),
            memory_budget: None,
            send_buffer: 8 << 20,
            admission_timeout: Duration::from_secs(30),
            finished_jobs_kept: 4096,
            link_idle_close: Some(Duration::from_secs(60)),
        }
    }

    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.incarnation == 0 {
            return Err(ConfigError::ZeroIncarnation);
        }
        if let Some(budget) = self.memory_budget {
            let send_buffer = self.send_buffer.max(self.max_message_cost());
            if budget < send_buffer + self.credit_pool {
                return Err(ConfigError::BudgetTooSmall {
                    budget,
                    send_buffer,
                    pool: self.credit_pool,
                });
            }
        }
        if self.max_dials_in_flight == 0 {
            return Err(ConfigError::NoDials);
        }
        if self.max_message == 0 || self.max_message > 256 << 20 {
            return Err(ConfigError::MessageSize(self.max_message));
        }
        if self.max_message_cost() > self.credit_pool {
            return Err(ConfigError::PoolTooSmall {
                pool: self.credit_pool,
                max_message: self.max_message,
            });
        }
        Ok(())
    }

    /// Credit the largest message costs: the most any one need can be.
    pub fn max_message_cost(&self) -> u64 {
        crate::credit::message_cost(self.max_message as usize)
    }

    /// Largest frame body the decoder accepts: a data frame of the largest message, or a
    /// full batch of small messages, whichever is larger.
    pub fn max_frame_body(&self) -> usize {
        let payload = (self.max_message as usize).max(crate::batch::BATCH_BODY_MAX);
        crate::codec::data_frame_len(payload)
    }
}
