//! The memory an idle channel costs in the core: opens `n` producers and `n` consumers of
//! one job on a single node (n² channels, both ends in one core), has every channel ask for
//! credit once (an idle channel that has spoken), and reports the growth of the resident
//! set per endpoint and per channel.
//!
//! `cargo run --release -p plexus-proto --example idle_channels -- 1000` (10⁶ channels).

use std::time::Instant;

use plexus_proto::auth::Secret;
use plexus_proto::{Config, Endpoint, JobId, NodeCore, NodeId};

/// Resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let me = NodeId(0);
    let mut config = Config::new(
        me,
        1,
        Secret::new(*b"an example secret").expect("long enough"),
    );
    config.max_message = 1024;
    config.credit_pool = 64 * 1024;
    let mut core = NodeCore::new(config, Instant::now()).expect("valid configuration");
    let job = JobId(1);
    let endpoints: Vec<Endpoint> = (0..n).map(|slot| Endpoint::new(me, slot)).collect();
    let before = rss_bytes();
    for slot in 0..n {
        core.open_consumer(job, slot, endpoints.iter().copied())
            .expect("consumer opens");
    }
    for slot in 0..n {
        core.open_producer(job, slot, endpoints.iter().copied())
            .expect("producer opens");
    }
    let opened = rss_bytes();
    for producer in 0..n {
        for &consumer in &endpoints {
            core.has_credit(job, producer, consumer, 0)
                .expect("channel opens");
        }
        while core.poll_event().is_some() {}
    }
    let spoken = rss_bytes();
    let channels = u64::from(n) * u64::from(n);
    let stats = core.stats();
    assert_eq!(stats.out_channels as u64, channels, "every channel is open");
    println!(
        "{channels} channels ({n} producers x {n} consumers on one node): \
         {:.0} B per endpoint ({:.1} B per peer it lists), {:.0} B per channel (both ends)",
        (opened - before) as f64 / (2 * n) as f64,
        (opened - before) as f64 / channels as f64 / 2.0,
        (spoken - opened) as f64 / channels as f64,
    );
}
