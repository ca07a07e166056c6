//! The tonic server every service runs.
//!
//! A service hands its own routes to [`GrpcServer`], which adds the standard
//! ones: `grpc.health.v1.Health` and server reflection in both `v1` and
//! `v1alpha` (grpcurl 1.8 speaks only `v1alpha`), over the mesh's descriptor set.
//! Health follows the service's backend when a probe is given, and turns
//! `NOT_SERVING` as soon as shutdown starts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// How often a backend probe runs.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub struct GrpcServer {
    routes: Routes,
    service_name: &'static str,
    probe: Option<Probe>,
}

impl GrpcServer {
    /// A server for one gRPC service (`S::NAME` is what health reports on).
    pub fn new<S>(service: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        Self {
            routes: Routes::new(service),
            service_name: S::NAME,
            probe: None,
        }
    }

    /// Checks the backend every second; while `probe` answers false, health is
    /// `NOT_SERVING` (callers should also get `UNAVAILABLE` from the calls themselves).
    pub fn with_probe<F, Fut>(mut self, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.probe = Some(Arc::new(move || Box::pin(probe())));
        self
    }

    /// Serves on `listener` until `shutdown` resolves, then reports
    /// `NOT_SERVING`, stops accepting and lets in-flight calls finish.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> anyhow::Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        let (health, health_service) = tonic_health::server::health_reporter();
        set_all(&health, self.service_name, ServingStatus::Serving).await;
        let prober = self.probe.map(|probe| {
            let health = health.clone();
            tokio::spawn(watch(probe, health, self.service_name))
        });

        // Advertise only what this server serves: the descriptor set holds
        // every mesh service, but `grpcurl list` must not show the others.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(mesh_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
                .with_service_name(self.service_name)
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let routes = self
            .routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let name = self.service_name;
        Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                if let Some(prober) = prober {
                    prober.abort();
                }
                set_all(&health, name, ServingStatus::NotServing).await;
            })
            .await?;
        tracing::info!("server stopped; in-flight calls finished");
        Ok(())
    }
}

/// Sets the overall status (the empty name) and the named service's together.
async fn set_all(health: &HealthReporter, name: &str, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(name, status).await;
}

async fn watch(probe: Probe, health: HealthReporter, name: &'static str) {
    let mut up = true;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_up = probe().await;
        if now_up != up {
            up = now_up;
            if up {
                tracing::info!(service = name, "backend reachable again: SERVING");
                set_all(&health, name, ServingStatus::Serving).await;
            } else {
                tracing::warn!(service = name, "backend unreachable: NOT_SERVING");
                set_all(&health, name, ServingStatus::NotServing).await;
            }
        }
    }
}
