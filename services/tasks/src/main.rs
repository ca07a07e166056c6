//! `tasks-service`: parse flags, then serve and work until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = mesh_tasks::Config::parse();
    mesh_common::serve_main("tasks-service", config.listen, |listener, shutdown| {
        mesh_tasks::run(listener, config, shutdown)
    })
    .await
}
