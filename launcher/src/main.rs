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
    Gateway(Box<mesh_gateway::Config>),
    /// Write a development CA and a certificate (with its key) for every
    /// service and the gateway into DIR: ca.pem, ca.key, NAME.pem, NAME.key.
    /// Not for production.
    Certs(CertsArgs),
    /// Make an API key: prints its secret (shown once, stored nowhere) and
    /// the line to add to the gateway's --api-keys file.
    ApiKey(ApiKeyArgs),
}

#[derive(clap::Args, Debug)]
struct CertsArgs {
    /// Where to write them (created if missing; existing files are replaced).
    dir: std::path::PathBuf,
    /// More names or addresses every certificate is valid for (besides
    /// localhost, 127.0.0.1, ::1 and its own name), e.g. a host's DNS name.
    #[arg(long = "host", value_delimiter = ',')]
    hosts: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct ApiKeyArgs {
    /// The key's id: what logs and audit lines name (`key:ID`).
    id: String,
    /// Its scopes, comma-separated: read, write, admin.
    #[arg(default_value = "read")]
    scopes: String,
}

/// `mesh api-key ID SCOPES`.
fn api_key(args: &ApiKeyArgs) -> anyhow::Result<()> {
    let scopes = mesh_auth::Scopes::parse_list(&args.scopes).map_err(anyhow::Error::msg)?;
    let secret = mesh_auth::keys::new_secret()?;
    let line = format!(
        "{} {} {}",
        args.id,
        mesh_auth::keys::hash_hex(&secret),
        args.scopes.replace(' ', "")
    );
    // The line must parse as the gateway will parse it.
    mesh_auth::keys::KeyTable::parse(&line)?;
    println!("secret (shown once; send it as `Authorization: Bearer <secret>` or `x-api-key`):");
    println!("{secret}");
    println!("line for the --api-keys file (scopes: {scopes}):");
    println!("{line}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.server {
        None => up::run(cli.up).await,
        Some(Server::Items(c)) if c.serve.check_config => {
            mesh_common::probe::check_config("items-service", || c.serve.check("items-service", c.listen))
        }
        Some(Server::Items(c)) => {
            mesh_common::serve_main("items-service", c.listen, c.serve.log.clone(), |l, s| {
                mesh_items::run(l, c, s)
            })
            .await
        }
        Some(Server::Cache(c)) if c.serve.check_config => {
            mesh_common::probe::check_config("cache-service", || c.serve.check("cache-service", c.listen))
        }
        Some(Server::Cache(c)) => {
            mesh_common::serve_main("cache-service", c.listen, c.serve.log.clone(), |l, s| {
                mesh_cache::run(l, c, s)
            })
            .await
        }
        Some(Server::Tasks(c)) if c.serve.check_config => {
            mesh_common::probe::check_config("tasks-service", || c.serve.check("tasks-service", c.listen))
        }
        Some(Server::Tasks(c)) => {
            mesh_common::serve_main("tasks-service", c.listen, c.serve.log.clone(), |l, s| {
                mesh_tasks::run(l, c, s)
            })
            .await
        }
        Some(Server::Counter(c)) if c.serve.check_config => {
            mesh_common::probe::check_config("counter-service", || c.serve.check("counter-service", c.listen))
        }
        Some(Server::Counter(c)) => {
            mesh_common::serve_main("counter-service", c.listen, c.serve.log.clone(), |l, s| {
                mesh_counter::run(l, c, s)
            })
            .await
        }
        Some(Server::Gateway(c)) if c.check_config => mesh_common::probe::check_config("gateway", || c.check()),
        Some(Server::Gateway(c)) => {
            mesh_common::serve_main("gateway", c.listen, c.log.clone(), |l, s| mesh_gateway::run(l, *c, s)).await
        }
        Some(Server::ApiKey(args)) => api_key(&args),
        Some(Server::Certs(args)) => {
            mesh_common::tls::write_dev_certs(&args.dir, &up::cert_names(), &["gateway"], &args.hosts)?;
            println!(
                "wrote ca.pem and a certificate for {} in {}",
                up::cert_names().join(", "),
                args.dir.display()
            );
            Ok(())
        }
    }
}
