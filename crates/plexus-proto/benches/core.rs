//! Micro-benchmarks of the protocol core's hot paths: frame codec, the fair scheduler,
//! credit accounting, and a whole exchange of small messages between two cores connected in
//! memory (every step a message takes in the core, without sockets or threads). Run with
//! `cargo bench -p plexus-proto`; CI builds them so they keep compiling.
#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::hint::black_box;

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use plexus_proto::auth::Secret;
use plexus_proto::codec::{encode, Decoder};
use plexus_proto::credit::{CreditPool, SendCredit, SendPolicy};
use plexus_proto::node::{Arrival, Event};
use plexus_proto::scheduler::{Scheduler, Weighted};
use plexus_proto::{
    Config, Endpoint, Frame, JobId, LinkId, NodeCore, NodeId, Transmit, TrySendError, WireChannel,
};

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [128usize, 64 * 1024] {
        let frame = Frame::Data {
            channel: WireChannel(7),
            payload: Bytes::from(vec![0xAB; size]),
        };
        let mut encoded = BytesMut::new();
        for _ in 0..64 {
            encode(&frame, &mut encoded);
        }
        let encoded = encoded.freeze();
        let decoder = Decoder::new(1 << 20);
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_function(format!("decode_64_data_frames_of_{size}"), |b| {
            b.iter_batched(
                || BytesMut::from(&encoded[..]),
                |mut buf| {
                    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
                        black_box(frame);
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    let credit = Frame::Credit {
        channel: WireChannel(3),
        bytes: 65536,
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_credit", |b| {
        let mut out = BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            if out.len() > 60_000 {
                out.clear();
            }
            encode(black_box(&credit), &mut out);
        })
    });
    group.finish();
}

struct Item(usize);

impl Weighted for Item {
    fn weight(&self) -> usize {
        self.0
    }
}

fn scheduler(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler");
    for channels in [16u64, 4096] {
        group.throughput(Throughput::Elements(channels * 4));
        group.bench_function(format!("push_pop_{channels}_channels"), |b| {
            let mut s: Scheduler<u64, Item> = Scheduler::new(64 * 1024);
            b.iter(|| {
                for round in 0..4 {
                    for ch in 0..channels {
                        s.push(ch, Item(1024 + (ch as usize + round) % 7 * 512));
                    }
                }
                while let Some(item) = s.pop() {
                    black_box(item);
                }
            })
        });
    }
    group.finish();
}

fn credit(c: &mut Criterion) {
    let mut group = c.benchmark_group("credit");
    let policy = SendPolicy {
        want: 256 * 1024,
        low_water: 64 * 1024,
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("send_credit_spend_and_grant", |b| {
        let mut credit = SendCredit::default();
        b.iter(|| {
            let (ok, request) = credit.try_spend(black_box(4096), policy);
            if !ok || request.is_some() {
                credit.on_grant(256 * 1024, policy);
            }
        })
    });
    group.throughput(Throughput::Elements(1024));
    group.bench_function("pool_request_grant_release_1024_channels", |b| {
        let mut pool: CreditPool<u32> = CreditPool::new(64 << 20, 1 << 20, 1 << 20);
        let mut grants = Vec::with_capacity(1024);
        b.iter(|| {
            for ch in 0..1024u32 {
                let _ = pool.request(ch, 4096, 8192);
            }
            pool.poll_grants(&mut grants);
            let total: u64 = grants.drain(..).map(|(_, g)| u64::from(g)).sum();
            pool.release(total);
        })
    });
    group.finish();
}

/// Two cores linked in memory: node 0 runs one producer feeding `consumers` consumers on
/// node 1.
struct Pair {
    sender: NodeCore,
    receiver: NodeCore,
    sender_link: LinkId,
    receiver_link: LinkId,
    transmit: Transmit,
    wire: BytesMut,
    arrivals: VecDeque<(Endpoint, Arrival)>,
    consumers: Vec<Endpoint>,
    now: Instant,
}

const JOB: JobId = JobId(1);

impl Pair {
    fn connect(consumers: u32) -> Pair {
        let now = Instant::now();
        let secret = Secret::new(*b"the bench's secret").expect("long enough");
        let config = |node| Config::new(NodeId(node), 0xBE7C, secret.clone());
        let mut sender = NodeCore::new(config(0), now).expect("valid configuration");
        let mut receiver = NodeCore::new(config(1), now).expect("valid configuration");
        let consumers: Vec<Endpoint> = (0..consumers)
            .map(|s| Endpoint::new(NodeId(1), s))
            .collect();
        let producer = Endpoint::new(NodeId(0), 0);
        for c in &consumers {
            receiver
                .open_consumer(JOB, c.slot, [producer])
                .expect("consumer opens");
        }
        sender
            .open_producer(JOB, 0, consumers.iter().copied())
            .expect("producer opens");
        // A first message opens its channel, which asks for the link.
        let _ = sender.try_send(JOB, 0, consumers[0], Bytes::new());
        while sender.poll_event().is_some() {}
        let sender_link = sender.handle_dialed(NodeId(1), now).expect("dial wanted");
        let receiver_link = receiver.handle_accepted(now);
        let mut pair = Pair {
            sender,
            receiver,
            sender_link,
            receiver_link,
            transmit: Transmit::new(),
            wire: BytesMut::new(),
            arrivals: VecDeque::new(),
            consumers,
            now,
        };
        for _ in 0..4 {
            pair.round_trip();
        }
        // Channels open and ask for credit on their first message.
        for c in pair.consumers.clone() {
            let _ = pair.sender.try_send(JOB, 0, c, Bytes::new());
        }
        for _ in 0..4 {
            pair.round_trip();
        }
        pair
    }

    /// Moves what each side has to send to the other, and drains events.
    fn round_trip(&mut self) {
        Self::carry(
            &mut self.sender,
            self.sender_link,
            &mut self.receiver,
            self.receiver_link,
            &mut self.transmit,
            &mut self.wire,
            self.now,
        );
        for c in &self.consumers {
            while self
                .receiver
                .take_arrivals(JOB, c.slot, u64::MAX, &mut self.arrivals)
                > 0
            {}
            self.receiver.finished_reading(JOB, c.slot);
        }
        for (_, arrival) in self.arrivals.drain(..) {
            match arrival {
                Arrival::Message(m) => {
                    black_box(m);
                }
                Arrival::Batch(batch) => batch.for_each(|m| {
                    black_box(m);
                }),
            }
        }
        Self::carry(
            &mut self.receiver,
            self.receiver_link,
            &mut self.sender,
            self.sender_link,
            &mut self.transmit,
            &mut self.wire,
            self.now,
        );
        while let Some(event) = self.sender.poll_event() {
            black_box::<Event>(event);
        }
        while let Some(event) = self.receiver.poll_event() {
            black_box::<Event>(event);
        }
    }

    fn carry(
        from: &mut NodeCore,
        from_link: LinkId,
        to: &mut NodeCore,
        to_link: LinkId,
        transmit: &mut Transmit,
        wire: &mut BytesMut,
        now: Instant,
    ) {
        from.poll_transmit(from_link, now, transmit, 1 << 20);
        let mut chunks = Vec::new();
        transmit.take_chunks(&mut chunks);
        for chunk in chunks {
            wire.extend_from_slice(&chunk);
        }
        to.handle_bytes(to_link, wire, now);
    }

    /// Sends `per_consumer` messages to each consumer, round robin, then carries them
    /// across; returns how many were taken.
    fn exchange(&mut self, message: &Bytes, per_consumer: usize) -> u64 {
        let mut sent = 0;
        for _ in 0..per_consumer {
            for i in 0..self.consumers.len() {
                match self
                    .sender
                    .try_send(JOB, 0, self.consumers[i], message.clone())
                {
                    Ok(()) => sent += 1,
                    Err(TrySendError::NoCredit(_)) => {}
                    Err(TrySendError::Failed(e, _)) => panic!("channel failed: {e}"),
                }
            }
        }
        self.round_trip();
        sent
    }
}

fn exchange(c: &mut Criterion) {
    let mut group = c.benchmark_group("exchange");
    static PAYLOAD: [u8; 128] = [0x5A; 128];
    let message = Bytes::from_static(&PAYLOAD);
    const CONSUMERS: u32 = 32;
    const PER_CONSUMER: usize = 8;
    group.throughput(Throughput::Elements(
        u64::from(CONSUMERS) * PER_CONSUMER as u64,
    ));
    group.bench_function("small_messages_32_channels", |b| {
        let mut pair = Pair::connect(CONSUMERS);
        // Credit grows with what the channels send.
        let warm: u64 = (0..64).map(|_| pair.exchange(&message, PER_CONSUMER)).sum();
        assert!(warm > 0, "credit flows");
        let per_round = u64::from(CONSUMERS) * PER_CONSUMER as u64;
        assert_eq!(
            pair.exchange(&message, PER_CONSUMER),
            per_round,
            "in steady state every message has credit"
        );
        b.iter(|| black_box(pair.exchange(&message, PER_CONSUMER)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = codec, scheduler, credit, exchange
}
criterion_main!(benches);
