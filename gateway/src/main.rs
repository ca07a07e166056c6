//! `gateway`: parse flags, then serve HTTP until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(result) =
        mesh_common::probe::healthcheck_if_asked("GATEWAY_ADMIN_LISTEN", ([127, 0, 0, 1], 9080).into())
    {
        return result;
    }
    let config = mesh_gateway::Config::parse();
    if config.check_config {
        return mesh_common::probe::check_config("gateway", || config.check());
    }
    mesh_common::serve_main("gateway", config.listen, config.log.clone(), |listener, shutdown| {
        mesh_gateway::run(listener, config, shutdown)
    })
    .await
}
