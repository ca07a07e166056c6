//! The cache service: hot values with TTLs, in process (moka) or in Redis.
//!
//! - [`backend`]: the `CacheBackend` trait and its two implementations;
//! - [`store`]: validation and hit/miss accounting (no tonic);
//! - [`service`]: the `mesh.cache.v1.CacheService` adapter;
//! - [`run`]: serve on a bound listener until a shutdown future resolves.
#![forbid(unsafe_code)]

pub mod backend;
pub mod error;
pub mod service;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proto::cache::v1::cache_service_server::CacheServiceServer;
use tokio::net::TcpListener;

use crate::backend::CacheBackend;
use crate::backend::memory::MemoryBackend;
use crate::backend::redis::RedisBackend;
use crate::service::CacheApi;
use crate::store::CacheStore;

/// cache-service: key/value cache with TTLs, in process or shared through Redis.
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "cache-service", version)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "CACHE_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub serve: mesh_common::grpc::ServeArgs,

    /// Redis URL (redis://host:port/db). Unset: an in-process cache private to this replica.
    #[arg(long, env = "CACHE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every key this service writes to Redis.
    #[arg(long, env = "CACHE_REDIS_PREFIX", default_value = "mesh:cache:")]
    pub redis_prefix: String,

    /// Size bound of the in-process cache, in bytes of keys plus values.
    #[arg(long, env = "CACHE_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_bytes: u64,
}

pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let backend: Arc<dyn CacheBackend> = match &config.redis_url {
        Some(url) => {
            tracing::info!(prefix = %config.redis_prefix, "cache backend: redis");
            Arc::new(RedisBackend::new(
                mesh_redis::connect(url)?,
                config.redis_prefix.clone(),
            ))
        }
        None => {
            tracing::info!(max_bytes = config.max_bytes, "cache backend: in-process");
            Arc::new(MemoryBackend::new(config.max_bytes))
        }
    };
    let store = CacheStore::new(backend.clone());
    mesh_common::grpc::GrpcServer::new(CacheServiceServer::new(CacheApi::new(store)))
        .with_probe(move || {
            let backend = backend.clone();
            async move { backend.ping().await }
        })
        .with_args(&config.serve)
        .with_default_admin_port(9052)
        .serve(listener, shutdown)
        .await
}
