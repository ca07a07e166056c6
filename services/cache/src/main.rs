//! `cache-service`: parse flags, then serve until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = mesh_cache::Config::parse();
    mesh_common::serve_main("cache-service", config.listen, |listener, shutdown| {
        mesh_cache::run(listener, config, shutdown)
    })
    .await
}
