//! The tasks that move bytes between sockets and the core: the accept loop, dialers, one
//! reader and one writer per link, and the timer. They make no protocol decision.
//!
//! Invariants: a link's reader always drains its socket into the core (the core never
//! refuses bytes, so a slow consumer cannot stall a link); a link's writer sends exactly
//! what `poll_transmit` returns, in order, with vectored writes; when either task ends, the
//! other is stopped and the core is told the link is gone.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use plexus_proto::codec::Decoder;
use plexus_proto::node::{DialFailure, LinkCause};
use plexus_proto::{LinkId, NodeId, Transmit};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;

use crate::shared::{LinkWriter, Shared};

/// Bytes a reader asks the socket for at least, per read.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes a writer gathers from the core per vectored write batch. A frame the scheduler
/// would send first still waits for the batch before it: at 128 KiB a batch costs ~1 ms
/// on a 1 Gbit/s link, and one `writev` per 128 KiB costs nothing measurable at loopback
/// speeds.
const WRITE_BATCH: usize = 128 * 1024;
/// Unsent bytes a link's TCP socket holds at most before a write waits (in flight is not
/// limited by it, so neither is throughput).
const UNSENT_LOW_WATER: u32 = 128 * 1024;
/// A link with less than this to send waits scheduler turns for more before it writes...
const LINGER_BELOW: usize = 32 * 1024;
/// ...at most this many turns.
const MAX_LINGERS: u32 = 8;
/// A scheduler turn shorter than this ran nothing else.
const IDLE_TURN: Duration = Duration::from_micros(10);
/// How long a writer blocked in a write (its peer stopped reading) keeps trying once the
/// link is closing.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// I/O vectors per `writev` call (Linux allows 1024).
const MAX_IOVECS: usize = 512;
/// Connections the kernel queues for the listener until it accepts them (capped by
/// `net.core.somaxconn`). Every peer may dial a node at the same moment (a job spanning the
/// cluster starts); a connection that finds the queue full has its SYN dropped and retries
/// only after 1 s, 3 s, 7 s...
const LISTEN_BACKLOG: u32 = 4096;
/// Pause after a failed accept; doubled after each further failure, up to
/// [`ACCEPT_PAUSE_MAX`].
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause between two accept attempts.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// A listener on `addr` with a backlog of [`LISTEN_BACKLOG`].
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections until the node stops. When accepting fails (out of file
/// descriptors, typically), connections wait in the backlog: the first failure of a run is
/// logged as a warning, the pause between attempts grows, and the end of the run is
/// logged with its count.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut failures: u32 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                if failures > 0 {
                    tracing::warn!(node = shared.node.0, failures, "accepting again");
                    failures = 0;
                }
                tune_link_socket(&stream);
                match shared.op(|st| admit_unproved(st, remote)) {
                    Some(link) => match shared.tls.clone() {
                        Some(tls) => spawn_tls_accept(&shared, tls, link, stream, remote),
                        None => {
                            let (rd, wr) = stream.into_split();
                            start_link(&shared, link, rd, wr, Some(remote));
                        }
                    },
                    None => drop(stream),
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        node = shared.node.0,
                        error = %e,
                        "accept failed: connections wait in the backlog until it works again"
                    );
                } else {
                    tracing::debug!(node = shared.node.0, error = %e, failures, "accept failed");
                }
                let pause = ACCEPT_PAUSE * (1u32 << (failures - 1).min(7));
                tokio::time::sleep(pause.min(ACCEPT_PAUSE_MAX)).await;
            }
        }
    }
}

