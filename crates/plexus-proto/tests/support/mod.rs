//! A deterministic multi-node harness for [`NodeCore`], with virtual time.
//!
//! [`Net`] owns one core per node (`NodeId(0..n)`, one cluster) and plays the runtime for
//! all of them, as quinn-proto's `Pair::drive` does for two endpoints:
//! - `Dial` events become in-memory connections: a pair of byte pipes, one per direction.
//! - A link end is polled with `poll_transmit` when the core signalled it (`Transmit`) and
//!   again after every poll that produced bytes (the writer went idle), as long as its
//!   outgoing pipe is below a socket-buffer-like threshold. A core that forgets to signal
//!   a link therefore stalls here, as it would stall a real runtime.
//! - Bytes are delivered to the other end in chunks of random size (seeded), so frames are
//!   split at arbitrary points.
//! - `Close` events are honoured: what the core still sends is flushed and delivered, then
//!   both ends see `handle_link_closed`.
//! - `ProducerReady` / `ConsumerReady` are recorded per node for the tests to inspect.
//!
//! Time only moves in [`Net::advance`]. Every byte crossing a pipe between two cores is
//! decoded a second time by an audit that checks the credit rule of the protocol: in each
//! direction of a session between two nodes (which outlives its connections), the payload
//! a channel's `Data` frames carry never exceeds the credit its sender had *received* for
//! that channel when it wrote the frame. The audit numbers channel frames as the session
//! layer does, so frames written again after a resume are not counted twice; it follows
//! each handshake (the acceptor's `Hello` says whether the session resumed, and from which
//! frame each side resends) and forgets a session that starts afresh. It also checks that,
//! within each `poll_transmit`, new control frames precede new channel frames.
//!
//! Raw connections ([`Net::raw_connect`]) let a test play a hostile peer byte by byte.
//!
//! Failures:
//! - [`Net::cut`] breaks the connections between two nodes (both ends see an `Io` close);
//!   [`Net::arm_cut`] does it exactly after the k-th frame crossed any connection, or in
//!   the middle of the next one.
//! - [`Net::freeze`] hangs a node (a stopped process): it runs nothing; connections to it
//!   are accepted by its "kernel" but only handed to its core when it thaws.
//! - [`Net::kill`] stops a node for good: its connections close (peers see an `Io` close)
//!   and dials to it are refused ([`DialFailure::Refused`]).
//! - [`Net::restart`] kills a node and starts a fresh core with a new incarnation at the
//!   same id.
//! - [`Net::partition`] cuts the connections between two nodes, and dials between them
//!   time out ([`DialFailure::Other`], after [`Net::dial_timeout`]) until [`Net::heal`].
//!
//! The harness also records, after every step, the most payload each node retained for
//! resending ([`Net::peak_retained`]).
//!
//! Determinism: every choice the harness makes follows its seed, and time is virtual. The
//! core's own maps use a per-process random hasher, so outputs that depend on their
//! iteration order (which of several events comes first) may differ between runs; tests
//! assert only outcomes that must hold in every order.
#![allow(dead_code)] // Each test binary uses its own subset of the harness.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use plexus_proto::auth::Secret;
use plexus_proto::codec::{self, Decoder};
use plexus_proto::frame::Frame;
use plexus_proto::node::{ConsumerCredit, DialFailure};
use plexus_proto::{
    Bytes, Config, Endpoint, Event, ExchangeError, JobId, LinkCause, LinkId, NodeCore, NodeId,
    Recv, Stats, Transmit, TrySendError, WireChannel,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The cluster id every node of a [`Net`] shares.
pub const CLUSTER: u64 = 0x5EED_CAFE;

/// The secret every node of a [`Net`] shares.
pub fn secret() -> Secret {
    Secret::new(*b"the test cluster's secret").expect("long enough")
}

/// Shorthand for an endpoint.
pub fn ep(node: u32, slot: u32) -> Endpoint {
    Endpoint::new(NodeId(node), slot)
}

/// Who is at one end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// A core, and its id for the connection.
    Node { node: usize, link: LinkId },
    /// The test itself, writing and reading raw bytes.
    Raw,
    /// A connection to a hung node, accepted by its kernel but not yet by its core: it
    /// becomes a `Node` end when the node thaws.
    Backlog { node: usize },
}

/// One end of a connection.
#[derive(Debug)]
struct End {
    owner: Owner,
    /// Bytes this end wrote that the other end has not received yet.
    out: BytesMut,
    /// Bytes delivered to this end that its core has not consumed yet (a partial frame),
    /// or, for a raw end, everything it received.
    rx: BytesMut,
    /// The core signalled `Transmit`, or the last poll produced bytes: poll again.
    want_poll: bool,
    /// Audit copy of the bytes this end wrote, decoded as they are written.
    audit_tx: BytesMut,
    /// Audit copy of the bytes delivered to this end, decoded as they arrive.
    audit_rx: BytesMut,
}

impl End {
    fn new(owner: Owner) -> Self {
        Self {
            owner,
            out: BytesMut::new(),
            rx: BytesMut::new(),
            want_poll: false,
            audit_tx: BytesMut::new(),
            audit_rx: BytesMut::new(),
        }
    }
}

/// One in-memory connection. End 0 dialled (or is raw), end 1 accepted.
#[derive(Debug)]
struct Conn {
    ends: [End; 2],
    open: bool,
    /// Whether the credit audit runs on this connection (both ends are cores).
    audited: bool,
    /// The `received` count of the dialler's `Hello`, once written.
    dialler_received: Option<u64>,
}

/// The audit's view of one direction (sender → receiver) of the session between two nodes.
#[derive(Debug, Default)]
struct Direction {
    /// Number of the next channel frame the sender writes on its current connection.
    tx_next: u64,
    /// One past the highest number written so far: lower numbers are resends.
    tx_high: u64,
    /// Number of the next channel frame delivered to the receiver.
    rx_next: u64,
    /// One past the highest number delivered so far.
    rx_high: u64,
    /// Per channel of this direction: credit the sender received, payload it wrote.
    credit: HashMap<WireChannel, (u64, u64)>,
}

/// Whether a frame is numbered by the session layer (every frame but the link's own).
fn is_channel_frame(frame: &Frame) -> bool {
    !matches!(
        frame,
        Frame::Challenge { .. }
            | Frame::Proof { .. }
            | Frame::Hello { .. }
            | Frame::GoAway { .. }
            | Frame::Ping { .. }
            | Frame::Pong { .. }
            | Frame::Ack { .. }
    )
}

/// A close the harness saw: a `Close` event of a core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The node that closed the link.
    pub node: NodeId,
    /// Its id for the link.
    pub link: LinkId,
    /// The cause it gave.
    pub cause: LinkCause,
    /// Virtual time of the event.
    pub at: Instant,
}

/// What the credit audit found so far.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    /// Messages checked, whether in `Data` or `Batch` frames.
    pub data_messages: u64,
    /// `Batch` frames among them.
    pub batch_frames: u64,
    /// `Credit` frames counted.
    pub credit_frames: u64,
    /// Payload bytes checked.
    pub data_bytes: u64,
    /// Every breach of the credit rule, and any byte stream that failed to decode.
    pub violations: Vec<String>,
}

/// What [`Net::recv_all`] drained from a consumer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Messages, in the order `poll_recv` returned them.
    pub messages: Vec<(Endpoint, Bytes)>,
    /// Errors, in order.
    pub errors: Vec<ExchangeError>,
    /// Whether `poll_recv` returned `Finished`.
    pub finished: bool,
}

/// A handle on a raw connection the test drives byte by byte: the connection, and which
/// of its ends the test plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawConn(usize, usize);

/// A cut armed with [`Net::arm_cut`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutPlan {
    /// Cut once this many frames have crossed (all core-to-core connections counted).
    pub after_frames: u64,
    /// Then deliver up to this many bytes of a next frame (never all of it) before cutting.
    pub partial: usize,
}

