//! The tasks service: a durable priority queue with workers inside the service.
//!
//! - [`store`]: the queue in SQL (submit, claim under a lease, finish, cancel; no tonic);
//! - [`kinds`]: the [`kinds::TaskKind`] trait and the built-in kinds (echo, sleep, hash);
//! - [`worker`]: the worker pool, lease renewal and the expired-lease reaper;
//! - [`service`]: the `mesh.tasks.v1.TaskService` adapter, including `WatchTask`;
//! - [`run`]: serve on a bound listener until a shutdown future resolves.
#![forbid(unsafe_code)]

pub mod error;
pub mod kinds;
pub mod service;
pub mod store;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_proto::tasks::v1::task_service_server::TaskServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::kinds::Registry;
use crate::service::TasksApi;
use crate::store::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, TaskStore};
use crate::worker::{Pool, WorkerConfig};

/// tasks-service: a durable background queue with priorities, run by in-process workers.
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "tasks-service", version)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "TASKS_LISTEN", default_value = "127.0.0.1:50053")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub serve: mesh_common::grpc::ServeArgs,

    /// Directory for the embedded SQLite queue (tasks.db).
    #[arg(long, env = "TASKS_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub sql: mesh_sql::SqlConfig,

    /// Tasks this process runs at once (0: serve the API only).
    #[arg(long, env = "TASKS_WORKERS", default_value_t = 4)]
    pub workers: usize,

    /// How long a worker's claim on a task lasts without renewal, in ms. A task
    /// whose worker died runs again once this has passed.
    #[arg(long, env = "TASKS_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,

    /// How often idle workers look for tasks queued through other replicas, in ms.
    #[arg(long, env = "TASKS_POLL_MS", default_value_t = 200)]
    pub poll_ms: u64,

    /// How long running tasks may take to finish at shutdown before they are
    /// put back in the queue, in ms.
    #[arg(long, env = "TASKS_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
}

pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (pool, backend) = mesh_sql::connect(
        &config.sql,
        &config.data_dir,
        "tasks",
        &SQLITE_MIGRATIONS,
        &POSTGRES_MIGRATIONS,
    )
    .await?;
    let store = TaskStore::new(pool.clone(), backend);
    let registry = Registry::builtin();
    let workers = Pool::start(
        store.clone(),
        registry.clone(),
        WorkerConfig {
            workers: config.workers,
            lease: Duration::from_millis(config.lease_ms.max(300)),
            poll: Duration::from_millis(config.poll_ms.max(10)),
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        },
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let api = TasksApi::new(store, registry, stop_rx);
    let served = mesh_common::grpc::GrpcServer::new(TaskServiceServer::new(api))
        .with_probe(move || {
            let pool = pool.clone();
            async move { mesh_sql::ping(&pool, Duration::from_secs(1)).await }
        })
        .with_args(&config.serve)
        .serve(listener, async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
    workers.shutdown().await;
    served
}
