//! The live mesh page on the admin listener: `GET /ui` (one self-contained
//! HTML page: no outside scripts, styles or fonts, so it works offline and
//! behind any firewall) and `GET /ui/events` (server-sent events it reads).
//!
//! Every [`PERIOD`] the stream sends one `snapshot` event:
//!
//! - `services`: each service's replicas with health, ejection, rotation,
//!   calls in flight and the balancer's latency estimate;
//! - `routes`: per route (`GET /items/{id}`), requests a second, the share
//!   that failed with a 5xx, and p50/p99 in ms over the last period, read
//!   from the gateway's own `http_server_request_duration_seconds`;
//! - `overview`: what `GET /overview` (admin) shows, one call to each
//!   service: cache hits and misses, queue depth per priority and recent
//!   tasks, and the seed's `shared_resource` counter (a service that does
//!   not answer gets an error in its part).
//!
//! The page is for operators, like everything on the admin listener; each
//! open page costs one call to each service a second.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use prometheus::proto::MetricFamily;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::extract::Call;
use crate::state::AppState;

/// How often a snapshot is sent.
pub const PERIOD: Duration = Duration::from_secs(1);

const PAGE: &str = include_str!("ui.html");

/// What the page may load: itself, its inline script and style, and its
/// own event stream. Nothing from anywhere else.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /ui`.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}

/// `GET /ui/events`: a `snapshot` event now and every [`PERIOD`], until the
/// client leaves or the gateway shuts down.
pub async fn events(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut stopping = state.stopping.subscribe();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Window {
        at: Instant::now(),
        routes: route_totals(&crate::metrics::route_families()),
    };
    let stream = futures::stream::unfold((state, tick, start), |(state, mut tick, last)| async move {
        tick.tick().await;
        let (snapshot, now) = snapshot(&state, &last).await;
        let event = Event::default()
            .event("snapshot")
            .json_data(snapshot)
            .unwrap_or_else(|_| Event::default().event("error").data("cannot encode the snapshot"));
        Some((Ok(event), (state, tick, now)))
    })
    .take_until(async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The route figures as they stood at the last snapshot.
struct Window {
    at: Instant,
    routes: BTreeMap<String, RouteTotals>,
}

async fn snapshot(state: &AppState, last: &Window) -> (Value, Window) {
    // The page's own calls are not traced: an unsampled trace, so no
    // service records a root span a second for every open page.
    let untraced = mesh_common::tracecontext::Trace::of(None, None);
    let call = Call(
        mesh_upstream::CallContext::new(Some("ui".into()), state.route_timeout.min(PERIOD)).with_trace(Some(untraced)),
    );
    let overview = crate::routes::ops::overview_of(state.clone(), call, true).await.0;
    let now = Window {
        at: Instant::now(),
        routes: route_totals(&crate::metrics::route_families()),
    };
    let seconds = now.at.duration_since(last.at).as_secs_f64();
    let routes: Vec<RouteWindow> = now
        .routes
        .iter()
        .map(|(route, totals)| RouteWindow::between(route, last.routes.get(route), totals, seconds))
        .collect();
    let services: serde_json::Map<String, Value> = state
        .upstreams
        .iter()
        .map(|u| {
            let replicas = u.replicas();
            let ready = replicas.iter().any(|r| r.member.healthy && !r.member.ejected);
            (u.name().to_string(), json!({"ready": ready, "replicas": replicas}))
        })
        .collect();
    let body = json!({
        "services": services,
        "routes": routes,
        "overview": overview,
        "period_ms": PERIOD.as_millis() as u64,
    });
    (body, now)
}

/// One route's cumulative figures: requests, 5xx answers, and the
/// histogram's cumulative buckets (upper bound in seconds, count).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteTotals {
    pub count: u64,
    pub errors: u64,
    pub buckets: Vec<(f64, u64)>,
}

/// Sums `http_server_request_duration_seconds` over status codes, per
/// `METHOD /route`.
pub fn route_totals(families: &[MetricFamily]) -> BTreeMap<String, RouteTotals> {
    let mut out: BTreeMap<String, RouteTotals> = BTreeMap::new();
    for family in families {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            let histogram = metric.get_histogram();
            let route = format!("{} {}", label("http_request_method"), label("http_route"));
            let server_error = label("http_response_status_code").starts_with('5');
            let totals = out.entry(route).or_default();
            totals.count += histogram.get_sample_count();
            if server_error {
                totals.errors += histogram.get_sample_count();
            }
            if totals.buckets.is_empty() {
                totals.buckets = histogram.get_bucket().iter().map(|b| (b.upper_bound(), 0)).collect();
            }
            for (slot, bucket) in totals.buckets.iter_mut().zip(histogram.get_bucket()) {
                slot.1 += bucket.cumulative_count();
            }
        }
    }
    out
}

