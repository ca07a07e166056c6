//! `bench-otlp-sink`: an OTLP/gRPC trace collector that only counts what it
//! receives, so the benchmark can measure what exporting traces costs the
//! mesh without a real collector's own work on the same cores. It answers
//! every export at once, keeps nothing, and logs how many spans it
//! received when it stops (`spans received spans=N`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// bench-otlp-sink: an OTLP trace collector that counts spans.
#[derive(Parser, Debug)]
struct Args {
    /// Address to serve OTLP/gRPC on.
    #[arg(long, env = "BENCH_OTLP_SINK_LISTEN", default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
}

#[derive(Default)]
struct Sink {
    spans: AtomicU64,
}

#[tonic::async_trait]
impl TraceService for &'static Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sink: &'static Sink = Box::leak(Box::default());
    mesh_common::serve_main(
        "bench-otlp-sink",
        args.listen,
        mesh_common::telemetry::LogArgs::default(),
        |listener, shutdown| async move {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink))
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
            // stderr (the log): stdout is closed once the address is read.
            eprintln!("spans received spans={}", sink.spans.load(Ordering::Relaxed));
            Ok(())
        },
    )
    .await
}
