//! The mesh's HTTP/JSON edge.
//!
//! - [`state`]: the shared client pool (one balanced client per service, over the
//!   `mesh-upstream` crate's traffic policies; one reqwest client);
//! - [`routes`]: one module per service, the seed's routes, and ops (`/healthz`, `/readyz`, `/overview`);
//! - [`extract`]: JSON/query extractors with the gateway's error shape, and per-call settings;
//! - [`error`]: the one error type, gRPC code -> HTTP status;
//! - [`openapi`]: the HTTP contract as OpenAPI 3.1, generated from the handlers and
//!   described by the protos' comments (`GET /openapi.json`, rendered at `GET /docs`);
//! - [`app`] builds the router (tests drive it without a socket); [`run`] serves it
//!   with [`serve`] (timeouts for slow and idle clients, a connection cap), and
//!   [`admin_app`] on the admin listener (full readiness and overview, for operators).
#![forbid(unsafe_code)]

pub mod auth;
pub mod edge;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod request_id;
pub mod routes;
pub mod serve;
pub mod singleflight;
pub mod state;
pub mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use mesh_proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_proto::items::v1::item_service_client::ItemServiceClient;
use mesh_proto::services::{self, Service};
use mesh_proto::tasks::v1::task_service_client::TaskServiceClient;
use mesh_upstream::{Client, ClientTls, HedgeSettings, PerTryTimeout, Settings, Spec, Upstream};
use tokio::net::TcpListener;

use crate::error::AppError;
use crate::routes::{cache, counter, items, ops, seed, tasks};
use crate::state::AppState;

