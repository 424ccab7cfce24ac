//! The node core: one node's whole protocol state, driven by the runtime.
//!
//! [`NodeCore`] owns the peers (what is queued for each other node), the connections
//! (handshake and liveness), the producers' outgoing channels with their credit, and the
//! consumers' incoming channels with their credit pools. It never blocks and never does I/O.
//!
//! # Driving it
//! - Inputs: [`NodeCore::handle_dialed`], [`NodeCore::handle_dial_failed`],
//!   [`NodeCore::handle_accepted`], [`NodeCore::handle_bytes`],
//!   [`NodeCore::handle_link_closed`], [`NodeCore::handle_timeout`], and the application
//!   commands (`open_producer`, `try_send`, `close_producer`, `open_consumer`, `poll_recv`, …).
//! - Outputs: after any input, drain [`NodeCore::poll_event`] until `None` and act on each
//!   event; when a link has a `Transmit` event (or its writer is idle), call
//!   [`NodeCore::poll_transmit`] and write what it returns; call `handle_timeout` at least
//!   every [`NodeCore::tick`] (a longer gap is taken for a stall of this node, which does
//!   not count against its peers), and at [`NodeCore::poll_timeout`] (re-read it whenever
//!   [`NodeCore::take_timer_changed`] says so).
//!
//! # Invariants
//! - Data reaches a peer's queue only against credit its consumer granted, so the bytes
//!   queued for any consumer anywhere are bounded by that consumer's pool.
//! - Control frames leave before data; `End`/`Abort` leave in order after the channel's data.
//! - Incoming bytes are always consumed: nothing here waits for a consumer to read.

mod admission;
mod budget;
mod consumer;
mod consumers;
mod dial;
mod dispatch;
pub mod error;
mod handshake;
mod invariants;
mod jobs;
mod lifecycle;
mod limits;
mod link;
pub mod metrics;
mod parking;
mod producer;
mod proof;
mod session;
mod state;
mod table;
mod transmit;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::batch::BATCH_BODY_MAX;
use crate::jitter::Jitter;
use crate::map::Map;

use crate::codec::Decoder;
use crate::config::{Config, ConfigError};
use crate::credit::SendPolicy;
use crate::frame::Frame;
use crate::ids::{Endpoint, JobId, NodeId};

pub use admission::Admission;
pub use consumer::{Arrival, Recv};
pub use error::{ExchangeError, LinkCause, Role, Scope};
pub use link::DialFailure;
pub use producer::TrySendError;
pub use state::LinkId;
pub use transmit::Transmit;

use consumers::ConsumerTable;
use parking::ParkedChannels;
use state::{InChannel, InKey, Link, LocalKey, OutChannel, OutKey, Peer, PeerState, Producer};
use table::JobTable;

/// Something the runtime must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Open a connection to `peer` and report it with `handle_dialed` or
    /// `handle_dial_failed`. Every dial must be reported: until then it holds one of the
    /// node's `Config::max_dials_in_flight` slots.
    Dial {
        /// The node to dial.
        peer: NodeId,
    },
    /// The link has bytes to send: call `poll_transmit`.
    Transmit {
        /// The link.
        link: LinkId,
    },
    /// The link is closing: send what `poll_transmit` still returns, then shut the socket
    /// and call `handle_link_closed`.
    Close {
        /// The link.
        link: LinkId,
        /// Why it closes, to be logged.
        cause: LinkCause,
    },
    /// A producer's channel to `consumer` can make progress: credit arrived for the
    /// message it held back, or the channel failed (the next `try_send` says how).
    ProducerReady {
        /// Its job.
        job: JobId,
        /// Its slot.
        slot: u32,
        /// The consumer whose channel changed.
        consumer: Endpoint,
    },
    /// A job queued by `admit_job` is admitted: its endpoints may open.
    Admitted {
        /// The job.
        job: JobId,
    },
    /// A job queued by `admit_job` waited too long and failed.
    AdmissionFailed {
        /// The job.
        job: JobId,
        /// Why.
        error: ExchangeError,
    },
    /// `peer` was declared dead (unreachable past the grace period, refusing
    /// connections, restarted, or breaking the protocol): the jobs spanning it failed here.
    PeerDead {
        /// The node.
        peer: NodeId,
        /// Why.
        cause: LinkCause,
        /// The jobs that failed on this node because of it.
        jobs_failed: Vec<JobId>,
    },
    /// A link to `peer` came up: a fresh session, or one resumed after `down` (to be
    /// logged).
    LinkUp {
        /// The node.
        peer: NodeId,
        /// The link.
        link: LinkId,
        /// How long the peer had no link, if the session resumed.
        resumed_after: Option<Duration>,
    },
    /// A job's record on this node retired: it ended here, well or with `failure` (to be
    /// logged).
    JobEnded {
        /// The job.
        job: JobId,
        /// Why it failed, if it did.
        failure: Option<ExchangeError>,
    },
    /// A consumer has something to read (a message, an error, or the end).
    ConsumerReady {
        /// Its job.
        job: JobId,
        /// Its slot.
        slot: u32,
    },
}

