//! A byte ring in shared memory: one direction of the data path between the agent and one
//! attached process.
//!
//! This module is the crate's only unsafe code (mapping a file, viewing its header as
//! atomics, copying bytes in and out of the mapping); everything above it is safe.
//!
//! Layout of a ring's file (a memfd): a header page, then `capacity` data bytes, a power
//! of two. The header holds, each on its own cache line, `tail` (bytes ever written),
//! `head` (bytes ever read), `reader_waits` and `writer_waits` (a side that found nothing
//! to do and is about to sleep until the other wakes it).
//!
//! Invariants, kept whatever the other process writes into the shared header:
//! - only the writer stores `tail` and only the reader stores `head`; `tail − head` is
//!   checked against the capacity at every load, and a ring that breaks it is an error
//!   ([`Corrupt`]), never an access outside the mapping;
//! - the agent creates every ring and seals its size before sharing it, so the mapping
//!   can never lose its pages under us (no `SIGBUS`);
//! - bytes are copied out of the ring before anyone parses them, so what the other
//!   process writes afterwards cannot change what was checked. A hostile process can at
//!   worst hand us garbage, which the frame decoder rejects.
//!
//! Wake-ups cost nothing while data flows: a side sleeps only after announcing it in the
//! header and re-checking the ring (`announce_*_wait` makes the store visible before the
//! re-check), and the other side looks at the announcement after each publish
//! (`take_*_wait`), so at least one of them sees the other.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use tokio::io::ReadBuf;

/// Bytes before the data: the header, padded to a page.
const HEADER: usize = 4096;
const TAIL: usize = 0;
const HEAD: usize = 64;
const READER_WAITS: usize = 128;
const WRITER_WAITS: usize = 192;

/// The smallest and largest data areas a ring may have.
const MIN_CAPACITY: usize = 4096;
const MAX_CAPACITY: usize = 1 << 30;

/// A ring whose shared header breaks its invariants: the other process is broken or
/// hostile.
#[derive(Debug, thiserror::Error)]
#[error("the shared ring is corrupt: {0} bytes pending in a ring of {1}")]
pub(crate) struct Corrupt(u64, u64);

/// A file mapped shared, read and write.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared with another process anyway; every access
// goes through atomics or through copies whose bounds this module checks.
unsafe impl Send for Mapping {}
// SAFETY: as above; no access hands out references into the data area.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping at an address the kernel picks aliases nothing of ours;
        // the file is at least `len` long and sealed against shrinking (checked by the
        // callers), so every page of the mapping stays backed.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd.as_fd(),
                0,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("null mapping"))?;
        Ok(Self { ptr, len })
    }

    fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= HEADER);
        // SAFETY: the offset is inside the header, 8-aligned (the mapping is page-aligned);
        // the memory lives as long as `self` and is only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(4) && offset + 4 <= HEADER);
        // SAFETY: as for `atomic_u64`.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    /// Copies `from` into the mapping at `offset`.
    fn copy_in(&self, offset: usize, from: &[u8]) {
        assert!(offset >= HEADER && offset + from.len() <= self.len);
        // SAFETY: the range is inside the data area (asserted); `from` is our own memory,
        // which cannot overlap a fresh shared mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(from.as_ptr(), self.ptr.as_ptr().add(offset), from.len())
        }
    }

    /// Copies from the mapping at `offset` into `to`.
    fn copy_out(&self, offset: usize, to: &mut [MaybeUninit<u8>]) {
        assert!(offset >= HEADER && offset + to.len() <= self.len);
        // SAFETY: as for `copy_in`, the other way round; writing bytes initialises them.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                to.as_mut_ptr().cast::<u8>(),
                to.len(),
            )
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, and no reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One side's view of a ring: it either only writes or only reads it.
pub(crate) struct Ring {
    map: Mapping,
    capacity: u64,
}

