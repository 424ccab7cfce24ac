//! Property tests of the deficit round robin [`Scheduler`] that shares a link among ready
//! channels.
//!
//! - Order: random pushes, pops and removals, checked against a per-channel FIFO model:
//!   every pop returns the oldest item of some channel, nothing is lost or invented, `pop`
//!   returns `None` only when nothing is queued, `remove` returns exactly that channel's
//!   items in order, and `queued_bytes` is always the sum of the queued items' weights.
//! - Fairness: two channels kept continuously backlogged, each with its own message sizes
//!   (at most `max_message`). The bound checked, after *every* pop from the start, is
//!
//!   `|bytes sent by A - bytes sent by B| <= quantum + max_message`
//!
//!   Why it holds for deficit round robin: after a channel's `r`-th turn it has sent
//!   `r * quantum - deficit`, with `0 <= deficit < max_message` (a turn ends when the head
//!   no longer fits the deficit). During A's `r`-th turn, A has sent at most `r * quantum`
//!   while B, after `r - 1` turns, has sent more than `(r - 1) * quantum - max_message`.
//! - Fresh channels: one that becomes ready while others are backlogged takes the next
//!   turn, then joins the back of the round.

use std::collections::{HashMap, VecDeque};

use plexus_proto::scheduler::{Scheduler, Weighted};
use proptest::collection::vec;
use proptest::prelude::*;

/// A queued item: its channel, its position in that channel's stream, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Item {
    chan: u8,
    seq: u32,
    weight: usize,
}

impl Weighted for Item {
    fn weight(&self) -> usize {
        self.weight
    }
}

