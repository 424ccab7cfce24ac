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
//! decoded a second time by an audit that checks the credit rule of the protocol: on each
//! link direction, the payload a channel's `Data` frames carry never exceeds the credit
//! its sender had *received* for that channel when it wrote the frame. The audit also
//! checks that, within each `poll_transmit`, control frames precede channel frames.
//!
//! Raw connections ([`Net::raw_connect`]) let a test play a hostile peer byte by byte.
//! [`Net::freeze`] hangs a node (a stopped process); [`Net::cut`] breaks a link.
//!
//! Determinism: every choice the harness makes follows its seed, and time is virtual. The
//! core's own maps use a per-process random hasher, so outputs that depend on their
//! iteration order (which of several events comes first) may differ between runs; tests
//! assert only outcomes that must hold in every order.
#![allow(dead_code)] // Each test binary uses its own subset of the harness.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use plexus_proto::codec::{self, Decoder};
use plexus_proto::frame::Frame;
use plexus_proto::node::ConsumerCredit;
use plexus_proto::{
    Bytes, Config, Endpoint, Event, ExchangeError, JobId, LinkCause, LinkId, NodeCore, NodeId,
    Recv, Stats, Transmit, TrySendError, WireChannel,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The cluster id every node of a [`Net`] shares.
pub const CLUSTER: u64 = 0x5EED_CAFE;

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
    /// Credit delivered to end `d` for its outgoing channel `w`, keyed by `(d, w)`.
    granted: HashMap<(usize, WireChannel), u64>,
    /// Payload end `d` wrote on its channel `w`, keyed by `(d, w)`.
    sent: HashMap<(usize, WireChannel), u64>,
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
    /// `Data` frames checked.
    pub data_frames: u64,
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

/// A handle on a raw connection the test drives byte by byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawConn(usize);

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
    /// Hung nodes: no events, timers, reads or writes until thawed.
    frozen: Vec<bool>,
    producer_ready: Vec<BTreeSet<(JobId, u32)>>,
    channel_ready: Vec<BTreeSet<(JobId, u32, Endpoint)>>,
    consumer_ready: Vec<BTreeSet<(JobId, u32)>>,
    audit: Audit,
    audit_decoder: Decoder,
}

impl Net {
    /// `n` nodes with the default seed; `config_fn` adjusts each node's configuration.
    pub fn new(n: usize, config_fn: impl FnMut(&mut Config)) -> Self {
        Self::with_seed(n, 0x0DDB_A115, config_fn)
    }

