//! A table of per-job records (endpoints, channels) that counts its rows per job.
//!
//! The node core keeps producers, consumers, outgoing and incoming channels in these
//! tables, so whether a job still has anything on this node is one lookup, not a scan, and
//! a job's record can be retired the moment its last row goes (see `jobs`).
//!
//! Invariant: for every job, `per_job[job]` equals the number of rows whose job is `job`,
//! and jobs with no row have no entry. Only [`JobTable::insert`] and [`JobTable::remove`]
//! change the rows, and both keep the count; a row's job never changes while it is in the
//! table (it is read from the key or from a field set at creation).

use std::hash::Hash;

use crate::ids::JobId;
use crate::map::Map;

/// Rows keyed by `K`, counted per job.
#[derive(Debug)]
pub(crate) struct JobTable<K, V> {
    rows: Map<K, V>,
    per_job: Map<JobId, usize>,
    job_of: fn(&K, &V) -> JobId,
}

impl<K: Copy + Eq + Hash, V> JobTable<K, V> {
    /// An empty table whose rows belong to the job `job_of` names.
    pub fn new(job_of: fn(&K, &V) -> JobId) -> Self {
        Self {
            rows: Map::default(),
            per_job: Map::default(),
            job_of,
        }
    }

    /// Adds (or replaces) the row of `key`.
    pub fn insert(&mut self, key: K, value: V) {
        let job = (self.job_of)(&key, &value);
        if let Some(old) = self.rows.insert(key, value) {
            let old_job = (self.job_of)(&key, &old);
            self.uncount(old_job);
        }
        *self.per_job.entry(job).or_insert(0) += 1;
    }

    /// Removes the row of `key`, if any.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let value = self.rows.remove(key)?;
        let job = (self.job_of)(key, &value);
        self.uncount(job);
        Some(value)
    }

    fn uncount(&mut self, job: JobId) {
        if let Some(n) = self.per_job.get_mut(&job) {
            *n -= 1;
            if *n == 0 {
                self.per_job.remove(&job);
            }
        }
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
}