/// A cut that happened by plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FiredCut {
    /// The plan.
    pub plan: CutPlan,
    /// Frames that had crossed when it fired.
    pub frames: u64,
    /// Bytes of an incomplete frame delivered just before the cut.
    pub partial_bytes: usize,
    /// The two nodes cut apart.
    pub nodes: (usize, usize),
    /// Virtual time.
    pub at: Instant,
}

/// A dial across a partition, to be reported as timed out.
#[derive(Clone, Copy, Debug)]
struct PendingDialFailure {
    at: Instant,
    node: usize,
    generation: u32,
    peer: NodeId,
}

/// A set of nodes connected by in-memory pipes, driven deterministically.
#[derive(Debug)]
pub struct Net {
    nodes: Vec<NodeCore>,
    /// Virtual time: starts at one real `Instant` and only moves in [`Net::advance`].
    pub now: Instant,
    rng: SmallRng,
    /// Bytes are delivered in chunks of `1..=max_chunk` (random).
    pub max_chunk: usize,
    /// `poll_transmit` is asked for up to `1..=max_transmit` bytes (random), and a link's
    /// writer is polled only while its outgoing pipe holds less than this.
    pub max_transmit: usize,
    /// A `drive` call panics after this many steps without quiescing.
    pub max_steps: usize,
    conns: Vec<Conn>,
    ends_by_link: HashMap<(usize, LinkId), (usize, usize)>,
    /// Every `Close` event seen, in order.
    pub closes: Vec<Closed>,
    /// Every `Dial` event seen, as (dialler, target).
    pub dials: Vec<(NodeId, NodeId)>,
    /// Every `PeerDead` event seen, as (node, the peer it declared dead, the jobs that
    /// failed there), in order.
    pub deaths: Vec<(usize, NodeId, Vec<JobId>)>,
    /// Hung nodes: no events, timers, reads or writes until thawed.
    frozen: Vec<bool>,
    /// Killed nodes: their core is never called again; dials to them are refused.
    down: Vec<bool>,
    /// Bumped each time a node is killed or restarted: application state (outboxes,
    /// inboxes) opened under another generation is gone.
    generation: Vec<u32>,
    /// The configuration each node was (last) started with.
    configs: Vec<Config>,
    /// Partitioned node pairs (lower index first).
    blocked: HashSet<(usize, usize)>,
    /// How long a dial across a partition takes to fail.
    pub dial_timeout: Duration,
    /// Nodes whose dials connect to a raw end (see [`Net::intercept_dials_to`]).
    intercept: HashSet<NodeId>,
    /// Raw connections made by intercepted dials: (dialler, peer dialled, the connection).
    pub intercepted: Vec<(usize, NodeId, RawConn)>,
    pending_dial_failures: Vec<PendingDialFailure>,
    /// Closes a hung node will only see when it thaws.
    pending_closes: Vec<(usize, LinkId, LinkCause)>,
    /// Frames that crossed any core-to-core connection so far (fully delivered).
    frames_crossed: u64,
    /// Cuts armed, earliest first.
    cut_plans: VecDeque<CutPlan>,
    /// Cuts that fired.
    pub fired_cuts: Vec<FiredCut>,
    /// For each `Hello` that crossed a core-to-core connection: the frame count right
    /// after it, and whether it answered a dialler's (`true`) or was a dialler's.
    pub hellos_crossed: Vec<(u64, bool)>,
    /// Highest `retained_bytes` of each node seen after any step.
    peak_retained: Vec<u64>,
    producer_ready: Vec<BTreeSet<(JobId, u32)>>,
    channel_ready: Vec<BTreeSet<(JobId, u32, Endpoint)>>,
    consumer_ready: Vec<BTreeSet<(JobId, u32)>>,
    /// Per node: admission outcomes of queued jobs (`None`: admitted), in order.
    admissions: Vec<Vec<(JobId, Option<ExchangeError>)>>,
    audit: Audit,
    audit_decoder: Decoder,
    /// Session directions by (sender, receiver) node.
    directions: HashMap<(usize, usize), Direction>,
}

impl Net {
    /// `n` nodes with the default seed; `config_fn` adjusts each node's configuration.
    pub fn new(n: usize, config_fn: impl FnMut(&mut Config)) -> Self {
        Self::with_seed(n, 0x0DDB_A115, config_fn)
    }

