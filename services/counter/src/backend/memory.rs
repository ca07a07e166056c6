//! In-process counters: one mutex over a map. The critical section is a hash
//! lookup and an add (no await inside), so contention stays negligible, and
//! the idempotency check happens under the same lock as the add.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::CounterBackend;
use crate::error::CounterError;

pub struct MemoryBackend {
    counters: Mutex<HashMap<String, i64>>,
    /// (counter, idempotency key) -> the value the first call returned.
    seen: moka::sync::Cache<(String, String), i64>,
}

impl MemoryBackend {
    pub fn new(idempotency_window: Duration) -> Self {
        Self {
            counters: Mutex::default(),
            seen: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(idempotency_window)
                .build(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        // A panic while holding the lock cannot leave the map half-written
        // (every update is a single insert), so a poisoned lock is still sound.
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl CounterBackend for MemoryBackend {
    async fn increment(&self, name: &str, delta: i64, idempotency_key: Option<&str>) -> Result<i64, CounterError> {
        let mut counters = self.lock();
        let seen_key = idempotency_key.map(|k| (name.to_string(), k.to_string()));
        if let Some(first) = seen_key.as_ref().and_then(|k| self.seen.get(k)) {
            return Ok(first);
        }
        let value = counters.get(name).copied().unwrap_or(0);
        let next = value.checked_add(delta).ok_or_else(|| CounterError::Overflow {
            name: name.to_string(),
            value,
            delta,
        })?;
        counters.insert(name.to_string(), next);
        if let Some(k) = seen_key {
            self.seen.insert(k, next);
        }
        Ok(next)
    }

    async fn get(&self, name: &str) -> Result<i64, CounterError> {
        Ok(self.lock().get(name).copied().unwrap_or(0))
    }

    async fn reset(&self, name: &str) -> Result<i64, CounterError> {
        Ok(self.lock().remove(name).unwrap_or(0))
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
        let b = Arc::new(MemoryBackend::new(Duration::from_secs(60)));
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
        let b = MemoryBackend::new(Duration::from_secs(60));
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
}
