//! Model-based property tests of the credit machinery.
//!
//! [`CreditPool`] is driven by random `Op` sequences side by side with a plain reference
//! model (a FIFO of pending requests and an `outstanding` counter). After every step the
//! pool must agree with the model and keep the promises of `credit.rs`:
//! - `outstanding <= capacity`, always;
//! - grants go only to channels with a pending request, each request is answered exactly
//!   once, and answers come in arrival (FIFO) order;
//! - a grant is at least the need; its speculative extra never exceeds `want`, never makes
//!   one grant exceed `max_grant` (unless the need alone does) and never leaves free space
//!   below the reserve;
//! - after a poll, the first unanswered request is a need the pool has no room for.
//!
//! [`SendCredit`] is driven by random spends, checks (`has_credit`) and grants: it never spends beyond the credit
//! received, keeps at most one request in flight, and a blocked sender always has one.

use std::collections::VecDeque;

use plexus_proto::credit::{CreditError, CreditPool, CreditRequest, SendCredit, SendPolicy};
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// CreditPool
// ---------------------------------------------------------------------------------------

/// One step of a consumer's pool.
#[derive(Clone, Debug)]
enum Op {
    /// A `Backlog` arrives for channel `chan`.
    Request { chan: u8, need: u32, want: u32 },
    /// The application reads `bytes` (clamped to what is outstanding: a consumer never
    /// releases more than it was granted).
    Release { bytes: u64 },
    /// The channel ends or fails.
    Forget { chan: u8 },
    /// The pool answers what it can.
    Poll,
}

/// Shape of a pool.
#[derive(Clone, Copy, Debug)]
struct Shape {
    capacity: u64,
    reserve: u64,
    max_grant: u64,
}

fn shape() -> impl Strategy<Value = Shape> {
    (1u64..=6000)
        .prop_flat_map(|capacity| (Just(capacity), 0..=capacity, 0..=2 * capacity))
        .prop_map(|(capacity, reserve, max_grant)| Shape {
            capacity,
            reserve,
            max_grant,
        })
}

fn ops(shape: Shape) -> impl Strategy<Value = Vec<Op>> {
    // Needs up to one past the reserve, so that refusals are exercised too.
    let need_max = u32::try_from(shape.reserve + 1).unwrap_or(u32::MAX);
    let op = prop_oneof![
        4 => (0u8..6, 0..=need_max, 0u32..4000)
            .prop_map(|(chan, need, want)| Op::Request { chan, need, want }),
        2 => (0u8..6, 0u32..4000).prop_map(|(chan, want)| Op::Request { chan, need: 0, want }),
        3 => (0..=shape.capacity).prop_map(|bytes| Op::Release { bytes }),
        1 => (0u8..6).prop_map(|chan| Op::Forget { chan }),
        4 => Just(Op::Poll),
    ];
    vec(op, 1..150)
}

/// The reference model: what a pool must have granted and what it owes.
#[derive(Debug)]
struct Model {
    shape: Shape,
    outstanding: u64,
    peak: u64,
    /// Pending requests in arrival order: (channel, need, want).
    pending: VecDeque<(u8, u64, u64)>,
}

impl Model {
    fn free(&self) -> u64 {
        self.shape.capacity - self.outstanding
    }
}

