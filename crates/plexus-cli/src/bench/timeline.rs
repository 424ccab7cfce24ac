//! Bytes delivered over time, for `--report`: a task samples a run's [`Delivered`] counts
//! every [`PERIOD`] into a [`Series`] of at most [`MAX_POINTS`] points. Consumers only add
//! to their counters; the sampler alone reads them, off the consumers' path.
//!
//! Invariants: a series's points are in time order and their counts never decrease (the
//! counts they sample only grow); it holds at most [`MAX_POINTS`] points: when it fills,
//! every other point goes and from then on only every other sample is kept, so the points
//! stay evenly spread over the run however long it lasts; its first point is taken when
//! sampling starts and its last one when the run stops, once every endpoint reported, so it
//! holds the final counts; nothing is added after that.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::delivered::Delivered;

/// Time between two samples.
pub const PERIOD: Duration = Duration::from_millis(10);

/// The most points a series holds.
pub const MAX_POINTS: usize = 2000;

/// One sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Time since the run started, in ms.
    pub t_ms: f64,
    /// Bytes received so far by the consumers that do not stall, all summed.
    pub healthy: u64,
    /// Bytes received so far by the consumers that stall, all summed.
    pub stalled: u64,
}

/// The samples of one run; see the module docs.
#[derive(Clone, Debug)]
pub struct Series {
    points: Vec<Point>,
    /// Only samples whose tick is a multiple of this are kept.
    stride: u64,
    /// The most points held.
    cap: usize,
    /// The last point is in; later samples are ignored.
    closed: bool,
}

impl Series {
    /// An empty series of at most `cap` points (at least 2: the first and the last).
    pub fn new(cap: usize) -> Series {
        Series {
            points: Vec::new(),
            stride: 1,
            cap: cap.max(2),
            closed: false,
        }
    }

    /// Offers the sample taken at tick `tick` (0, 1, 2, ... in order); kept if the series
    /// keeps samples of that tick.
    pub fn offer(&mut self, tick: u64, point: Point) {
        if self.closed || !tick.is_multiple_of(self.stride) {
            return;
        }
        self.points.push(point);
        // One place stays free for the last point.
        if self.points.len() >= self.cap - 1 {
            self.halve();
        }
    }

    /// Drops every other point, keeping the first, and every other tick from now on.
    fn halve(&mut self) {
        let mut index = 0;
        self.points.retain(|_| {
            index += 1;
            index % 2 == 1
        });
        self.stride *= 2;
    }

    /// Adds the last point, the run's final counts; nothing is added after it.
    pub fn close(&mut self, point: Point) {
        if self.closed {
            return;
        }
        self.closed = true;
        if self
            .points
            .last()
            .is_some_and(|last| last.t_ms >= point.t_ms)
        {
            self.points.pop();
        }
        self.points.push(point);
    }

    /// The points, in time order.
    pub fn points(&self) -> &[Point] {
        &self.points
    }
}

/// A running sampler.
pub struct Timeline {
    task: JoinHandle<()>,
    series: Arc<Mutex<Series>>,
    delivered: Arc<Delivered>,
    start: Instant,
}

impl Timeline {
    /// Starts sampling `delivered` (on the current tokio runtime), times counted from
    /// `start`.
    pub fn start(delivered: Arc<Delivered>, start: Instant) -> Timeline {
        let mut first = Series::new(MAX_POINTS);
        first.offer(0, point(&delivered, start));
        let series = Arc::new(Mutex::new(first));
        let task = tokio::spawn(sample(delivered.clone(), start, series.clone()));
        Timeline {
            task,
            series,
            delivered,
            start,
        }
    }

    /// Stops sampling, takes the final counts and returns the series.
    pub fn stop(self) -> Series {
        self.task.abort();
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series.close(point(&self.delivered, self.start));
        series.clone()
    }
}

/// The counts of `delivered` now.
fn point(delivered: &Delivered, start: Instant) -> Point {
    Point {
        t_ms: start.elapsed().as_secs_f64() * 1000.0,
        healthy: delivered.healthy(),
        stalled: delivered.stalled(),
    }
}

async fn sample(delivered: Arc<Delivered>, start: Instant, series: Arc<Mutex<Series>>) {
    // Tick 0 was taken when sampling started.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for tick in 1.. {
        ticks.tick().await;
        let now = point(&delivered, start);
        series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .offer(tick, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tick: u64) -> Point {
        Point {
            t_ms: tick as f64 * 10.0,
            healthy: tick * 100,
            stalled: tick,
        }
    }

    #[test]
    fn a_short_run_keeps_every_sample_and_the_final_counts() {
        let mut s = Series::new(100);
        for tick in 0..10 {
            s.offer(tick, at(tick));
        }
        s.close(at(10));
        let expected: Vec<Point> = (0..=10).map(at).collect();
        assert_eq!(s.points(), expected.as_slice());
    }

    #[test]
    fn a_long_run_stays_under_the_cap_evenly_spread() {
        let cap = 64;
        let mut s = Series::new(cap);
        let ticks = 10_000;
        for tick in 0..ticks {
            s.offer(tick, at(tick));
            assert!(s.points().len() < cap, "{} points", s.points().len());
        }
        s.close(at(ticks));
        let points = s.points();
        assert!(
            points.len() <= cap && points.len() > cap / 2,
            "{}",
            points.len()
        );
        assert_eq!(points[0], at(0));
        assert_eq!(points.last(), Some(&at(ticks)));
        // Every point but the last is a tick apart from the next by the same stride.
        let gaps: Vec<f64> = points[..points.len() - 1]
            .windows(2)
            .map(|w| w[1].t_ms - w[0].t_ms)
            .collect();
        assert!(gaps.iter().all(|&g| g == gaps[0]), "{gaps:?}");
        assert!(points
            .windows(2)
            .all(|w| w[0].t_ms < w[1].t_ms && w[0].healthy <= w[1].healthy));
    }

    #[test]
    fn nothing_is_added_after_the_last_point() {
        let mut s = Series::new(10);
        s.offer(0, at(0));
        s.close(at(3));
        s.offer(4, at(4));
        s.close(at(5));
        assert_eq!(s.points(), &[at(0), at(3)]);
    }

    #[test]
    fn a_last_point_no_later_than_the_previous_replaces_it() {
        let mut s = Series::new(10);
        s.offer(0, at(0));
        s.offer(1, at(1));
        s.close(Point {
            t_ms: 10.0,
            healthy: 500,
            stalled: 5,
        });
        assert_eq!(s.points().len(), 2);
        assert_eq!(s.points()[1].healthy, 500);
    }
}