/// Accepts QUIC connections until the node stops: each is admitted like a TCP
/// connection (the same caps on connections that have not proved membership), then its
/// TLS handshake and its link's stream complete in a task of its own, bounded by the
/// handshake timeout.
pub(crate) async fn quic_accept_loop(shared: Arc<Shared>, quic: crate::quic::Quic) {
    while let Some(incoming) = quic.accept().await {
        let remote = incoming.remote_address();
        let Some(link) = shared.op(|st| admit_unproved(st, remote)) else {
            incoming.refuse();
            continue;
        };
        let task = shared.runtime.spawn({
            let shared = shared.clone();
            async move {
                let timeout = shared.lock().core.config().handshake_timeout;
                let members = shared.membership.nodes();
                let outcome = tokio::time::timeout(timeout, crate::quic::accept(incoming, members))
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("QUIC handshake timed out")));
                match outcome {
                    Ok((stream, node)) => {
                        shared.op(|st| st.core.certify_link(link, node));
                        start_link(&shared, link, stream.recv, stream.send, Some(remote));
                    }
                    Err(e) => shared.op(|st| {
                        let node = st.core.config().node.0;
                        st.refusals_log.log(|| {
                            tracing::warn!(node, %remote, error = %e, "refused a connection: QUIC failed")
                        });
                        st.core.handle_link_closed(
                            link,
                            LinkCause::Unauthenticated(format!("QUIC: {e}")),
                        );
                    }),
                }
            }
        });
        shared.track(task.abort_handle());
    }
}

/// Runs the TLS handshake of an accepted connection (bounded by the handshake timeout),
/// tells the core which member its certificate names, and starts the link; a connection
/// that fails it is closed as unauthenticated.
fn spawn_tls_accept(
    shared: &Arc<Shared>,
    tls: crate::tls::Tls,
    link: LinkId,
    stream: TcpStream,
    remote: SocketAddr,
) {
    let task = shared.runtime.spawn({
        let shared = shared.clone();
        async move {
            let timeout = shared.lock().core.config().handshake_timeout;
            let members = shared.membership.nodes();
            let outcome = tokio::time::timeout(timeout, tls.accept(stream, members))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake timed out")));
            match outcome {
                Ok((stream, node)) => {
                    shared.op(|st| st.core.certify_link(link, node));
                    let (rd, wr) = tokio::io::split(stream);
                    start_link(&shared, link, rd, wr, Some(remote));
                }
                Err(e) => shared.op(|st| {
                    let node = st.core.config().node.0;
                    st.refusals_log.log(|| {
                        tracing::warn!(node, %remote, error = %e, "refused a connection: TLS failed")
                    });
                    st.core
                        .handle_link_closed(link, LinkCause::Unauthenticated(format!("TLS: {e}")));
                }),
            }
        }
    });
    shared.track(task.abort_handle());
}

/// Takes an accepted connection into the core, unless too many connections (in total, or
/// from its source address) have not proved membership yet: then it is dropped at once,
/// and said so in a rate-limited log line.
fn admit_unproved(st: &mut crate::shared::State, remote: SocketAddr) -> Option<LinkId> {
    let core = &st.core;
    st.unproved
        .retain(|&link, _| core.link_is_open(link) && !core.link_is_proved(link));
    let config = core.config();
    let (total, cap) = (st.unproved.len(), config.max_unproved_connections);
    let from_there = st
        .unproved
        .values()
        .filter(|ip| **ip == remote.ip())
        .count();
    let per_address = config.max_unproved_per_address;
    if total >= cap || from_there >= per_address {
        let node = config.node.0;
        st.refusals_log.log(|| {
            tracing::warn!(
                node,
                %remote,
                unproved = total,
                from_there,
                "dropped a connection: too many have not proved membership yet"
            )
        });
        return None;
    }
    let link = st.core.handle_accepted(Instant::now());
    st.unproved.insert(link, remote.ip());
    Some(link)
}

/// At most [`LogLimit::LINES`] lines per [`LogLimit::WINDOW`]; the lines held back are
/// counted and reported when the next window opens.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    window_start: Option<Instant>,
    lines: u32,
    held_back: u64,
}

impl LogLimit {
    const LINES: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(10);