    /// `n` nodes whose byte chunking follows `seed`.
    pub fn with_seed(n: usize, seed: u64, mut config_fn: impl FnMut(&mut Config)) -> Self {
        // The cores' hash maps, and so their iteration orders, follow the seed too.
        plexus_proto::map::seed_this_thread(seed);
        let now = Instant::now();
        let configs: Vec<Config> = (0..n)
            .map(|i| {
                let mut config = Config::new(node_id(i), CLUSTER, secret());
                config_fn(&mut config);
                config
            })
            .collect();
        let nodes: Vec<NodeCore> = configs
            .iter()
            .map(|config| NodeCore::new(config.clone(), now).expect("test configuration is valid"))
            .collect();
        let largest = nodes
            .iter()
            .map(|c| c.config().max_frame_body())
            .max()
            .unwrap_or(0);
        Self {
            nodes,
            now,
            rng: SmallRng::seed_from_u64(seed),
            max_chunk: 1500,
            max_transmit: 16 * 1024,
            max_steps: 2_000_000,
            conns: Vec::new(),
            ends_by_link: HashMap::new(),
            closes: Vec::new(),
            dials: Vec::new(),
            deaths: Vec::new(),
            frozen: vec![false; n],
            down: vec![false; n],
            generation: vec![0; n],
            configs,
            blocked: HashSet::new(),
            dial_timeout: Duration::from_millis(200),
            intercept: HashSet::new(),
            intercepted: Vec::new(),
            pending_dial_failures: Vec::new(),
            pending_closes: Vec::new(),
            frames_crossed: 0,
            cut_plans: VecDeque::new(),
            fired_cuts: Vec::new(),
            hellos_crossed: Vec::new(),
            peak_retained: vec![0; n],
            producer_ready: vec![BTreeSet::new(); n],
            channel_ready: vec![BTreeSet::new(); n],
            consumer_ready: vec![BTreeSet::new(); n],
            admissions: vec![Vec::new(); n],
            audit: Audit::default(),
            audit_decoder: Decoder::new(largest),
            directions: HashMap::new(),
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the net has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The core of node `i`.
    pub fn node(&self, i: usize) -> &NodeCore {
        &self.nodes[i]
    }

    /// The core of node `i`, to call it directly.
    pub fn node_mut(&mut self, i: usize) -> &mut NodeCore {
        &mut self.nodes[i]
    }

    /// Counters of node `i`.
    pub fn stats(&self, i: usize) -> Stats {
        self.nodes[i].stats()
    }

    /// Credit figures of a consumer.
    pub fn consumer_credit(&self, i: usize, job: JobId, slot: u32) -> Option<ConsumerCredit> {
        self.nodes[i].consumer_credit(job, slot)
    }

    /// Whether node `i` runs (was not killed, or was restarted since).
    pub fn is_up(&self, i: usize) -> bool {
        !self.down[i]
    }

    /// How many times node `i` was killed or restarted.
    pub fn generation(&self, i: usize) -> u32 {
        self.generation[i]
    }

    /// Frames that fully crossed any core-to-core connection so far.
    pub fn frames_crossed(&self) -> u64 {
        self.frames_crossed
    }

    /// The highest `retained_bytes` node `i` reported after any step so far.
    pub fn peak_retained(&self, i: usize) -> u64 {
        self.peak_retained[i]
    }

    /// What the credit audit found so far.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Panics with the details if the audit found any breach of the credit rule.
    pub fn assert_credit_respected(&self) {
        assert!(
            self.audit.violations.is_empty(),
            "credit audit failed:\n{}",
            self.audit.violations.join("\n")
        );
    }

    /// Open connections between cores `a` and `b`, in either direction and in any phase.
    pub fn open_conns_between(&self, a: usize, b: usize) -> usize {
        self.conns
            .iter()
            .filter(|c| c.open && c.audited)
            .filter(|c| {
                let pair = (node_of(&c.ends[0]), node_of(&c.ends[1]));
                pair == (Some(a), Some(b)) || pair == (Some(b), Some(a))
            })
            .count()
    }

    /// Connections ever created between cores (raw ones excluded).
    pub fn conns_created(&self) -> usize {
        self.conns.iter().filter(|c| c.audited).count()
    }

    /// Takes the producers of node `i` woken by `ProducerReady` since the last call.
    pub fn take_producer_ready(&mut self, i: usize) -> BTreeSet<(JobId, u32)> {
        std::mem::take(&mut self.producer_ready[i])
    }

    /// Takes the producer channels of node `i` (job, producer slot, consumer) woken by
    /// `ProducerReady` since the last call.
    pub fn take_channel_ready(&mut self, i: usize) -> BTreeSet<(JobId, u32, Endpoint)> {
        std::mem::take(&mut self.channel_ready[i])
    }

    /// Admission outcomes of node `i`'s queued jobs since the last call.
    pub fn take_admissions(&mut self, i: usize) -> Vec<(JobId, Option<ExchangeError>)> {
        std::mem::take(&mut self.admissions[i])
    }

    /// Takes the consumers of node `i` woken by `ConsumerReady` since the last call.
    pub fn take_consumer_ready(&mut self, i: usize) -> BTreeSet<(JobId, u32)> {
        std::mem::take(&mut self.consumer_ready[i])
    }

    // -- application side ------------------------------------------------------------------

    /// Opens a producer; panics if the core refuses.
    pub fn open_producer(&mut self, i: usize, job: JobId, slot: u32, consumers: &[Endpoint]) {
        if let Err(e) = self.nodes[i].open_producer(job, slot, consumers.iter().copied()) {
            panic!("open_producer({i}, {job}, {slot}) failed: {e}");
        }
    }

    /// Opens a consumer; panics if the core refuses.
    pub fn open_consumer(&mut self, i: usize, job: JobId, slot: u32, producers: &[Endpoint]) {
        if let Err(e) = self.nodes[i].open_consumer(job, slot, producers.iter().copied()) {
            panic!("open_consumer({i}, {job}, {slot}) failed: {e}");
        }
    }

    /// `try_send` on node `i`.
    pub fn try_send(
        &mut self,
        i: usize,
        job: JobId,
        slot: u32,
        consumer: Endpoint,
        payload: Bytes,
    ) -> Result<(), TrySendError> {
        self.nodes[i].try_send(job, slot, consumer, payload)
    }

    /// Closes a producer; panics if the core refuses.
    pub fn close_producer(&mut self, i: usize, job: JobId, slot: u32) {
        if let Err(e) = self.nodes[i].close_producer(job, slot) {
            panic!("close_producer({i}, {job}, {slot}) failed: {e}");
        }
    }

    /// Drops a producer (aborting its channels if it was not closed).
    pub fn drop_producer(&mut self, i: usize, job: JobId, slot: u32) {
        self.nodes[i].drop_producer(job, slot);
    }

    /// Drops a consumer (cancelling its channels).
    pub fn drop_consumer(&mut self, i: usize, job: JobId, slot: u32) {
        self.nodes[i].drop_consumer(job, slot);
    }

    /// Drains `poll_recv` of a consumer until `Pending` or `Finished`.
    pub fn recv_all(&mut self, i: usize, job: JobId, slot: u32) -> Drained {
        let mut out = Drained::default();
        // Bounded: a consumer holds at most its pool of payload; this only guards the test.
        for _ in 0..10_000_000u64 {
            match self.nodes[i].poll_recv(job, slot) {
                Recv::Message(from, payload) => out.messages.push((from, payload)),
                Recv::Error(e @ ExchangeError::NoSuchEndpoint { .. }) => {
                    out.errors.push(e);
                    return out;
                }
                Recv::Error(e) => out.errors.push(e),
                Recv::Finished => {
                    out.finished = true;
                    return out;
                }
                Recv::Pending => return out,
            }
        }
        panic!("poll_recv of {job}/{slot} on node {i} never returned Pending or Finished");
    }

    // -- time and failures -------------------------------------------------------------------

    /// Moves virtual time forward by `dur`, in steps no longer than any node's `tick`,
    /// calling `handle_timeout` on every node and driving the net after each step.
    pub fn advance(&mut self, dur: Duration) {
        let tick = self
            .nodes
            .iter()
            .map(NodeCore::tick)
            .min()
            .unwrap_or(dur)
            .max(Duration::from_millis(1));
        let mut left = dur;
        while !left.is_zero() {
            let step = left.min(tick);
            left -= step;
            self.now += step;
            self.fire_timers();
        }
    }

    /// Whether node `i` runs now (neither killed nor hung).
    fn runs(&self, i: usize) -> bool {
        !self.down[i] && !self.frozen[i]
    }

    /// Reports the dials across partitions whose timeout has passed.
    fn fail_due_dials(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = self
            .pending_dial_failures
            .drain(..)
            .partition(|d| d.at <= now);
        self.pending_dial_failures = later;
        for d in due {
            if self.generation[d.node] == d.generation && self.runs(d.node) {
                self.nodes[d.node].handle_dial_failed(
                    d.peer,
                    DialFailure::Other,
                    "connection timed out",
                    now,
                );
            }
        }
    }

    /// Fires every node's timers at the current time (`handle_timeout(now)`), without
    /// moving time, then drives. A runtime does this whenever a timer it armed expires.
    pub fn fire_timers(&mut self) {
        self.fail_due_dials();
        let now = self.now;
        for i in 0..self.nodes.len() {
            if self.runs(i) {
                self.nodes[i].handle_timeout(now);
            }
        }
        self.drive();
    }

    /// The shortest `tick` of all nodes: how far a runtime may sleep between timer checks.
    pub fn tick(&self) -> Duration {
        self.nodes
            .iter()
            .map(NodeCore::tick)
            .min()
            .unwrap_or(Duration::from_millis(10))
    }

    /// Breaks every connection between cores `a` and `b`: bytes in flight are lost and both
    /// ends get `handle_link_closed` with an `Io` cause. Does not drive.
    pub fn cut(&mut self, a: usize, b: usize) {
        for c in 0..self.conns.len() {
            let conn = &self.conns[c];
            if !conn.open {
                continue;
            }
            let pair = (node_of(&conn.ends[0]), node_of(&conn.ends[1]));
            if pair != (Some(a), Some(b)) && pair != (Some(b), Some(a)) {
                continue;
            }
            self.shut(c);
            for e in 0..2 {
                if let Owner::Node { node, link } = self.conns[c].ends[e].owner {
                    self.notify_closed(node, link, LinkCause::Io("link cut".into()));
                }
            }
        }
    }

    /// Tells node `i` that its connection `link` is gone, now or (if it is hung) when it
    /// thaws. A killed node is told nothing.
    fn notify_closed(&mut self, i: usize, link: LinkId, cause: LinkCause) {
        if self.down[i] {
            return;
        }
        if self.frozen[i] {
            self.pending_closes.push((i, link, cause));
            return;
        }
        self.nodes[i].handle_link_closed(link, cause);
    }

    /// Hangs node `i`, as a stopped process: it handles no events and no timers, reads
    /// nothing and writes nothing. Bytes sent to it wait in the pipes; connections to it
    /// wait in its accept backlog.
    pub fn freeze(&mut self, i: usize) {
        self.frozen[i] = true;
    }

    /// Resumes a node hung by [`Net::freeze`]: it learns of the connections that closed
    /// meanwhile and accepts those that wait for it. Does not drive.
    pub fn thaw(&mut self, i: usize) {
        self.frozen[i] = false;
        let closes: Vec<_> = self.pending_closes.drain(..).collect();
        for (node, link, cause) in closes {
            if node == i {
                self.nodes[i].handle_link_closed(link, cause);
            } else {
                self.pending_closes.push((node, link, cause));
            }
        }
        for c in 0..self.conns.len() {
            if !self.conns[c].open {
                continue;
            }
            for e in 0..2 {
                if self.conns[c].ends[e].owner == (Owner::Backlog { node: i }) {
                    let link = self.nodes[i].handle_accepted(self.now);
                    self.conns[c].ends[e].owner = Owner::Node { node: i, link };
                    self.ends_by_link.insert((i, link), (c, e));
                }
            }
        }
    }

    /// Stops node `i` for good, as a crashed process: its connections close (peers see an
    /// `Io` close at once), dials to it are refused, and its core is never called again.
    /// Does not drive.
    pub fn kill(&mut self, i: usize) {
        if self.down[i] {
            return;
        }
        self.down[i] = true;
        self.frozen[i] = false;
        self.generation[i] += 1;
        self.pending_closes.retain(|(node, _, _)| *node != i);
        self.producer_ready[i].clear();
        self.channel_ready[i].clear();
        self.consumer_ready[i].clear();
        for c in 0..self.conns.len() {
            if !self.conns[c].open {
                continue;
            }
            let mine = self.conns[c].ends.iter().any(|end| node_of(end) == Some(i));
            if !mine {
                continue;
            }
            self.shut(c);
            for e in 0..2 {
                if let Owner::Node { node, link } = self.conns[c].ends[e].owner {
                    if node != i {
                        self.notify_closed(
                            node,
                            link,
                            LinkCause::Io("connection reset by peer".into()),
                        );
                    }
                }
            }
        }
    }

    /// Kills node `i` (if it runs) and starts a fresh core at the same id with a new
    /// incarnation, at the current time. Returns the new incarnation. Does not drive.
    pub fn restart(&mut self, i: usize) -> u64 {
        self.kill(i);
        let mut config = self.configs[i].clone();
        config.incarnation = config.incarnation.wrapping_add(0x1_0000).max(1);
        self.configs[i] = config.clone();
        self.nodes[i] = NodeCore::new(config.clone(), self.now).expect("valid configuration");
        self.down[i] = false;
        self.generation[i] += 1;
        self.peak_retained[i] = 0;
        config.incarnation
    }

    /// Partitions nodes `a` and `b`: their connections are cut and dials between them time
    /// out (after [`Net::dial_timeout`]) until [`Net::heal`]. Does not drive.
    pub fn partition(&mut self, a: usize, b: usize) {
        self.blocked.insert((a.min(b), a.max(b)));
        self.cut(a, b);
    }

    /// Ends the partition of `a` and `b`: later dials between them connect.
    pub fn heal(&mut self, a: usize, b: usize) {
        self.blocked.remove(&(a.min(b), a.max(b)));
    }

    /// Arms a cut: once `after_frames` frames in total have crossed core-to-core
    /// connections, the connection the next byte would cross is cut (both directions, all
    /// connections between its two nodes), after up to `partial` bytes of a frame that do
    /// not complete it. Plans fire in order of `after_frames`.
    pub fn arm_cut(&mut self, after_frames: u64, partial: usize) {
        let plan = CutPlan {
            after_frames,
            partial,
        };
        let at = self
            .cut_plans
            .iter()
            .position(|p| p.after_frames > after_frames)
            .unwrap_or(self.cut_plans.len());
        self.cut_plans.insert(at, plan);
    }

    /// Drops every armed cut that has not fired.
    pub fn disarm_cuts(&mut self) {
        self.cut_plans.clear();
    }

    /// Cuts armed and not fired yet.
    pub fn armed_cuts(&self) -> usize {
        self.cut_plans.len()
    }

    // -- raw peers ---------------------------------------------------------------------------

    /// Opens a connection to node `i` whose other end the test plays.
    pub fn raw_connect(&mut self, i: usize) -> RawConn {
        let link = self.nodes[i].handle_accepted(self.now);
        let c = self.conns.len();
        self.conns.push(Conn {
            ends: [
                End::new(Owner::Raw),
                End::new(Owner::Node { node: i, link }),
            ],
            open: true,
            audited: false,
            dialler_received: None,
        });
        self.ends_by_link.insert((i, link), (c, 1));
        RawConn(c, 0)
    }

    /// From now on, dials to `peer` (a node the net does not run) connect to a raw end the
    /// test plays, listed in [`Net::intercepted`], instead of being refused.
    pub fn intercept_dials_to(&mut self, peer: NodeId) {
        self.intercept.insert(peer);
    }

    /// Queues `bytes` from the raw end; they are delivered (in chunks) by `drive`.
    pub fn raw_send(&mut self, raw: RawConn, bytes: &[u8]) {
        self.conns[raw.0].ends[raw.1].out.extend_from_slice(bytes);
    }

    /// Queues the encoding of `frame` from the raw end.
    pub fn raw_send_frame(&mut self, raw: RawConn, frame: &Frame) {
        let mut buf = BytesMut::new();
        codec::encode(frame, &mut buf);
        self.raw_send(raw, &buf);
    }

    /// Proves, from the raw end of a connection the core accepted, to be `node` in
    /// `incarnation` with `secret` (as a member would, or an impostor with a wrong one):
    /// sends a `Challenge`, then the dialler's `Proof` over the core's answer. Returns the
    /// frames the raw end sent (to replay them).
    pub fn raw_prove(
        &mut self,
        raw: RawConn,
        node: NodeId,
        incarnation: u64,
        secret: &Secret,
    ) -> Vec<Frame> {
        let nonce = [0x5A; plexus_proto::auth::NONCE_LEN];
        let challenge = Frame::Challenge {
            version: plexus_proto::frame::PROTOCOL_VERSION,
            cluster: CLUSTER,
            node,
            incarnation,
            nonce,
        };
        self.raw_send_frame(raw, &challenge);
        self.drive();
        let answer = self.raw_frames(raw);
        let Some(Frame::Challenge {
            version,
            cluster,
            node: acceptor,
            incarnation: acceptor_incarnation,
            nonce: acceptor_nonce,
        }) = answer.first().cloned()
        else {
            panic!("the core did not answer the Challenge: {answer:?}");
        };
        let transcript = plexus_proto::auth::Transcript {
            version,
            cluster,
            dialler: plexus_proto::auth::Claim {
                node,
                incarnation,
                nonce,
            },
            acceptor: plexus_proto::auth::Claim {
                node: acceptor,
                incarnation: acceptor_incarnation,
                nonce: acceptor_nonce,
            },
        };
        let proof = Frame::Proof {
            proof: secret.prove(plexus_proto::auth::Role::Dialler, &transcript),
        };
        self.raw_send_frame(raw, &proof);
        self.drive();
        vec![challenge, proof]
    }

    /// Proves, from the raw end of a connection the core dialled, to be `node` in
    /// `incarnation` with `secret`: answers the core's `Challenge` with one of its own and
    /// the acceptor's `Proof`. The core then sends its `Proof` and its `Hello`.
    pub fn raw_prove_as_acceptor(
        &mut self,
        raw: RawConn,
        node: NodeId,
        incarnation: u64,
        secret: &Secret,
    ) {
        let sent = self.raw_frames(raw);
        let Some(&Frame::Challenge {
            version,
            cluster,
            node: dialler,
            incarnation: dialler_incarnation,
            nonce: dialler_nonce,
        }) = sent.first()
        else {
            panic!("the core did not open with a Challenge: {sent:?}");
        };
        let nonce = [0xA5; plexus_proto::auth::NONCE_LEN];
        let transcript = plexus_proto::auth::Transcript {
            version,
            cluster,
            dialler: plexus_proto::auth::Claim {
                node: dialler,
                incarnation: dialler_incarnation,
                nonce: dialler_nonce,
            },
            acceptor: plexus_proto::auth::Claim {
                node,
                incarnation,
                nonce,
            },
        };
        self.raw_send_frame(
            raw,
            &Frame::Challenge {
                version,
                cluster,
                node,
                incarnation,
                nonce,
            },
        );
        self.raw_send_frame(
            raw,
            &Frame::Proof {
                proof: secret.prove(plexus_proto::auth::Role::Acceptor, &transcript),
            },
        );
        self.drive();
    }

    /// Everything the core sent to the raw end so far, decoded. Undecodable bytes panic:
    /// a core must always send well-formed frames.
    pub fn raw_frames(&self, raw: RawConn) -> Vec<Frame> {
        let mut buf = self.conns[raw.0].ends[raw.1].rx.clone();
        let mut frames = Vec::new();
        loop {
            match self.audit_decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => panic!("core sent undecodable bytes to a raw peer: {e}"),
            }
        }
        frames
    }

    /// The raw peer drops its connection: the core sees an `Io` close. Does not drive.
    pub fn raw_close(&mut self, raw: RawConn) {
        if !self.conns[raw.0].open {
            return;
        }
        self.shut(raw.0);
        if let Owner::Node { node, link } = self.conns[raw.0].ends[1 - raw.1].owner {
            self.notify_closed(node, link, LinkCause::Io("closed by peer".into()));
        }
    }

    /// Whether the raw connection is still open.
    pub fn raw_is_open(&self, raw: RawConn) -> bool {
        self.conns[raw.0].open
    }

    /// The core's link id of a raw connection.
    pub fn raw_link(&self, raw: RawConn) -> LinkId {
        match self.conns[raw.0].ends[1 - raw.1].owner {
            Owner::Node { link, .. } => link,
            Owner::Raw | Owner::Backlog { .. } => {
                unreachable!("the other end of a raw connection is a core")
            }
        }
    }

    // -- driving -----------------------------------------------------------------------------

    /// Runs the net until no core has an event, no writer has anything to send and no pipe
    /// holds bytes. Panics if that takes more than `max_steps` steps.
    pub fn drive(&mut self) {
        for _ in 0..self.max_steps {
            if !self.step() {
                self.check_invariants();
                return;
            }
        }
        let busy: Vec<String> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.open)
            .map(|(i, c)| {
                format!(
                    "conn {i}: {:?}->{:?} {} bytes, {:?}->{:?} {} bytes, polls {}/{}",
                    c.ends[0].owner,
                    c.ends[1].owner,
                    c.ends[0].out.len(),
                    c.ends[1].owner,
                    c.ends[0].owner,
                    c.ends[1].out.len(),
                    c.ends[0].want_poll,
                    c.ends[1].want_poll
                )
            })
            .collect();
        panic!(
            "net did not quiesce within {} steps (livelock?)\n{}",
            self.max_steps,
            busy.join("\n")
        );
    }

