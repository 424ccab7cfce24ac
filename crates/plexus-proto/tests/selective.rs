//! Selective receive in the deterministic harness: a consumer that reads one producer at a
//! time (a merge of sorted streams) or one group to its end before another (a hash join's
//! build side, then its probe side) completes on one link whatever its pool, even a pool of
//! a single message, and the channels it does not read never hold more than the room
//! above the pool's reserve.

mod support;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use plexus_proto::node::{Recv, TrySendError};
use plexus_proto::{Config, Endpoint, JobId};
use support::{ep, Net};

const MESSAGE: usize = 200;

/// Pools of exactly one message.
fn one_message_pools(c: &mut Config) {
    c.max_message = MESSAGE as u32;
    c.credit_pool = c.max_message_cost();
    c.max_grant = c.credit_pool;
    c.credit_want = 0;
    c.credit_low_water = 0;
}

/// A pool of a few messages, so the channels not read may read ahead a little.
fn few_message_pools(c: &mut Config) {
    one_message_pools(c);
    c.credit_pool = 5 * c.max_message_cost();
    c.max_grant = 2 * c.max_message_cost();
    c.credit_want = 2 * MESSAGE as u32;
}

fn keyed(key: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(MESSAGE);
    b.put_u64_le(key);
    b.resize(MESSAGE, (key % 251) as u8);
    b.freeze()
}

fn key_of(m: &Bytes) -> u64 {
    u64::from_le_bytes(m[..8].try_into().expect("8 bytes"))
}

/// Two producers on node 0 (slots 0 and 1) and one consumer on node 1, over one link.
struct Setup {
    net: Net,
    job: JobId,
    producers: [Endpoint; 2],
    consumer: Endpoint,
    /// What each producer still has to send.
    outboxes: [VecDeque<Bytes>; 2],
    closed: [bool; 2],
}

impl Setup {
    fn new(config: fn(&mut Config), messages: [Vec<u64>; 2]) -> Self {
        let mut net = Net::new(2, config);
        let job = JobId(1);
        let producers = [ep(0, 0), ep(0, 1)];
        let consumer = ep(1, 0);
        net.open_consumer(1, job, 0, &producers);
        for slot in 0..2 {
            net.open_producer(0, job, slot, &[consumer]);
        }
        let [a, b] = messages;
        Self {
            net,
            job,
            producers,
            consumer,
            outboxes: [
                a.into_iter().map(keyed).collect(),
                b.into_iter().map(keyed).collect(),
            ],
            closed: [false; 2],
        }
    }

    /// Producers send what their credit allows (and close when done); then the net runs.
    fn pump(&mut self) {
        for slot in 0..2 {
            while let Some(m) = self.outboxes[slot].pop_front() {
                match self
                    .net
                    .try_send(0, self.job, slot as u32, self.consumer, m)
                {
                    Ok(()) => {}
                    Err(TrySendError::NoCredit(m)) => {
                        self.outboxes[slot].push_front(m);
                        break;
                    }
                    Err(TrySendError::Failed(e, _)) => panic!("producer {slot}: {e}"),
                }
            }
            if self.outboxes[slot].is_empty() && !self.closed[slot] {
                self.closed[slot] = true;
                self.net.close_producer(0, self.job, slot as u32);
            }
        }
        self.net.advance(Duration::from_millis(1));
    }

    /// Reads the next message of the producers `among`, running the net until it comes;
    /// `None` once they all ended.
    fn recv_from(&mut self, among: &[Endpoint]) -> Option<(Endpoint, u64)> {
        for _ in 0..100_000 {
            match self.net.node_mut(1).poll_recv_from(self.job, 0, among) {
                Recv::Message(from, m) => return Some((from, key_of(&m))),
                Recv::Finished => return None,
                Recv::Error(e) => panic!("{e}"),
                Recv::Pending => self.pump(),
            }
            self.check_bound(among);
        }
        panic!("no progress reading {among:?}: deadlock");
    }

    /// What the channels not in `among` hold (granted and not yet read) stays within the
    /// room above one message.
    fn check_bound(&self, among: &[Endpoint]) {
        let credit = self.net.consumer_credit(1, self.job, 0).expect("open");
        let reserve = self.net.node(1).config().max_message_cost();
        assert!(credit.outstanding <= credit.capacity);
        if among.len() == 1 && credit.capacity == reserve {
            // A single-message pool: nothing beyond what is read is ever granted.
            assert!(credit.outstanding <= reserve);
        }
    }
}

#[test]
fn a_merge_of_sorted_streams_completes_with_pools_of_one_message() {
    for config in [one_message_pools as fn(&mut Config), few_message_pools] {
        const N: u64 = 300;
        let evens: Vec<u64> = (0..N).map(|i| 2 * i).collect();
        let odds: Vec<u64> = (0..N).map(|i| 2 * i + 1).collect();
        let mut s = Setup::new(config, [evens, odds]);
        let [a, b] = s.producers;
        // The heads of both streams, then always the smaller one's next.
        let mut heads = [s.recv_from(&[a]), s.recv_from(&[b])];
        let mut merged = Vec::new();
        loop {
            let pick = match (heads[0], heads[1]) {
                (None, None) => break,
                (Some(_), None) => 0,
                (None, Some(_)) => 1,
                (Some((_, x)), Some((_, y))) => usize::from(y < x),
            };
            merged.push(heads[pick].expect("picked a head").1);
            heads[pick] = s.recv_from(&[s.producers[pick]]);
        }
        assert_eq!(merged, (0..2 * N).collect::<Vec<_>>(), "merged in order");
    }
}

#[test]
fn reading_the_build_side_to_its_end_before_the_probe_side_completes() {
    for config in [one_message_pools as fn(&mut Config), few_message_pools] {
        const N: u64 = 300;
        let mut s = Setup::new(config, [(0..N).collect(), (1000..1000 + N).collect()]);
        let [build, probe] = s.producers;
        let mut got = Vec::new();
        while let Some((from, key)) = s.recv_from(&[build]) {
            assert_eq!(from, build);
            got.push(key);
        }
        assert_eq!(got, (0..N).collect::<Vec<_>>());
        got.clear();
        while let Some((from, key)) = s.recv_from(&[probe]) {
            assert_eq!(from, probe);
            got.push(key);
        }
        assert_eq!(got, (1000..1000 + N).collect::<Vec<_>>());
        assert_eq!(
            s.net.node_mut(1).poll_recv(s.job, 0),
            Recv::Finished,
            "the whole stream ended"
        );
    }
}

/// Mixing is defined: a consumer that read interleaved and holds arrivals it took hands
/// them back, and reads one producer's messages in order after that.
#[test]
fn taken_arrivals_handed_back_are_read_first_and_in_order() {
    let mut s = Setup::new(few_message_pools, [(0..6).collect(), (100..106).collect()]);
    for _ in 0..20 {
        s.pump();
    }
    let mut taken = VecDeque::new();
    assert!(
        s.net
            .node_mut(1)
            .take_arrivals(s.job, 0, u64::MAX, &mut taken)
            > 0
    );
    s.net.node_mut(1).give_back(s.job, 0, &mut taken);
    assert!(taken.is_empty());
    let [a, b] = s.producers;
    let from_b: Vec<u64> = std::iter::from_fn(|| s.recv_from(&[b]).map(|(_, k)| k)).collect();
    assert_eq!(from_b, (100..106).collect::<Vec<_>>());
    let from_a: Vec<u64> = std::iter::from_fn(|| s.recv_from(&[a]).map(|(_, k)| k)).collect();
    assert_eq!(from_a, (0..6).collect::<Vec<_>>());
}
