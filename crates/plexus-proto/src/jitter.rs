//! A small seeded pseudo-random source for backoff jitter, so the core stays deterministic
//! for a given seed (tests replay exactly) while nodes redialling at once spread apart.

/// xorshift64* generator.
#[derive(Clone, Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    /// A generator seeded with `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A value uniformly spread in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::Jitter;

    #[test]
    fn values_stay_in_the_unit_interval_and_vary() {
        let mut j = Jitter::new(42);
        let values: Vec<f64> = (0..1000).map(|_| j.next_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }
}