    /// `n` nodes whose byte chunking follows `seed`.
    pub fn with_seed(n: usize, seed: u64, mut config_fn: impl FnMut(&mut Config)) -> Self {
        let nodes: Vec<NodeCore> = (0..n)
            .map(|i| {
                let id = u32::try_from(i).expect("node index fits a u32");
                let mut config = Config::new(NodeId(id), CLUSTER);
                config_fn(&mut config);
                NodeCore::new(config).expect("test configuration is valid")
            })
            .collect();
        let largest = nodes
            .iter()
            .map(|c| c.config().max_frame_body())
            .max()
            .unwrap_or(0);
        Self {
            nodes,
            now: Instant::now(),
            rng: SmallRng::seed_from_u64(seed),
            max_chunk: 1500,
            max_transmit: 16 * 1024,
            max_steps: 2_000_000,
            conns: Vec::new(),
            ends_by_link: HashMap::new(),
            closes: Vec::new(),
            dials: Vec::new(),
            frozen: vec![false; n],
            producer_ready: vec![BTreeSet::new(); n],
            channel_ready: vec![BTreeSet::new(); n],
            consumer_ready: vec![BTreeSet::new(); n],
            audit: Audit::default(),
            audit_decoder: Decoder::new(largest),
        }
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
            let now = self.now;
            for (node, frozen) in self.nodes.iter_mut().zip(&self.frozen) {
                if !frozen {
                    node.handle_timeout(now);
                }
            }
            self.drive();
        }
    }

    /// Fires every node's timers at the current time (`handle_timeout(now)`), without
    /// moving time, then drives. A runtime does this whenever a timer it armed expires.
    pub fn fire_timers(&mut self) {
        let now = self.now;
        for (node, frozen) in self.nodes.iter_mut().zip(&self.frozen) {
            if !frozen {
                node.handle_timeout(now);
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
                    self.nodes[node].handle_link_closed(link, LinkCause::Io("link cut".into()));
                }
            }
        }
    }

    /// Hangs node `i`, as a stopped process: it handles no events and no timers, reads
    /// nothing and writes nothing. Bytes sent to it wait in the pipes.
    pub fn freeze(&mut self, i: usize) {
        self.frozen[i] = true;
    }

    /// Resumes a node hung by [`Net::freeze`].
    pub fn thaw(&mut self, i: usize) {
        self.frozen[i] = false;
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
            granted: HashMap::new(),
            sent: HashMap::new(),
        });
        self.ends_by_link.insert((i, link), (c, 1));
        RawConn(c)
    }

    /// Queues `bytes` from the raw end; they are delivered (in chunks) by `drive`.
    pub fn raw_send(&mut self, raw: RawConn, bytes: &[u8]) {
        self.conns[raw.0].ends[0].out.extend_from_slice(bytes);
    }

    /// Queues the encoding of `frame` from the raw end.
    pub fn raw_send_frame(&mut self, raw: RawConn, frame: &Frame) {
        let mut buf = BytesMut::new();
        codec::encode(frame, &mut buf);
        self.raw_send(raw, &buf);
    }

    /// Everything the core sent to the raw end so far, decoded. Undecodable bytes panic:
    /// a core must always send well-formed frames.
    pub fn raw_frames(&self, raw: RawConn) -> Vec<Frame> {
        let mut buf = self.conns[raw.0].ends[0].rx.clone();
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

    /// Whether the raw connection is still open.
    pub fn raw_is_open(&self, raw: RawConn) -> bool {
        self.conns[raw.0].open
    }

    /// The core's link id of a raw connection.
    pub fn raw_link(&self, raw: RawConn) -> LinkId {
        match self.conns[raw.0].ends[1].owner {
            Owner::Node { link, .. } => link,
            Owner::Raw => unreachable!("end 1 of a raw connection is a core"),
        }
    }

    // -- driving -----------------------------------------------------------------------------

    /// Runs the net until no core has an event, no writer has anything to send and no pipe
    /// holds bytes. Panics if that takes more than `max_steps` steps.
    pub fn drive(&mut self) {
        for _ in 0..self.max_steps {
            if !self.step() {
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

    /// One round: all events, one poll per ready writer, one chunk per non-empty pipe.
    /// Returns whether anything happened.
    fn step(&mut self) -> bool {
        let mut progress = false;
        for i in 0..self.nodes.len() {
            if self.frozen[i] {
                continue;
            }
            while let Some(event) = self.nodes[i].poll_event() {
                progress = true;
                self.handle_event(i, event);
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
        }
    }

    fn dial(&mut self, i: usize, peer: NodeId) {
        self.dials.push((node_id(i), peer));
        let j = peer.0 as usize;
        if j >= self.nodes.len() {
            self.nodes[i].handle_dial_failed(peer, "connection refused", self.now);
            return;
        }
        let Some(link) = self.nodes[i].handle_dialed(peer, self.now) else {
            return;
        };
        let accepted = self.nodes[j].handle_accepted(self.now);
        let c = self.conns.len();
        let mut dialler = End::new(Owner::Node { node: i, link });
        dialler.want_poll = true;
        self.conns.push(Conn {
            ends: [
                dialler,
                End::new(Owner::Node {
                    node: j,
                    link: accepted,
                }),
            ],
            open: true,
            audited: true,
            granted: HashMap::new(),
            sent: HashMap::new(),
        });
        self.ends_by_link.insert((i, link), (c, 0));
        self.ends_by_link.insert((j, accepted), (c, 1));
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
            // A hung node only notices when it runs again; the test does not thaw it.
            if !self.frozen[node] {
                self.nodes[node].handle_link_closed(link, LinkCause::Io("closed by peer".into()));
            }
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
        if !conn.open || !end.want_poll || end.out.len() >= self.max_transmit || self.frozen[node] {
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
        let chunks = transmit.take_chunks();
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
        let n = self.rng.gen_range(1..=self.max_chunk.max(1)).min(len);
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
        }
        true
    }

    /// Decodes what end `e` wrote; checks each `Data` frame against the credit delivered.
    ///
    /// `write` calls this once per `poll_transmit`, whose output is whole frames: control
    /// frames queued when the poll began must all precede its channel frames (`Data`,
    /// `End`, `Abort`), or control would wait behind data.
    fn audit_written(&mut self, c: usize, e: usize) {
        let mut channel_frame_seen = None;
        loop {
            let conn = &mut self.conns[c];
            let frame = self.audit_decoder.decode(&mut conn.ends[e].audit_tx);
            if let Ok(Some(frame)) = &frame {
                let in_order = matches!(
                    frame,
                    Frame::Data { .. } | Frame::End { .. } | Frame::Abort { .. }
                );
                if in_order {
                    channel_frame_seen = Some(frame.name());
                } else if let Some(before) = channel_frame_seen {
                    self.audit.violations.push(format!(
                        "conn {c}: {:?} wrote a {} frame behind a {before} frame in one transmit",
                        conn.ends[e].owner,
                        frame.name()
                    ));
                }
            }
            match frame {
                Ok(Some(Frame::Data { channel, payload })) => {
                    let sent = conn.sent.entry((e, channel)).or_insert(0);
                    *sent += payload.len() as u64;
                    let sent = *sent;
                    let granted = conn.granted.get(&(e, channel)).copied().unwrap_or(0);
                    self.audit.data_frames += 1;
                    self.audit.data_bytes += payload.len() as u64;
                    if sent > granted {
                        self.audit.violations.push(format!(
                            "conn {c}: {:?} sent {sent} bytes on channel {} with only {granted} \
                             bytes of credit received",
                            conn.ends[e].owner, channel.0
                        ));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(err) => {
                    self.audit.violations.push(format!(
                        "conn {c}: {:?} wrote undecodable bytes: {err}",
                        conn.ends[e].owner
                    ));
                    conn.ends[e].audit_tx.clear();
                    return;
                }
            }
        }
    }

    /// Decodes what was delivered to end `e`; counts the credit it receives.
    fn audit_delivered(&mut self, c: usize, e: usize) {
        loop {
            let conn = &mut self.conns[c];
            match self.audit_decoder.decode(&mut conn.ends[e].audit_rx) {
                Ok(Some(Frame::Credit { channel, bytes })) => {
                    *conn.granted.entry((e, channel)).or_insert(0) += u64::from(bytes);
                    self.audit.credit_frames += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(err) => {
                    self.audit.violations.push(format!(
                        "conn {c}: bytes delivered to {:?} do not decode: {err}",
                        conn.ends[e].owner
                    ));
                    conn.ends[e].audit_rx.clear();
                    return;
                }
            }
        }
    }
}

fn node_of(end: &End) -> Option<usize> {
    match end.owner {
        Owner::Node { node, .. } => Some(node),
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
        }
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
                    Err(TrySendError::Failed(e)) => {
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
}

impl Inbox {
    /// An inbox for a consumer; opens it.
    pub fn open(net: &mut Net, node: usize, job: JobId, slot: u32, producers: &[Endpoint]) -> Self {
        net.open_consumer(node, job, slot, producers);
        Self::attach(node, job, slot)
    }

    /// An inbox for a consumer the test opens itself (or has not opened yet).
    pub fn attach(node: usize, job: JobId, slot: u32) -> Self {
        Self {
            node,
            job,
            slot,
            by_producer: HashMap::new(),
            errors: Vec::new(),
            finished: false,
            after_finish: 0,
        }
    }

    /// This consumer's endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(node_id(self.node), self.slot)
    }

    /// Reads everything available. Returns the number of messages read.
    pub fn pull(&mut self, net: &mut Net) -> usize {
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
/// outbox has anything left. A round in which nothing moved lets one tick of virtual time
/// pass (what a runtime waiting for its next timer does). Panics after `max_rounds`.
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
        if inboxes.iter().all(|i| i.finished) && outboxes.iter().all(|o| o.done() && o.closed) {
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
                "{}/{} of {}: {} received",
                i.node,
                i.slot,
                i.job,
                i.received()
            )
        })
        .chain(outboxes.iter().filter(|o| !o.done()).map(|o| {
            format!(
                "producer {}/{} of {} has messages left",
                o.node, o.slot, o.job
            )
        }))
        .collect();
    panic!(
        "exchange did not complete within {max_rounds} rounds:\n{}",
        stuck.join("\n")
    );
}
