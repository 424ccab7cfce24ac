//! The frames plexus exchanges on a link, as values.
//!
//! Owns the frame vocabulary only; [`crate::codec`] owns the byte layout. Control frames
//! (everything but [`Frame::Data`] and [`Frame::Batch`]) are small and never wait behind data on a link.

use bytes::Bytes;

use crate::batch::MessageBatch;
use crate::ids::{JobId, NodeId, WireChannel};

/// The protocol version this build speaks. A peer with another version is refused.
pub const PROTOCOL_VERSION: u16 = 3;

/// Why a link is being closed, sent in [`Frame::GoAway`] before the socket is shut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GoAwayCode {
    /// The peer sent bytes that do not decode or break the protocol.
    ProtocolError,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The peer belongs to another cluster.
    WrongCluster,
    /// The peer is not the node that was dialled, or is not a member.
    UnexpectedNode,
    /// The peer's session state does not match ours (it restarted, or we did).
    SessionMismatch,
    /// Nothing was heard on the connection for too long (handshake or idle timeout); the
    /// session may resume on another connection.
    Timeout,
    /// Both sides dialled at once and this connection lost the tie-break; the winner
    /// (the connection dialled by the lower node id) carries the traffic.
    SimultaneousDial,
    /// A link to this peer already exists, or carried the session while this connection
    /// was in its handshake (its `Hello` is out of date).
    Duplicate,
    /// The node is shutting down: the jobs that span it fail now, with this cause.
    Shutdown,
    /// The peer's settings that both sides must share (see `Frame::Hello`) differ from ours.
    ConfigMismatch,
    /// The link carried nothing for `Config::link_idle_close`; the session is kept and the
    /// next channel dials again.
    Idle,
    /// The peer did not prove that it knows the cluster's secret (or skipped the proof).
    Unauthenticated,
    /// The peer went beyond a limit every member keeps to (channels open here, or how
    /// fast it opens and ends them).
    Limit,
    /// A code this build does not know (kept so decoding never fails on it).
    Unknown(u16),
}

impl GoAwayCode {
    /// The wire value of the code.
    pub fn to_wire(self) -> u16 {
        match self {
            GoAwayCode::ProtocolError => 1,
            GoAwayCode::VersionMismatch => 2,
            GoAwayCode::WrongCluster => 3,
            GoAwayCode::UnexpectedNode => 4,
            GoAwayCode::SimultaneousDial => 5,
            GoAwayCode::Duplicate => 6,
            GoAwayCode::Shutdown => 7,
            GoAwayCode::SessionMismatch => 8,
            GoAwayCode::Timeout => 9,
            GoAwayCode::ConfigMismatch => 10,
            GoAwayCode::Idle => 11,
            GoAwayCode::Unauthenticated => 12,
            GoAwayCode::Limit => 13,
            GoAwayCode::Unknown(v) => v,
        }
    }

    /// The code for a wire value; unknown values are kept as [`GoAwayCode::Unknown`].
    pub fn from_wire(v: u16) -> Self {
        match v {
            1 => GoAwayCode::ProtocolError,
            2 => GoAwayCode::VersionMismatch,
            3 => GoAwayCode::WrongCluster,
            4 => GoAwayCode::UnexpectedNode,
            5 => GoAwayCode::SimultaneousDial,
            6 => GoAwayCode::Duplicate,
            7 => GoAwayCode::Shutdown,
            8 => GoAwayCode::SessionMismatch,
            9 => GoAwayCode::Timeout,
            10 => GoAwayCode::ConfigMismatch,
            11 => GoAwayCode::Idle,
            12 => GoAwayCode::Unauthenticated,
            13 => GoAwayCode::Limit,
            other => GoAwayCode::Unknown(other),
        }
    }
}

/// Why a channel was cancelled, sent in [`Frame::Cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CancelCode {
    /// The consumer stopped reading before the end of the stream.
    ConsumerGone,
    /// The receiving node knows no such consumer for the job.
    UnknownConsumer,
    /// The consumer did not appear within the parking timeout.
    ConsumerNeverAppeared,
    /// The consumer's job failed.
    JobFailed,
    /// A code this build does not know.
    Unknown(u16),
}

