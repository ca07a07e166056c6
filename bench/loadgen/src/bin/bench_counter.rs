//! `bench-counter`: the floor of a counter service. A bare tonic server
//! implementing `CounterService` over a mutex-guarded map, with none of the
//! mesh's service stack (no request ids, deadline handling, idempotency keys,
//! health, reflection or logging). The benchmark drives it and the real
//! counter service with the same gRPC load and compares the CPU each spends
//! per call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use clap::Parser;
use mesh_proto::counter::v1::counter_service_server::{CounterService, CounterServiceServer};
use mesh_proto::counter::v1::{CounterValue, GetRequest, IncrementRequest, ResetRequest};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// bench-counter: the bare tonic counter for the benchmark.
#[derive(Parser, Debug)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "BENCH_COUNTER_LISTEN", default_value = "127.0.0.1:50094")]
    listen: SocketAddr,
}

#[derive(Default)]
struct Counters(Mutex<HashMap<String, i64>>);

impl Counters {
    fn update(&self, name: String, f: impl FnOnce(i64) -> i64) -> CounterValue {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let value = map.entry(name.clone()).or_default();
        *value = f(*value);
        CounterValue { name, value: *value }
    }
}

#[tonic::async_trait]
impl CounterService for Counters {
    async fn increment(&self, request: Request<IncrementRequest>) -> Result<Response<CounterValue>, Status> {
        let request = request.into_inner();
        let delta = request.delta.unwrap_or(1);
        Ok(Response::new(self.update(request.name, |v| v.saturating_add(delta))))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<CounterValue>, Status> {
        Ok(Response::new(self.update(request.into_inner().name, |v| v)))
    }

    async fn reset(&self, request: Request<ResetRequest>) -> Result<Response<CounterValue>, Status> {
        Ok(Response::new(self.update(request.into_inner().name, |_| 0)))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    mesh_common::serve_main(
        "bench-counter",
        args.listen,
        mesh_common::telemetry::LogArgs::default(),
        |listener, shutdown| async move {
            // TCP_NODELAY, as the mesh's services set it.
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(CounterServiceServer::new(Counters::default()))
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
            Ok(())
        },
    )
    .await
}
