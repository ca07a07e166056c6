//! The items service: the mesh's SQL-backed catalogue.
//!
//! - [`store`]: rows <-> `mesh.items.v1` messages, validation, keyset pagination,
//!   optimistic concurrency (prost types, no tonic);
//! - [`service`]: the `mesh.items.v1.ItemService` adapter over the store;
//! - [`error`]: the domain error and its gRPC mapping;
//! - [`run`]: serve on a bound listener until a shutdown future resolves.
#![forbid(unsafe_code)]

pub mod error;
pub mod service;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_proto::items::v1::item_service_server::ItemServiceServer;
use tokio::net::TcpListener;

use crate::service::ItemsApi;
use crate::store::{ItemStore, postgres_migrations, sqlite_migrations};

/// items-service: the mesh's catalogue of items, over SQLite or PostgreSQL.
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "items-service", version)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "ITEMS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub serve: mesh_common::grpc::ServeArgs,

    /// Directory for the embedded SQLite database (items.db).
    #[arg(long, env = "ITEMS_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub sql: mesh_sql::SqlConfig,
}

/// Connects to the database, applies migrations and serves until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // Items run the same SQL on either backend, so which one it is does not matter here.
    let (pool, _) = mesh_sql::connect(
        &config.sql,
        &config.data_dir,
        "items",
        sqlite_migrations(),
        postgres_migrations(),
    )
    .await?;
    let _metrics = mesh_sql::metrics::watch_pool("items", &pool);
    let store = ItemStore::new(pool.clone());
    mesh_common::grpc::GrpcServer::new(ItemServiceServer::new(ItemsApi::new(store)))
        .with_probe(move || {
            let pool = pool.clone();
            async move { mesh_sql::ping(&pool, Duration::from_secs(1)).await }
        })
        .with_args(&config.serve)
        .with_default_admin_port(9051)
        .serve(listener, shutdown)
        .await
}