    /// Runs `line` (which logs) unless this window's lines are used up.
    pub(crate) fn log(&mut self, line: impl FnOnce()) {
        let now = Instant::now();
        let fresh = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= Self::WINDOW);
        if fresh {
            if self.held_back > 0 {
                tracing::warn!(
                    held_back = self.held_back,
                    "more refused connections were not logged in the last window"
                );
            }
            self.window_start = Some(now);
            self.lines = 0;
            self.held_back = 0;
        }
        if self.lines < Self::LINES {
            self.lines += 1;
            line();
        } else {
            self.held_back += 1;
        }
    }
}

/// Calls the core's timer at its tick, and at any earlier deadline it sets, until the node
/// stops.
pub(crate) async fn timer_loop(shared: Arc<Shared>) {
    let (tick, rearm) = {
        let st = shared.lock();
        (st.core.tick(), st.timer.clone())
    };
    let mut next_tick = Instant::now() + tick;
    loop {
        let deadline = shared
            .lock()
            .core
            .poll_timeout()
            .map_or(next_tick, |at| at.min(next_tick));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if now >= next_tick {
                    next_tick = now + tick;
                }
                shared.op(|st| st.core.handle_timeout(now));
            }
            _ = rearm.notified() => {}
        }
    }
}

/// Dials `peer` in the background and reports the outcome to the core.
pub(crate) fn spawn_dial(shared: Arc<Shared>, peer: NodeId) {
    let task = shared.runtime.spawn({
        let shared = shared.clone();
        async move {
            let dialled = match &shared.quic {
                Some(quic) => dial_quic(&shared, quic, peer).await,
                None => match dial(&shared, peer).await {
                    Ok(stream) => secure(&shared, peer, stream).await,
                    Err(e) => Err(e),
                },
            };
            match dialled {
                Ok(dialled) => {
                    let link = shared.op(|st| st.core.handle_dialed(peer, Instant::now()));
                    if let Some(link) = link {
                        dialled.start(&shared, link);
                    }
                }
                Err(e) => {
                    tracing::debug!(node = shared.node.0, peer = peer.0, error = %e, "dial failed");
                    let failure = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        DialFailure::Refused
                    } else {
                        DialFailure::Other
                    };
                    shared.op(|st| {
                        st.core
                            .handle_dial_failed(peer, failure, &e.to_string(), Instant::now())
                    });
                }
            }
        }
    });
    shared.track(task.abort_handle());
}

/// A dialled connection, with TLS on it if the node uses TLS, or a QUIC link stream.
enum Dialled {
    Plain(TcpStream),
    Tls(Box<crate::tls::ClientStream>),
    Quic(Box<crate::quic::LinkStream>),
}

impl Dialled {
    /// Runs the link's reader and writer over the connection.
    fn start(self, shared: &Arc<Shared>, link: LinkId) {
        match self {
            Dialled::Plain(stream) => {
                let remote = stream.peer_addr().ok();
                let (rd, wr) = stream.into_split();
                start_link(shared, link, rd, wr, remote);
            }
            Dialled::Tls(stream) => {
                let remote = stream.get_ref().0.peer_addr().ok();
                let (rd, wr) = tokio::io::split(*stream);
                start_link(shared, link, rd, wr, remote);
            }
            Dialled::Quic(stream) => {
                let remote = Some(stream.connection.remote_address());
                start_link(shared, link, stream.recv, stream.send, remote);
            }
        }
    }
}