fn run_pool(shape: Shape, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut pool = CreditPool::new(shape.capacity, shape.reserve, shape.max_grant);
    let mut model = Model {
        shape,
        outstanding: 0,
        peak: 0,
        pending: VecDeque::new(),
    };
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Request { chan, need, want } => {
                let result = pool.request(chan, need, want);
                let need = u64::from(need);
                let duplicate = model.pending.iter().any(|(c, _, _)| *c == chan);
                if need > shape.reserve {
                    prop_assert!(
                        matches!(result, Err(CreditError::NeedTooLarge { .. })),
                        "need {} above reserve {}: {:?}",
                        need,
                        shape.reserve,
                        result
                    );
                } else if duplicate {
                    prop_assert_eq!(result, Err(CreditError::DuplicateRequest));
                } else {
                    prop_assert_eq!(result, Ok(()));
                    model.pending.push_back((chan, need, u64::from(want)));
                }
            }
            Op::Release { bytes } => {
                let bytes = bytes.min(model.outstanding);
                pool.release(bytes);
                model.outstanding -= bytes;
            }
            Op::Forget { chan } => {
                pool.forget(chan);
                model.pending.retain(|(c, _, _)| *c != chan);
            }
            Op::Poll => {
                out.clear();
                pool.poll_grants(&mut out);
                prop_assert!(
                    out.len() <= model.pending.len(),
                    "{} grants for {} requests",
                    out.len(),
                    model.pending.len()
                );
                for &(chan, grant) in &out {
                    // FIFO, exactly once: each grant answers the oldest pending request.
                    let (expected, need, want) = model
                        .pending
                        .pop_front()
                        .ok_or_else(|| TestCaseError::fail("grant without a request"))?;
                    prop_assert_eq!(chan, expected, "grants answer requests in FIFO order");
                    let grant = u64::from(grant);
                    let free = model.free();
                    prop_assert!(
                        need <= free,
                        "granted need {} with only {} free",
                        need,
                        free
                    );
                    prop_assert!(grant >= need, "grant {} below need {}", grant, need);
                    prop_assert!(grant <= free, "grant {} above free {}", grant, free);
                    let extra = grant - need;
                    prop_assert!(extra <= want, "extra {} above want {}", extra, want);
                    prop_assert!(
                        grant <= need.max(shape.max_grant),
                        "grant {} above max_grant {} (need {})",
                        grant,
                        shape.max_grant,
                        need
                    );
                    if extra > 0 {
                        prop_assert!(
                            free - grant >= shape.reserve,
                            "speculation left {} free, below the reserve {}",
                            free - grant,
                            shape.reserve
                        );
                    }
                    // Not stingy either: the extra is all the reserve and max_grant allow.
                    let room = (free - need).saturating_sub(shape.reserve);
                    let cap = shape.max_grant.saturating_sub(need);
                    prop_assert_eq!(extra, want.min(room).min(cap), "extra for need {}", need);
                    model.outstanding += grant;
                    model.peak = model.peak.max(model.outstanding);
                }
                // Liveness: the pool stops only at a need it has no room for.
                if let Some(&(chan, need, _)) = model.pending.front() {
                    prop_assert!(
                        need > model.free(),
                        "channel {} needs {} and {} are free, yet it was not answered",
                        chan,
                        need,
                        model.free()
                    );
                }
            }
        }
        prop_assert!(model.outstanding <= shape.capacity);
        prop_assert_eq!(pool.outstanding(), model.outstanding);
        prop_assert_eq!(pool.peak(), model.peak);
        prop_assert!(pool.peak() <= pool.capacity());
        prop_assert_eq!(pool.waiting(), model.pending.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The pool agrees with the reference model and keeps its promises at every step.
    #[test]
    fn pool_matches_model(
        (shape, ops) in shape().prop_flat_map(|s| (Just(s), ops(s)))
    ) {
        run_pool(shape, ops)?;
    }
}

/// Pool sizes like the node's (capacity 4 × reserve), many channels: a need that waits
/// behind a full pool is answered by the first poll after enough is released.
#[test]
fn blocked_need_is_answered_once_room_returns() {
    let mut pool = CreditPool::new(4000, 1000, 2000);
    let mut out = Vec::new();
    for chan in 0u8..4 {
        pool.request(chan, 1000, 0).unwrap();
    }
    pool.poll_grants(&mut out);
    assert_eq!(out.len(), 4);
    pool.request(9, 1000, 5000).unwrap();
    pool.request(10, 0, 5000).unwrap();
    out.clear();
    pool.poll_grants(&mut out);
    assert!(
        out.is_empty(),
        "full pool, and the speculative request waits behind the need"
    );
    pool.release(999);
    pool.poll_grants(&mut out);
    assert!(out.is_empty(), "999 free is not room for 1000");
    pool.release(1);
    pool.poll_grants(&mut out);
    assert_eq!(out, vec![(9, 1000), (10, 0)]);
}

// ---------------------------------------------------------------------------------------
// SendCredit
// ---------------------------------------------------------------------------------------

/// One step of a sender's channel.
#[derive(Clone, Debug)]
enum SendOp {
    /// The application tries to send a message of `len` bytes.
    Spend { len: u32 },
    /// The application asks whether a message of `len` bytes could go (`has_credit`).
    Check { len: u32 },
    /// The answer to the request in flight arrives, granting the need plus `extra`
    /// (`exact: false`: an arbitrary amount, possibly short of the need).
    Grant { extra: u32, exact: bool },
}