/// gateway: the mesh's HTTP/JSON front door.
///
/// Each service flag takes a comma-separated list of `http://HOST:PORT`
/// (HOST re-resolved at run time, so a DNS name can list several replicas)
/// and `@FILE` entries (a file of endpoints, one per line, re-read at run time).
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "gateway", version)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address of the admin listener (plaintext HTTP for operators: /healthz,
    /// /readyz and /overview with every replica's address and the recent
    /// tasks' payloads and results, which the public port does not show).
    /// Keep it off the public network.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9080")]
    pub admin_listen: SocketAddr,

    /// Items service endpoints.
    #[arg(long = services::ITEMS.flag, env = "GATEWAY_ITEMS", default_value_t = local_endpoint(&services::ITEMS))]
    pub items: String,

    /// Cache service endpoints.
    #[arg(long = services::CACHE.flag, env = "GATEWAY_CACHE", default_value_t = local_endpoint(&services::CACHE))]
    pub cache: String,

    /// Tasks service endpoints.
    #[arg(long = services::TASKS.flag, env = "GATEWAY_TASKS", default_value_t = local_endpoint(&services::TASKS))]
    pub tasks: String,

    /// Counter service endpoints.
    #[arg(long = services::COUNTER.flag, env = "GATEWAY_COUNTER", default_value_t = local_endpoint(&services::COUNTER))]
    pub counter: String,

    /// Plain-HTTP upstream that `GET /call-another-service` calls.
    #[arg(long, env = "GATEWAY_UPSTREAM")]
    pub upstream: Option<String>,

    /// Deadline of every route, in ms: all its service calls share it, each
    /// is sent the time left as `grpc-timeout`, and past it the answer is 504.
    #[arg(long, env = "GATEWAY_ROUTE_TIMEOUT_MS", default_value_t = 5000)]
    pub route_timeout_ms: u64,

    /// How long `GET /items/{id}` keeps an item in the cache, in seconds.
    #[arg(long, env = "GATEWAY_ITEM_TTL_SECS", default_value_t = 60)]
    pub item_ttl_secs: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest total size of request headers accepted, in bytes.
    #[arg(long, env = "GATEWAY_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// A request's line and headers must arrive within this many ms of the
    /// server starting to wait for them, else the connection is closed. On
    /// HTTP/1 the wait also runs while a keep-alive connection is idle, so an
    /// idle HTTP/1 connection lasts at most the shorter of this and
    /// --idle-timeout-ms.
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// A request's whole body must arrive within this many ms of its headers
    /// (one deadline, however the bytes trickle in); else 408 and the
    /// connection is closed.
    #[arg(long, env = "GATEWAY_BODY_READ_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_read_timeout_ms: u64,

    /// A connection with no request in flight for this many ms is closed
    /// (HTTP/1 and HTTP/2). A response being sent (server-sent events, a slow
    /// service call) counts as in flight.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Open connections at most. Past it the gateway accepts no more until one
    /// closes: new clients wait in the listen backlog.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Calls in flight per service before the gateway refuses more (503).
    #[arg(long, env = "GATEWAY_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// How often each replica's grpc.health.v1 status is checked, in ms.
    #[arg(long, env = "GATEWAY_HEALTH_INTERVAL_MS", default_value_t = 500)]
    pub health_interval_ms: u64,

    /// How long one health check may take before it counts as no answer, in ms.
    #[arg(long, env = "GATEWAY_HEALTH_TIMEOUT_MS", default_value_t = 1000)]
    pub health_timeout_ms: u64,

    /// Health checks in a row without an answer before a replica is taken
    /// out of rotation (a NOT_SERVING answer takes it out at once).
    #[arg(long, env = "GATEWAY_HEALTH_MISSES", default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(1..=100))]
    pub health_misses: u32,

    /// How often endpoint lists are resolved again (DNS, files), in ms.
    #[arg(long, env = "GATEWAY_RESOLVE_INTERVAL_MS", default_value_t = 5000)]
    pub resolve_interval_ms: u64,

    /// Consecutive failed calls (connection errors, UNAVAILABLE) that eject a replica.
    #[arg(long, env = "GATEWAY_EJECT_AFTER", default_value_t = 3)]
    pub eject_after: u32,

    /// First ejection's length in ms; it doubles with each repeat, up to 30 s.
    #[arg(long, env = "GATEWAY_EJECT_BASE_MS", default_value_t = 2000)]
    pub eject_base_ms: u64,

    /// Retries may add this fraction of calls (plus 10 a second).
    #[arg(long, env = "GATEWAY_RETRY_RATIO", default_value_t = 0.2)]
    pub retry_ratio: f32,

    /// How long one attempt of a read or a keyed write may go unanswered, in
    /// ms, before it is cut and retried on another replica (each retry paid
    /// from the retry budget; the last attempt is never cut). Unset: 3 times
    /// the service's recent p99 latency, at least 50 ms and at most half the
    /// time the call has left. 0 turns it off.
    #[arg(long, env = "GATEWAY_PER_TRY_TIMEOUT_MS")]
    pub per_try_timeout_ms: Option<u64>,

    /// Hedge reads still outstanding past this latency percentile (e.g. 95). Off when unset.
    #[arg(long, env = "GATEWAY_HEDGE_PERCENTILE")]
    pub hedge_percentile: Option<f64>,

    /// Hedges may add at most this fraction of reads.
    #[arg(long, env = "GATEWAY_HEDGE_RATIO", default_value_t = 0.1)]
    pub hedge_ratio: f32,

    /// Certificate chain (PEM) to serve HTTPS with (HTTP/1.1 and HTTP/2 by
    /// ALPN); needs --tls-key. Re-read when the file changes, and on SIGHUP:
    /// new handshakes get the new certificate, open connections stay.
    #[arg(long, env = "GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// How often the certificate files are checked for changes, in ms.
    #[arg(long, env = "GATEWAY_TLS_RELOAD_MS", default_value_t = 5000)]
    pub tls_reload_ms: u64,

    /// CA (PEM) the services' certificates must chain to: calls to them go
    /// over TLS, and each replica's certificate must name its service
    /// (`items`, `cache`, `tasks`, `counter`), wherever it was found.
    #[arg(long, env = "GATEWAY_SERVICES_TLS_CA")]
    pub services_tls_ca: Option<std::path::PathBuf>,

    /// The gateway's client certificate (PEM) for the services' mutual TLS;
    /// needs --services-tls-key and --services-tls-ca.
    #[arg(long, env = "GATEWAY_SERVICES_TLS_CERT", requires_all = ["services_tls_key", "services_tls_ca"])]
    pub services_tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --services-tls-cert.
    #[arg(long, env = "GATEWAY_SERVICES_TLS_KEY", requires = "services_tls_cert")]
    pub services_tls_key: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub auth: auth::AuthArgs,

    #[command(flatten)]
    pub rate: ratelimit::RateArgs,

    #[command(flatten)]
    pub log: mesh_common::telemetry::LogArgs,

    /// Parse and validate the configuration (flags, environment, endpoint
    /// lists, key, JWKS and certificate files), print `configuration OK`
    /// and exit, without listening or connecting anywhere.
    #[arg(long)]
    pub check_config: bool,
}