impl CancelCode {
    /// The wire value of the code.
    pub fn to_wire(self) -> u16 {
        match self {
            CancelCode::ConsumerGone => 1,
            CancelCode::UnknownConsumer => 2,
            CancelCode::ConsumerNeverAppeared => 3,
            CancelCode::JobFailed => 4,
            CancelCode::Unknown(v) => v,
        }
    }

    /// The code for a wire value.
    pub fn from_wire(v: u16) -> Self {
        match v {
            1 => CancelCode::ConsumerGone,
            2 => CancelCode::UnknownConsumer,
            3 => CancelCode::ConsumerNeverAppeared,
            4 => CancelCode::JobFailed,
            other => CancelCode::Unknown(other),
        }
    }
}

/// Why a node could not admit a job, sent in [`Frame::JobRefused`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RefuseCode {
    /// The job waited for room in the node's memory budget past the admission timeout.
    AdmissionTimeout,
    /// The job's consumers on the node need more than its budget can ever hold.
    OverBudget,
    /// The node shut down while the job was live there.
    Shutdown,
    /// A code this build does not know.
    Unknown(u16),
}

impl RefuseCode {
    /// The wire value of the code.
    pub fn to_wire(self) -> u16 {
        match self {
            RefuseCode::AdmissionTimeout => 1,
            RefuseCode::OverBudget => 2,
            RefuseCode::Shutdown => 3,
            RefuseCode::Unknown(v) => v,
        }
    }

    /// The code for a wire value.
    pub fn from_wire(v: u16) -> Self {
        match v {
            1 => RefuseCode::AdmissionTimeout,
            2 => RefuseCode::OverBudget,
            3 => RefuseCode::Shutdown,
            other => RefuseCode::Unknown(other),
        }
    }
}

impl std::fmt::Display for RefuseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefuseCode::AdmissionTimeout => write!(f, "it waited for admission past the timeout"),
            RefuseCode::OverBudget => write!(f, "its consumers there need more than the budget"),
            RefuseCode::Shutdown => write!(f, "the node shut down"),
            RefuseCode::Unknown(v) => write!(f, "reason {v}"),
        }
    }
}

