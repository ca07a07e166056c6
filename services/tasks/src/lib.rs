//! The tasks service: a durable priority queue with workers inside the service.
//!
//! - [`store`]: the queue in SQL, split by caller (client API, worker leases, reaper); no tonic;
//! - [`kinds`]: the [`kinds::TaskKind`] trait, the bounded pools, and the built-in kinds
//!   (echo, sleep, hash, ticker, flaky, fetch);
//! - [`worker`]: the worker pool: batched claims into a local queue, leases, time limits,
//!   cancellation, progress, batched completions, retries,
//!   and the reaper (expired leases, priority aging, result retention);
//! - [`wakeups`]: on PostgreSQL, LISTEN/NOTIFY so every replica's idle workers wake
//!   when a task is queued anywhere (polling is the fallback);
//! - [`metrics`]: the queue's Prometheus metrics (attempts by kind and outcome, depth);
//! - [`service`]: the `mesh.tasks.v1.TaskService` adapter, including `WatchTask`;
//! - [`run`]: serve on a bound listener until a shutdown future resolves.
#![forbid(unsafe_code)]

pub mod error;
pub mod fetch_policy;
pub mod kinds;
pub mod metrics;
pub mod service;
pub mod store;
pub mod wakeups;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_proto::tasks::v1::task_service_server::TaskServiceServer;
use mesh_sql::Backend;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::kinds::{Limits, Registry};
use crate::service::TasksApi;
use crate::store::{TaskStore, postgres_migrations, sqlite_migrations};
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

    /// The most claimed tasks per worker that wait in this replica's local
    /// queue. A replica claims in batches: for its idle workers, plus (only
    /// when tasks run shorter than a claim takes) enough to keep them busy
    /// through the next claim. A task queued later with a higher priority
    /// waits behind at most this × workers claimed tasks per replica. 1: claim
    /// only for an idle worker.
    #[arg(long, env = "TASKS_CLAIM_BATCH", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub claim_batch: u64,

    /// How long a worker's claim on a task lasts without renewal, in ms. A task
    /// whose worker died runs again once this has passed.
    #[arg(long, env = "TASKS_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,

    /// How often idle workers look for tasks queued through other replicas,
    /// in ms. Default: 200 on SQLite; 5000 on PostgreSQL, where LISTEN/NOTIFY
    /// wakes them at once and polling is only the fallback.
    #[arg(long, env = "TASKS_POLL_MS")]
    pub poll_ms: Option<u64>,

    /// How long running tasks may take to finish at shutdown before they are
    /// put back in the queue, in ms.
    #[arg(long, env = "TASKS_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// The queues this replica's workers take tasks from, comma separated
    /// (e.g. a CPU pool replica with `--queues cpu`).
    #[arg(long, env = "TASKS_QUEUES", value_delimiter = ',', default_value = "default")]
    pub queues: Vec<String>,

    /// Back-off before the first retry, in ms; it doubles with each attempt
    /// (with jitter: each wait is between three quarters and all of that).
    #[arg(long, env = "TASKS_RETRY_BACKOFF_MS", default_value_t = 1000)]
    pub retry_backoff_ms: u64,

    /// Longest back-off between attempts, in ms.
    #[arg(long, env = "TASKS_RETRY_BACKOFF_MAX_MS", default_value_t = 300_000)]
    pub retry_backoff_max_ms: u64,

    /// Priority aging: a task ready to run gains one priority level for each
    /// this many ms it waits, up to 9, so low priorities are never starved.
    #[arg(long, env = "TASKS_AGING_MS", default_value_t = 5000)]
    pub aging_ms: u64,

    /// Ended tasks (and their results) are deleted this long after they end, in seconds.
    #[arg(long, env = "TASKS_RESULT_RETENTION_SECS", default_value_t = 86_400)]
    pub result_retention_secs: u64,

    /// Threads blocking task work (e.g. `sleep`) may use at once.
    #[arg(long, env = "TASKS_BLOCKING_THREADS", default_value_t = 32)]
    pub blocking_threads: usize,

    /// Threads CPU-bound task work (e.g. `hash`) may use at once (default: the cores).
    #[arg(long, env = "TASKS_CPU_THREADS")]
    pub cpu_threads: Option<usize>,

    /// The longest `sleep` task, and the longest `ticker` (steps × step_ms), in ms.
    #[arg(long, env = "TASKS_MAX_SLEEP_MS", default_value_t = Limits::default().max_sleep_ms)]
    pub max_sleep_ms: u64,

    /// The most SHA-256 rounds one `hash` task may ask for (1..).
    #[arg(long, env = "TASKS_MAX_HASH_ROUNDS", default_value_t = Limits::default().max_hash_rounds,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_hash_rounds: u64,

    /// The most tasks one `SubmitTasks` (`POST /tasks:batch`) may carry.
    #[arg(long, env = "TASKS_MAX_BATCH", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_batch: u64,

    /// How often a running task's cancel flag is checked, in ms (a cancel
    /// through the same replica is seen at once).
    #[arg(long, env = "TASKS_CANCEL_POLL_MS", default_value_t = 250)]
    pub cancel_poll_ms: u64,

    /// Where `fetch` tasks may connect, comma separated: IP:PORT, [IPv6]:PORT,
    /// CIDR:PORT (10.0.0.0/8:80, [fd00::/8]:443) or HOSTNAME:PORT; PORT may be `*`.
    /// Checked after DNS and on every redirect. Loopback, link-local and the like
    /// need an entry naming them (0.0.0.0/0 does not cover them). Empty: fetch is off.
    #[arg(long, env = "TASKS_FETCH_ALLOW", value_delimiter = ',', value_parser = fetch_policy::parse_entry)]
    pub fetch_allow: Vec<fetch_policy::AllowEntry>,
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
        sqlite_migrations(),
        postgres_migrations(),
    )
    .await?;
    let _metrics = mesh_sql::metrics::watch_pool("tasks", &pool);
    let mut store = TaskStore::new(pool.clone(), backend);
    let (stop_tx, stop_rx) = watch::channel(false);
    if let (Backend::Postgres, Some(url)) = (backend, &config.sql.database_url) {
        let channel = wakeups::channel(&mesh_sql::schema_name(&config.sql, "tasks"));
        store = store.with_channel(&channel);
        tokio::spawn(wakeups::listen(url.clone(), channel, store.clone(), stop_rx.clone()));
    }
    let poll_ms = config.poll_ms.unwrap_or(match backend {
        Backend::Sqlite => 200,
        Backend::Postgres => 5000,
    });
    let limits = Limits {
        max_sleep_ms: config.max_sleep_ms,
        max_hash_rounds: config.max_hash_rounds,
    };
    let registry = Registry::builtin(limits, fetch_policy::FetchPolicy::new(config.fetch_allow.clone()));
    for queue in &config.queues {
        store::validate_queue(queue).map_err(|e| anyhow::anyhow!("--queues: {e}"))?;
    }
    anyhow::ensure!(!config.queues.is_empty(), "--queues: name at least one queue");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = Pool::start(
        store.clone(),
        registry.clone(),
        WorkerConfig {
            workers: config.workers,
            claim_batch: config.claim_batch as usize,
            queues: config.queues.clone(),
            lease: Duration::from_millis(config.lease_ms.max(300)),
            poll: Duration::from_millis(poll_ms.max(10)),
            cancel_poll: Duration::from_millis(config.cancel_poll_ms.max(10)),
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            backoff: store::Backoff {
                base: Duration::from_millis(config.retry_backoff_ms),
                max: Duration::from_millis(config.retry_backoff_max_ms.max(config.retry_backoff_ms)),
            },
            aging: Duration::from_millis(config.aging_ms.max(1)),
            retention: Duration::from_secs(config.result_retention_secs),
            blocking_threads: config.blocking_threads,
            cpu_threads: config.cpu_threads.unwrap_or(cores),
        },
    );
    metrics::init();
    let scraped = store.clone();
    let api = TasksApi::new(store, registry, stop_rx, config.max_batch as usize);
    let served = mesh_common::grpc::GrpcServer::new(TaskServiceServer::new(api))
        .with_metrics_refresh(move || {
            let store = scraped.clone();
            async move {
                match store.stats(None).await {
                    Ok(stats) => metrics::queue(&stats, mesh_sql::now_ms()),
                    Err(err) => tracing::warn!(error = %err, "cannot read the queue's depth for /metrics"),
                }
                match store.ready_by_queue().await {
                    Ok(rows) => metrics::queues(&rows),
                    Err(err) => tracing::warn!(error = %err, "cannot read each queue's depth for /metrics"),
                }
            }
        })
        .with_probe(move || {
            let pool = pool.clone();
            async move { mesh_sql::ping(&pool, Duration::from_secs(1)).await }
        })
        .with_args(&config.serve)
        .with_default_admin_port(9053)
        .serve(listener, async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
    workers.shutdown().await;
    served
}
