//! Watching a run from outside its nodes: the most links any node's address holds (TCP
//! connections from the OS socket table, or for QUIC the UDP flows the kernel tracks),
//! sampled, and the progress bar.
//!
//! Invariants: sampling costs about a twentieth of one core at most (the pause between
//! samples is nineteen times the last sample's cost, and at least 100 ms); one last sample is
//! taken when the monitor stops, for runs shorter than the sampling period; the progress
//! bar is hidden when the report is JSON, and is one line redrawn in place whatever the
//! number of waves.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sockets;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

use super::delivered::Delivered;
use super::shape::Shape;

/// A running monitor; see the module docs.
pub struct Monitor {
    task: JoinHandle<()>,
    ips: Vec<Ipv4Addr>,
    tables: Vec<PathBuf>,
    links_max: Arc<AtomicUsize>,
    progress: ProgressBar,
}

impl Monitor {
    /// Starts sampling the connections of the nodes of `shape` and showing the bytes
    /// `delivered` out of all the shape's bytes (unless `hidden`).
    pub fn start(shape: &Shape, delivered: &Arc<Delivered>, hidden: bool) -> Monitor {
        Self::start_in(shape, delivered, hidden, Self::own_tables())
    }

    /// The socket tables of this process's network namespace.
    pub fn own_tables() -> Vec<PathBuf> {
        vec![PathBuf::from("/proc/net")]
    }

    /// The same, reading the socket tables in `tables` (one per network namespace the
    /// nodes live in, e.g. `/proc/PID/net`).
    pub fn start_in(
        shape: &Shape,
        delivered: &Arc<Delivered>,
        hidden: bool,
        tables: Vec<PathBuf>,
    ) -> Monitor {
        let ips = shape.node_ips();
        let links_max = Arc::new(AtomicUsize::new(0));
        let progress = progress_bar(shape.bytes_total(), hidden);
        let task = tokio::spawn(sample_links(
            ips.clone(),
            tables.clone(),
            links_max.clone(),
            delivered.clone(),
            progress.clone(),
        ));
        Monitor {
            task,
            ips,
            tables,
            links_max,
            progress,
        }
    }

    /// Counts the bytes of `waves` waves of the shape it started from, not one.
    pub fn expect_waves(&self, shape: &Shape, waves: u32) {
        self.progress
            .set_length(shape.bytes_total().saturating_mul(u64::from(waves)));
    }

    /// Shows that wave `wave` (0-based) of `waves` runs, when there are several.
    pub fn wave_started(&self, wave: u32, waves: u32) {
        if waves > 1 {
            self.progress
                .set_message(format!("wave {}/{waves}", wave + 1));
        }
    }

    /// Stops the monitor, while the links are still up, and returns the most established
    /// connections any node's address held.
    pub fn finish(self) -> usize {
        self.task.abort();
        self.links_max
            .fetch_max(max_links_in(&self.ips, &self.tables), Ordering::Relaxed);
        self.progress.finish_and_clear();
        self.links_max.load(Ordering::Relaxed)
    }
}

/// Samples established connections per node address, keeping the maximum, and updates
/// the progress bar.
async fn sample_links(
    ips: Vec<Ipv4Addr>,
    tables: Vec<PathBuf>,
    links_max: Arc<AtomicUsize>,
    delivered: Arc<Delivered>,
    progress: ProgressBar,
) {
    loop {
        progress.set_position(delivered.total());
        let (ips, tables) = (ips.clone(), tables.clone());
        let started = Instant::now();
        if let Ok(max) = tokio::task::spawn_blocking(move || max_links_in(&ips, &tables)).await {
            links_max.fetch_max(max, Ordering::Relaxed);
        }
        let pause = (started.elapsed() * 19).max(Duration::from_millis(100));
        tokio::time::sleep(pause).await;
    }
}

/// Most links any of `ips` holds, per the OS: its established TCP connections (the
/// socket tables in `tables`, one per network namespace, summed), or the other node
/// addresses it has tracked UDP flows with (QUIC links; see [`super::flows`]), whichever
/// is more.
pub fn max_links_in(ips: &[Ipv4Addr], tables: &[PathBuf]) -> usize {
    max_tcp_links_in(ips, tables).max(super::flows::max_udp_peers_in(ips, tables))
}

/// Most established TCP connections any of `ips` holds, per the socket tables in
/// `tables`, summed.
fn max_tcp_links_in(ips: &[Ipv4Addr], tables: &[PathBuf]) -> usize {
    let mut counts = std::collections::HashMap::new();
    for table in tables {
        if let Ok(found) = sockets::established_by_local_ip_in(table) {
            for (ip, n) in found {
                *counts.entry(ip).or_insert(0) += n;
            }
        }
    }
    ips.iter()
        .map(|ip| counts.get(ip).copied().unwrap_or(0))
        .max()
        .unwrap_or(0)
}

fn progress_bar(total: u64, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