/// Counters describing what the core holds right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections carrying traffic.
    pub links_up: usize,
    /// Dials under way: connecting, or connected and in their handshake.
    pub dials_in_flight: usize,
    /// Connections closing: their last frames are being written, or their socket has not
    /// been reported gone yet (`handle_link_closed`).
    pub closing_connections: usize,
    /// Outgoing channels.
    pub out_channels: usize,
    /// Incoming channels (attached or parked).
    pub in_channels: usize,
    /// Incoming channels waiting for their consumer.
    pub parked_channels: usize,
    /// Payload bytes queued to be sent, all peers.
    pub send_queued_bytes: u64,
    /// Bytes received and not yet read (payload and per-message overhead), all consumers.
    pub recv_queued_bytes: u64,
    /// Payload bytes sent and kept until the peer acknowledges them, all peers.
    pub retained_bytes: u64,
    /// Jobs with a record here: live, or created by a peer's frame and not yet expired.
    pub jobs: usize,
    /// Ids of finished jobs remembered (at most `Config::finished_jobs_kept`).
    pub finished_jobs: usize,
}

/// Credit figures of one consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsumerCredit {
    /// The pool's capacity.
    pub capacity: u64,
    /// Granted and not yet consumed or returned.
    pub outstanding: u64,
    /// Highest `outstanding` so far: an upper bound of what its channels ever held.
    pub peak: u64,
}

/// The protocol state of one node. See the module docs for how to drive it.
#[derive(Debug)]
pub struct NodeCore {
    config: Config,
    send_policy: SendPolicy,
    decoder: Decoder,
    peers: Map<NodeId, Peer>,
    links: Map<LinkId, Link>,
    next_link: u64,
    /// Nonces handed out so far (see `proof`).
    nonces: u64,
    /// What the node did since it started.
    counters: metrics::Counters,
    /// Dials in flight and peers waiting for one.
    dials: dial::Dials,
    producers: JobTable<LocalKey, Producer>,
    out_channels: JobTable<OutKey, OutChannel>,
    /// The consumers, with the credit they granted and the bytes they hold unread.
    consumers: ConsumerTable,
    in_channels: JobTable<InKey, InChannel>,
    /// Incoming channels whose consumer does not exist yet.
    parked: ParkedChannels,
    /// Producers whose parked channel expired before their consumer opened, by consumer.
    expired: Map<LocalKey, Vec<Endpoint>>,
    /// The same, oldest first, to bound how many are remembered.
    expired_order: VecDeque<(LocalKey, Endpoint)>,
    grant_scratch: Vec<(InKey, u32)>,
    events: VecDeque<Event>,
    /// `pump_local` is on the stack; nested calls leave the work to it.
    pumping: bool,
    /// The latest time any `handle_*` call passed in.
    now: Instant,
    /// When liveness was last judged (`handle_timeout`, or a dial failure): a longer gap
    /// than the runtime promises between timer calls (see `tick`) means this node itself
    /// was stalled.
    last_judged: Instant,
    /// Jitter for redial backoff.
    rng: Jitter,
    /// How long each resumed link was down, oldest first (the most recent `MAX_RESUMES`).
    resumes: VecDeque<Duration>,
    /// Admission to the memory budget: the queue and what admitted jobs reserved.
    admission: admission::AdmissionQueue,
    /// Producers refused for lack of send buffer.
    send_waiters: budget::SendWaiters,
    /// Bytes all peers hold on the send side (see `Peer::buffered`), kept up to date
    /// wherever a peer's queue or retained frames change.
    send_buffered: u64,
    /// Highest buffered bytes seen (see `peak_buffered`).
    peak_buffered: u64,
    /// A deadline earlier than the regular tick was set since `take_timer_changed`.
    timer_changed: bool,
    /// The live jobs: which nodes they span, whether they failed, their admission. The
    /// tables above count their rows per job; a job's record retires when its rows, its
    /// application handles and its admission wait are all gone (see `jobs`).
    jobs: Map<JobId, jobs::JobState>,
    /// Ids of recently finished jobs, to drop their late frames and refuse reuse.
    finished: jobs::RecentJobs,
    /// Job records created by peers' frames, oldest first, to drop those the application
    /// never names (entries of jobs named or gone meanwhile are skipped).
    orphans: VecDeque<(Instant, JobId)>,
    /// `begin_shutdown` was called: nothing new starts.
    shutting_down: bool,
}