fn send_ops() -> impl Strategy<Value = Vec<SendOp>> {
    let op = prop_oneof![
        3 => (0u32..3000).prop_map(|len| SendOp::Spend { len }),
        1 => (0u32..3000).prop_map(|len| SendOp::Check { len }),
        2 => (0u32..3000, any::<bool>()).prop_map(|(extra, exact)| SendOp::Grant { extra, exact }),
    ];
    vec(op, 1..200)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Spends never exceed the credit received (a `check` spends nothing); a refused
    /// message is never one the credit covers; at most one request is in flight; a blocked sender always has a request in
    /// flight asking for exactly what it lacks, and learns when the grant covers it.
    #[test]
    fn send_credit_never_overspends(
        want in 0u32..5000,
        low_water in 0u32..5000,
        ops in send_ops(),
    ) {
        let policy = SendPolicy { want, low_water };
        let mut credit = SendCredit::default();
        let mut granted = 0u64;
        let mut spent = 0u64;
        let mut in_flight: Option<CreditRequest> = None;
        let mut blocked: Option<u64> = None;
        for op in ops {
            let available = granted - spent;
            let request = match op {
                SendOp::Spend { len } => {
                    let (ok, request) = credit.try_spend(u64::from(len), policy);
                    let len = u64::from(len);
                    prop_assert_eq!(ok, available >= len, "spend {} with {} available", len, available);
                    if ok {
                        spent += len;
                        blocked = None;
                        if let Some(r) = request {
                            prop_assert_eq!(r.need, 0, "a sender that could send asks only ahead");
                        }
                    } else {
                        blocked = Some(len);
                        if in_flight.is_none() {
                            let r = request.ok_or_else(|| {
                                TestCaseError::fail("a blocked sender must ask for credit")
                            })?;
                            prop_assert_eq!(u64::from(r.need), len - available);
                        }
                    }
                    request
                }
                SendOp::Check { len } => {
                    let (ok, request) = credit.check(u64::from(len), policy);
                    let len = u64::from(len);
                    prop_assert_eq!(ok, available >= len, "check {} with {} available", len, available);
                    if ok {
                        prop_assert!(request.is_none(), "a check that passes asks for nothing");
                    } else {
                        blocked = Some(len);
                        if in_flight.is_none() {
                            let r = request.ok_or_else(|| {
                                TestCaseError::fail("a blocked check must ask for credit")
                            })?;
                            prop_assert_eq!(u64::from(r.need), len - available);
                        }
                    }
                    request
                }
                SendOp::Grant { extra, exact } => {
                    let Some(asked) = in_flight.take() else {
                        continue; // credit only ever answers a request
                    };
                    let bytes = if exact { asked.need.saturating_add(extra) } else { extra };
                    let (ready, request) = credit.on_grant(bytes, policy);
                    granted += u64::from(bytes);
                    let available = granted - spent;
                    match blocked {
                        Some(len) if available >= len => {
                            prop_assert!(ready, "the blocked message is covered now");
                            prop_assert!(request.is_none());
                        }
                        Some(len) => {
                            prop_assert!(!ready);
                            let r = request.ok_or_else(|| {
                                TestCaseError::fail("still short: must ask again")
                            })?;
                            prop_assert_eq!(u64::from(r.need), len - available);
                        }
                        None => {
                            prop_assert!(!ready);
                            prop_assert!(request.is_none(), "nothing blocked, nothing to ask");
                        }
                    }
                    request
                }
            };
            if let Some(r) = request {
                prop_assert!(in_flight.is_none(), "second request {:?} while {:?} in flight", r, in_flight);
                prop_assert!(r.want <= policy.want, "want {} above the policy's", r.want);
                if let Some(len) = blocked {
                    prop_assert!(u64::from(r.need) <= len, "need above the message size");
                }
                in_flight = Some(r);
            }
            prop_assert!(spent <= granted, "spent {} of {} granted", spent, granted);
            prop_assert_eq!(credit.available(), granted - spent);
            prop_assert_eq!(credit.is_blocked(), blocked.is_some_and(|len| len > 0));
            if blocked.is_some_and(|len| granted - spent < len) {
                prop_assert!(in_flight.is_some(), "a blocked sender is left without a request");
            }
        }
    }
}
