//! `counter-service`: parse flags, then serve until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = mesh_counter::Config::parse();
    mesh_common::serve_main("counter-service", config.listen, |listener, shutdown| {
        mesh_counter::run(listener, config, shutdown)
    })
    .await
}