impl Config {
    /// The services' TLS settings, read from their files.
    fn services_tls(&self) -> anyhow::Result<Option<ClientTls>> {
        let Some(ca) = &self.services_tls_ca else {
            return Ok(None);
        };
        let read = |path: &std::path::Path, flag: &str| {
            std::fs::read(path).with_context(|| format!("--{flag} {}", path.display()))
        };
        let identity = match (&self.services_tls_cert, &self.services_tls_key) {
            (Some(cert), Some(key)) => Some((read(cert, "services-tls-cert")?, read(key, "services-tls-key")?)),
            _ => None,
        };
        // The same checks tonic would make at the first call, made now.
        let ca_pem = read(ca, "services-tls-ca")?;
        mesh_common::tls::client_config(
            ca,
            self.services_tls_cert.as_deref().zip(self.services_tls_key.as_deref()),
        )?;
        Ok(Some(ClientTls { ca_pem, identity }))
    }

    fn settings(&self) -> Settings {
        Settings {
            connect_timeout: Duration::from_millis(1000),
            health: mesh_upstream::health::Checking {
                interval: Duration::from_millis(self.health_interval_ms.max(50)),
                timeout: Duration::from_millis(self.health_timeout_ms.max(50)),
                misses: self.health_misses,
            },
            resolve_interval: Duration::from_millis(self.resolve_interval_ms.max(100)),
            eject_after: self.eject_after,
            eject_base: Duration::from_millis(self.eject_base_ms),
            eject_max: Duration::from_secs(30),
            max_in_flight: self.max_in_flight,
            retry_ratio: self.retry_ratio.clamp(0.0, 10.0),
            retry_min_per_sec: 10,
            per_try_timeout: match self.per_try_timeout_ms {
                None => PerTryTimeout::Derived,
                Some(0) => PerTryTimeout::Off,
                Some(ms) => PerTryTimeout::Fixed(Duration::from_millis(ms)),
            },
            hedge: self.hedge_percentile.map(|p| HedgeSettings {
                percentile: p.clamp(1.0, 99.9),
                ratio: self.hedge_ratio.clamp(0.0, 1.0),
            }),
            tls: None,
        }
    }

