//! Waves (`--waves W`): the run's k jobs run W times, one wave after another, on the same
//! nodes, each wave with fresh job ids (see [`super::shape`]). This module owns what the
//! runners keep across waves besides the [`super::verdict::Tally`]: how much the resident
//! memory grows per job; and how a timeout names its wave.
//!
//! Invariants: the growth is measured from the end of the first tenth of the waves (at
//! least one wave) to the end of the last wave that ran, over the jobs run in between; it
//! is `None` when no job ran in between or a figure is missing, never a guess; the
//! bookkeeping is a few numbers, whatever the number of waves.

/// The error of a run that timed out in wave `wave` (0-based) of `waves`.
pub fn timed_out(timeout_s: u64, wave: u32, waves: u32) -> String {
    if waves > 1 {
        format!(
            "timed out after {timeout_s} s, in wave {} of {waves}",
            wave + 1
        )
    } else {
        format!("timed out after {timeout_s} s")
    }
}

/// Resident memory at the end of the first tenth of the waves and at the end of the last.
#[derive(Debug)]
pub struct RssGrowth {
    /// The wave (0-based) after which the first tenth is done.
    mark_wave: u32,
    jobs_per_wave: u32,
    /// Resident bytes after `mark_wave`.
    at_mark: Option<u64>,
    /// The last wave that ended, and the resident bytes after it.
    last: Option<(u32, Option<u64>)>,
}

impl RssGrowth {
    /// For a run of `waves` waves of `jobs_per_wave` jobs.
    pub fn new(waves: u32, jobs_per_wave: u32) -> RssGrowth {
        RssGrowth {
            mark_wave: (waves / 10).max(1) - 1,
            jobs_per_wave,
            at_mark: None,
            last: None,
        }
    }

    /// Wave `wave` ended, leaving `rss` bytes resident (`None` if unknown).
    pub fn wave_ended(&mut self, wave: u32, rss: Option<u64>) {
        if wave == self.mark_wave {
            self.at_mark = rss;
        }
        self.last = Some((wave, rss));
    }

    /// Bytes the resident memory grew per job run after the first tenth of the waves;
    /// negative if it shrank.
    pub fn bytes_per_job(&self) -> Option<f64> {
        let (wave, Some(last)) = self.last? else {
            return None;
        };
        let jobs = u64::from(wave.checked_sub(self.mark_wave)?) * u64::from(self.jobs_per_wave);
        if jobs == 0 {
            return None;
        }
        Some((last as f64 - self.at_mark? as f64) / jobs as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_counts_the_jobs_after_the_first_tenth() {
        let mut growth = RssGrowth::new(100, 4);
        for wave in 0..100 {
            growth.wave_ended(wave, Some(1_000_000 + 400 * u64::from(wave)));
        }
        // From wave 9 to wave 99: 90 waves of 4 jobs, 100 bytes each.
        assert_eq!(growth.bytes_per_job(), Some(100.0));
    }

    #[test]
    fn shrinking_is_negative_and_too_few_waves_give_nothing() {
        let mut growth = RssGrowth::new(3, 2);
        growth.wave_ended(0, Some(10_000));
        assert_eq!(growth.bytes_per_job(), None);
        growth.wave_ended(1, Some(9_000));
        growth.wave_ended(2, Some(8_000));
        assert_eq!(growth.bytes_per_job(), Some(-500.0));
        let mut one = RssGrowth::new(1, 2);
        one.wave_ended(0, Some(1));
        assert_eq!(one.bytes_per_job(), None);
        let mut unknown = RssGrowth::new(2, 2);
        unknown.wave_ended(0, None);
        unknown.wave_ended(1, Some(5));
        assert_eq!(unknown.bytes_per_job(), None);
    }
}
