//! The gateway's HTTP metrics, in OpenTelemetry's semantic conventions
//! (`http_server_request_duration_seconds{http_request_method,http_route,
//! http_response_status_code}` and `http_server_active_requests`), beside the
//! client metrics of its calls to the services (`grpc_client_*`, see
//! `mesh_common::metrics`) and the policy layer's (`mesh_upstream_*`), and
//! `mesh_gateway_cache_lookups_total{outcome}` (how `GET /items/{id}` used
//! the cache), `mesh_gateway_singleflight_total{flight,outcome}` (cold item
//! reads that led a read or joined one) and
//! `mesh_gateway_rate_limited_total{group}`, served at `GET /metrics` on the admin listener.
//!
//! `http_route` is the matched route's template (`/items/{id}`), never the
//! path itself; a request that matches no route is not counted here (its
//! 404 is the same whatever was asked), so every label stays bounded.

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use mesh_common::metrics::register;
use prometheus::{HistogramOpts, HistogramVec, IntGauge};

struct Http {
    duration: HistogramVec,
    active: IntGauge,
    cache: prometheus::IntCounterVec,
    rate_limited: prometheus::IntCounterVec,
    singleflight: prometheus::IntCounterVec,
}

static HTTP: LazyLock<Http> = LazyLock::new(|| Http {
    duration: register(
        HistogramVec::new(
            HistogramOpts::new(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
            ]),
            &["http_request_method", "http_route", "http_response_status_code"],
        )
        .expect("valid metric"),
    ),
    active: register(
        IntGauge::new("http_server_active_requests", "HTTP requests the gateway is serving.").expect("valid metric"),
    ),
    cache: register(
        prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "mesh_gateway_cache_lookups_total",
                "GET /items/{id} by how the cache served it (its x-cache: hit, miss, bypass).",
            ),
            &["outcome"],
        )
        .expect("valid metric"),
    ),
    rate_limited: register(
        prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "mesh_gateway_rate_limited_total",
                "Requests refused with 429 by --rate-limit, by route group (anonymous, read, write, admin).",
            ),
            &["group"],
        )
        .expect("valid metric"),
    ),
    singleflight: register(
        prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "mesh_gateway_singleflight_total",
                "Calls that led a shared run (led) or waited for another's (joined), by what runs (item_read).",
            ),
            &["flight", "outcome"],
        )
        .expect("valid metric"),
    ),
});

/// A call of `flight` led a run or joined one (`outcome`).
pub fn singleflight(flight: &'static str, outcome: &'static str) {
    if !mesh_common::metrics::enabled() {
        return;
    }
    HTTP.singleflight.with_label_values(&[flight, outcome]).inc();
}

/// The count [`singleflight`] has reached (tests).
#[cfg(test)]
pub fn singleflight_count(flight: &str, outcome: &str) -> u64 {
    HTTP.singleflight.with_label_values(&[flight, outcome]).get()
}

/// The routes' duration histograms as they stand (the live page reads them).
pub fn route_families() -> Vec<prometheus::proto::MetricFamily> {
    prometheus::core::Collector::collect(&HTTP.duration)
}

/// A request of `group` was refused by its rate limit.
pub fn rate_limited(group: &'static str) {
    HTTP.rate_limited.with_label_values(&[group]).inc();
}

/// `GET /items/{id}` was served with `x-cache: outcome`.
pub fn cache_lookup(outcome: &'static str) {
    if !mesh_common::metrics::enabled() {
        return;
    }
    HTTP.cache.with_label_values(&[outcome]).inc();
}

/// The method as OpenTelemetry names it: the standard ones, else `_OTHER`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// Counts a request to a matched route (a `route_layer`).
pub async fn track(request: Request, next: Next) -> Response {
    if !mesh_common::metrics::enabled() {
        return named(request, next).await;
    }
    let http = &*HTTP;
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().cloned();
    http.active.inc();
    let started = Instant::now();
    let mut response = next.run(request).await;
    http.active.dec();
    let label = route.as_ref().map_or("unknown", MatchedPath::as_str);
    http.duration
        .with_label_values(&[method, label, response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    // The edge names the request's span after its route.
    if let Some(route) = route.filter(|_| mesh_common::otel::enabled()) {
        response.extensions_mut().insert(Route(route));
    }
    response
}

/// Without metrics: only the route's name for the request's span.
async fn named(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .filter(|_| mesh_common::otel::enabled())
        .cloned();
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(Route(route));
    }
    response
}

/// The matched route's template, on a response, for the request's span.
#[derive(Clone, Debug)]
pub struct Route(pub MatchedPath);

/// Makes the series' families exist before the first request.
pub fn init() {
    LazyLock::force(&HTTP);
}