    /// Every running core's cross-table invariants hold (see `NodeCore::check_invariants`).
    fn check_invariants(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            if !self.down[i] {
                if let Err(broken) = node.check_invariants() {
                    panic!("node {i}: invariant broken: {broken}");
                }
            }
        }
    }

    /// One round: all events, one poll per ready writer, one chunk per non-empty pipe.
    /// Returns whether anything happened.
    fn step(&mut self) -> bool {
        let mut progress = false;
        for i in 0..self.nodes.len() {
            if !self.runs(i) {
                continue;
            }
            while let Some(event) = self.nodes[i].poll_event() {
                progress = true;
                self.handle_event(i, event);
                if !self.runs(i) {
                    break;
                }
            }
        }
        for c in 0..self.conns.len() {
            for e in 0..2 {
                progress |= self.poll_writer(c, e);
            }
        }
        for c in 0..self.conns.len() {
            for e in 0..2 {
                progress |= self.deliver_chunk(c, e);
            }
        }
        for i in 0..self.nodes.len() {
            if !self.down[i] {
                let retained = self.nodes[i].stats().retained_bytes;
                self.peak_retained[i] = self.peak_retained[i].max(retained);
            }
        }
        progress
    }

    fn handle_event(&mut self, i: usize, event: Event) {
        match event {
            Event::Dial { peer } => self.dial(i, peer),
            Event::Transmit { link } => {
                if let Some(&(c, e)) = self.ends_by_link.get(&(i, link)) {
                    if self.conns[c].open {
                        self.conns[c].ends[e].want_poll = true;
                    }
                }
            }
            Event::Close { link, cause } => self.close(i, link, cause),
            Event::ProducerReady {
                job,
                slot,
                consumer,
            } => {
                self.producer_ready[i].insert((job, slot));
                self.channel_ready[i].insert((job, slot, consumer));
            }
            Event::ConsumerReady { job, slot } => {
                self.consumer_ready[i].insert((job, slot));
            }
            Event::PeerDead {
                peer, jobs_failed, ..
            } => self.deaths.push((i, peer, jobs_failed)),
            Event::Admitted { job } => self.admissions[i].push((job, None)),
            Event::AdmissionFailed { job, error } => self.admissions[i].push((job, Some(error))),
            // Only logged by a runtime.
            Event::LinkUp { .. } | Event::JobEnded { .. } => {}
        }
    }

    fn dial(&mut self, i: usize, peer: NodeId) {
        self.dials.push((node_id(i), peer));
        let j = peer.0 as usize;
        if self.intercept.contains(&peer) {
            let Some(link) = self.nodes[i].handle_dialed(peer, self.now) else {
                return;
            };
            let c = self.conns.len();
            let mut dialler = End::new(Owner::Node { node: i, link });
            dialler.want_poll = true;
            self.conns.push(Conn {
                ends: [dialler, End::new(Owner::Raw)],
                open: true,
                audited: false,
                dialler_received: None,
            });
            self.ends_by_link.insert((i, link), (c, 0));
            self.intercepted.push((i, peer, RawConn(c, 1)));
            return;
        }
        if j >= self.nodes.len() || self.down[j] {
            self.nodes[i].handle_dial_failed(
                peer,
                DialFailure::Refused,
                "connection refused",
                self.now,
            );
            return;
        }
        if self.blocked.contains(&(i.min(j), i.max(j))) {
            self.pending_dial_failures.push(PendingDialFailure {
                at: self.now + self.dial_timeout,
                node: i,
                generation: self.generation[i],
                peer,
            });
            return;
        }
        let Some(link) = self.nodes[i].handle_dialed(peer, self.now) else {
            return;
        };
        let acceptor = if self.frozen[j] {
            Owner::Backlog { node: j }
        } else {
            Owner::Node {
                node: j,
                link: self.nodes[j].handle_accepted(self.now),
            }
        };
        let c = self.conns.len();
        let mut dialler = End::new(Owner::Node { node: i, link });
        dialler.want_poll = true;
        self.conns.push(Conn {
            ends: [dialler, End::new(acceptor)],
            open: true,
            audited: true,
            dialler_received: None,
        });
        self.ends_by_link.insert((i, link), (c, 0));
        if let Owner::Node { node, link } = acceptor {
            self.ends_by_link.insert((node, link), (c, 1));
        }
    }

    /// Honours a `Close` event: flushes what the core still sends, delivers it, then both
    /// ends see the connection gone.
    fn close(&mut self, i: usize, link: LinkId, cause: LinkCause) {
        self.closes.push(Closed {
            node: node_id(i),
            link,
            cause: cause.clone(),
            at: self.now,
        });
        let Some(&(c, e)) = self.ends_by_link.get(&(i, link)) else {
            self.nodes[i].handle_link_closed(link, cause);
            return;
        };
        if !self.conns[c].open {
            return;
        }
        // Bounded: a closing link only has its last control frames to send.
        for _ in 0..16 {
            let mut transmit = Transmit::new();
            let more = self.nodes[i].poll_transmit(link, self.now, &mut transmit, usize::MAX);
            let wrote = self.write(c, e, transmit);
            if !more || !wrote {
                break;
            }
        }
        while self.deliver_chunk(c, e) {}
        self.shut(c);
        self.nodes[i].handle_link_closed(link, cause);
        if let Owner::Node { node, link } = self.conns[c].ends[1 - e].owner {
            // A hung node only notices when it runs again.
            self.notify_closed(node, link, LinkCause::Io("closed by peer".into()));
        }
    }

    /// Marks a connection closed and drops whatever its pipes still hold.
    fn shut(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        conn.open = false;
        for end in &mut conn.ends {
            end.out.clear();
            end.want_poll = false;
            if end.owner != Owner::Raw {
                end.rx.clear();
            }
        }
    }

    /// Polls the writer of end `e` of connection `c` if it is due. Returns whether it
    /// wrote anything.
    fn poll_writer(&mut self, c: usize, e: usize) -> bool {
        let conn = &self.conns[c];
        let end = &conn.ends[e];
        let Owner::Node { node, link } = end.owner else {
            return false;
        };
        if !conn.open || !end.want_poll || end.out.len() >= self.max_transmit || !self.runs(node) {
            return false;
        }
        let max = self.rng.gen_range(1..=self.max_transmit);
        let mut transmit = Transmit::new();
        self.nodes[node].poll_transmit(link, self.now, &mut transmit, max);
        let wrote = self.write(c, e, transmit);
        if !wrote {
            self.conns[c].ends[e].want_poll = false;
        }
        wrote
    }

    /// Appends what `transmit` holds to the outgoing pipe of end `e`, auditing it.
    fn write(&mut self, c: usize, e: usize, mut transmit: Transmit) -> bool {
        let mut chunks = Vec::new();
        transmit.take_chunks(&mut chunks);
        let mut wrote = false;
        let audited = self.conns[c].audited;
        for chunk in chunks {
            if chunk.is_empty() {
                continue;
            }
            wrote = true;
            let end = &mut self.conns[c].ends[e];
            end.out.extend_from_slice(&chunk);
            if audited {
                end.audit_tx.extend_from_slice(&chunk);
            }
        }
        if wrote && audited {
            self.audit_written(c, e);
        }
        wrote
    }

    /// Delivers one chunk from end `from` to the other end. Returns whether it did.
    fn deliver_chunk(&mut self, c: usize, from: usize) -> bool {
        let to = 1 - from;
        let len = self.conns[c].ends[from].out.len();
        if !self.conns[c].open || len == 0 {
            return false;
        }
        if node_of(&self.conns[c].ends[to]).is_some_and(|node| self.frozen[node]) {
            return false;
        }
        let mut n = self.rng.gen_range(1..=self.max_chunk.max(1)).min(len);
        let mut fire_after = None;
        if let (Some(&plan), true) = (self.cut_plans.front(), self.conns[c].audited) {
            let ends = self.frame_ends(c, from);
            if self.frames_crossed >= plan.after_frames {
                // Deliver a piece of the next frame that does not complete it, then cut.
                let piece = plan
                    .partial
                    .min(ends.first().map_or(len, |e| e.saturating_sub(1)));
                if plan.partial == 0 || piece > 0 {
                    n = piece;
                    fire_after = Some(plan);
                }
            } else {
                let need = (plan.after_frames - self.frames_crossed) as usize;
                if let Some(&end) = ends.get(need - 1) {
                    if n >= end {
                        n = end;
                        if plan.partial == 0 {
                            fire_after = Some(plan);
                        }
                    }
                }
            }
        }
        if n == 0 {
            if let Some(plan) = fire_after {
                self.fire_cut(c, plan, 0);
                return true;
            }
        }
        let chunk = self.conns[c].ends[from].out.split_to(n);
        match self.conns[c].ends[to].owner {
            Owner::Raw => self.conns[c].ends[to].rx.extend_from_slice(&chunk),
            Owner::Node { node, link } => {
                if self.conns[c].audited {
                    self.conns[c].ends[to].audit_rx.extend_from_slice(&chunk);
                    self.audit_delivered(c, to);
                }
                let mut rx = std::mem::take(&mut self.conns[c].ends[to].rx);
                rx.extend_from_slice(&chunk);
                self.nodes[node].handle_bytes(link, &mut rx, self.now);
                self.conns[c].ends[to].rx = rx;
            }
            Owner::Backlog { .. } => unreachable!("a hung node receives nothing"),
        }
        if let Some(plan) = fire_after {
            let partial = if plan.partial == 0 { 0 } else { n };
            self.fire_cut(c, plan, partial);
        }
        true
    }

    /// Offsets in the outgoing pipe of end `from` at which a frame ends, counting the
    /// partial frame the other end's audit already holds.
    fn frame_ends(&self, c: usize, from: usize) -> Vec<usize> {
        let held = &self.conns[c].ends[1 - from].audit_rx;
        let mut all = held.to_vec();
        all.extend_from_slice(&self.conns[c].ends[from].out);
        let mut ends = Vec::new();
        let mut at = 0;
        while let Some(head) = all.get(at..at + codec::LEN_FIELD) {
            let len = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
            let end = at + codec::LEN_FIELD + len;
            if end > all.len() {
                break;
            }
            ends.push(end - held.len());
            at = end;
        }
        ends
    }

    /// Fires the armed cut `plan` on connection `c`.
    fn fire_cut(&mut self, c: usize, plan: CutPlan, partial_bytes: usize) {
        self.cut_plans.pop_front();
        let (Some(a), Some(b)) = (
            node_of(&self.conns[c].ends[0]),
            node_of(&self.conns[c].ends[1]),
        ) else {
            return;
        };
        self.fired_cuts.push(FiredCut {
            plan,
            frames: self.frames_crossed,
            partial_bytes,
            nodes: (a, b),
            at: self.now,
        });
        self.cut(a, b);
    }

    /// The two nodes of connection `c`, writer of end `e` first.
    fn audit_pair(&self, c: usize, e: usize) -> Option<(usize, usize)> {
        Some((
            node_of(&self.conns[c].ends[e])?,
            node_of(&self.conns[c].ends[1 - e])?,
        ))
    }

    /// The acceptor `acceptor` wrote its `Hello` answering `dialler`: the session resumes
    /// (each side resends from what the other said it received) or starts afresh.
    fn audit_handshake(&mut self, c: usize, acceptor: usize, dialler: usize, reply: &Frame) {
        let Frame::Hello {
            peer_incarnation,
            received,
            ..
        } = reply
        else {
            return;
        };
        let dialler_received = self.conns[c].dialler_received.unwrap_or(0);
        if *peer_incarnation == 0 {
            self.directions.remove(&(acceptor, dialler));
            self.directions.remove(&(dialler, acceptor));
            return;
        }
        let to_dialler = self.directions.entry((acceptor, dialler)).or_default();
        to_dialler.tx_next = dialler_received;
        to_dialler.rx_next = dialler_received;
        let to_acceptor = self.directions.entry((dialler, acceptor)).or_default();
        to_acceptor.tx_next = *received;
        to_acceptor.rx_next = *received;
    }

    /// Decodes what end `e` wrote; checks each new `Data` frame against the credit
    /// delivered.
    ///
    /// `write` calls this once per `poll_transmit`, whose output is whole frames: new
    /// control frames queued when the poll began must all precede its new channel frames
    /// (`Data`, `End`, `Abort`), or control would wait behind data. Frames written again
    /// after a resume come first, in their original order, and are exempt.
    fn audit_written(&mut self, c: usize, e: usize) {
        let Some((me, peer)) = self.audit_pair(c, e) else {
            return;
        };
        let mut channel_frame_seen = None;
        loop {
            let frame = self
                .audit_decoder
                .decode(&mut self.conns[c].ends[e].audit_tx);
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(err) => {
                    self.audit.violations.push(format!(
                        "conn {c}: {:?} wrote undecodable bytes: {err}",
                        self.conns[c].ends[e].owner
                    ));
                    self.conns[c].ends[e].audit_tx.clear();
                    return;
                }
            };
            if let Frame::Hello { received, .. } = &frame {
                if e == 0 {
                    self.conns[c].dialler_received = Some(*received);
                } else {
                    self.audit_handshake(c, me, peer, &frame);
                }
                continue;
            }
            let new = if is_channel_frame(&frame) {
                let dir = self.directions.entry((me, peer)).or_default();
                let n = dir.tx_next;
                dir.tx_next += 1;
                let new = n >= dir.tx_high;
                dir.tx_high = dir.tx_high.max(dir.tx_next);
                new
            } else {
                true
            };
            if !new {
                continue;
            }
            let in_order = matches!(
                frame,
                Frame::Data { .. } | Frame::Batch { .. } | Frame::End { .. } | Frame::Abort { .. }
            );
            if in_order {
                channel_frame_seen = Some(frame.name());
            } else if let Some(before) = channel_frame_seen {
                self.audit.violations.push(format!(
                    "conn {c}: {:?} wrote a {} frame behind a {before} frame in one transmit",
                    self.conns[c].ends[e].owner,
                    frame.name()
                ));
            }
            let data = match frame {
                Frame::Data { channel, payload } => Some((channel, 1, payload.len() as u64)),
                Frame::Batch { channel, messages } => {
                    self.audit.batch_frames += 1;
                    Some((channel, messages.len() as u64, messages.payload_bytes()))
                }
                _ => None,
            };
            if let Some((channel, messages, payload)) = data {
                let dir = self.directions.entry((me, peer)).or_default();
                let (granted, sent) = dir.credit.entry(channel).or_insert((0, 0));
                *sent += payload;
                let (granted, sent) = (*granted, *sent);
                self.audit.data_messages += messages;
                self.audit.data_bytes += payload;
                if sent > granted {
                    self.audit.violations.push(format!(
                        "conn {c}: node {me} sent {sent} bytes on channel {} to node {peer} \
                         with only {granted} bytes of credit received",
                        channel.0
                    ));
                }
            }
        }
    }

    /// Decodes what was delivered to end `e`; counts the frames that crossed and the new
    /// credit the end receives.
    fn audit_delivered(&mut self, c: usize, e: usize) {
        let Some((me, peer)) = self.audit_pair(c, e) else {
            return;
        };
        loop {
            let frame = self
                .audit_decoder
                .decode(&mut self.conns[c].ends[e].audit_rx);
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(err) => {
                    self.audit.violations.push(format!(
                        "conn {c}: bytes delivered to {:?} do not decode: {err}",
                        self.conns[c].ends[e].owner
                    ));
                    self.conns[c].ends[e].audit_rx.clear();
                    return;
                }
            };
            self.frames_crossed += 1;
            if let Frame::Hello { .. } = frame {
                self.hellos_crossed.push((self.frames_crossed, e == 0));
            }
            if !is_channel_frame(&frame) {
                continue;
            }
            let dir = self.directions.entry((peer, me)).or_default();
            let n = dir.rx_next;
            dir.rx_next += 1;
            let new = n >= dir.rx_high;
            dir.rx_high = dir.rx_high.max(dir.rx_next);
            if let (Frame::Credit { channel, bytes }, true) = (frame, new) {
                let data_dir = self.directions.entry((me, peer)).or_default();
                data_dir.credit.entry(channel).or_insert((0, 0)).0 += u64::from(bytes);
                self.audit.credit_frames += 1;
            }
        }
    }
}

