//! The retry policy: how long a failed attempt waits before the next
//! (exponential, capped, with jitter). Pure arithmetic, no SQL.

use std::time::Duration;

/// How long a failed attempt waits before the next: exponential, with jitter.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Three quarters of the exponential delay plus a random part of the
    /// last quarter: retries of many tasks spread out, and (until the cap)
    /// each wait is longer than the one before, whatever the draw.
    pub fn after(&self, attempt: u32, task_id: i64) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let full = exp.min(self.max);
        let quarter = full / 4;
        full - quarter + quarter.mul_f64(unit_random(task_id, attempt))
    }
}

/// A number in [0, 1) that differs per task and attempt (std's randomly keyed hasher).
fn unit_random(task_id: i64, attempt: u32) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(task_id);
    h.write_u32(attempt);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_every_attempt_until_the_cap_whatever_the_jitter() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for task in 0..200 {
            let waits: Vec<Duration> = (1..=5).map(|a| b.after(a, task)).collect();
            assert!(waits.windows(2).all(|w| w[0] < w[1]), "{waits:?}");
            assert!(waits[0] >= Duration::from_millis(75) && waits[0] <= Duration::from_millis(100));
        }
        assert!(b.after(30, 1) <= Duration::from_secs(2), "capped");
    }
}
