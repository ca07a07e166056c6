//! `bench-hello`: the smallest axum server answering `GET /test` with the same
//! JSON as the gateway's `/test`. The benchmark measures it beside the mesh as
//! the practical limit of one HTTP hop on the machine.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use clap::Parser;

/// bench-hello: the one-hop HTTP reference for the benchmark.
#[derive(Parser, Debug)]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "BENCH_HELLO_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

async fn test() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"message": "Hello, load balanced world!"}))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    mesh_common::serve_main(
        "bench-hello",
        args.listen,
        mesh_common::telemetry::LogArgs::default(),
        |listener, shutdown| async move {
            let app = Router::new().route("/test", get(test));
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
            Ok(())
        },
    )
    .await
}