/// How many link resume durations the core remembers.
const MAX_RESUMES: usize = 4096;

impl NodeCore {
    /// A core for the node described by `config`, starting at time `now`.
    pub fn new(config: Config, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let send_policy = SendPolicy {
            want: config.credit_want,
            low_water: config.credit_low_water,
        };
        let decoder = Decoder::new(config.max_frame_body());
        let config_seed = config.incarnation ^ u64::from(config.node.0);
        let mut peers = Map::default();
        peers.insert(config.node, Peer::new(PeerState::Local, config.quantum));
        Ok(Self {
            config,
            send_policy,
            decoder,
            peers,
            links: Map::default(),
            next_link: 0,
            nonces: 0,
            counters: metrics::Counters::default(),
            dials: dial::Dials::default(),
            producers: JobTable::new(|key, _| key.0),
            out_channels: JobTable::new(|_, ch: &OutChannel| ch.producer.0),
            consumers: ConsumerTable::new(),
            in_channels: JobTable::with_parties(|_, ch: &InChannel| ch.consumer.0, |key| key.0 .0),
            parked: ParkedChannels::default(),
            expired: Map::default(),
            expired_order: VecDeque::new(),
            grant_scratch: Vec::new(),
            events: VecDeque::new(),
            pumping: false,
            now,
            last_judged: now,
            rng: Jitter::new(config_seed),
            resumes: VecDeque::new(),
            timer_changed: false,
            admission: admission::AdmissionQueue::default(),
            send_waiters: budget::SendWaiters::default(),
            send_buffered: 0,
            peak_buffered: 0,
            jobs: Map::default(),
            finished: jobs::RecentJobs::default(),
            orphans: VecDeque::new(),
            shutting_down: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.config.node
    }

    /// The earliest moment `handle_timeout` has work to do beyond its regular tick (a
    /// redial after backoff), if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.redial_at).min()
    }

    /// Whether a deadline was set since the last call: the runtime re-reads
    /// `poll_timeout` then.
    pub fn take_timer_changed(&mut self) -> bool {
        std::mem::take(&mut self.timer_changed)
    }

    /// The longest interval allowed between two `handle_timeout` calls.
    pub fn tick(&self) -> Duration {
        (self.config.ping_interval / 4)
            .min(self.config.dial_defer / 4)
            .max(Duration::from_millis(5))
    }

    /// How long each link that resumed after a loss was down (the most recent ones).
    pub fn resume_times(&self) -> Vec<Duration> {
        self.resumes.iter().copied().collect()
    }

    /// Records the outage of a link that resumed.
    /// What the node did since it started.
    pub fn counters(&self) -> &metrics::Counters {
        &self.counters
    }

    fn record_resume(&mut self, peer: NodeId, down: Duration) {
        let counters = self.counters.peer(peer);
        counters.resumes += 1;
        counters.down += down;
        if self.resumes.len() == MAX_RESUMES {
            self.resumes.pop_front();
        }
        self.resumes.push_back(down);
    }

    /// The next event for the runtime, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// What the core holds right now.
    pub fn stats(&self) -> Stats {
        Stats {
            links_up: self
                .peers
                .values()
                .filter(|p| matches!(p.state, PeerState::Up(_)))
                .count(),
            dials_in_flight: self.dials.in_flight_count(),
            closing_connections: self
                .links
                .values()
                .filter(|l| l.phase == state::Phase::Closing)
                .count(),
            out_channels: self.out_channels.len(),
            in_channels: self.in_channels.len(),
            parked_channels: self.parked.len(),
            send_queued_bytes: self
                .peers
                .values()
                .map(|p| p.data.queued_bytes() as u64)
                .sum(),
            recv_queued_bytes: self.consumers.unread(),
            retained_bytes: self
                .peers
                .values()
                .map(|p| p.session.retained_bytes())
                .sum(),
            jobs: self.jobs.len(),
            finished_jobs: self.finished.len(),
        }
    }

    /// Credit figures of consumer `slot` of `job`, if it is open here.
    pub fn consumer_credit(&self, job: JobId, slot: u32) -> Option<ConsumerCredit> {
        self.consumers.get(&(job, slot)).map(|c| ConsumerCredit {
            capacity: c.pool.capacity(),
            outstanding: c.pool.outstanding(),
            peak: c.pool.peak(),
        })
    }

    /// Queues a control frame for `peer` and wakes whatever carries it.
    fn push_control(&mut self, peer: NodeId, frame: Frame) {
        let quantum = self.config.quantum;
        self.peers
            .entry(peer)
            .or_insert_with(|| Peer::new(PeerState::Idle, quantum))
            .control
            .push_back(frame);
        self.wake_peer(peer);
    }

    /// Makes sure a link to `peer` exists or is being made, even with nothing to send.
    fn ensure_peer(&mut self, peer: NodeId) {
        let quantum = self.config.quantum;
        self.peers
            .entry(peer)
            .or_insert_with(|| Peer::new(PeerState::Idle, quantum));
        self.wake_peer(peer);
    }

    fn wake_peer(&mut self, peer: NodeId) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        match p.state {
            PeerState::Local => self.pump_local(),
            PeerState::Up(link) => self.wake_link(link),
            PeerState::Idle => {
                // When a consumer here expects a producer there, the peer needs the link
                // too, and the lower id dials: wait a moment for its connection rather
                // than open a second one.
                let peer_will_dial = peer < self.config.node && self.expects_data_from(peer);
                if !peer_will_dial {
                    self.request_dial(peer);
                } else if let Some(p) = self.peers.get_mut(&peer) {
                    p.state = PeerState::AwaitingInbound;
                    p.redial_at = None;
                }
            }
            PeerState::Dialing | PeerState::AwaitingInbound => {}
        }
    }

