//! Singleflight: concurrent requests for the same key share one execution.
//!
//! When a hot cached item expires, hundreds of requests miss at once; without
//! this each would read the database. With it, the first runs the read path
//! and the others wait for its answer. The work runs as its own task, so a
//! caller that gives up (its client went away) does not cancel it for the rest.
//!
//! `mesh_gateway_singleflight_total{flight,outcome}` counts the calls that
//! led a run (`led`) and those that waited for another's (`joined`).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

pub struct SingleFlight<K, V> {
    /// What its runs are (the metric's `flight` label): `item_read`.
    name: &'static str,
    flights: Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>,
}

impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            flights: self.flights.clone(),
        }
    }
}

impl<K, V> SingleFlight<K, V> {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            flights: Arc::default(),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key`, unless a run for `key` is already in flight, in
    /// which case this waits for that run's result instead. `lost` is the
    /// value returned if the shared run panics or is cancelled.
    pub async fn run<F>(&self, key: K, work: F, lost: V) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&key) {
                Some(flight) => {
                    crate::metrics::singleflight(self.name, "joined");
                    flight.clone()
                }
                None => {
                    crate::metrics::singleflight(self.name, "led");
                    let flights_ref = self.flights.clone();
                    let key_ref = key.clone();
                    let task = tokio::spawn(async move {
                        let value = work.await;
                        // Leave before answering: a request arriving after
                        // this point starts a fresh run (which sees the cache
                        // this run filled) rather than joining a finished one.
                        flights_ref.lock().unwrap_or_else(|p| p.into_inner()).remove(&key_ref);
                        value
                    });
                    let flight = async move { task.await.unwrap_or(lost) }.boxed().shared();
                    flights.insert(key, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_runs_for_one_key_share_one_execution() {
        let flights: SingleFlight<u32, u32> = SingleFlight::new("test_shared");
        let runs = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let flights = flights.clone();
                let runs = runs.clone();
                tokio::spawn(async move {
                    flights
                        .run(
                            7,
                            async move {
                                runs.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                42
                            },
                            0,
                        )
                        .await
                })
            })
            .collect();
        for c in callers {
            assert_eq!(c.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Once finished, the next call runs again.
        assert_eq!(flights.run(7, async { 43 }, 0).await, 43);
    }

    #[tokio::test]
    async fn leaders_and_joiners_are_counted() {
        let flights: SingleFlight<u32, u32> = SingleFlight::new("test_counted");
        let count = |outcome: &str| crate::metrics::singleflight_count("test_counted", outcome);
        let gate = Arc::new(tokio::sync::Notify::new());
        let leader = {
            let (flights, gate) = (flights.clone(), gate.clone());
            tokio::spawn(async move {
                flights
                    .run(
                        1,
                        async move {
                            gate.notified().await;
                            5
                        },
                        0,
                    )
                    .await
            })
        };
        // The leader's run is in flight (counted) before anyone joins it.
        while count("led") < 1 {
            tokio::task::yield_now().await;
        }
        let joiners: Vec<_> = (0..9)
            .map(|_| {
                let flights = flights.clone();
                tokio::spawn(async move { flights.run(1, async { 6 }, 0).await })
            })
            .collect();
        while count("joined") < 9 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(leader.await.unwrap(), 5);
        for j in joiners {
            assert_eq!(j.await.unwrap(), 5, "a joiner got the leader's answer");
        }
        assert_eq!((count("led"), count("joined")), (1, 9));
    }
}