/// One frame on a link.
///
/// Channel frames name the channel by the *sender's* [`WireChannel`] number: `Open`, `Data`,
/// `Backlog`, `End` and `Abort` travel producer → consumer and carry the producer side's number;
/// `Credit` and `Cancel` travel consumer → producer and echo that same number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// First frame in each direction, before anything else: who the sender claims to be,
    /// and a fresh nonce the other side's proof must cover (see [`crate::auth`]). The
    /// dialler sends it at once; the acceptor answers with its own and a `Proof`.
    Challenge {
        /// Must equal [`PROTOCOL_VERSION`].
        version: u16,
        /// The sender's cluster.
        cluster: u64,
        /// The sender's node id.
        node: NodeId,
        /// The sender's incarnation (its `Hello` must say the same).
        incarnation: u64,
        /// Fresh for this handshake.
        nonce: crate::auth::Nonce,
    },
    /// The sender knows the cluster's secret: an HMAC of the handshake's transcript. The
    /// acceptor sends it after its `Challenge`; the dialler once it checked the acceptor's.
    Proof {
        /// HMAC-SHA256 under the secret of the transcript and the sender's role.
        proof: crate::auth::Proof,
    },
    /// Once both proofs checked, first frame in each direction: who we are. The dialler sends it first; the acceptor
    /// answers with its own `Hello` once it keeps the connection, or with `GoAway`.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        version: u16,
        /// Shared by every member of one cluster; a mismatch refuses the link.
        cluster: u64,
        /// The sender's node id.
        node: NodeId,
        /// Chosen anew each time the sender's node starts: a peer that comes back with
        /// another incarnation lost its state.
        incarnation: u64,
        /// The incarnation of the receiver that the sender's session is with (0: none).
        peer_incarnation: u64,
        /// Channel frames the sender received in that session: the receiver resends its
        /// frames from this number on.
        received: u64,
        /// The largest message the sender's producers may send and its consumers accept;
        /// both sides must agree, or the link is refused (`GoAway(ConfigMismatch)`).
        max_message: u32,
    },
    /// Cumulative acknowledgement: the sender received the first `received` channel frames
    /// of the session.
    Ack {
        /// Frames received.
        received: u64,
    },
    /// The job is cancelled: every endpoint of it fails.
    CancelJob {
        /// The job.
        job: JobId,
    },
    /// The sender declared `dead` (a node the job spans) dead, so the job failed there;
    /// it fails everywhere.
    JobFailed {
        /// The job.
        job: JobId,
        /// The node declared dead.
        dead: NodeId,
    },
    /// The sender reserved its share of the job's memory budget: the receiver, the next of
    /// the job's nodes with consumers in ascending node id, may reserve its own now (see
    /// `node::admission`).
    Reserved {
        /// The job.
        job: JobId,
    },
    /// The sender could not admit the job: it fails everywhere.
    JobRefused {
        /// The job.
        job: JobId,
        /// Why.
        reason: RefuseCode,
    },
    /// The link is closing, and why.
    GoAway {
        /// The reason.
        code: GoAwayCode,
    },
    /// A new channel from producer slot `producer` to consumer slot `consumer` of `job`
    /// (the producer lives on the sending node, the consumer on the receiving node).
    Open {
        /// The sender's number for the channel.
        channel: WireChannel,
        /// The job the channel belongs to.
        job: JobId,
        /// Producer slot on the sending node.
        producer: u32,
        /// Consumer slot on the receiving node.
        consumer: u32,
    },
    /// One message of a channel. Sent only against credit.
    Data {
        /// The channel.
        channel: WireChannel,
        /// The message bytes.
        payload: Bytes,
    },
    /// Several small messages of one channel, in order (see [`crate::batch`]). Each costs
    /// the credit its own `Data` frame would.
    Batch {
        /// The channel.
        channel: WireChannel,
        /// The messages.
        messages: MessageBatch,
    },
    /// The producer wants credit. `need` is the size of a message it is holding back (0 when
    /// it only asks ahead); `want` is how much more it would like on top, as a hint.
    Backlog {
        /// The channel.
        channel: WireChannel,
        /// Bytes that must be granted for the producer to make progress.
        need: u32,
        /// Extra bytes the producer could use soon.
        want: u32,
    },
    /// The consumer side grants `bytes` more bytes of buffer to the channel.
    Credit {
        /// The channel.
        channel: WireChannel,
        /// Bytes granted.
        bytes: u32,
    },
    /// The producer closed the channel; `sent` is the total payload bytes it sent, so the
    /// receiver can return unused credit to its pool.
    End {
        /// The channel.
        channel: WireChannel,
        /// Total payload bytes sent on the channel.
        sent: u64,
    },
    /// The producer dropped the channel without closing it: the stream is incomplete.
    Abort {
        /// The channel.
        channel: WireChannel,
    },
    /// The consumer side will take no more data on the channel.
    Cancel {
        /// The channel.
        channel: WireChannel,
        /// Why.
        code: CancelCode,
    },
    /// Liveness probe; the peer answers with `Pong` carrying the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The nonce of the ping answered.
        nonce: u64,
    },
}

impl Frame {
    /// The frame kind's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Challenge { .. } => "Challenge",
            Frame::Proof { .. } => "Proof",
            Frame::Hello { .. } => "Hello",
            Frame::Ack { .. } => "Ack",
            Frame::CancelJob { .. } => "CancelJob",
            Frame::JobFailed { .. } => "JobFailed",
            Frame::Reserved { .. } => "Reserved",
            Frame::JobRefused { .. } => "JobRefused",
            Frame::GoAway { .. } => "GoAway",
            Frame::Open { .. } => "Open",
            Frame::Data { .. } => "Data",
            Frame::Batch { .. } => "Batch",
            Frame::Backlog { .. } => "Backlog",
            Frame::Credit { .. } => "Credit",
            Frame::End { .. } => "End",
            Frame::Abort { .. } => "Abort",
            Frame::Cancel { .. } => "Cancel",
            Frame::Ping { .. } => "Ping",
            Frame::Pong { .. } => "Pong",
        }
    }
}