fn node_of(end: &End) -> Option<usize> {
    match end.owner {
        Owner::Node { node, .. } | Owner::Backlog { node } => Some(node),
        Owner::Raw => None,
    }
}

fn node_id(i: usize) -> NodeId {
    NodeId(u32::try_from(i).expect("node index fits a u32"))
}

// -- workload helpers --------------------------------------------------------------------

/// A deterministic message: its bytes encode who sent it to whom and its sequence number
/// (as far as `len` allows), so a misrouted or reordered message does not compare equal.
pub fn message(job: JobId, from: Endpoint, to: Endpoint, seq: u32, len: usize) -> Bytes {
    let mut head = Vec::with_capacity(24);
    head.extend_from_slice(&seq.to_le_bytes());
    head.extend_from_slice(&from.node.0.to_le_bytes());
    head.extend_from_slice(&from.slot.to_le_bytes());
    head.extend_from_slice(&to.node.0.to_le_bytes());
    head.extend_from_slice(&to.slot.to_le_bytes());
    head.extend_from_slice(&job.0.to_le_bytes()[..4]);
    let fill = (seq as u8)
        .wrapping_mul(31)
        .wrapping_add(from.slot as u8)
        .wrapping_add(to.node.0 as u8);
    let bytes: Vec<u8> = (0..len)
        .map(|i| head.get(i).copied().unwrap_or(fill.wrapping_add(i as u8)))
        .collect();
    Bytes::from(bytes)
}