/// Connects to `peer` over QUIC and opens the link's stream, within the handshake
/// timeout; the peer's certificate must name it. Meanwhile a probe asks whether anything
/// listens on the peer's port at all: if its host says no, the dial fails at once as
/// refused, as a TCP dial to a node whose process is gone does.
async fn dial_quic(
    shared: &Shared,
    quic: &crate::quic::Quic,
    peer: NodeId,
) -> std::io::Result<Dialled> {
    let addr = shared.membership.get(peer).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no address for {peer}"),
        )
    })?;
    let timeout = shared.lock().core.config().handshake_timeout;
    let connect = tokio::time::timeout(timeout, quic.connect(peer, addr));
    let probe = crate::udp_probe::port_closed(shared.local_ip, addr, timeout);
    let stream = tokio::select! {
        connected = connect => connected.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "QUIC handshake timed out")
        })??,
        true = probe => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("nothing listens on {addr} (UDP port unreachable)"),
            ));
        }
    };
    Ok(Dialled::Quic(Box::new(stream)))
}

/// Runs the TLS handshake on a connection dialled to `peer`, if the node uses TLS (within
/// the handshake timeout); the peer's certificate must name it.
async fn secure(shared: &Shared, peer: NodeId, stream: TcpStream) -> std::io::Result<Dialled> {
    let Some(tls) = &shared.tls else {
        return Ok(Dialled::Plain(stream));
    };
    let timeout = shared.lock().core.config().handshake_timeout;
    let stream = tokio::time::timeout(timeout, tls.connect(peer, stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
        .map_err(|e| std::io::Error::other(format!("TLS: {e}")))?;
    Ok(Dialled::Tls(Box::new(stream)))
}

/// Connects to `peer`, within the core's handshake timeout (connecting is the first part
/// of a handshake; a SYN the peer's full backlog dropped is retried by the kernel meanwhile).
async fn dial(shared: &Shared, peer: NodeId) -> std::io::Result<TcpStream> {
    let addr = shared.membership.get(peer).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no address for {peer}"),
        )
    })?;
    let socket = local_socket(shared, addr).inspect_err(|e| {
        // Not the peer's fault: this machine is out of descriptors or ports.
        tracing::warn!(node = shared.node.0, peer = peer.0, error = %e, "cannot open a socket to dial");
    })?;
    let timeout = shared.lock().core.config().handshake_timeout;
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tune_link_socket(&stream);
    Ok(stream)
}

/// Frames leave as soon as they are written (the writer batches them itself), and the
/// kernel keeps at most [`UNSENT_LOW_WATER`] unsent behind what is in flight, so the
/// order in which channels share the link is the core's scheduler's, not a deep socket
/// buffer's.
fn tune_link_socket(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_LOW_WATER) {
        tracing::debug!(error = %e, "setting TCP_NOTSENT_LOWAT failed");
    }
}

/// A socket to connect to `addr` from, bound to the node's address when the families match.
fn local_socket(shared: &Shared, addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if shared.local_ip.is_ipv4() == addr.is_ipv4() {
        socket.bind(SocketAddr::new(shared.local_ip, 0))?;
    }
    Ok(socket)
}

