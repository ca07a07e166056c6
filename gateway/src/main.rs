//! `gateway`: parse flags, then serve HTTP until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = mesh_gateway::Config::parse();
    mesh_common::serve_main("gateway", config.listen, |listener, shutdown| {
        mesh_gateway::run(listener, config, shutdown)
    })
    .await
}