impl Ring {
    /// Creates a ring of `capacity` data bytes (rounded up to a power of two), sealed
    /// against resizing; returns it and the file to share.
    pub(crate) fn create(capacity: usize) -> io::Result<(Self, OwnedFd)> {
        let capacity = capacity
            .clamp(MIN_CAPACITY, MAX_CAPACITY)
            .next_power_of_two();
        let fd = rustix::fs::memfd_create(
            "plexus-ring",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, (HEADER + capacity) as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let ring = Self::open(&fd)?;
        Ok((ring, fd))
    }

    /// Maps a ring another process created and shared.
    pub(crate) fn open(fd: &OwnedFd) -> io::Result<Self> {
        let size = rustix::fs::fstat(fd)?.st_size;
        let seals = rustix::fs::fcntl_get_seals(fd)?;
        let capacity = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_sub(HEADER))
            .filter(|c| (MIN_CAPACITY..=MAX_CAPACITY).contains(c) && c.is_power_of_two())
            .ok_or_else(|| io::Error::other(format!("a ring file of {size} bytes")))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(io::Error::other("a ring file that may shrink"));
        }
        let map = Mapping::new(fd, HEADER + capacity)?;
        Ok(Self {
            map,
            capacity: capacity as u64,
        })
    }

    fn tail(&self) -> &AtomicU64 {
        self.map.atomic_u64(TAIL)
    }

    fn head(&self) -> &AtomicU64 {
        self.map.atomic_u64(HEAD)
    }

    /// Bytes written and not yet read, checked.
    fn pending(&self, head: u64, tail: u64) -> Result<u64, Corrupt> {
        let pending = tail.wrapping_sub(head);
        if pending > self.capacity {
            return Err(Corrupt(pending, self.capacity));
        }
        Ok(pending)
    }

    /// The writer's side: copies as much of `bytes` as there is room for, publishes it and
    /// says how much.
    pub(crate) fn write(&self, bytes: &[u8]) -> Result<usize, Corrupt> {
        let tail = self.tail().load(Ordering::Relaxed);
        let head = self.head().load(Ordering::Acquire);
        let room = self.capacity - self.pending(head, tail)?;
        let n = (bytes.len() as u64).min(room) as usize;
        let mut done = 0;
        while done < n {
            let at = ((tail + done as u64) % self.capacity) as usize;
            let len = (n - done).min(self.capacity as usize - at);
            self.map.copy_in(HEADER + at, &bytes[done..done + len]);
            done += len;
        }
        if n > 0 {
            self.tail().store(tail + n as u64, Ordering::Release);
        }
        Ok(n)
    }

    /// The reader's side: copies what is pending (as much as `buf` takes) into `buf`,
    /// frees its room and says how much.
    pub(crate) fn read(&self, buf: &mut ReadBuf<'_>) -> Result<usize, Corrupt> {
        let head = self.head().load(Ordering::Relaxed);
        let tail = self.tail().load(Ordering::Acquire);
        let n = self.pending(head, tail)?.min(buf.remaining() as u64) as usize;
        let mut done = 0;
        while done < n {
            let at = ((head + done as u64) % self.capacity) as usize;
            let len = (n - done).min(self.capacity as usize - at);
            // SAFETY: only initialised bytes are ever written through this slice (the
            // copy below), and they are reported as filled only after.
            let unfilled = unsafe { buf.unfilled_mut() };
            self.map.copy_out(HEADER + at, &mut unfilled[..len]);
            // SAFETY: the copy just initialised these `len` bytes.
            unsafe { buf.assume_init(len) };
            buf.advance(len);
            done += len;
        }
        if n > 0 {
            self.head().store(head + n as u64, Ordering::Release);
        }
        Ok(n)
    }

    /// The reader is about to sleep: from now on the writer must wake it.
    pub(crate) fn announce_reader_wait(&self) {
        self.map.atomic_u32(READER_WAITS).store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// The writer is about to sleep: from now on the reader must wake it.
    pub(crate) fn announce_writer_wait(&self) {
        self.map.atomic_u32(WRITER_WAITS).store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// After a write: whether the reader announced a wait (which this clears), so it must
    /// be woken.
    pub(crate) fn take_reader_wait(&self) -> bool {
        take(self.map.atomic_u32(READER_WAITS))
    }

    /// After a read: whether the writer announced a wait (which this clears), so it must
    /// be woken.
    pub(crate) fn take_writer_wait(&self) -> bool {
        take(self.map.atomic_u32(WRITER_WAITS))
    }
}

#[cfg(test)]
impl Ring {
    /// Writes a tail no sound writer could (as a hostile process would).
    pub(crate) fn corrupt(&self) {
        self.tail().store(u64::MAX / 2, Ordering::SeqCst);
    }
}

fn take(flag: &AtomicU32) -> bool {
    fence(Ordering::SeqCst);
    flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::AcqRel) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(ring: &Ring, want: usize) -> Vec<u8> {
        let mut out = vec![0u8; want];
        let mut buf = ReadBuf::new(&mut out);
        ring.read(&mut buf).expect("sound ring");
        let n = buf.filled().len();
        out.truncate(n);
        out
    }

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let (writer, fd) = Ring::create(MIN_CAPACITY).expect("ring");
        let reader = Ring::open(&fd).expect("map");
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for round in 0..50u32 {
            let chunk: Vec<u8> = (0..1000 + round * 37).map(|i| (i ^ round) as u8).collect();
            let n = writer.write(&chunk).expect("sound ring");
            expected.extend_from_slice(&chunk[..n]);
            got.extend(read_all(&reader, 3000));
        }
        got.extend(read_all(&reader, MIN_CAPACITY));
        assert_eq!(got, expected);
        assert!(read_all(&reader, MIN_CAPACITY).is_empty());
    }

    #[test]
    fn a_full_ring_takes_nothing_until_read() {
        let (writer, fd) = Ring::create(MIN_CAPACITY).expect("ring");
        let reader = Ring::open(&fd).expect("map");
        let big = vec![7u8; 3 * MIN_CAPACITY];
        assert_eq!(writer.write(&big).expect("sound"), MIN_CAPACITY);
        assert_eq!(writer.write(&big).expect("sound"), 0);
        assert_eq!(read_all(&reader, 100).len(), 100);
        assert_eq!(writer.write(&big).expect("sound"), 100);
    }

    #[test]
    fn a_corrupt_header_is_an_error_not_an_access() {
        let (writer, fd) = Ring::create(MIN_CAPACITY).expect("ring");
        let reader = Ring::open(&fd).expect("map");
        // A hostile writer claims more than the ring holds.
        writer
            .tail()
            .store(10 * MIN_CAPACITY as u64, Ordering::SeqCst);
        let mut out = vec![0u8; 64];
        assert!(reader.read(&mut ReadBuf::new(&mut out)).is_err());
        // A hostile reader claims to have read what was never written.
        writer.tail().store(0, Ordering::SeqCst);
        reader.head().store(5, Ordering::SeqCst);
        assert!(writer.write(b"x").is_err());
    }

    #[test]
    fn wait_announcements_are_taken_once() {
        let (ring, _fd) = Ring::create(MIN_CAPACITY).expect("ring");
        assert!(!ring.take_reader_wait());
        ring.announce_reader_wait();
        assert!(ring.take_reader_wait());
        assert!(!ring.take_reader_wait());
        ring.announce_writer_wait();
        assert!(ring.take_writer_wait());
        assert!(!ring.take_writer_wait());
    }

    #[test]
    fn a_file_of_the_wrong_size_or_unsealed_is_refused() {
        let fd = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .expect("memfd");
        rustix::fs::ftruncate(&fd, (HEADER + 5000) as u64).expect("size");
        assert!(Ring::open(&fd).is_err(), "not a power of two");
        rustix::fs::ftruncate(&fd, (HEADER + MIN_CAPACITY) as u64).expect("size");
        assert!(Ring::open(&fd).is_err(), "not sealed");
    }
}
