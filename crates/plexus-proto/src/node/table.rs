//! A table of per-job records (endpoints, channels) that counts its rows per job.
//!
//! The node core keeps producers, consumers, outgoing and incoming channels in these
//! tables, so whether a job still has anything on this node is one lookup, not a scan, and
//! a job's record can be retired the moment its last row goes (see `jobs`).
//!
//! A table may also count its rows per *party* (for incoming channels: the peer that
//! opened them), in all and per job, so a peer's share is one lookup too.
//!
//! Invariant: for every job, `per_job[job]` equals the number of rows whose job is `job`,
//! and jobs with no row have no entry; the same holds of `per_party` and `per_party_job`
//! when the table has parties. Only [`JobTable::insert`] and [`JobTable::remove`] change the
//! rows, and both keep the counts; a row's job and party never change while it is in the
//! table (they are read from the key or from a field set at creation).

use std::hash::Hash;

use crate::ids::JobId;
use crate::map::Map;

/// Rows keyed by `K`, counted per job.
#[derive(Debug)]
pub(crate) struct JobTable<K, V> {
    rows: Map<K, V>,
    per_job: Map<JobId, usize>,
    job_of: fn(&K, &V) -> JobId,
    party_of: Option<fn(&K) -> u32>,
    per_party: Map<u32, usize>,
    per_party_job: Map<(u32, JobId), usize>,
}

impl<K: Copy + Eq + Hash, V> JobTable<K, V> {
    /// An empty table whose rows belong to the job `job_of` names.
    pub fn new(job_of: fn(&K, &V) -> JobId) -> Self {
        Self {
            rows: Map::default(),
            per_job: Map::default(),
            job_of,
            party_of: None,
            per_party: Map::default(),
            per_party_job: Map::default(),
        }
    }

    /// The same, also counting rows per party (`party_of` reads it from the key).
    pub fn with_parties(job_of: fn(&K, &V) -> JobId, party_of: fn(&K) -> u32) -> Self {
        Self {
            party_of: Some(party_of),
            ..Self::new(job_of)
        }
    }

    /// Adds (or replaces) the row of `key`.
    pub fn insert(&mut self, key: K, value: V) {
        let job = (self.job_of)(&key, &value);
        if let Some(old) = self.rows.insert(key, value) {
            let old_job = (self.job_of)(&key, &old);
            self.uncount(&key, old_job);
        }
        *self.per_job.entry(job).or_insert(0) += 1;
        if let Some(party_of) = self.party_of {
            let party = party_of(&key);
            *self.per_party.entry(party).or_insert(0) += 1;
            *self.per_party_job.entry((party, job)).or_insert(0) += 1;
        }
    }

    /// Removes the row of `key`, if any.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let value = self.rows.remove(key)?;
        let job = (self.job_of)(key, &value);
        self.uncount(key, job);
        Some(value)
    }

    fn uncount(&mut self, key: &K, job: JobId) {
        decrement(&mut self.per_job, job);
        if let Some(party_of) = self.party_of {
            let party = party_of(key);
            decrement(&mut self.per_party, party);
            decrement(&mut self.per_party_job, (party, job));
        }
    }

    /// Rows of `party` (0 in a table without parties).
    pub fn count_party(&self, party: u32) -> usize {
        self.per_party.get(&party).copied().unwrap_or(0)
    }

    /// Rows of `party` in `job` (0 in a table without parties).
    pub fn count_party_job(&self, party: u32, job: JobId) -> usize {
        self.per_party_job.get(&(party, job)).copied().unwrap_or(0)
    }

    /// Rows of `job`.
    pub fn count(&self, job: JobId) -> usize {
        self.per_job.get(&job).copied().unwrap_or(0)
    }

    /// The keys of `job`'s rows (a scan of the table: for rare events only).
    pub fn keys_of(&self, job: JobId) -> Vec<K> {
        if self.count(job) == 0 {
            return Vec::new();
        }
        let job_of = self.job_of;
        self.rows
            .iter()
            .filter(|(k, v)| job_of(k, v) == job)
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.rows.get(key)
    }

    /// The row of `key`, to change anything but its job.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.rows.get_mut(key)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.rows.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.rows.keys()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.rows.values()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.rows.iter()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }
}

/// Lowers the count of `key` by one, dropping it at zero.
fn decrement<G: Eq + Hash>(counts: &mut Map<G, usize>, key: G) {
    if let Some(n) = counts.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_inserts_replacements_and_removals() {
        let mut t: JobTable<(JobId, u32), &str> = JobTable::new(|k, _| k.0);
        t.insert((JobId(1), 0), "a");
        t.insert((JobId(1), 1), "b");
        t.insert((JobId(2), 0), "c");
        t.insert((JobId(1), 1), "b2");
        assert_eq!(t.count(JobId(1)), 2);
        assert_eq!(t.count(JobId(2)), 1);
        assert_eq!(t.remove(&(JobId(1), 0)), Some("a"));
        assert_eq!(t.remove(&(JobId(1), 0)), None);
        assert_eq!(t.keys_of(JobId(1)), vec![(JobId(1), 1)]);
        t.remove(&(JobId(1), 1));
        assert_eq!(t.count(JobId(1)), 0);
        assert!(
            !t.per_job.contains_key(&JobId(1)),
            "no entry for a job with no rows"
        );
    }

    #[test]
    fn rows_are_counted_per_party_in_all_and_per_job() {
        let mut t: JobTable<(u32, u32), JobId> = JobTable::with_parties(|_, job| *job, |k| k.0);
        t.insert((7, 0), JobId(1));
        t.insert((7, 1), JobId(2));
        t.insert((8, 0), JobId(1));
        t.insert((7, 0), JobId(1));
        assert_eq!(t.count_party(7), 2);
        assert_eq!(t.count_party_job(7, JobId(1)), 1);
        assert_eq!(t.count_party_job(8, JobId(1)), 1);
        t.remove(&(7, 0));
        t.remove(&(7, 1));
        assert_eq!(t.count_party(7), 0);
        assert!(t.per_party.is_empty() || !t.per_party.contains_key(&7));
        assert!(!t.per_party_job.contains_key(&(7, JobId(1))));
    }
}