/// A producer's planned messages, per consumer, sent with `try_send` as credit allows.
#[derive(Debug)]
pub struct Outbox {
    /// Node of the producer.
    pub node: usize,
    /// Its job.
    pub job: JobId,
    /// Its slot.
    pub slot: u32,
    /// Messages not yet accepted, per consumer.
    pub pending: Vec<(Endpoint, VecDeque<Bytes>)>,
    /// Messages accepted by `try_send`, per consumer, in order.
    pub accepted: HashMap<Endpoint, Vec<Bytes>>,
    /// `try_send` failures other than `NoCredit`, per consumer.
    pub failed: HashMap<Endpoint, ExchangeError>,
    /// `NoCredit` answers so far.
    pub refusals: u64,
    /// Close the producer once every message was accepted (or its channel failed).
    pub close_when_done: bool,
    /// Whether `close_producer` was called.
    pub closed: bool,
    /// The node's generation when the producer opened: once the node is killed or
    /// restarted, the producer is gone and the outbox does nothing.
    pub generation: u32,
}

impl Outbox {
    /// An outbox with `plan` (per consumer, the messages in order). Opens the producer.
    pub fn open(
        net: &mut Net,
        node: usize,
        job: JobId,
        slot: u32,
        plan: Vec<(Endpoint, Vec<Bytes>)>,
    ) -> Self {
        let consumers: Vec<Endpoint> = plan.iter().map(|(c, _)| *c).collect();
        net.open_producer(node, job, slot, &consumers);
        Self {
            node,
            job,
            slot,
            pending: plan.into_iter().map(|(c, m)| (c, m.into())).collect(),
            accepted: HashMap::new(),
            failed: HashMap::new(),
            refusals: 0,
            close_when_done: true,
            closed: false,
            generation: net.generation(node),
        }
    }

