//! In-process counters: one mutex over a map. The critical section is a hash
//! lookup and an add (no await inside), so contention stays negligible, and
//! the idempotency check happens under the same lock as the add.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::CounterBackend;
use crate::error::CounterError;

pub struct MemoryBackend {
    state: Mutex<State>,
    /// At most this many counters exist at once; past it a new name is refused.
    max_counters: usize,
    /// (counter, idempotency key) -> what the first call did.
    seen: moka::sync::Cache<(String, String), Seen>,
}

#[derive(Default)]
struct State {
    counters: HashMap<String, Counter>,
    /// Numbers each counter's life: a counter that is reset and incremented
    /// again is a new incarnation, and keys seen by an older one no longer apply.
    next_incarnation: u64,
}

struct Counter {
    value: i64,
    incarnation: u64,
}

#[derive(Clone, Copy)]
struct Seen {
    incarnation: u64,
    delta: i64,
    value: i64,
}

impl MemoryBackend {
    pub fn new(idempotency_window: Duration, max_counters: usize) -> Self {
        Self {
            state: Mutex::default(),
            max_counters,
            seen: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(idempotency_window)
                .build(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-written
        // (every update is a single insert), so a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl CounterBackend for MemoryBackend {
    async fn increment(&self, name: &str, delta: i64, idempotency_key: Option<&str>) -> Result<i64, CounterError> {
        let mut state = self.lock();
        let seen_key = idempotency_key.map(|k| (name.to_string(), k.to_string()));
        let current = state.counters.get(name).map(|c| (c.value, c.incarnation));
        if let Some(first) = seen_key.as_ref().and_then(|k| self.seen.get(k))
            && current.is_some_and(|(_, incarnation)| incarnation == first.incarnation)
        {
            if first.delta != delta {
                return Err(CounterError::IdempotencyKeyReused {
                    first_delta: first.delta,
                    delta,
                });
            }
            return Ok(first.value);
        }
        if current.is_none() && state.counters.len() >= self.max_counters {
            return Err(CounterError::TooManyCounters {
                limit: self.max_counters,
            });
        }
        let (value, incarnation) = current.unwrap_or_else(|| {
            state.next_incarnation += 1;
            (0, state.next_incarnation)
        });
        let next = value.checked_add(delta).ok_or_else(|| CounterError::Overflow {
            name: name.to_string(),
            value,
            delta,
        })?;
        state.counters.insert(
            name.to_string(),
            Counter {
                value: next,
                incarnation,
            },
        );
        if let Some(k) = seen_key {
            self.seen.insert(
                k,
                Seen {
                    incarnation,
                    delta,
                    value: next,
                },
            );
        }
        Ok(next)
    }

    async fn get(&self, name: &str) -> Result<i64, CounterError> {
        Ok(self.lock().counters.get(name).map_or(0, |c| c.value))
    }

    /// Removes the counter, which also ends the idempotency keys used on it:
    /// a key replayed after the reset counts again, on the fresh counter.
    async fn reset(&self, name: &str) -> Result<i64, CounterError> {
        Ok(self.lock().counters.remove(name).map_or(0, |c| c.value))
    }

    async fn ping(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_increments_are_never_lost() {
        let b = Arc::new(MemoryBackend::new(Duration::from_secs(60), 1000));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    for _ in 0..1000 {
                        b.increment("n", 1, None).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(b.get("n").await.unwrap(), 8000);
    }

    #[tokio::test]
    async fn idempotency_and_overflow() {
        let b = MemoryBackend::new(Duration::from_secs(60), 1000);
        assert_eq!(b.increment("n", 5, Some("k")).await.unwrap(), 5);
        assert_eq!(b.increment("n", 5, Some("k")).await.unwrap(), 5);
        assert_eq!(
            b.increment("other", 1, Some("k")).await.unwrap(),
            1,
            "keys are per counter"
        );
        assert!(matches!(
            b.increment("n", i64::MAX, None).await,
            Err(CounterError::Overflow { .. })
        ));
        assert_eq!(b.get("n").await.unwrap(), 5, "a refused increment changes nothing");
        assert_eq!(b.reset("n").await.unwrap(), 5);
        assert_eq!(b.get("n").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_key_reused_with_another_delta_is_refused() {
        let b = MemoryBackend::new(Duration::from_secs(60), 1000);
        assert_eq!(b.increment("n", 5, Some("k")).await.unwrap(), 5);
        assert!(matches!(
            b.increment("n", 100, Some("k")).await,
            Err(CounterError::IdempotencyKeyReused {
                first_delta: 5,
                delta: 100
            })
        ));
        assert_eq!(b.get("n").await.unwrap(), 5, "a refused reuse changes nothing");
    }

    #[tokio::test]
    async fn a_reset_ends_the_counters_keys() {
        let b = MemoryBackend::new(Duration::from_secs(60), 1000);
        assert_eq!(b.increment("n", 5, Some("k")).await.unwrap(), 5);
        assert_eq!(b.reset("n").await.unwrap(), 5);
        // The replay counts again, on the fresh counter, and is then remembered.
        assert_eq!(b.increment("n", 5, Some("k")).await.unwrap(), 5);
        assert_eq!(b.increment("n", 5, Some("k")).await.unwrap(), 5);
        assert_eq!(b.get("n").await.unwrap(), 5);
    }

    #[tokio::test]
    async fn counters_are_capped() {
        let b = MemoryBackend::new(Duration::from_secs(60), 2);
        b.increment("a", 1, None).await.unwrap();
        b.increment("b", 1, None).await.unwrap();
        assert!(matches!(
            b.increment("c", 1, None).await,
            Err(CounterError::TooManyCounters { limit: 2 })
        ));
        assert_eq!(
            b.increment("a", 1, None).await.unwrap(),
            2,
            "existing counters still count"
        );
        b.reset("b").await.unwrap();
        assert_eq!(b.increment("c", 1, None).await.unwrap(), 1, "a reset frees a slot");
    }
}