/// Runs a reader and a writer for `link` over `stream` (dialled or accepted).
fn start_link<R, W>(shared: &Arc<Shared>, link: LinkId, rd: R, wr: W, remote: Option<SocketAddr>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer_handle = LinkWriter {
        remote,
        wake: Arc::new(Notify::new()),
        closing: tokio::sync::watch::Sender::new(false),
    };
    let closing = writer_handle.closing.subscribe();
    let notify = writer_handle.wake.clone();
    let decoder = {
        let mut st = shared.lock();
        st.link_writers.insert(link, writer_handle);
        Decoder::new(st.core.config().max_frame_body())
    };
    let reader = shared
        .runtime
        .spawn(read_loop(shared.clone(), link, rd, decoder));
    let writer = shared
        .runtime
        .spawn(write_loop(shared.clone(), link, wr, notify, closing));
    let (reader_abort, writer_abort) = (reader.abort_handle(), writer.abort_handle());
    shared.track(reader_abort.clone());
    shared.track(writer_abort.clone());
    let supervisor = shared.runtime.spawn({
        let shared = shared.clone();
        async move {
            let cause = tokio::select! {
                r = reader => r.unwrap_or_else(|e| LinkCause::Io(e.to_string())),
                w = writer => w.unwrap_or_else(|e| LinkCause::Io(e.to_string())),
            };
            reader_abort.abort();
            writer_abort.abort();
            shared.op(|st| {
                st.link_writers.remove(&link);
                st.core.handle_link_closed(link, cause);
            });
        }
    });
    shared.track(supervisor.abort_handle());
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    link: LinkId,
    mut rd: R,
    decoder: Decoder,
) -> LinkCause {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let want = decoder.bytes_needed(&buf).unwrap_or(0).max(READ_CHUNK / 4);
        if buf.capacity() - buf.len() < want {
            buf.reserve(want.max(READ_CHUNK));
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return LinkCause::Io("peer closed the connection".into()),
            Ok(_) => {
                let open = shared.op(|st| {
                    st.core.handle_bytes(link, &mut buf, Instant::now());
                    st.core.link_is_open(link)
                });
                if !open {
                    // The writer sends the GoAway and ends the link.
                    std::future::pending::<()>().await;
                }
            }
            Err(e) => return LinkCause::Io(e.to_string()),
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    link: LinkId,
    mut wr: W,
    notify: Arc<Notify>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> LinkCause {
    let mut transmit = Transmit::new();
    let mut chunks = Vec::new();
    loop {
        linger_while_others_run(&shared, link).await;
        let open = shared.op(|st| {
            st.core
                .poll_transmit(link, Instant::now(), &mut transmit, WRITE_BATCH)
        });
        if transmit.is_empty() {
            if !open {
                let _ = wr.shutdown().await;
                return LinkCause::Io("link closed".into());
            }
            notify.notified().await;
            continue;
        }
        transmit.take_chunks(&mut chunks);
        let gave_up = async {
            // Only once the link closes: then the rest may never drain.
            let _ = closing.wait_for(|closed| *closed).await;
            tokio::time::sleep(CLOSE_GRACE).await;
        };
        tokio::select! {
            written = write_all_vectored(&mut wr, &mut chunks) => {
                if let Err(e) = written {
                    return LinkCause::Io(e.to_string());
                }
            }
            () = gave_up => {
                return LinkCause::Io("the link closed while its peer was not reading".into());
            }
        }
    }
}

/// While less than [`LINGER_BELOW`] waits to be sent on `link`, lets the tasks that may
/// add to it run first (a scheduler turn each, no timer; at most [`MAX_LINGERS`] turns),
/// so many small messages share one write and a channel's small messages share one frame.
/// Stops as soon as a turn comes back within [`IDLE_TURN`]: then nothing else was ready to
/// run, so nothing more is coming soon, and an idle link is not delayed.
async fn linger_while_others_run(shared: &Shared, link: LinkId) {
    for _ in 0..MAX_LINGERS {
        let queued = shared.lock().core.queued_bytes(link);
        if queued == 0 || queued >= LINGER_BELOW {
            return;
        }
        let turn = Instant::now();
        tokio::task::yield_now().await;
        if turn.elapsed() < IDLE_TURN {
            return;
        }
    }
}

/// Writes every chunk, in order, using as few `writev` calls as the socket allows; leaves
/// `chunks` empty. (Links, and the local connections of attached processes.)
pub(crate) async fn write_all_vectored<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    chunks: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    // An empty chunk would read as a write of nothing.
    chunks.retain(|c| !c.is_empty());
    let mut first = 0;
    while first < chunks.len() {
        let mut written = {
            let slices: SmallVec<[IoSlice<'_>; 64]> = chunks[first..]
                .iter()
                .take(MAX_IOVECS)
                .map(|c| IoSlice::new(c))
                .collect();
            wr.write_vectored(&slices).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let head = &mut chunks[first];
            if written >= head.len() {
                written -= head.len();
                first += 1;
            } else {
                head.advance(written);
                written = 0;
            }
        }
    }
    chunks.clear();
    Ok(())
}
