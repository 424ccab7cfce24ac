//! Micro-benchmarks of the protocol core's hot paths: frame codec, the fair scheduler, and
//! credit accounting. Run with `cargo bench -p plexus-proto`; CI builds them so they keep
//! compiling.
#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use plexus_proto::codec::{encode, Decoder};
use plexus_proto::credit::{CreditPool, SendCredit, SendPolicy};
use plexus_proto::scheduler::{Scheduler, Weighted};
use plexus_proto::{Frame, WireChannel};

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

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = codec, scheduler, credit
}
criterion_main!(benches);