    /// Whether a consumer here still expects data from a producer on `peer`.
    fn expects_data_from(&self, peer: NodeId) -> bool {
        self.consumers
            .values()
            .any(|c| c.remaining.iter().any(|p| p.node == peer))
    }

    fn wake_link(&mut self, link: LinkId) {
        if let Some(l) = self.links.get_mut(&link) {
            if !l.wake_pending {
                l.wake_pending = true;
                self.events.push_back(Event::Transmit { link });
            }
        }
    }

    /// The next new frame for `peer`: control frames first, then data in fair order. For a
    /// remote peer, a small message and the small messages queued right behind it on its
    /// channel (as far as the channel's turn goes) leave as one `Batch` frame.
    fn next_outgoing(&mut self, peer: NodeId) -> Option<Frame> {
        let batch_limit = if peer == self.config.node {
            0 // delivered in memory: nothing to save by packing
        } else {
            BATCH_BODY_MAX
        };
        loop {
            let p = self.peers.get_mut(&peer)?;
            if let Some(frame) = p.control.pop_front() {
                return Some(frame);
            }
            let (key, item) =
                p.change_buffered(&mut self.send_buffered, |p| p.pop_data(batch_limit))?;
            // A channel retired meanwhile yields nothing: try the next item.
            if let Some(frame) = self.item_to_frame(key, item) {
                return Some(frame);
            }
        }
    }

    /// Delivers everything queued for this node itself, as a remote peer would receive it.
    fn pump_local(&mut self) {
        if self.pumping {
            return;
        }
        self.pumping = true;
        let me = self.config.node;
        while let Some(frame) = self.next_outgoing(me) {
            if let Err(reason) = self.handle_frame(me, frame) {
                // Both ends are this node: a violation here is a bug, not hostile input.
                if cfg!(debug_assertions) {
                    panic!("local protocol violation: {reason}");
                }
            }
        }
        self.wake_send_waiters();
        self.pumping = false;
    }
}
