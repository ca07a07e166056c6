//! `counter-service`: answer `healthcheck` or `--check-config`, else parse flags and serve until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin = ([127, 0, 0, 1], mesh_proto::services::COUNTER.default_admin_port).into();
    if let Some(result) = mesh_common::probe::healthcheck_if_asked("MESH_ADMIN_LISTEN", admin) {
        return result;
    }
    let config = mesh_counter::Config::parse();
    if config.serve.check_config {
        return mesh_common::probe::check_config("counter-service", || {
            config.serve.check("counter-service", config.listen)
        });
    }
    mesh_common::serve_main(
        "counter-service",
        config.listen,
        config.serve.log.clone(),
        |listener, shutdown| mesh_counter::run(listener, config, shutdown),
    )
    .await
}
