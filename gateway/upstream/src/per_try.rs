//! Per-try timeouts: how long one attempt of a repeatable call may go
//! unanswered before it is cut and sent to another replica.
//!
//! Without them, a replica that accepts a call and never answers (a vanished
//! host, a hung process) holds the call for the whole route deadline, though
//! its health checks may still pass. Derived from the service's recent
//! latency, the limit is `3 × p99`, at least [`FLOOR`] (so ordinary jitter is
//! never cut) and at most half the time the call has left (so a retry has
//! time to answer). Until the service has answered enough calls to have a
//! p99 there is nothing to derive from, and attempts are not cut.

use std::time::Duration;

use crate::latency::Window;
use crate::settings::PerTryTimeout;

/// The shortest derived per-try timeout.
pub const FLOOR: Duration = Duration::from_millis(50);

/// How many times the recent p99 an attempt may take.
const P99_FACTOR: u32 = 3;

pub struct PerTry {
    setting: PerTryTimeout,
    /// Latencies of the service's answers to repeatable calls.
    latency: Window,
}

impl PerTry {
    pub fn new(setting: PerTryTimeout) -> Self {
        Self {
            setting,
            latency: Window::default(),
        }
    }

    /// How long each attempt of a call with `time_left` until its deadline
    /// may take; `None`: as long as the deadline allows.
    pub fn limit(&self, time_left: Duration) -> Option<Duration> {
        match self.setting {
            PerTryTimeout::Off => None,
            PerTryTimeout::Fixed(limit) => Some(limit),
            PerTryTimeout::Derived => {
                let p99 = self.latency.percentile(99.0)?;
                Some((p99 * P99_FACTOR).max(FLOOR).min(time_left / 2))
            }
        }
    }

    /// An attempt was answered (with a result or a status) after `latency`.
    pub fn record(&self, latency: Duration) {
        if self.setting == PerTryTimeout::Derived {
            self.latency.record(latency);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derived_after(latency: Duration) -> PerTry {
        let per_try = PerTry::new(PerTryTimeout::Derived);
        for _ in 0..64 {
            per_try.record(latency);
        }
        per_try
    }

    #[test]
    fn nothing_to_derive_from_means_no_cut() {
        let per_try = PerTry::new(PerTryTimeout::Derived);
        assert_eq!(per_try.limit(Duration::from_secs(5)), None);
    }

    #[test]
    fn derived_is_three_p99s_within_bounds() {
        let five = Duration::from_secs(5);
        assert_eq!(
            derived_after(Duration::from_millis(100)).limit(five),
            Some(Duration::from_millis(300))
        );
        assert_eq!(derived_after(Duration::from_millis(1)).limit(five), Some(FLOOR));
        assert_eq!(derived_after(Duration::from_secs(2)).limit(five), Some(five / 2));
    }

    #[test]
    fn fixed_and_off_ignore_latency() {
        let fixed = PerTry::new(PerTryTimeout::Fixed(Duration::from_millis(250)));
        assert_eq!(fixed.limit(Duration::from_secs(5)), Some(Duration::from_millis(250)));
        assert_eq!(PerTry::new(PerTryTimeout::Off).limit(Duration::from_secs(5)), None);
    }
}