/// One route over the last period.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteWindow {
    pub route: String,
    /// Requests a second.
    pub rps: f64,
    /// The share of them answered with a 5xx (0 to 1); `None` without requests.
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests since the gateway started.
    pub total: u64,
}

impl RouteWindow {
    pub fn between(route: &str, before: Option<&RouteTotals>, now: &RouteTotals, seconds: f64) -> RouteWindow {
        let empty = RouteTotals::default();
        let before = before.unwrap_or(&empty);
        let count = now.count.saturating_sub(before.count);
        let errors = now.errors.saturating_sub(before.errors);
        let buckets: Vec<(f64, u64)> = now
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &(bound, n))| (bound, n.saturating_sub(before.buckets.get(i).map_or(0, |b| b.1))))
            .collect();
        let ms = |q: f64| quantile(q, &buckets, count).map(|s| s * 1000.0);
        RouteWindow {
            route: route.to_string(),
            rps: if seconds > 0.0 { count as f64 / seconds } else { 0.0 },
            error_rate: (count > 0).then(|| errors as f64 / count as f64),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            total: now.count,
        }
    }
}

/// The `q` quantile of `count` observations in cumulative `buckets`, as
/// Prometheus's `histogram_quantile` estimates it: linear within the bucket
/// it falls in; past the last finite bound, that bound. `None` without
/// observations.
pub fn quantile(q: f64, buckets: &[(f64, u64)], count: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let in_bucket = (cumulative - lower.1) as f64;
            if in_bucket == 0.0 {
                return Some(bound);
            }
            return Some(lower.0 + (bound - lower.0) * (rank - lower.1 as f64) / in_bucket);
        }
        lower = (bound, cumulative);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket_as_prometheus_does() {
        // 10 under 10 ms, 80 between 10 and 50 ms, 10 between 50 and 100 ms.
        let buckets = [(0.01, 10), (0.05, 90), (0.1, 100)];
        assert_eq!(quantile(0.5, &buckets, 100), Some(0.01 + 0.04 * 40.0 / 80.0));
        assert_eq!(quantile(0.1, &buckets, 100), Some(0.01));
        let p99 = quantile(0.99, &buckets, 100).unwrap();
        assert!((p99 - 0.095).abs() < 1e-12, "{p99}");
        assert_eq!(quantile(0.5, &buckets, 0), None);
        // Beyond the last finite bound: that bound.
        assert_eq!(quantile(0.99, &[(0.01, 10), (0.05, 10)], 20), Some(0.05));
    }

    #[test]
    fn a_window_counts_only_what_happened_in_it() {
        let before = RouteTotals {
            count: 100,
            errors: 5,
            buckets: vec![(0.01, 90), (0.1, 100)],
        };
        let now = RouteTotals {
            count: 120,
            errors: 10,
            buckets: vec![(0.01, 90), (0.1, 120)],
        };
        let w = RouteWindow::between("GET /items/{id}", Some(&before), &now, 2.0);
        assert_eq!(w.rps, 10.0);
        assert_eq!(w.error_rate, Some(0.25));
        // All 20 new requests took between 10 and 100 ms.
        let p50 = w.p50_ms.unwrap();
        assert!((p50 - 55.0).abs() < 1e-9, "{p50}");
        assert_eq!(w.total, 120);
        let idle = RouteWindow::between("GET /items/{id}", Some(&now), &now, 1.0);
        assert_eq!((idle.rps, idle.error_rate, idle.p50_ms), (0.0, None, None));
        // A route seen for the first time counts from zero.
        let first = RouteWindow::between("GET /test", None, &now, 1.0);
        assert_eq!(first.rps, 120.0);
    }

    #[test]
    fn totals_sum_status_codes_per_route_and_count_5xx_as_errors() {
        let vec = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("http_server_request_duration_seconds", "test").buckets(vec![0.01, 0.1]),
            &["http_request_method", "http_route", "http_response_status_code"],
        )
        .unwrap();
        for (status, seconds) in [("200", 0.005), ("200", 0.05), ("503", 0.05), ("404", 0.2)] {
            vec.with_label_values(&["GET", "/items/{id}", status]).observe(seconds);
        }
        vec.with_label_values(&["POST", "/items", "201"]).observe(0.005);
        let totals = route_totals(&prometheus::core::Collector::collect(&vec));
        let get = &totals["GET /items/{id}"];
        assert_eq!((get.count, get.errors), (4, 1));
        assert_eq!(get.buckets, vec![(0.01, 1), (0.1, 3)]);
        assert_eq!(totals["POST /items"].count, 1);
    }
}