    /// How the server treats slow and idle clients.
    pub fn limits(&self) -> serve::Limits {
        serve::Limits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
            max_header_bytes: self.max_header_bytes,
        }
    }

    /// Each service's endpoint list, in the services table's order: the one
    /// place that pairs the table with the flags above.
    fn endpoints(&self) -> [(&'static Service, &str); 4] {
        [
            (&services::ITEMS, &self.items),
            (&services::CACHE, &self.cache),
            (&services::TASKS, &self.tasks),
            (&services::COUNTER, &self.counter),
        ]
    }

    /// `--check-config`: everything start-up would refuse, without binding
    /// or connecting.
    pub fn check(&self) -> anyhow::Result<()> {
        for (service, list) in self.endpoints() {
            Spec::parse(service.flag, list)?;
        }
        if let Some(url) = &self.upstream {
            reqwest::Url::parse(url).map_err(|e| {
                let url = mesh_common::redact::passwords(url);
                anyhow::anyhow!("--upstream {url:?}: {e}")
            })?;
        }
        self.auth.build(self.listen, self.tls_cert.is_some())?;
        self.rate.check()?;
        self.services_tls()?;
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let files = mesh_common::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
            };
            mesh_common::tls::server_config(&files, &[b"h2", b"http/1.1"])?;
        }
        Ok(())
    }

    /// Builds the shared client pool. Connections open lazily; endpoint
    /// specs are resolved once here and then kept up to date.
    pub async fn state(&self) -> anyhow::Result<AppState> {
        let specs = self
            .endpoints()
            .into_iter()
            .map(|(service, list)| Ok((service, Spec::parse(service.flag, list)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(url) = &self.upstream {
            reqwest::Url::parse(url).map_err(|e| {
                let url = mesh_common::redact::passwords(url);
                anyhow::anyhow!("--upstream {url:?}: {e}")
            })?;
        }
        let auth = self.auth.build(self.listen, self.tls_cert.is_some())?;
        let settings = Settings {
            tls: self.services_tls()?,
            ..self.settings()
        };
        let mut upstreams = Vec::with_capacity(specs.len());
        for (service, spec) in specs {
            upstreams.push(Upstream::start(service.name, spec, &settings).await);
        }
        let upstream = |service: &Service| {
            upstreams
                .iter()
                .find(|u| u.name() == service.name)
                .cloned()
                .with_context(|| format!("no upstream for the {} service", service.name))
        };
        Ok(std::sync::Arc::new(state::Shared {
            items: Client::new(upstream(&services::ITEMS)?, ItemServiceClient::new),
            cache: Client::new(upstream(&services::CACHE)?, CacheServiceClient::new),
            tasks: Client::new(upstream(&services::TASKS)?, TaskServiceClient::new),
            counter: Client::new(upstream(&services::COUNTER)?, CounterServiceClient::new),
            upstreams,
            http: reqwest::Client::builder()
                .connect_timeout(settings.connect_timeout)
                .pool_idle_timeout(Duration::from_secs(60))
                .build()?,
            upstream: self.upstream.clone(),
            route_timeout: Duration::from_millis(self.route_timeout_ms.max(1)),
            item_ttl: Duration::from_secs(self.item_ttl_secs.max(1)),
            item_reads: singleflight::SingleFlight::new("item_read"),
            item_writes: Default::default(),
            stopping: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
            limiter: self.rate.build(auth.clone())?,
            auth,
        }))
    }
}

/// A service's default endpoint: its default port on loopback.
fn local_endpoint(service: &Service) -> String {
    format!("http://127.0.0.1:{}", service.default_port)
}

/// axum's `DefaultBodyLimit` when no layer sets another.
const AXUM_DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The gateway's router, over a ready client pool.
pub fn app(state: AppState, max_body_bytes: usize, max_header_bytes: usize) -> Router {
    metrics::init();
    let router = Router::new()
        .route("/items", post(items::create).get(items::list))
        .route("/items/{id}", get(items::get).patch(items::patch).delete(items::delete))
        .route("/cache/{key}", get(cache::get).put(cache::put).delete(cache::delete))
        .route("/tasks", post(tasks::submit).get(tasks::list))
        .route("/tasks:batch", post(tasks::submit_batch))
        .route("/tasks/stats", get(tasks::stats))
        .route("/tasks/{id}", get(tasks::get))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/tasks/{id}/retry", post(tasks::retry))
        .route("/tasks/{id}/events", get(tasks::events))
        .route("/counters/{name}", get(counter::get))
        .route("/counters/{name}/reset", post(counter::reset))
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
        .route("/", get(openapi::index))
        // Swagger UI from inside the binary (nothing is fetched from elsewhere),
        // over the contract it serves at /openapi.json.
        .merge(docs(state.auth.as_deref(), state.limiter.is_some()));
    // Rate limits, counted after authentication (no layer without limits).
    let router = match &state.limiter {
        Some(limiter) => router.route_layer(axum::middleware::from_fn_with_state(limiter.clone(), ratelimit::check)),
        None => router,
    };
    // Who may call what (no layer at all without authentication).
    let router = match &state.auth {
        Some(auth) => router.route_layer(axum::middleware::from_fn_with_state(auth.clone(), auth::check)),
        None => router,
    };
    router
        // Every matched route is timed (the template, never the path, is its
        // label), refusals included.
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // axum's own default body limit is 2 MiB; a layer only for another one.
        .layer(tower::util::option_layer(
            (max_body_bytes != AXUM_DEFAULT_BODY_LIMIT).then(|| DefaultBodyLimit::max(max_body_bytes)),
        ))
        .layer(edge::EdgeLayer {
            max_header_bytes,
            ids: request_id::RequestIds::new(),
        })
}

/// `GET /docs` (the interactive docs page) and `GET /openapi.json`.
fn docs(auth: Option<&auth::Auth>, rate_limited: bool) -> utoipa_swagger_ui::SwaggerUi {
    let config = utoipa_swagger_ui::Config::new(["/openapi.json"])
        // Swagger UI would otherwise show a badge loaded from validator.swagger.io.
        .validator_url("none")
        .try_it_out_enabled(true)
        .display_request_duration(true);
    utoipa_swagger_ui::SwaggerUi::new("/docs")
        .url("/openapi.json", openapi::spec_for(auth, rate_limited))
        .config(config)
}

/// The admin listener's router: what operators see and the public does not
/// (every replica's address and state, recent tasks in full).
pub fn admin_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz_detail))
        .route("/overview", get(ops::overview_detail))
        .route("/metrics", get(|| mesh_common::admin::metrics(None)))
        .route("/ui", get(ui::page))
        .route("/ui/events", get(ui::events))
        .fallback(not_found)
        .with_state(state)
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

