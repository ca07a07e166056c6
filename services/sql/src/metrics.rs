//! The connection pool as metrics, read from the pool at each scrape:
//!
//! - `mesh_db_pool_connections{pool,state}`: open connections `in_use` and `idle`;
//! - `mesh_db_pool_max_connections{pool}`: what `--db-max-connections` allows.
//!
//! `pool` is the service's name (`items`, `tasks`). sqlx does not say how
//! many callers wait for a connection; a pool that runs out shows as
//! `in_use` at the maximum, and its callers' UNAVAILABLE answers after
//! `--db-acquire-timeout-ms` as `grpc_server_handled_total{grpc_code="Unavailable"}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use mesh_common::metrics::register;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use sqlx::AnyPool;

/// A watched pool: the guard's id, the service's name, the pool.
type Watched = (u64, &'static str, AnyPool);

#[derive(Clone)]
struct Pools {
    watched: Arc<Mutex<Vec<Watched>>>,
    connections: IntGaugeVec,
    max: IntGaugeVec,
}

static POOLS: LazyLock<Pools> = LazyLock::new(|| {
    register(Pools {
        watched: Arc::default(),
        connections: IntGaugeVec::new(
            Opts::new("mesh_db_pool_connections", "Open database connections, in use or idle."),
            &["pool", "state"],
        )
        .expect("valid metric"),
        max: IntGaugeVec::new(
            Opts::new(
                "mesh_db_pool_max_connections",
                "The most connections the pool may open.",
            ),
            &["pool"],
        )
        .expect("valid metric"),
    })
});

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Shows `pool` in the metrics as `name` until the returned guard drops
/// (a server holds it for as long as it serves).
#[must_use = "the pool leaves the metrics when the guard drops"]
pub fn watch_pool(name: &'static str, pool: &AnyPool) -> PoolWatch {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    POOLS
        .watched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((id, name, pool.clone()));
    PoolWatch(id)
}

/// Removes its pool from the metrics when dropped.
pub struct PoolWatch(u64);

impl Drop for PoolWatch {
    fn drop(&mut self) {
        POOLS
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _, _)| *id != self.0);
    }
}

impl Collector for Pools {
    fn desc(&self) -> Vec<&Desc> {
        self.connections.desc().into_iter().chain(self.max.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // One scrape at a time: the gauges are reset and refilled.
        let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        self.connections.reset();
        self.max.reset();
        for (_, name, pool) in watched.iter() {
            let (open, idle) = (i64::from(pool.size()), pool.num_idle() as i64);
            self.connections
                .with_label_values(&[name, "in_use"])
                .set((open - idle).max(0));
            self.connections.with_label_values(&[name, "idle"]).set(idle);
            self.max
                .with_label_values(&[name])
                .set(i64::from(pool.options().get_max_connections()));
        }
        self.connections
            .collect()
            .into_iter()
            .chain(self.max.collect())
            .collect()
    }
}
