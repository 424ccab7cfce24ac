//! Per-channel credit: the sender's view ([`SendCredit`]) and the receiver's pool
//! ([`CreditPool`]) that grants buffer space lazily to channels that ask for it.
//!
//! The protocol: a sender puts a message on the link only when its channel's credit covers
//! the whole message. When it is short, it sends one `Backlog { need, want }` and waits for
//! exactly one `Credit` answer before asking again. `need` is what it must get to move the
//! message it holds back; `want` is a hint for how much more it could use soon.
//!
//! The receiver's pool (one per consumer) has a fixed capacity. Invariants:
//! - `outstanding` (granted and not yet released) never exceeds `capacity`, so the bytes a
//!   consumer's channels hold anywhere — sender queues, the wire, the receive queue — are
//!   bounded by the pool, whatever the consumer does.
//! - A `need` is served in arrival order (FIFO) as soon as the pool has room for it.
//! - Speculative grants (`want`) never take free space below `reserve`, and `reserve` is at
//!   least the largest `need` there can be (the largest message). Credit granted ahead of
//!   need may sit unused at an idle sender, but it can never take the space a blocked
//!   sender needs, so a blocked `need` always gets its grant once the consumer reads.
//! - When the consumer reads selectively (only some of its channels are *wanted*, see
//!   [`CreditPool::poll_grants_for`]), the needs of the other channels are served like
//!   speculative grants, from the room above `reserve` only, and never hold up a wanted
//!   channel's need. So the channels the consumer does not read hold at most
//!   `capacity − reserve` between them, and a wanted channel's need always fits once the
//!   consumer has read what it took from the wanted channels: reading one channel (or one
//!   group) to its end while others wait cannot deadlock, whatever the pool's size.
//! - A channel with no request holds nothing: idle channels cost no buffer.

use std::collections::VecDeque;

/// Credit every message costs beyond its payload: its frame header and queue entry. So
/// even empty messages are paid for, and a consumer's queue is bounded in entries too.
pub const MESSAGE_OVERHEAD: u64 = 16;

/// The credit a message of `payload_len` bytes costs.
pub const fn message_cost(payload_len: usize) -> u64 {
    payload_len as u64 + MESSAGE_OVERHEAD
}

use crate::map::Map;
use std::hash::Hash;

/// Sender side of one channel's credit.
#[derive(Clone, Debug, Default)]
pub struct SendCredit {
    /// Granted bytes not yet spent on messages.
    available: u64,
    /// Cost of the message the application could not send for lack of credit (0: none;
    /// a message's cost is far below `u32::MAX`).
    blocked: u32,
    /// Bytes spent since the last request was issued (saturating): the channel's recent
    /// appetite, which sizes how much it asks for beyond need (twice that, up to the
    /// policy's `want`; asking ahead, at least [`AHEAD_MESSAGES`] messages like the last).
    spent_since_request: u32,
    /// Cost of the last message the application sent or tried to send.
    last_cost: u32,
    /// A `Backlog` was sent and its `Credit` answer has not arrived.
    request_in_flight: bool,
    /// The last speculative request was answered with 0; do not ask ahead again until a
    /// real need arises.
    ahead_refused: bool,
}

/// Messages like its last that a channel asks for at least when it asks ahead of need (a
/// need asks for twice what was spent since the last request, so a channel that sends
/// once asks for what it sends).
///
/// Credit comes back a round trip after it is asked for: asking for only twice what was
/// spent since the last request would let a channel of small messages send about two per
/// round trip, and on a link loaded with other channels' bulk a round trip is long. Asking
/// ahead never takes the reserve a blocked need is served from, and what a channel does not
/// spend goes back to its consumer's pool when the channel ends.
pub const AHEAD_MESSAGES: u32 = 8;

/// `len` as a `u32`, saturating (credit amounts of one message or request fit far below).
fn saturating_u32(len: u64) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// A `Backlog` request the sender should put on the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditRequest {
    /// Bytes needed to send the held-back message (0: asking ahead).
    pub need: u32,
    /// Extra bytes wanted.
    pub want: u32,
}