/// Serves the gateway on `listener`, and its admin routes on
/// `--admin-listen`, until `shutdown`; then stops accepting, ends event
/// streams and finishes in-flight requests.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = config.state().await?;
    if let Some(auth) = &state.auth {
        let mut stopped = state.stopping.subscribe();
        auth.watch(async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
    }
    if let Some(limiter) = &state.limiter {
        let mut stopped = state.stopping.subscribe();
        limiter.sweep(Duration::from_secs(10), async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
    }
    let admin_listener = mesh_common::admin::bind(config.admin_listen).await?;
    let stopping = state.stopping.clone();
    let stopped = |stopping: &tokio::sync::watch::Sender<bool>| {
        let mut stopped = stopping.subscribe();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let files = mesh_common::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
            };
            let (server, reloading) = mesh_common::tls::server_config(&files, &[b"h2", b"http/1.1"])?;
            reloading.watch(Duration::from_millis(config.tls_reload_ms.max(100)), stopped(&stopping));
            tracing::info!(cert = %cert.display(), "serving HTTPS");
            Some(tokio_rustls::TlsAcceptor::from(server))
        }
        _ => None,
    };
    let public = serve::serve(
        listener,
        app(state.clone(), config.max_body_bytes, config.max_header_bytes),
        config.limits(),
        tls,
        stopped(&stopping),
    );
    let admin = mesh_common::admin::serve(admin_listener, admin_app(state), stopped(&stopping));
    let signal = async move {
        shutdown.await;
        // Ends event streams, which would otherwise hold the shutdown up.
        stopping.send_replace(true);
    };
    let ((), public, admin) = tokio::join!(signal, public, admin);
    public.context("gateway listener")?;
    admin?;
    tracing::info!("gateway stopped; in-flight requests finished");
    Ok(())
}
