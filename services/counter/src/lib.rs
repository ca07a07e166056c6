//! The counter service: named counters that never lose an increment.
//!
//! - [`backend`]: the `CounterBackend` trait; in-process (one replica) and Redis (many);
//! - [`store`]: validation (no tonic);
//! - [`service`]: the `mesh.counter.v1.CounterService` adapter;
//! - [`run`]: serve on a bound listener until a shutdown future resolves.
#![forbid(unsafe_code)]

pub mod backend;
pub mod error;
pub mod service;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::counter::v1::counter_service_server::CounterServiceServer;
use tokio::net::TcpListener;

use crate::backend::CounterBackend;
use crate::backend::memory::MemoryBackend;
use crate::backend::redis::RedisBackend;
use crate::service::CounterApi;
use crate::store::CounterStore;

/// counter-service: named counters, in process or shared through Redis.
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "counter-service", version)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "COUNTER_LISTEN", default_value = "127.0.0.1:50054")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub serve: mesh_common::grpc::ServeArgs,

    /// Redis URL (redis://host:port/db). Unset: in-process counters private to this replica.
    #[arg(long, env = "COUNTER_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every key this service writes to Redis.
    #[arg(long, env = "COUNTER_REDIS_PREFIX", default_value = "mesh:counter:")]
    pub redis_prefix: String,

    /// The most counters the in-process backend holds (each name is one);
    /// past it a new name is refused with RESOURCE_EXHAUSTED. Redis has no cap.
    #[arg(long, env = "COUNTER_MAX_COUNTERS", default_value_t = 100_000)]
    pub max_counters: usize,

    /// How long an idempotency key is remembered, in seconds. A reset ends
    /// the keys used on that counter: replayed afterwards, they count again.
    #[arg(long, env = "COUNTER_IDEMPOTENCY_WINDOW_SECS", default_value_t = 600)]
    pub idempotency_window_secs: u64,
}

pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let window = Duration::from_secs(config.idempotency_window_secs.max(1));
    let backend: Arc<dyn CounterBackend> = match &config.redis_url {
        Some(url) => {
            tracing::info!(prefix = %config.redis_prefix, "counter backend: redis");
            Arc::new(RedisBackend::new(
                mesh_redis::connect(url)?,
                config.redis_prefix.clone(),
                window,
            ))
        }
        None => {
            tracing::info!("counter backend: in-process");
            Arc::new(MemoryBackend::new(window, config.max_counters.max(1)))
        }
    };
    let store = CounterStore::new(backend.clone());
    mesh_common::grpc::GrpcServer::new(CounterServiceServer::new(CounterApi::new(store)))
        .with_probe(move || {
            let backend = backend.clone();
            async move { backend.ping().await }
        })
        .with_args(&config.serve)
        .with_default_admin_port(9054)
        .serve(listener, shutdown)
        .await
}
