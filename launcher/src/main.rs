//! `mesh`: the local launcher. Starts the four services and the gateway as
//! separate processes (with replicas where asked), waits until each reports
//! SERVING, prints where everything listens, and on Ctrl-C or SIGTERM stops
//! them all gracefully.
//!
//! The launcher re-executes itself for each process (`mesh items --listen ...`
//! runs the items server), so `cargo run --bin mesh` is the only build step.
#![forbid(unsafe_code)]

mod up;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "mesh",
    version,
    about = "Start the whole mesh locally",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    server: Option<Server>,

    #[command(flatten)]
    up: up::UpArgs,
}

/// Run one server in this process (what the launcher starts for each replica).
#[derive(Subcommand, Debug)]
enum Server {
    /// The items service (same flags as `items-service`).
    Items(mesh_items::Config),
    /// The cache service (same flags as `cache-service`).
    Cache(mesh_cache::Config),
    /// The tasks service (same flags as `tasks-service`).
    Tasks(mesh_tasks::Config),
    /// The counter service (same flags as `counter-service`).
    Counter(mesh_counter::Config),
    /// The HTTP gateway (same flags as `gateway`).
    Gateway(mesh_gateway::Config),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.server {
        None => up::run(cli.up).await,
        Some(Server::Items(c)) => {
            mesh_common::serve_main("items-service", c.listen, |l, s| mesh_items::run(l, c, s)).await
        }
        Some(Server::Cache(c)) => {
            mesh_common::serve_main("cache-service", c.listen, |l, s| mesh_cache::run(l, c, s)).await
        }
        Some(Server::Tasks(c)) => {
            mesh_common::serve_main("tasks-service", c.listen, |l, s| mesh_tasks::run(l, c, s)).await
        }
        Some(Server::Counter(c)) => {
            mesh_common::serve_main("counter-service", c.listen, |l, s| mesh_counter::run(l, c, s)).await
        }
        Some(Server::Gateway(c)) => {
            mesh_common::serve_main("gateway", c.listen, |l, s| mesh_gateway::run(l, c, s)).await
        }
    }
}
