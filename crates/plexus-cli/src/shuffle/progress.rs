//! What the endpoints of one shuffle run share: the rows each consumer is owed and has
//! got, when the consumers that read are done (so that the stalled ones may start), the
//! most bytes producers held queued, and the links each node holds.
//!
//! A consumer is done once every producer has generated its share and the consumer got
//! every row the producers queued for it; the stalled consumers are released when every
//! other consumer is done (or failed).
//!
//! Invariants: the rows owed to a consumer are counted before its producer says it has
//! generated everything, so "done" is never announced early; each non-stalled consumer is
//! announced at most once, and the release happens exactly once, when the last is.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How often the nodes' links are counted.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The shared progress of a run; see the module docs.
pub struct Progress {
    stalled: Vec<bool>,
    owed: Vec<AtomicU64>,
    got: Vec<AtomicU64>,
    announced: Vec<AtomicBool>,
    generating: AtomicUsize,
    healthy_left: Mutex<(usize, Option<Instant>)>,
    release: watch::Sender<bool>,
    queued_max: AtomicU64,
    links_max: AtomicUsize,
}

impl Progress {
    /// A run of `producers` producers and consumers of which `stalled` stall.
    pub fn new(producers: usize, stalled: Vec<bool>) -> Progress {
        let n = stalled.len();
        let healthy = stalled.iter().filter(|s| !**s).count();
        Progress {
            owed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            got: (0..n).map(|_| AtomicU64::new(0)).collect(),
            announced: (0..n).map(|_| AtomicBool::new(false)).collect(),
            generating: AtomicUsize::new(producers),
            healthy_left: Mutex::new((healthy, None)),
            release: watch::Sender::new(healthy == n),
            queued_max: AtomicU64::new(0),
            links_max: AtomicUsize::new(0),
            stalled,
        }
    }

    /// Whether consumer `c` stalls.
    pub fn is_stalled(&self, c: usize) -> bool {
        self.stalled[c]
    }

    /// Waits until the stalled consumers may read.
    pub async fn released(&self) {
        let mut release = self.release.subscribe();
        let _ = release.wait_for(|released| *released).await;
    }

    /// A producer queued `rows` rows for consumer `c`.
    pub fn owed(&self, c: usize, rows: u64) {
        self.owed[c].fetch_add(rows, Ordering::SeqCst);
    }

    /// A producer has generated (and counted) everything.
    pub fn generated(&self) {
        if self.generating.fetch_sub(1, Ordering::SeqCst) == 1 {
            for c in 0..self.stalled.len() {
                self.check(c);
            }
        }
    }

    /// Consumer `c` got `rows` rows.
    pub fn got(&self, c: usize, rows: u64) {
        self.got[c].fetch_add(rows, Ordering::SeqCst);
        self.check(c);
    }

    /// Consumer `c` failed: it is done for the stalled ones' sake.
    pub fn failed(&self, c: usize) {
        self.announce(c);
    }

    fn check(&self, c: usize) {
        if self.generating.load(Ordering::SeqCst) == 0
            && self.got[c].load(Ordering::SeqCst) >= self.owed[c].load(Ordering::SeqCst)
        {
            self.announce(c);
        }
    }

    fn announce(&self, c: usize) {
        if self.stalled[c] || self.announced[c].swap(true, Ordering::SeqCst) {
            return;
        }
        let mut left = self.healthy_left.lock().unwrap_or_else(|p| p.into_inner());
        left.0 = left.0.saturating_sub(1);
        if left.0 == 0 {
            left.1 = Some(Instant::now());
            self.release.send_replace(true);
        }
    }

    /// When the last non-stalled consumer was done, if it was.
    pub fn healthy_done_at(&self) -> Option<Instant> {
        self.healthy_left
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
    }

    /// A producer holds `bytes` queued.
    pub fn queued(&self, bytes: u64) {
        self.queued_max.fetch_max(bytes, Ordering::Relaxed);
    }

    /// The most bytes any producer held queued.
    pub fn queued_max(&self) -> u64 {
        self.queued_max.load(Ordering::Relaxed)
    }

    /// The most established connections any of `ips` held at one sample.
    pub fn links_max(&self) -> usize {
        self.links_max.load(Ordering::Relaxed)
    }

    /// Samples the connections of `ips` every [`SAMPLE_EVERY`] until `stop` turns true
    /// (reading the socket table costs CPU the run needs: the links of a run are steady,
    /// so a few samples find them).
    pub async fn sample_links(&self, ips: Vec<Ipv4Addr>, mut stop: watch::Receiver<bool>) {
        let tables = [std::path::PathBuf::from("/proc/net")];
        loop {
            let ips = ips.clone();
            let tables = tables.clone();
            let links =
                tokio::task::spawn_blocking(move || crate::bench::max_links_in(&ips, &tables))
                    .await
                    .unwrap_or(0);
            self.links_max.fetch_max(links, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stalled_are_released_once_every_other_consumer_has_all_it_is_owed() {
        let p = Progress::new(2, vec![false, true, false]);
        assert!(!*p.release.borrow());
        p.owed(0, 10);
        p.owed(2, 5);
        p.got(0, 10);
        p.got(2, 5);
        // Producers still generating: more may be owed.
        assert!(!*p.release.borrow());
        p.generated();
        assert!(!*p.release.borrow());
        p.generated();
        assert!(*p.release.borrow());
        assert!(p.healthy_done_at().is_some());
    }

    #[test]
    fn a_failed_consumer_counts_as_done() {
        let p = Progress::new(1, vec![false, true]);
        p.owed(0, 10);
        p.generated();
        p.failed(0);
        assert!(*p.release.borrow());
    }
}