/// Tuning of the sender's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendPolicy {
    /// The most a sender asks for beyond its immediate need.
    pub want: u32,
    /// When available credit falls below this after a send, ask ahead.
    pub low_water: u32,
}

impl SendCredit {
    /// Bytes of credit available.
    pub fn available(&self) -> u64 {
        self.available
    }

    /// Whether the application is waiting for credit on this channel.
    pub fn is_blocked(&self) -> bool {
        self.blocked > 0
    }

    /// Tries to spend `len` bytes of credit (a message's cost). On success the message may
    /// be queued. Either way, the returned request (if any) must be sent as a `Backlog`.
    pub fn try_spend(&mut self, len: u64, policy: SendPolicy) -> (bool, Option<CreditRequest>) {
        self.last_cost = saturating_u32(len);
        if self.available >= len {
            self.available -= len;
            self.spent_since_request = self.spent_since_request.saturating_add(saturating_u32(len));
            self.blocked = 0;
            let ask_ahead = !self.request_in_flight
                && !self.ahead_refused
                && self.available < u64::from(policy.low_water);
            let request = ask_ahead.then(|| self.issue(0, policy));
            (true, request)
        } else {
            self.blocked = saturating_u32(len);
            let request = (!self.request_in_flight).then(|| {
                let need = (len - self.available) as u32;
                self.issue(need, policy)
            });
            (false, request)
        }
    }

    /// Whether `len` bytes of credit (a message's cost) are there now, without spending. When it could
    /// not, records the need as a refused send would, and returns the request to send.
    pub fn check(&mut self, len: u64, policy: SendPolicy) -> (bool, Option<CreditRequest>) {
        self.last_cost = saturating_u32(len);
        if self.available >= len {
            return (true, None);
        }
        self.blocked = saturating_u32(len);
        let request = (!self.request_in_flight).then(|| {
            let need = (len - self.available) as u32;
            self.issue(need, policy)
        });
        (false, request)
    }

    /// Applies a `Credit` answer. Returns whether a blocked message can now go, and a
    /// follow-up request if the grant still does not cover it.
    pub fn on_grant(&mut self, bytes: u32, policy: SendPolicy) -> (bool, Option<CreditRequest>) {
        self.request_in_flight = false;
        self.available = self.available.saturating_add(u64::from(bytes));
        self.ahead_refused = bytes == 0;
        if self.blocked == 0 {
            return (false, None);
        }
        let blocked = u64::from(self.blocked);
        if self.available >= blocked {
            return (true, None);
        }
        let need = (blocked - self.available) as u32;
        (false, Some(self.issue(need, policy)))
    }

    fn issue(&mut self, need: u32, policy: SendPolicy) -> CreditRequest {
        self.request_in_flight = true;
        if need > 0 {
            self.ahead_refused = false;
        }
        let mut appetite = self.spent_since_request.saturating_mul(2);
        if need == 0 {
            appetite = appetite.max(self.last_cost.saturating_mul(AHEAD_MESSAGES));
        }
        self.spent_since_request = 0;
        CreditRequest {
            need,
            want: appetite.min(policy.want),
        }
    }
}

/// One pending request at the pool.
#[derive(Clone, Copy, Debug)]
struct Pending {
    need: u32,
    want: u32,
}

/// Why the pool refused a request outright (the link must close: the peer broke protocol).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// A `need` larger than the pool can ever hold.
    #[error("credit need of {need} bytes exceeds the pool reserve of {reserve}")]
    NeedTooLarge {
        /// Requested.
        need: u64,
        /// The pool's reserve (the largest need it honours).
        reserve: u64,
    },
    /// A second request before the first was answered.
    #[error("a credit request arrived while one is already pending for the channel")]
    DuplicateRequest,
}

