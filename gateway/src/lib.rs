//! The mesh's HTTP/JSON edge.
//!
//! - [`state`]: the shared client pool (one tonic channel per service, one reqwest client);
//! - [`routes`]: one module per service, the seed's routes, and ops (`/healthz`, `/readyz`, `/overview`);
//! - [`extract`]: JSON/query extractors with the gateway's error shape, and per-call settings;
//! - [`error`]: the one error type, gRPC code -> HTTP status;
//! - [`app`] builds the router (tests drive it without a socket); [`run`] serves it.
#![forbid(unsafe_code)]

pub mod error;
pub mod extract;
pub mod routes;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tonic_health::pb::health_client::HealthClient;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::AppError;
use crate::routes::{cache, counter, items, ops, seed, tasks};
use crate::state::AppState;

/// gateway: the mesh's HTTP/JSON front door.
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "gateway", version)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Items service endpoints, comma separated.
    #[arg(long, env = "GATEWAY_ITEMS", default_value = "http://127.0.0.1:50051")]
    pub items: String,

    /// Cache service endpoints, comma separated.
    #[arg(long, env = "GATEWAY_CACHE", default_value = "http://127.0.0.1:50052")]
    pub cache: String,

    /// Tasks service endpoints, comma separated.
    #[arg(long, env = "GATEWAY_TASKS", default_value = "http://127.0.0.1:50053")]
    pub tasks: String,

    /// Counter service endpoints, comma separated.
    #[arg(
        long,
        env = "GATEWAY_COUNTER",
        default_value = "http://127.0.0.1:50054"
    )]
    pub counter: String,

    /// Plain-HTTP upstream that `GET /call-another-service` calls.
    #[arg(long, env = "GATEWAY_UPSTREAM")]
    pub upstream: Option<String>,

    /// Deadline of each service call, in ms (sent as grpc-timeout).
    #[arg(long, env = "GATEWAY_CALL_TIMEOUT_MS", default_value_t = 5000)]
    pub call_timeout_ms: u64,

    /// How long `GET /items/{id}` keeps an item in the cache, in seconds.
    #[arg(long, env = "GATEWAY_ITEM_TTL_SECS", default_value_t = 60)]
    pub item_ttl_secs: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

impl Config {
    /// Builds the shared client pool. Connections open lazily.
    pub fn state(&self) -> anyhow::Result<AppState> {
        let connect = Duration::from_millis(1000);
        let items = state::channel("items", &self.items, connect)?;
        let cache = state::channel("cache", &self.cache, connect)?;
        let tasks = state::channel("tasks", &self.tasks, connect)?;
        let counter = state::channel("counter", &self.counter, connect)?;
        if let Some(url) = &self.upstream {
            reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("--upstream {url:?}: {e}"))?;
        }
        Ok(AppState {
            health: vec![
                ("items", HealthClient::new(items.clone())),
                ("cache", HealthClient::new(cache.clone())),
                ("tasks", HealthClient::new(tasks.clone())),
                ("counter", HealthClient::new(counter.clone())),
            ],
            items: mesh_proto::items::v1::item_service_client::ItemServiceClient::new(items),
            cache: mesh_proto::cache::v1::cache_service_client::CacheServiceClient::new(cache),
            tasks: mesh_proto::tasks::v1::task_service_client::TaskServiceClient::new(tasks),
            counter: mesh_proto::counter::v1::counter_service_client::CounterServiceClient::new(
                counter,
            ),
            http: reqwest::Client::builder()
                .connect_timeout(connect)
                .pool_idle_timeout(Duration::from_secs(60))
                .build()?,
            upstream: self.upstream.clone(),
            call_timeout: Duration::from_millis(self.call_timeout_ms.max(1)),
            item_ttl: Duration::from_secs(self.item_ttl_secs.max(1)),
        })
    }
}

/// The gateway's router, over a ready client pool.
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/items", post(items::create).get(items::list))
        .route("/items/{id}", get(items::get).patch(items::patch).delete(items::delete))
        .route("/cache/{key}", get(cache::get).put(cache::put).delete(cache::delete))
        .route("/tasks", post(tasks::submit).get(tasks::list))
        .route("/tasks/{id}", get(tasks::get).delete(tasks::cancel))
        .route("/tasks/{id}/events", get(tasks::events))
        .route("/counters/{name}", get(counter::get).delete(counter::reset))
        .route("/counters/{name}/increment", post(counter::increment))
        .route("/test", get(seed::test))
        .route("/cached-data", get(seed::cached_data))
        .route("/increment", get(seed::increment))
        .route("/start-task", get(seed::start_task))
        .route("/run-blocking-task", get(seed::run_blocking_task))
        .route("/call-another-service", get(seed::call_another_service))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/overview", get(ops::overview))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // Outermost last: the request id is set first, so the trace span and
        // every service call carry it, and it is echoed on the response.
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> AppError {
    AppError::BadRequest {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        code: "METHOD_NOT_ALLOWED",
        message: format!("{method} is not allowed on {}", uri.path()),
    }
}

/// Serves the gateway on `listener` until `shutdown`, then finishes in-flight requests.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = config.state()?;
    let app = app(state, config.max_body_bytes);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("gateway stopped; in-flight requests finished");
    Ok(())
}
