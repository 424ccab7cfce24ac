//! The connection between the agent and one attached process: two shared-memory rings
//! (one per direction) carry every frame, and the Unix socket carries only the rings'
//! files (once, with `SCM_RIGHTS`), wake-ups, and the end of the connection.
//!
//! The agent creates both rings when a process connects and passes them over the socket
//! ([`offer`]); the process maps them ([`accept`]). Each side then reads with a
//! [`PipeReader`] (`AsyncRead`) and writes with a [`PipeWriter`] (`AsyncWrite`), as it
//! would a socket's halves. A side that finds its ring empty (or full) announces it in the
//! ring and sleeps; the other side, seeing the announcement after its next write (read),
//! sends one byte on the socket, which wakes both halves of the sleeper to look again.
//! While data flows nobody sleeps and the socket stays silent.
//!
//! Invariants: the end of the socket (the other process closed it or died) wakes every
//! waiter, and a reader sees it only after the bytes written before it; dropping a
//! writer shuts the socket's sending side, so the other side's reader sees the end; once
//! both halves are gone the socket closes even if the other side never does.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, Shutdown,
};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::shm::Ring;

/// The byte the agent sends with the rings' files: the layout this build uses.
const RINGS_V1: u8 = 1;

/// What both halves of one side share: the socket and who sleeps on it.
struct Signals {
    stream: Arc<UnixStream>,
    /// The other side closed the socket (or it failed).
    ended: AtomicBool,
    reader: Mutex<Option<Waker>>,
    writer: Mutex<Option<Waker>>,
    /// Dropped with the last half: tells the socket's listener to stop.
    _halves: oneshot::Sender<()>,
}

impl Signals {
    /// Wakes the other side. A full socket means wake-ups it has not read yet are
    /// waiting, and any one of them makes it look at both rings: nothing is lost.
    fn wake_other(&self) {
        let _ = self.stream.try_write(&[0]);
    }

    fn wake_both(&self) {
        for slot in [&self.reader, &self.writer] {
            let waker = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    fn park(slot: &Mutex<Option<Waker>>, cx: &Context<'_>) {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
    }
}

/// Reads wake-ups off the socket until its end (or until both halves are gone).
async fn listen(
    signals: std::sync::Weak<Signals>,
    stream: Arc<UnixStream>,
    mut gone: oneshot::Receiver<()>,
) {
    let mut sink = [0u8; 256];
    loop {
        tokio::select! {
            _ = &mut gone => return,
            ready = stream.readable() => {
                let ended = match ready.and_then(|()| stream.try_read(&mut sink)) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => true,
                };
                let Some(signals) = signals.upgrade() else { return };
                if ended {
                    signals.ended.store(true, Ordering::Release);
                }
                signals.wake_both();
                if ended {
                    return;
                }
            }
        }
    }
}

/// Reads the frames the other side writes into its ring.
pub(crate) struct PipeReader {
    ring: Ring,
    signals: Arc<Signals>,
}

/// Writes frames into this side's ring for the other side.
pub(crate) struct PipeWriter {
    ring: Ring,
    signals: Arc<Signals>,
}

fn corrupt(e: super::shm::Corrupt) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsyncRead for PipeReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut parked = false;
        loop {
            // Read the end before the ring: bytes written before the end are read first.
            let ended = this.signals.ended.load(Ordering::Acquire);
            if this.ring.read(buf).map_err(corrupt)? > 0 {
                if this.ring.take_writer_wait() {
                    this.signals.wake_other();
                }
                return Poll::Ready(Ok(()));
            }
            if ended || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if parked {
                return Poll::Pending;
            }
            Signals::park(&this.signals.reader, cx);
            this.ring.announce_reader_wait();
            parked = true;
        }
    }
}

impl PipeWriter {
    /// Copies what fits of `bufs` into the ring, waking the reader if it sleeps.
    fn write_some(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut written = 0;
        for buf in bufs {
            let n = self.ring.write(buf).map_err(corrupt)?;
            written += n;
            if n < buf.len() {
                break;
            }
        }
        if written > 0 && self.ring.take_reader_wait() {
            self.signals.wake_other();
        }
        Ok(written)
    }
}

impl AsyncWrite for PipeWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        let mut parked = false;
        loop {
            if this.signals.ended.load(Ordering::Acquire) {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let written = this.write_some(bufs)?;
            if written > 0 {
                return Poll::Ready(Ok(written));
            }
            if parked {
                return Poll::Pending;
            }
            Signals::park(&this.signals.writer, cx);
            this.ring.announce_writer_wait();
            parked = true;
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            rustix::net::shutdown(self.signals.stream.as_fd(), Shutdown::Write).map_err(Into::into),
        )
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        // The other side's reader sees the end once it read what was written.
        let _ = rustix::net::shutdown(self.signals.stream.as_fd(), Shutdown::Write);
    }
}

/// Both halves of one side, over the rings `to_us` (read) and `to_them` (written).
fn halves(stream: UnixStream, to_us: Ring, to_them: Ring) -> (PipeReader, PipeWriter) {
    let stream = Arc::new(stream);
    let (halves_tx, halves_rx) = oneshot::channel();
    let signals = Arc::new(Signals {
        stream: stream.clone(),
        ended: AtomicBool::new(false),
        reader: Mutex::new(None),
        writer: Mutex::new(None),
        _halves: halves_tx,
    });
    tokio::spawn(listen(Arc::downgrade(&signals), stream, halves_rx));
    let reader = PipeReader {
        ring: to_us,
        signals: signals.clone(),
    };
    let writer = PipeWriter {
        ring: to_them,
        signals,
    };
    (reader, writer)
}

