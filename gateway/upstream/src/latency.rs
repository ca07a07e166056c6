//! [`Window`]: the latencies of a service's recent answers, enough to
//! estimate a percentile cheaply on every call.

use std::sync::Mutex;
use std::time::Duration;

/// How many recent latencies are kept.
const CAPACITY: usize = 512;
/// Below this many samples there is no percentile (too little to go on).
const MIN_SAMPLES: usize = 32;
/// The sorted copy that percentiles are read from is refreshed after this
/// many new samples, so a percentile costs a lookup, not a sort.
const REFRESH_EVERY: usize = 16;

#[derive(Default)]
pub struct Window {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A ring of the last `CAPACITY` samples.
    samples: Vec<Duration>,
    next: usize,
    /// `samples`, sorted, as of the last refresh.
    sorted: Vec<Duration>,
    since_refresh: usize,
}

impl Window {
    pub fn record(&self, latency: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State {
            samples,
            next,
            sorted,
            since_refresh,
        } = &mut *state;
        if samples.len() < CAPACITY {
            samples.push(latency);
        } else {
            samples[*next] = latency;
        }
        *next = (*next + 1) % CAPACITY;
        *since_refresh += 1;
        if *since_refresh >= REFRESH_EVERY {
            sorted.clone_from(samples);
            sorted.sort_unstable();
            *since_refresh = 0;
        }
    }

    /// The `percentile`th (0 to 100) of the recent latencies, or `None`
    /// while there are too few of them.
    pub fn percentile(&self, percentile: f64) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let sorted = &state.sorted;
        if sorted.len() < MIN_SAMPLES {
            return None;
        }
        let i = ((sorted.len() as f64 - 1.0) * percentile.clamp(0.0, 100.0) / 100.0).round() as usize;
        sorted.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_percentile_until_enough_samples() {
        let window = Window::default();
        for ms in 1..MIN_SAMPLES as u64 {
            window.record(Duration::from_millis(ms));
        }
        assert_eq!(window.percentile(50.0), None);
        for ms in 0..REFRESH_EVERY as u64 {
            window.record(Duration::from_millis(100 + ms));
        }
        assert!(window.percentile(99.0).unwrap() >= Duration::from_millis(100));
    }

    #[test]
    fn old_samples_leave_the_window() {
        let window = Window::default();
        for _ in 0..CAPACITY {
            window.record(Duration::from_secs(1));
        }
        for _ in 0..CAPACITY {
            window.record(Duration::from_millis(2));
        }
        assert_eq!(window.percentile(100.0), Some(Duration::from_millis(2)));
    }
}
