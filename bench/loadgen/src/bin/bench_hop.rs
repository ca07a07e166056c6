//! `bench-hop`: the floor of one HTTP-to-gRPC hop. An axum handler answers
//! `GET /increment` like the gateway's seed route (`{"shared_resource": N}`)
//! by calling `CounterService/Increment` over one tonic channel, with no
//! policies at all: no balancer, retries, deadlines, request ids or logging.
//! The benchmark runs it beside the gateway against the same counter service
//! and compares the CPU each spends per request.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::serve::ListenerExt;
use clap::Parser;
use mesh_proto::counter::v1::IncrementRequest;
use mesh_proto::counter::v1::counter_service_client::CounterServiceClient;
use tonic::transport::{Channel, Endpoint};

/// bench-hop: the bare HTTP -> gRPC hop for the benchmark.
#[derive(Parser, Debug)]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "BENCH_HOP_LISTEN", default_value = "127.0.0.1:8091")]
    listen: SocketAddr,
    /// The counter service, e.g. http://127.0.0.1:50054.
    #[arg(long, env = "BENCH_HOP_COUNTER")]
    counter: String,
}

async fn increment(
    State(client): State<CounterServiceClient<Channel>>,
) -> Result<axum::Json<serde_json::Value>, (StatusCode, String)> {
    let request = IncrementRequest {
        name: "shared_resource".into(),
        delta: Some(1),
        idempotency_key: String::new(),
    };
    match client.clone().increment(request).await {
        Ok(value) => Ok(axum::Json(
            serde_json::json!({"shared_resource": value.into_inner().value}),
        )),
        Err(status) => Err((StatusCode::BAD_GATEWAY, status.message().to_owned())),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = Endpoint::from_shared(args.counter)?.connect_lazy();
    let client = CounterServiceClient::new(channel);
    mesh_common::serve_main(
        "bench-hop",
        args.listen,
        mesh_common::telemetry::LogArgs::default(),
        |listener, shutdown| async move {
            let app = Router::new().route("/increment", get(increment)).with_state(client);
            // TCP_NODELAY, as the gateway sets it.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
            Ok(())
        },
    )
    .await
}
