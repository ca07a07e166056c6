//! `items-service`: parse flags, then serve until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = mesh_items::Config::parse();
    mesh_common::serve_main("items-service", config.listen, |listener, shutdown| {
        mesh_items::run(listener, config, shutdown)
    })
    .await
}
