//! Chaos for QUIC links: `ss -K` has no socket to destroy (a node has one UDP socket for
//! all its peers), so a link is cut from outside by dropping every UDP packet between
//! two node addresses with nftables for [`HOLD`], longer than a link may stay silent:
//! both ends see their link die, dial again and fail until the cut heals, then resume.
//!
//! Every cut is a table of its own (`inet plexus_bench_cut_<a>_<b>`), removed when the
//! cut heals and, for those still held, when the chaos stops.
//!
//! Invariants: only packets whose both ends are node addresses are dropped; a pair cut is
//! not cut again for [`HOLD`] after it heals, as `ss -K` kills only links that are up: a
//! link gets that long to come back and resume, so no pair's outage outlasts one cut (a
//! period shorter than the hold skips the ticks when every pair is cut or recovering); no
//! table outlives the run that made it (the guard removes what is left).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::roles::wall_ms;
use super::workload::splitmix64;

/// How long a cut drops the pair's packets: longer than a link's idle timeout (2 s), well
/// within the grace period (10 s) after which a peer is declared dead.
pub const HOLD: Duration = Duration::from_secs(3);

/// Fails with a clear message unless `nft` (nftables) can be run.
pub fn check_nft() -> Result<(), String> {
    super::chaos::check_tool(
        "--chaos-link-kill-ms over QUIC",
        "nft",
        "--version",
        "nftables",
    )
}

/// A running UDP link cutter.
pub struct UdpChaos {
    task: JoinHandle<()>,
    kills: Arc<AtomicU64>,
    held: Arc<Mutex<BTreeSet<String>>>,
}

impl UdpChaos {
    /// Starts cutting one random pair of `ips` every `period`.
    pub fn start(ips: Vec<Ipv4Addr>, period: Duration) -> UdpChaos {
        let kills = Arc::new(AtomicU64::new(0));
        let held = Arc::new(Mutex::new(BTreeSet::new()));
        let task = tokio::spawn(cut_pairs(ips, period, kills.clone(), held.clone()));
        UdpChaos { task, kills, held }
    }

    /// Stops cutting, heals the cuts still held, and returns how many cuts were made.
    pub fn stop(self) -> u64 {
        self.task.abort();
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        for table in held {
            heal(&table);
        }
        self.kills.load(Ordering::Relaxed)
    }
}

async fn cut_pairs(
    ips: Vec<Ipv4Addr>,
    period: Duration,
    kills: Arc<AtomicU64>,
    held: Arc<Mutex<BTreeSet<String>>>,
) {
    let mut rng = wall_ms() ^ u64::from(std::process::id()).rotate_left(32);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pairs: Vec<(Ipv4Addr, Ipv4Addr)> = ips
        .iter()
        .enumerate()
        .flat_map(|(i, &a)| ips[i + 1..].iter().map(move |&b| (a.min(b), a.max(b))))
        .collect();
    // When each pair may be cut again: its cut healed and it had a hold's time to recover.
    let mut eligible_at: HashMap<(Ipv4Addr, Ipv4Addr), tokio::time::Instant> = HashMap::new();
    loop {
        interval.tick().await;
        let now = tokio::time::Instant::now();
        let up: Vec<_> = pairs
            .iter()
            .filter(|p| eligible_at.get(p).is_none_or(|&at| at <= now))
            .collect();
        if up.is_empty() {
            continue;
        }
        let (a, b) = *up[(splitmix64(&mut rng) % up.len() as u64) as usize];
        let table = format!("plexus_bench_cut_{}_{}", u32::from(a), u32::from(b));
        let made = {
            let table = table.clone();
            tokio::task::spawn_blocking(move || cut(&table, a, b)).await
        };
        if !matches!(made, Ok(true)) {
            continue;
        }
        kills.fetch_add(1, Ordering::Relaxed);
        eligible_at.insert((a, b), now + 2 * HOLD);
        held.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table.clone());
        let held = held.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HOLD).await;
            if held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&table)
            {
                let _ = tokio::task::spawn_blocking(move || heal(&table)).await;
            }
        });
    }
}

/// Adds table `table`, dropping UDP between `a` and `b`; whether it was added.
fn cut(table: &str, a: Ipv4Addr, b: Ipv4Addr) -> bool {
    let rules = format!(
        "table inet {table} {{\n chain in {{\n  type filter hook input priority 0; policy accept;\n  ip saddr {a} ip daddr {b} meta l4proto udp drop\n  ip saddr {b} ip daddr {a} meta l4proto udp drop\n }}\n}}\n"
    );
    let child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        tracing::warn!("cannot run nft");
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(rules.as_bytes());
    }
    let added = child.wait().is_ok_and(|status| status.success());
    tracing::info!(%a, %b, added, "cut UDP between nodes");
    added
}

/// Removes table `table`.
fn heal(table: &str) {
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