/// The agent's side: creates the rings (of `capacity` bytes each), passes them to the
/// process that connected on `stream`, and returns the connection's halves.
pub(crate) async fn offer(
    stream: UnixStream,
    capacity: usize,
) -> io::Result<(PipeReader, PipeWriter)> {
    let (to_agent, to_agent_fd) = Ring::create(capacity)?;
    let (to_process, to_process_fd) = Ring::create(capacity)?;
    let fds = [to_agent_fd.as_fd(), to_process_fd.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            control.push(SendAncillaryMessage::ScmRights(&fds));
            rustix::net::sendmsg(
                &stream,
                &[IoSlice::new(&[RINGS_V1])],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(io::Error::from)
        });
        match sent {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(halves(stream, to_agent, to_process))
}

/// A process's side: receives the rings the agent offers on `stream` and returns the
/// connection's halves.
pub(crate) async fn accept(stream: UnixStream) -> io::Result<(PipeReader, PipeWriter)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut byte = [0u8; 1];
    let mut fds: Vec<OwnedFd> = Vec::new();
    loop {
        stream.readable().await?;
        let got = stream.try_io(Interest::READABLE, || {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                &stream,
                &mut [IoSliceMut::new(&mut byte)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            Ok(msg.bytes)
        });
        match got {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "the agent closed the connection",
                ))
            }
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    if byte[0] != RINGS_V1 {
        return Err(io::Error::other(format!(
            "shared rings of layout {}, we know {RINGS_V1}",
            byte[0]
        )));
    }
    let [to_agent, to_process] = <[OwnedFd; 2]>::try_from(fds)
        .map_err(|fds| io::Error::other(format!("{} ring files, expected 2", fds.len())))?;
    let to_agent = Ring::open(&to_agent)?;
    let to_process = Ring::open(&to_process)?;
    Ok(halves(stream, to_process, to_agent))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An agent's and a process's side of one connection, with rings of `capacity`.
    async fn connected(capacity: usize) -> ((PipeReader, PipeWriter), (PipeReader, PipeWriter)) {
        let (a, b) = UnixStream::pair().expect("socket pair");
        let (agent, process) = tokio::join!(offer(a, capacity), accept(b));
        (agent.expect("offer"), process.expect("accept"))
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
            .collect()
    }

    /// Both ways at once through small rings (so both sides fill, sleep and wake many
    /// times), every byte arrives in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_byte_arrives_in_order_through_full_and_empty_rings() {
        let ((agent_rd, agent_wr), (proc_rd, proc_wr)) = connected(4096).await;
        let to_process = pattern(3 << 20, 1);
        let to_agent = pattern(3 << 20, 2);
        let send = |mut wr: PipeWriter, data: Vec<u8>| async move {
            for chunk in data.chunks(7919) {
                wr.write_all(chunk).await.expect("write");
            }
            // Kept until the reads end: dropping it would end the connection.
            wr
        };
        let recv = |mut rd: PipeReader, len: usize| async move {
            let mut got = vec![0u8; len];
            rd.read_exact(&mut got).await.expect("read");
            got
        };
        let work = async {
            tokio::join!(
                tokio::spawn(send(agent_wr, to_process.clone())),
                tokio::spawn(send(proc_wr, to_agent.clone())),
                tokio::spawn(recv(proc_rd, to_process.len())),
                tokio::spawn(recv(agent_rd, to_agent.len())),
            )
        };
        let (w1, w2, got_process, got_agent) = tokio::time::timeout(Duration::from_secs(60), work)
            .await
            .expect("no lost wake-up");
        assert!(w1.is_ok() && w2.is_ok());
        assert!(got_process.expect("task") == to_process);
        assert!(got_agent.expect("task") == to_agent);
    }

    /// A writer's end reaches the reader after everything written before it, and a reader
    /// sleeping on an empty ring wakes when the other process is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_end_comes_after_the_data_and_wakes_a_sleeper() {
        let ((mut agent_rd, agent_wr), (proc_rd, mut proc_wr)) = connected(4096).await;
        proc_wr.write_all(b"last words").await.expect("write");
        drop(proc_wr);
        let mut got = Vec::new();
        agent_rd.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"last words");

        let ((mut agent_rd, _agent_wr), (proc_rd2, proc_wr2)) = connected(4096).await;
        let sleeper = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            agent_rd.read(&mut byte).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop((proc_rd2, proc_wr2));
        let read = tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .expect("the sleeper woke")
            .expect("task");
        assert_eq!(read.expect("an end, not an error"), 0);
        drop((agent_wr, proc_rd));
    }

    /// A process that breaks its ring's header makes the agent's reads fail, not read
    /// outside the ring.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_ring_is_an_error() {
        let ((mut agent_rd, _agent_wr), (_proc_rd, proc_wr)) = connected(4096).await;
        proc_wr.ring.corrupt();
        let mut buf = [0u8; 16];
        let err = agent_rd.read(&mut buf).await.expect_err("corrupt");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