    /// Whether the producer still exists (its node was not killed or restarted).
    pub fn alive(&self, net: &Net) -> bool {
        net.is_up(self.node) && net.generation(self.node) == self.generation
    }

    /// This producer's endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(node_id(self.node), self.slot)
    }

    /// Whether every message was accepted or its channel failed.
    pub fn done(&self) -> bool {
        self.pending.iter().all(|(_, q)| q.is_empty())
    }

    /// Sends as much as credit allows, consumer by consumer. Returns messages accepted.
    pub fn pump(&mut self, net: &mut Net) -> usize {
        if !self.alive(net) {
            return 0;
        }
        let mut accepted = 0;
        for (consumer, queue) in &mut self.pending {
            while let Some(payload) = queue.pop_front() {
                match net.try_send(self.node, self.job, self.slot, *consumer, payload.clone()) {
                    Ok(()) => {
                        accepted += 1;
                        self.accepted.entry(*consumer).or_default().push(payload);
                    }
                    Err(TrySendError::NoCredit(back)) => {
                        assert_eq!(back, payload, "NoCredit must hand the message back");
                        self.refusals += 1;
                        queue.push_front(back);
                        break;
                    }
                    Err(TrySendError::Failed(e, _)) => {
                        self.failed.insert(*consumer, e);
                        queue.clear();
                    }
                }
            }
        }
        if self.close_when_done && !self.closed && self.done() {
            net.close_producer(self.node, self.job, self.slot);
            self.closed = true;
        }
        accepted
    }
}