/// Receiver-side credit pool of one consumer, shared by all its channels.
#[derive(Clone, Debug)]
pub struct CreditPool<K> {
    /// Total bytes the pool may have granted and not yet had back.
    capacity: u64,
    /// Free space speculative grants leave untouched; at least the largest possible need.
    reserve: u64,
    /// Largest single grant (need plus extra).
    max_grant: u64,
    /// Granted and not yet released.
    outstanding: u64,
    /// Highest `outstanding` ever reached.
    peak: u64,
    /// Channels with a pending request, in arrival order.
    queue: VecDeque<K>,
    /// The pending request of each queued channel.
    pending: Map<K, Pending>,
}

impl<K: Copy + Eq + Hash> CreditPool<K> {
    /// A pool of `capacity` bytes, honouring needs up to `reserve` bytes and granting at
    /// most `max_grant` at once (never less than the need).
    ///
    /// # Panics
    /// If `reserve > capacity`: such a pool could refuse a legal need forever.
    pub fn new(capacity: u64, reserve: u64, max_grant: u64) -> Self {
        assert!(reserve <= capacity, "credit reserve exceeds pool capacity");
        Self {
            capacity,
            reserve,
            max_grant,
            outstanding: 0,
            peak: 0,
            queue: VecDeque::new(),
            pending: Map::default(),
        }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Granted bytes not yet released.
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// Highest `outstanding` ever reached.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// Number of channels waiting for an answer.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Records a `Backlog` from `key`. Call [`CreditPool::poll_grants`] afterwards.
    pub fn request(&mut self, key: K, need: u32, want: u32) -> Result<(), CreditError> {
        if u64::from(need) > self.reserve {
            return Err(CreditError::NeedTooLarge {
                need: u64::from(need),
                reserve: self.reserve,
            });
        }
        if self.pending.contains_key(&key) {
            return Err(CreditError::DuplicateRequest);
        }
        self.pending.insert(key, Pending { need, want });
        self.queue.push_back(key);
        Ok(())
    }

    /// Returns `bytes` previously granted (consumed by the application, or unused at the
    /// end of a channel).
    pub fn release(&mut self, bytes: u64) {
        debug_assert!(bytes <= self.outstanding, "released more than granted");
        self.outstanding = self.outstanding.saturating_sub(bytes);
    }

    /// Drops the pending request of `key`, if any (the channel ended or failed).
    pub fn forget(&mut self, key: K) {
        if self.pending.remove(&key).is_some() {
            self.queue.retain(|k| *k != key);
        }
    }

    /// Answers every pending request that can be answered now, in FIFO order, appending
    /// `(channel, granted bytes)` to `out`. A grant of 0 answers a speculative request the
    /// pool has no room for. Stops at the first need that does not fit.
    pub fn poll_grants(&mut self, out: &mut Vec<(K, u32)>) {
        self.poll_grants_for(out, |_| true);
    }

    /// [`CreditPool::poll_grants`] for a consumer that reads only the channels `wanted`
    /// says: their needs are served in FIFO order from all the free room (the first that
    /// does not fit stops them); the other channels' needs are served in FIFO order only
    /// from the room above `reserve`, and one that does not fit there waits without
    /// holding up anyone behind it.
    pub fn poll_grants_for(&mut self, out: &mut Vec<(K, u32)>, wanted: impl Fn(&K) -> bool) {
        let mut at = 0;
        while let Some(&key) = self.queue.get(at) {
            let Some(&Pending { need, want }) = self.pending.get(&key) else {
                self.queue.remove(at);
                continue;
            };
            let (need, want) = (u64::from(need), u64::from(want));
            let free = self.capacity - self.outstanding;
            let is_wanted = wanted(&key);
            let room = if is_wanted {
                free
            } else {
                free.saturating_sub(self.reserve)
            };
            if need > room {
                if is_wanted {
                    break;
                }
                at += 1;
                continue;
            }
            let room_ahead = (free - need).saturating_sub(self.reserve);
            let cap_ahead = self.max_grant.saturating_sub(need);
            let grant = need + want.min(room_ahead).min(cap_ahead);
            self.queue.remove(at);
            self.pending.remove(&key);
            self.outstanding += grant;
            self.peak = self.peak.max(self.outstanding);
            // Grants are bounded by max(need, max_grant), both far below u32::MAX.
            out.push((key, u32::try_from(grant).unwrap_or(u32::MAX)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of one message: a channel that is not read gets nothing, however early it
    /// asked, and the wanted channel's need is served past it.
    #[test]
    fn unwanted_needs_never_take_the_room_a_wanted_need_requires() {
        let mut p: CreditPool<u32> = CreditPool::new(100, 100, 100);
        let mut out = Vec::new();
        p.request(1, 100, 0).unwrap();
        p.request(2, 100, 0).unwrap();
        p.poll_grants_for(&mut out, |k| *k == 2);
        assert_eq!(out, vec![(2, 100)]);
        p.release(100);
        out.clear();
        p.poll_grants_for(&mut out, |k| *k == 2);
        assert!(out.is_empty(), "channel 1 is still not wanted");
        p.poll_grants(&mut out);
        assert_eq!(out, vec![(1, 100)], "served once every channel is wanted");
    }

    /// With room above the reserve, channels that are not read still get their needs
    /// (they may read ahead), but only from that room.
    #[test]
    fn unwanted_needs_use_only_the_room_above_the_reserve() {
        let mut p: CreditPool<u32> = CreditPool::new(300, 100, 300);
        let mut out = Vec::new();
        for k in 1..=3 {
            p.request(k, 100, 0).unwrap();
        }
        p.poll_grants_for(&mut out, |_| false);
        assert_eq!(
            out,
            vec![(1, 100), (2, 100)],
            "the last 100 bytes stay free"
        );
        out.clear();
        p.poll_grants_for(&mut out, |k| *k == 3);
        assert_eq!(out, vec![(3, 100)]);
    }

    const POLICY: SendPolicy = SendPolicy {
        want: 1000,
        low_water: 500,
    };

    #[test]
    fn blocked_sender_asks_for_its_need_once() {
        let mut c = SendCredit::default();
        let (ok, req) = c.try_spend(300, POLICY);
        assert!(!ok);
        assert_eq!(req, Some(CreditRequest { need: 300, want: 0 }));
        let (ok, req) = c.try_spend(300, POLICY);
        assert!(!ok);
        assert_eq!(req, None, "one request in flight at a time");
        let (ready, req) = c.on_grant(300, POLICY);
        assert!(ready);
        assert_eq!(req, None);
        assert!(c.try_spend(300, POLICY).0);
    }

    #[test]
    fn partial_grant_asks_for_the_rest() {
        let mut c = SendCredit::default();
        c.try_spend(300, POLICY);
        let (ready, req) = c.on_grant(100, POLICY);
        assert!(!ready);
        assert_eq!(req, Some(CreditRequest { need: 200, want: 0 }));
    }

    #[test]
    fn refused_speculation_is_not_repeated_until_a_need() {
        let mut c = SendCredit::default();
        c.try_spend(10, POLICY);
        c.on_grant(10, POLICY);
        let (ok, req) = c.try_spend(10, POLICY);
        assert!(ok);
        assert_eq!(req, Some(CreditRequest { need: 0, want: 80 }));
        c.on_grant(0, POLICY);
        assert_eq!(c.try_spend(0, POLICY), (true, None));
        let (ok, req) = c.try_spend(5, POLICY);
        assert!(!ok);
        assert_eq!(req, Some(CreditRequest { need: 5, want: 0 }));
    }

    #[test]
    fn appetite_grows_with_what_the_channel_sends_up_to_the_policy() {
        let mut c = SendCredit::default();
        c.try_spend(100, POLICY);
        c.on_grant(100, POLICY);
        // Credit ran low after a send: ask ahead for twice what was spent, and at least
        // AHEAD_MESSAGES messages like this one.
        let (ok, req) = c.try_spend(100, POLICY);
        assert!(ok);
        assert_eq!(req, Some(CreditRequest { need: 0, want: 800 }));
        c.on_grant(800, POLICY);
        // 800 available: three sends leave 500, not below the low-water mark of 500.
        for _ in 0..3 {
            assert_eq!(c.try_spend(100, POLICY), (true, None));
        }
        let (ok, req) = c.try_spend(600, POLICY);
        assert!(!ok);
        assert_eq!(
            req,
            Some(CreditRequest {
                need: 100,
                want: 600
            })
        );
        c.on_grant(100, POLICY);
        for _ in 0..20 {
            c.try_spend(100, POLICY);
            c.on_grant(100, POLICY);
        }
        let (_, req) = c.try_spend(10_000, POLICY);
        assert_eq!(req.map(|r| r.want), Some(1000), "capped by the policy");
    }

    #[test]
    fn a_channel_of_small_messages_asks_ahead_for_several_of_them() {
        let mut c = SendCredit::default();
        // The first message waits for its own need: nothing more is asked with it.
        let (ok, req) = c.try_spend(16, POLICY);
        assert!(!ok);
        assert_eq!(req, Some(CreditRequest { need: 16, want: 0 }));
        assert_eq!(c.on_grant(16, POLICY), (true, None));
        // Sent, and below the low-water mark: it asks ahead for AHEAD_MESSAGES like it,
        // not for twice the 16 bytes it spent.
        let (ok, req) = c.try_spend(16, POLICY);
        assert!(ok);
        let ahead = 16 * AHEAD_MESSAGES;
        assert_eq!(
            req,
            Some(CreditRequest {
                need: 0,
                want: ahead
            })
        );
        c.on_grant(ahead, POLICY);
        // Granted: the next eight go without waiting (each asking ahead again while one
        // request may be in flight).
        for i in 0..AHEAD_MESSAGES {
            let (ok, req) = c.try_spend(16, POLICY);
            assert!(ok, "message {i}");
            if let Some(req) = req {
                assert_eq!(
                    req,
                    CreditRequest {
                        need: 0,
                        want: ahead
                    }
                );
            }
        }
        assert_eq!(c.available(), 0);
        // Larger messages: the floor is capped by the policy.
        let mut big = SendCredit::default();
        big.try_spend(200, POLICY);
        big.on_grant(200, POLICY);
        let (ok, req) = big.try_spend(200, POLICY);
        assert!(ok);
        assert_eq!(req.map(|r| r.want), Some(POLICY.want));
    }

    #[test]
    fn pool_serves_needs_in_order_and_keeps_the_reserve() {
        let mut p = CreditPool::new(1000, 400, 10_000);
        p.request(1u32, 100, 1000).unwrap();
        p.request(2u32, 0, 1000).unwrap();
        let mut out = Vec::new();
        p.poll_grants(&mut out);
        // 1 gets its need plus what leaves the reserve free: 100 + (900 - 400) = 600.
        // 2 asked ahead only: free is 400, all reserve, so it gets 0.
        assert_eq!(out, vec![(1, 600), (2, 0)]);
        assert_eq!(p.outstanding(), 600);
        p.request(3u32, 400, 0).unwrap();
        out.clear();
        p.poll_grants(&mut out);
        assert_eq!(out, vec![(3, 400)]);
        p.request(4u32, 50, 0).unwrap();
        out.clear();
        p.poll_grants(&mut out);
        assert!(out.is_empty(), "pool is full");
        p.release(50);
        p.poll_grants(&mut out);
        assert_eq!(out, vec![(4, 50)]);
        assert_eq!(p.peak(), 1000);
    }

    #[test]
    fn pool_rejects_oversized_and_duplicate_requests() {
        let mut p = CreditPool::new(1000, 400, 10_000);
        assert!(matches!(
            p.request(1u32, 401, 0),
            Err(CreditError::NeedTooLarge { .. })
        ));
        p.request(1u32, 10, 0).unwrap();
        assert_eq!(p.request(1u32, 10, 0), Err(CreditError::DuplicateRequest));
    }
}
