//! A link's outbox for the raw-tcp baseline: what a node's producers queue for one peer
//! and the link's writer drains, as much as is waiting at a time, so that small messages
//! leave in large writes when the link is busy and at once when it is not.
//!
//! Small frames are copied into a gathering buffer; a large message keeps its own buffer
//! and goes out by reference, in a vectored write.
//!
//! Invariants: frames leave in the order they were pushed; a push waits while the bytes
//! queued and not yet written reach the outbox's limit (so producers feel the socket's
//! back-pressure, and memory stays bounded), except that an empty outbox always takes a
//! frame; the writer's [`Drain::next`] returns `None` only once every [`Outbox`] handle is
//! gone and everything queued was handed out; once the writer reports the link broken,
//! every push fails instead of waiting.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;

/// Messages shorter than this are copied into the gathering buffer.
const COPY_BELOW: usize = 4096;

/// The gathering buffer grows by at least this much at a time.
const GATHER_CHUNK: usize = 64 * 1024;

/// What the producers and the writer share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: something was queued, or the last handle went.
    queued: Notify,
    /// Wakes producers waiting for room.
    room: Notify,
    /// Bytes queued and not yet written at which pushes wait.
    limit: usize,
}

#[derive(Default)]
struct State {
    /// Frames ready to go, in order.
    chunks: Vec<Bytes>,
    /// Small frames being gathered; they follow `chunks`.
    gathering: BytesMut,
    /// Bytes queued and not yet written.
    pending: usize,
    /// Live [`Outbox`] handles.
    handles: usize,
    /// The writer gave up.
    broken: bool,
}

/// A producer-side handle of an outbox; the writer finishes once every handle is gone.
pub struct Outbox(Arc<Shared>);

/// The writer's side of an outbox.
pub struct Drain(Arc<Shared>);

/// An outbox whose pushes wait once `limit` bytes are queued and not yet written.
pub fn outbox(limit: usize) -> (Outbox, Drain) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            handles: 1,
            ..State::default()
        }),
        queued: Notify::new(),
        room: Notify::new(),
        limit,
    });
    (Outbox(shared.clone()), Drain(shared))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Outbox {
    /// Queues `header` then `message`, waiting while the outbox is full.
    pub async fn push(&self, header: &[u8], message: Bytes) -> Result<(), &'static str> {
        let mut message = match self.try_push(header, message)? {
            None => return Ok(()),
            Some(message) => message,
        };
        loop {
            // Full: register for room before looking again, so no wake-up is lost.
            let room = self.0.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            message = match self.try_push(header, message)? {
                None => return Ok(()),
                Some(message) => message,
            };
            room.await;
        }
    }

    /// Queues the frame if there is room; hands the message back if not.
    fn try_push(&self, header: &[u8], message: Bytes) -> Result<Option<Bytes>, &'static str> {
        let shared = &self.0;
        let mut st = shared.lock();
        if st.broken {
            return Err("the link is broken");
        }
        if st.pending >= shared.limit.max(1) {
            return Ok(Some(message));
        }
        let len = header.len() + message.len();
        st.pending += len;
        if st.gathering.capacity() - st.gathering.len() < len {
            st.gathering.reserve(len.max(GATHER_CHUNK));
        }
        st.gathering.put_slice(header);
        if message.len() < COPY_BELOW {
            st.gathering.put_slice(&message);
        } else {
            let gathered = st.gathering.split().freeze();
            st.chunks.push(gathered);
            st.chunks.push(message);
        }
        drop(st);
        shared.queued.notify_one();
        Ok(None)
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Outbox {
        self.0.lock().handles += 1;
        Outbox(self.0.clone())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.0.lock().handles -= 1;
        self.0.queued.notify_one();
    }
}

impl Drain {
    /// Everything queued, in order; waits for something; `None` once every handle is gone
    /// and nothing is left.
    pub async fn next(&mut self) -> Option<Vec<Bytes>> {
        loop {
            {
                let mut st = self.0.lock();
                if !st.gathering.is_empty() {
                    let gathered = st.gathering.split().freeze();
                    st.chunks.push(gathered);
                }
                if !st.chunks.is_empty() {
                    return Some(std::mem::take(&mut st.chunks));
                }
                if st.handles == 0 {
                    return None;
                }
            }
            // `notify_one` keeps a permit when nobody waits, so no wake-up is lost.
            self.0.queued.notified().await;
        }
    }

    /// Counts `bytes` as written, making room for waiting producers.
    pub fn written(&self, bytes: usize) {
        let mut st = self.0.lock();
        st.pending = st.pending.saturating_sub(bytes);
        drop(st);
        self.0.room.notify_waiters();
    }

    /// Marks the link broken: pushes fail from now on.
    pub fn broken(&self) {
        self.0.lock().broken = true;
        self.0.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_leave_in_order_and_the_drain_ends_with_the_last_handle() {
        let (tx, mut rx) = outbox(1 << 20);
        let other = tx.clone();
        tx.push(b"h1", Bytes::from_static(b"small"))
            .await
            .expect("push");
        let large = Bytes::from(vec![7u8; COPY_BELOW]);
        other.push(b"h2", large.clone()).await.expect("push");
        tx.push(b"h3", Bytes::from_static(b"x"))
            .await
            .expect("push");
        let got: Vec<u8> = rx.next().await.expect("chunks").concat();
        let mut expected = b"h1smallh2".to_vec();
        expected.extend_from_slice(&large);
        expected.extend_from_slice(b"h3x");
        assert_eq!(got, expected);
        drop(tx);
        drop(other);
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn a_full_outbox_waits_for_the_writer_and_a_broken_one_fails() {
        let (tx, mut rx) = outbox(8);
        tx.push(b"", Bytes::from_static(b"12345678"))
            .await
            .expect("first");
        let waiting =
            tokio::spawn(async move { tx.push(b"", Bytes::from_static(b"9")).await.map(|()| tx) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let chunks = rx.next().await.expect("chunks");
        rx.written(chunks.iter().map(Bytes::len).sum());
        let tx = waiting.await.expect("join").expect("second push");
        rx.broken();
        assert!(tx.push(b"", Bytes::from_static(b"a")).await.is_err());
    }
}