/// What one consumer received, per producer.
#[derive(Debug)]
pub struct Inbox {
    /// Node of the consumer.
    pub node: usize,
    /// Its job.
    pub job: JobId,
    /// Its slot.
    pub slot: u32,
    /// Messages per producer, in arrival order.
    pub by_producer: HashMap<Endpoint, Vec<Bytes>>,
    /// Errors in the order they were read.
    pub errors: Vec<ExchangeError>,
    /// Whether `Finished` was read.
    pub finished: bool,
    /// Messages read after `Finished` (must stay empty).
    pub after_finish: usize,
    /// The node's generation when the consumer opened (see [`Outbox::generation`]).
    pub generation: u32,
}

impl Inbox {
    /// An inbox for a consumer; opens it.
    pub fn open(net: &mut Net, node: usize, job: JobId, slot: u32, producers: &[Endpoint]) -> Self {
        net.open_consumer(node, job, slot, producers);
        Self::attach_to(net, node, job, slot)
    }

    /// An inbox for a consumer the test opens itself (or has not opened yet), on a node
    /// that was never killed or restarted.
    pub fn attach(node: usize, job: JobId, slot: u32) -> Self {
        Self {
            node,
            job,
            slot,
            by_producer: HashMap::new(),
            errors: Vec::new(),
            finished: false,
            after_finish: 0,
            generation: 0,
        }
    }

    /// An inbox for a consumer the test opens itself, in the node's current generation.
    pub fn attach_to(net: &Net, node: usize, job: JobId, slot: u32) -> Self {
        Self {
            generation: net.generation(node),
            ..Self::attach(node, job, slot)
        }
    }

    /// Whether the consumer still exists (its node was not killed or restarted).
    pub fn alive(&self, net: &Net) -> bool {
        net.is_up(self.node) && net.generation(self.node) == self.generation
    }

    /// This consumer's endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(node_id(self.node), self.slot)
    }

    /// Reads everything available. Returns the number of messages read.
    pub fn pull(&mut self, net: &mut Net) -> usize {
        if !self.alive(net) {
            return 0;
        }
        let drained = net.recv_all(self.node, self.job, self.slot);
        let n = drained.messages.len();
        if self.finished {
            self.after_finish += n;
        }
        for (from, payload) in drained.messages {
            self.by_producer.entry(from).or_default().push(payload);
        }
        self.errors.extend(drained.errors);
        self.finished |= drained.finished;
        n
    }

    /// Total messages received.
    pub fn received(&self) -> usize {
        self.by_producer.values().map(Vec::len).sum()
    }
}

/// Pumps every outbox, drives, pulls every inbox, until all inboxes finished and no
/// outbox has anything left (boxes of killed or restarted nodes are ignored). A round in
/// which nothing moved lets one tick of virtual time pass (what a runtime waiting for its
/// next timer does). Panics after `max_rounds`.
pub fn run_to_completion(
    net: &mut Net,
    outboxes: &mut [Outbox],
    inboxes: &mut [Inbox],
    max_rounds: usize,
) {
    for _ in 0..max_rounds {
        let mut moved = 0;
        for o in outboxes.iter_mut() {
            moved += o.pump(net);
        }
        net.drive();
        for i in inboxes.iter_mut() {
            let was_finished = i.finished;
            moved += i.pull(net) + usize::from(i.finished != was_finished);
        }
        if inboxes.iter().all(|i| i.finished || !i.alive(net))
            && outboxes
                .iter()
                .all(|o| (o.done() && o.closed) || !o.alive(net))
        {
            return;
        }
        if moved == 0 {
            let tick = net.tick();
            net.advance(tick);
        }
    }
    let stuck: Vec<String> = inboxes
        .iter()
        .filter(|i| !i.finished)
        .map(|i| {
            format!(
                "{}/{} of {}: {} received, errors {:?}",
                i.node,
                i.slot,
                i.job,
                i.received(),
                i.errors
            )
        })
        .chain(outboxes.iter().filter(|o| !o.done()).map(|o| {
            format!(
                "producer {}/{} of {} has messages left",
                o.node, o.slot, o.job
            )
        }))
        .chain(inboxes.iter().filter(|i| i.finished).map(|i| {
            format!(
                "({}/{} of {} finished: {} received, errors {:?})",
                i.node,
                i.slot,
                i.job,
                i.received(),
                i.errors
            )
        }))
        .chain(outboxes.iter().filter(|o| !o.failed.is_empty()).map(|o| {
            format!(
                "(producer {}/{} of {} failed: {:?})",
                o.node, o.slot, o.job, o.failed
            )
        }))
        .collect();
    panic!(
        "exchange did not complete within {max_rounds} rounds:\n{}",
        stuck.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Configurations and workloads
// ---------------------------------------------------------------------------------------

/// Small messages and a pool of four of them: credit runs out quickly.
pub fn small(c: &mut Config) {
    c.max_message = 1024;
    c.credit_pool = 4096;
    c.max_grant = 2048;
    c.credit_want = 1024;
    c.credit_low_water = 256;
    c.quantum = 2048;
}

/// A roomy pool: most credit is granted ahead of need.
pub fn roomy(c: &mut Config) {
    c.max_message = 4096;
    c.credit_pool = 64 * 1024;
    c.max_grant = 16 * 1024;
    c.credit_want = 8 * 1024;
    c.credit_low_water = 2048;
    c.quantum = 4096;
}

/// A pool of exactly two largest messages: nearly every message waits for a round trip.
pub fn tight(c: &mut Config) {
    c.max_message = 2048;
    c.credit_pool = 2 * 2048;
    c.max_grant = 2048;
    c.credit_want = 4096;
    c.credit_low_water = 1024;
    c.quantum = 1024;
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Message sizes: empty, largest and one-byte messages among pseudo-random ones.
pub fn size_of_message(seq: u32, salt: u64, max: usize) -> usize {
    match seq % 7 {
        0 => 0,
        3 => max,
        5 => 1,
        _ => (splitmix(salt ^ (u64::from(seq) << 32)) % (max as u64 + 1)) as usize,
    }
}

/// The `n` messages `from` sends `to` in `job`.
pub fn plan(job: JobId, from: Endpoint, to: Endpoint, n: u32, max: usize) -> Vec<Bytes> {
    let salt = splitmix(
        job.0
            ^ (u64::from(from.node.0) << 8)
            ^ (u64::from(from.slot) << 16)
            ^ (u64::from(to.node.0) << 24)
            ^ (u64::from(to.slot) << 32),
    );
    (0..n)
        .map(|seq| message(job, from, to, seq, size_of_message(seq, salt, max)))
        .collect()
}

pub fn total_len(messages: &[Bytes]) -> u64 {
    messages.iter().map(|m| m.len() as u64).sum()
}

/// Every node holds nothing: no channel records, no queued bytes.
pub fn assert_all_drained(net: &Net) {
    for i in 0..net.len() {
        let s = net.stats(i);
        assert_eq!(s.out_channels, 0, "node {i} keeps outgoing channels: {s:?}");
        assert_eq!(s.in_channels, 0, "node {i} keeps incoming channels: {s:?}");
        assert_eq!(
            s.parked_channels, 0,
            "node {i} keeps parked channels: {s:?}"
        );
        assert_eq!(s.send_queued_bytes, 0, "node {i} keeps send bytes: {s:?}");
        assert_eq!(
            s.recv_queued_bytes, 0,
            "node {i} keeps received bytes: {s:?}"
        );
    }
}
