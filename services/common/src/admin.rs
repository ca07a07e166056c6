//! The admin listener: a second, plaintext HTTP port for operators and
//! probes, kept off the public port (loopback by default).
//!
//! Every server runs one. A gRPC service's answers [`router`]: `GET /healthz`
//! (the process is up) and `GET /readyz` (200 while its `grpc.health.v1`
//! status is `SERVING`, else 503), and `GET /metrics` (the process's
//! Prometheus metrics, see [`crate::metrics`]). The gateway adds its own
//! routes to the same kind of router.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A server's health as its admin `/readyz` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The gRPC service it reports on (`mesh.items.v1.ItemService`).
    pub service: &'static str,
    /// `grpc.health.v1` says `SERVING`.
    pub serving: bool,
    pub backend_up: bool,
    pub maintenance: bool,
    pub draining: bool,
}

/// `GET /healthz`: the process is alive and answering.
pub async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 while `SERVING`, else 503; the body says why.
async fn readyz(State(health): State<watch::Receiver<Health>>) -> (StatusCode, axum::Json<Value>) {
    let h = health.borrow().clone();
    let code = if h.serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": h.serving,
        "status": if h.serving { "SERVING" } else { "NOT_SERVING" },
        "service": h.service,
        "backend_up": h.backend_up,
        "maintenance": h.maintenance,
        "draining": h.draining,
    });
    (code, axum::Json(body))
}

/// What runs before each scrape of `/metrics` (e.g. reading a queue's
/// depth into its gauges).
pub type Refresh = std::sync::Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// `GET /metrics`: every metric of the process, as Prometheus text.
pub async fn metrics(refresh: Option<Refresh>) -> impl axum::response::IntoResponse {
    if let Some(refresh) = refresh {
        refresh().await;
    }
    (
        [(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(),
    )
}

/// A gRPC service's admin routes, over its live health.
pub fn router(health: watch::Receiver<Health>, refresh: Option<Refresh>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
        .route("/metrics", get(move || metrics(refresh.clone())))
}

/// Binds the admin listener and announces it (`<name> admin listening on
/// <addr>`, after the main address line).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--admin-listen)"))?;
    crate::announce_admin(listener.local_addr()?);
    Ok(listener)
}

/// Serves `router` on `listener` until `shutdown`, then lets requests in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("admin listener")
}
