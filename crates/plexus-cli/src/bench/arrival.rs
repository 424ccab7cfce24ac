//! The order in which each node asks for its jobs (`--arrival-order`): the same on every
//! node (job 1, job 2, …, as when one coordinator starts them all), or a random order of
//! each node's own, with a random pause of up to [`MAX_PAUSE`] between jobs, as when the
//! start messages of several coordinators cross on their way to the nodes.
//!
//! Invariants: a node's schedule holds every job it was given, each once; it depends only on
//! the run's seed, the node and the wave (a run can be replayed with `--seed`), so the
//! coordinator and every node process agree on it; with `same`, jobs keep their order and
//! nothing pauses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::workload::splitmix64;

/// The longest pause between two jobs a node asks for in random order.
pub const MAX_PAUSE: Duration = Duration::from_millis(2);

/// How the nodes order the jobs they ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ArrivalOrder {
    /// Every node asks for the jobs in job order, without pauses.
    #[default]
    Same,
    /// Every node asks for the jobs in a random order of its own, pausing 0-2 ms between
    /// them.
    PerNodeRandom,
}

/// The arrival order and the seed of its randomness, for a whole run.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Arrival {
    /// The order.
    pub order: ArrivalOrder,
    /// The run's seed; each node and wave derives its own from it.
    pub seed: u64,
}

impl Arrival {
    /// When node `node` asks for `jobs` in wave `wave`: each job, with the pause that
    /// follows it.
    pub fn schedule(&self, node: u32, wave: u32, mut jobs: Vec<u32>) -> Vec<(u32, Duration)> {
        if self.order == ArrivalOrder::Same {
            return jobs.into_iter().map(|j| (j, Duration::ZERO)).collect();
        }
        let mut state = self.seed;
        state ^= splitmix64(&mut (u64::from(node) << 32 | u64::from(wave)));
        // Fisher-Yates; the modulo's bias is negligible for a handful of jobs.
        for i in (1..jobs.len()).rev() {
            let pick = splitmix64(&mut state) % (i as u64 + 1);
            jobs.swap(i, usize::try_from(pick).unwrap_or(i));
        }
        let max_us = u64::try_from(MAX_PAUSE.as_micros()).unwrap_or(u64::MAX);
        jobs.into_iter()
            .map(|j| {
                let pause = splitmix64(&mut state) % (max_us + 1);
                (j, Duration::from_micros(pause))
            })
            .collect()
    }
}

/// A seed from the clock, for runs without `--seed`; below 2^53, so that it reads back
/// exactly from the JSON report whatever reads it.
pub fn seed_from_time() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) & ((1 << 53) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_keeps_job_order_without_pauses() {
        let arrival = Arrival::default();
        let got = arrival.schedule(3, 7, vec![4, 5, 6]);
        assert_eq!(
            got,
            [
                (4, Duration::ZERO),
                (5, Duration::ZERO),
                (6, Duration::ZERO)
            ]
        );
    }

    #[test]
    fn random_orders_differ_by_node_and_repeat_by_seed() {
        let arrival = Arrival {
            order: ArrivalOrder::PerNodeRandom,
            seed: 42,
        };
        let jobs: Vec<u32> = (0..16).collect();
        let order = |node, wave| {
            arrival
                .schedule(node, wave, jobs.clone())
                .into_iter()
                .map(|(j, _)| j)
                .collect::<Vec<_>>()
        };
        let mut sorted = order(0, 0);
        sorted.sort_unstable();
        assert_eq!(sorted, jobs, "a permutation");
        assert_eq!(order(1, 0), order(1, 0), "the seed decides");
        assert_ne!(order(0, 0), order(1, 0), "nodes differ");
        assert_ne!(order(0, 0), order(0, 1), "waves differ");
        let pauses = arrival.schedule(0, 0, jobs.clone());
        assert!(pauses.iter().all(|&(_, p)| p <= MAX_PAUSE));
        assert!(pauses.iter().any(|&(_, p)| p > Duration::ZERO));
    }

    #[test]
    fn seeds_from_time_fit_a_json_number() {
        assert!(seed_from_time() < 1 << 53);
    }
}