#[derive(Clone, Debug)]
enum Op {
    Push { chan: u8, weight: usize },
    Pop,
    Remove { chan: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..5, 0usize..3000).prop_map(|(chan, weight)| Op::Push { chan, weight }),
        4 => Just(Op::Pop),
        1 => (0u8..6).prop_map(|chan| Op::Remove { chan }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Per-channel FIFO order, exact accounting of `queued_bytes`, and exact removal.
    #[test]
    fn order_accounting_and_removal_match_the_model(
        quantum in 1usize..5000,
        ops in vec(op(), 1..300),
    ) {
        let mut s: Scheduler<u8, Item> = Scheduler::new(quantum);
        let mut model: HashMap<u8, VecDeque<Item>> = HashMap::new();
        let mut next_seq: HashMap<u8, u32> = HashMap::new();
        for op in ops {
            match op {
                Op::Push { chan, weight } => {
                    let seq = next_seq.entry(chan).or_insert(0);
                    let item = Item { chan, seq: *seq, weight };
                    *seq += 1;
                    s.push(chan, item);
                    model.entry(chan).or_default().push_back(item);
                }
                Op::Pop => match s.pop() {
                    None => prop_assert!(
                        model.values().all(VecDeque::is_empty),
                        "pop returned None with items queued"
                    ),
                    Some((chan, item)) => {
                        prop_assert_eq!(chan, item.chan, "item popped under another channel");
                        let front = model.get_mut(&chan).and_then(VecDeque::pop_front);
                        prop_assert_eq!(Some(item), front, "not the oldest item of its channel");
                    }
                },
                Op::Remove { chan } => {
                    let removed = s.remove(chan);
                    let expected: Vec<Item> = model.remove(&chan).unwrap_or_default().into();
                    prop_assert_eq!(removed, expected);
                }
            }
            let queued: usize = model.values().flatten().map(|i| i.weight).sum();
            prop_assert_eq!(s.queued_bytes(), queued);
            let ready = model.values().filter(|q| !q.is_empty()).count();
            prop_assert_eq!(s.ready_channels(), ready);
            prop_assert_eq!(s.is_empty(), ready == 0);
        }
        // Draining returns exactly what the model still holds.
        while let Some((chan, item)) = s.pop() {
            let front = model.get_mut(&chan).and_then(VecDeque::pop_front);
            prop_assert_eq!(Some(item), front);
        }
        prop_assert!(model.values().all(VecDeque::is_empty), "items lost: {:?}", model);
        prop_assert_eq!(s.queued_bytes(), 0);
    }

    /// Two continuously backlogged channels with different message sizes: over every
    /// prefix of pops, the bytes they sent differ by at most `quantum + max_message`.
    #[test]
    fn backlogged_channels_share_bytes_fairly(
        quantum in 1usize..5000,
        max_message in 1usize..5000,
        a_sizes in vec(0.0f64..=1.0, 1..16),
        b_sizes in vec(0.0f64..=1.0, 1..16),
        b_first in any::<bool>(),
        pops in 1usize..3000,
    ) {
        let scale = |f: f64| ((f * max_message as f64) as usize).min(max_message);
        let sizes = [
            a_sizes.iter().map(|&f| scale(f)).collect::<Vec<_>>(),
            b_sizes.iter().map(|&f| scale(f)).collect::<Vec<_>>(),
        ];
        let mut s: Scheduler<u8, Item> = Scheduler::new(quantum);
        let mut next = [0u32; 2];
        let mut push = |s: &mut Scheduler<u8, Item>, chan: u8| {
            let k = usize::from(chan);
            let weight = sizes[k][next[k] as usize % sizes[k].len()];
            s.push(chan, Item { chan, seq: next[k], weight });
            next[k] += 1;
        };
        let order: [u8; 2] = if b_first { [1, 0] } else { [0, 1] };
        for _ in 0..2 {
            for chan in order {
                push(&mut s, chan);
            }
        }
        let mut sent = [0usize; 2];
        let mut expect_seq = [0u32; 2];
        for _ in 0..pops {
            let (chan, item) = s.pop().ok_or_else(|| TestCaseError::fail("backlogged, yet empty"))?;
            let k = usize::from(chan);
            prop_assert_eq!(item.seq, expect_seq[k]);
            expect_seq[k] += 1;
            sent[k] += item.weight;
            // Keep the channel backlogged: it never runs dry.
            push(&mut s, chan);
            let diff = sent[0].abs_diff(sent[1]);
            prop_assert!(
                diff <= quantum + max_message,
                "after {:?} bytes the gap {} exceeds quantum {} + max {}",
                sent,
                diff,
                quantum,
                max_message
            );
        }
    }
}

/// A quiet channel that becomes ready behind a busy one is served within one round.
#[test]
fn quiet_channel_is_not_starved_by_a_busy_one() {
    let mut s: Scheduler<u8, Item> = Scheduler::new(1000);
    for seq in 0..100 {
        s.push(
            0,
            Item {
                chan: 0,
                seq,
                weight: 900,
            },
        );
    }
    assert_eq!(s.pop().map(|(c, _)| c), Some(0));
    s.push(
        1,
        Item {
            chan: 1,
            seq: 0,
            weight: 10,
        },
    );
    let mut busy_before_quiet = 0;
    loop {
        match s.pop() {
            Some((1, _)) => break,
            Some((0, _)) => busy_before_quiet += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        busy_before_quiet <= 2,
        "{busy_before_quiet} busy items went first"
    );
}

#[test]
fn a_channel_being_served_gives_its_next_items_within_its_deficit() {
    let item = |chan, seq, weight| Item { chan, seq, weight };
    let mut s = Scheduler::new(100);
    for seq in 0..4 {
        s.push(1u8, item(1, seq, 40));
    }
    s.push(2u8, item(2, 0, 40));
    let (key, first) = s.pop().expect("queued");
    assert_eq!((key, first.seq), (1, 0));
    assert_eq!(
        s.pop_next_of(2, |_| true),
        None,
        "not the channel being served"
    );
    assert_eq!(s.pop_next_of(1, |_| false), None, "refused by the caller");
    assert_eq!(s.pop_next_of(1, |_| true).map(|i| i.seq), Some(1));
    assert_eq!(
        s.pop_next_of(1, |_| true),
        None,
        "40 + 40 + 40 is beyond the quantum of 100"
    );
    assert_eq!(s.queued_bytes(), 3 * 40);
    assert_eq!(
        s.pop().map(|(k, i)| (k, i.seq)),
        Some((2, 0)),
        "the turn passed on"
    );
    assert_eq!(s.pop().map(|(k, i)| (k, i.seq)), Some((1, 2)));
    assert_eq!(s.pop_next_of(1, |_| true).map(|i| i.seq), Some(3));
    assert!(s.is_empty());
    assert_eq!(s.queued_bytes(), 0);
}

/// A channel that becomes ready while ten bulk channels are backlogged takes the next turn
/// (after the one in progress), not the back of the round; what it has left after its turn
/// waits its turn in the round like any other.
#[test]
fn a_fresh_channel_goes_before_the_round_then_joins_it() {
    let item = |chan, seq, weight| Item { chan, seq, weight };
    let mut s = Scheduler::new(1000);
    for chan in 0..10u8 {
        for seq in 0..10 {
            s.push(chan, item(chan, seq, 1000));
        }
    }
    // One item each: every bulk channel had its fresh turn and is in the round.
    let first: Vec<u8> = (0..10).map(|_| s.pop().expect("queued").0).collect();
    assert_eq!(first, (0..10).collect::<Vec<u8>>());
    s.push(20, item(20, 0, 10));
    s.push(20, item(20, 1, 1000));
    let order: Vec<(u8, u32)> = (0..12)
        .map(|_| s.pop().map(|(k, i)| (k, i.seq)).expect("queued"))
        .collect();
    let mut expected = vec![(20, 0)];
    expected.extend((0..10).map(|chan| (chan, 1)));
    expected.push((20, 1));
    assert_eq!(order, expected);
    // Emptied, it is fresh again when it next has something: it waits for the turn in
    // progress only.
    assert_eq!(s.pop().map(|(k, i)| (k, i.seq)), Some((0, 2)));
    s.push(20, item(20, 2, 10));
    assert_eq!(s.pop().map(|(k, i)| (k, i.seq)), Some((20, 2)));
    assert_eq!(s.pop().map(|(k, i)| (k, i.seq)), Some((1, 2)));
}
