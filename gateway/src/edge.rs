//! The gateway's per-request edge layer: what every request needs before it
//! reaches a route, in one pass:
//!
//! - refuse a request whose URI is longer than [`MAX_URI_BYTES`] (414) or
//!   whose headers add up to more than the limit (431), in the gateway's
//!   JSON error shape;
//! - take the request's `x-request-id`, or give it one, and echo it on the
//!   response (service calls forward it from the request);
//! - continue the client's W3C trace (a valid `traceparent`) or start one
//!   ([`mesh_common::tracecontext`]); the route's service calls send it on;
//! - run the request inside [`telemetry::scope_with`], so every line it logs
//!   carries `trace_id` and `request_id`, and log its end (see [`mesh_common::telemetry`]):
//!   `response` at INFO under the `access` target with the access log on;
//!   `slow request` at WARN past `MESH_SLOW_MS`; `request failed` at WARN for
//!   a 5xx that logged no warning of its own, except 503: that is load
//!   shedding or a not-ready probe, silent by design, or an unavailable
//!   service, which the error path has already logged with its cause.
//!
//! One small layer rather than a stack of general ones: it runs on every
//! request, and by default it does no tracing work for a request that goes
//! well: no span, no event, one cached callsite check.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mesh_common::otel;
use mesh_common::telemetry::{self, Millis};
use mesh_common::tracecontext::{SAMPLED, TRACEPARENT, TRACESTATE, Trace, TraceParent};

use crate::error::AppError;
use crate::request_id::RequestIds;

pub const X_REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// The longest request URI (path and query, or the absolute form) served.
pub const MAX_URI_BYTES: usize = 8 * 1024;

#[derive(Clone, Debug)]
pub struct EdgeLayer {
    pub max_header_bytes: usize,
    pub ids: RequestIds,
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            max_header_bytes: self.max_header_bytes,
            ids: self.ids.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
    max_header_bytes: usize,
    ids: RequestIds,
}

impl<S> Edge<S> {
    /// The 414 or 431 a request gets before it reaches a route, if any.
    fn refusal(&self, request: &Request) -> Option<AppError> {
        let uri = request.uri();
        let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
            + uri.authority().map_or(0, |a| a.as_str().len())
            + uri.path_and_query().map_or(0, |p| p.as_str().len());
        if uri_len > MAX_URI_BYTES {
            return Some(AppError::BadRequest {
                status: StatusCode::URI_TOO_LONG,
                code: "INVALID_ARGUMENT",
                message: format!("the request URI is {uri_len} bytes; at most {MAX_URI_BYTES}"),
            });
        }
        let size: usize = request
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        (size > self.max_header_bytes).then(|| AppError::BadRequest {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: "INVALID_ARGUMENT",
            message: format!("request headers are {size} bytes; at most {}", self.max_header_bytes),
        })
    }
}

impl<S> tower::Service<Request> for Edge<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let refusal = self.refusal(&request);
        let id = match request.headers().get(X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.next();
                request.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        // The client's W3C trace, or a new one: on every line of the
        // request, and passed on (by the route's calls) to every service.
        let parent = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| TraceParent::parse(v.as_bytes()));
        let mut trace = Trace::of(parent, request.headers().get(TRACESTATE));
        // With tracing on, the request's own span: its trace (the client's,
        // or one the sampler starts) is the one passed on.
        let span = otel::enabled()
            .then(|| {
                // A client's "sampled" is kept only if the ratio keeps its
                // trace too: clients may ask for less tracing, not more.
                let parent = parent.map(|p| otel::Parent {
                    trace_id: p.trace_id,
                    span_id: p.parent_id,
                    flags: if otel::keeps(p.trace_id) {
                        p.flags
                    } else {
                        p.flags & !SAMPLED
                    },
                    remote: true,
                });
                let request_id = id.to_str().unwrap_or("-");
                // The standard methods by name, any other as `_OTHER`: a
                // client's made-up method must not become a span name.
                let method = crate::metrics::method_label(request.method());
                otel::start(method.to_string(), otel::Kind::Server, parent, request_id)
            })
            .flatten();
        if let Some(span) = &span {
            let (trace_id, span_id, flags) = span.ids();
            trace.trace_id = trace_id;
            trace.span_id = Some(span_id);
            trace.flags = flags & SAMPLED;
        }
        let ids = telemetry::CallIds {
            request_id: id.clone(),
            trace_id: Some(trace.trace_id),
            principal: None,
        };
        request.extensions_mut().insert(trace);
        // For the end line, if one is written: reference-counted clones.
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let served = match refusal {
            Some(refusal) => Err(refusal),
            None => {
                // Take the service that was made ready, leave a fresh clone behind.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                Ok((inner, request))
            }
        };
        Box::pin(telemetry::scope_with(ids, async move {
            let mut response = match served {
                Ok((mut inner, request)) => inner.call(request).await?,
                Err(refusal) => refusal.into_response(),
            };
            let status = response.status();
            let elapsed = started.elapsed();
            let path = uri.path();
            if let Some(mut span) = span {
                // Named by the route's template (`GET /items/{id}`), never the path.
                let route = response
                    .extensions()
                    .get::<crate::metrics::Route>()
                    .map(|r| r.0.as_str().to_string());
                let method = crate::metrics::method_label(&method);
                span.rename(match &route {
                    Some(route) => format!("{method} {route}"),
                    None => method.to_string(),
                });
                span.set("http.request.method", method);
                span.set("http.response.status_code", i64::from(status.as_u16()));
                if let Some(route) = route {
                    span.set("http.route", route);
                }
                if status.is_server_error() {
                    span.fail(status.to_string());
                }
                span.end();
            }
            if telemetry::access_log_enabled() {
                tracing::info!(
                    target: telemetry::ACCESS,
                    %method,
                    %path,
                    status = status.as_u16(),
                    latency_ms = %Millis(elapsed),
                    "response"
                );
            }
            if telemetry::slow_threshold().is_some_and(|slow| elapsed > slow) {
                tracing::warn!(%method, %path, status = status.as_u16(), latency_ms = %Millis(elapsed), "slow request");
            } else if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE && !telemetry::warned() {
                tracing::warn!(%method, %path, status = status.as_u16(), latency_ms = %Millis(elapsed), "request failed");
            }
            response.headers_mut().insert(X_REQUEST_ID, id);
            Ok(response)
        }))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use mesh_common::telemetry::testing::capture;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    /// One request through the edge to a route answering `status`.
    async fn call(status: StatusCode, uri: &str) -> Response {
        let route = tower::service_fn(move |_: Request| async move { Ok::<_, Infallible>(status.into_response()) });
        let mut edge = EdgeLayer {
            max_header_bytes: 16 * 1024,
            ids: RequestIds::new(),
        }
        .layer(route);
        let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
        edge.ready().await.unwrap().call(request).await.unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn by_default_a_good_request_costs_no_tracing_work_and_a_5xx_warns_with_its_id() {
        let (dispatch, captured) = capture("info", false);
        let _default = tracing::dispatcher::set_default(&dispatch);
        for _ in 0..100 {
            assert!(call(StatusCode::OK, "/test").await.headers().contains_key(X_REQUEST_ID));
        }
        call(StatusCode::NOT_FOUND, "/nope").await;
        call(StatusCode::SERVICE_UNAVAILABLE, "/shed").await;
        assert_eq!((captured.spans(), captured.events()), (0, 0), "{}", captured.text());
        let failed = call(StatusCode::INTERNAL_SERVER_ERROR, "/boom").await;
        let id = failed.headers()[X_REQUEST_ID].to_str().unwrap();
        let text = captured.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(" WARN "), "{text}");
        assert!(
            text.contains("request failed method=GET path=/boom status=500"),
            "{text}"
        );
        assert!(text.trim_end().ends_with(&format!("request_id={id}")), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_the_access_log_each_request_logs_one_line_with_its_id() {
        let (dispatch, captured) = capture("warn", true);
        let _default = tracing::dispatcher::set_default(&dispatch);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let r = call(StatusCode::OK, "/test").await;
            ids.push(r.headers()[X_REQUEST_ID].to_str().unwrap().to_string());
        }
        let text = captured.text();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for (line, id) in lines.iter().zip(&ids) {
            assert!(
                line.contains(" INFO access: response method=GET path=/test status=200 latency_ms="),
                "{line}"
            );
            assert!(line.ends_with(&format!("request_id={id}")), "{line}");
        }
        assert_eq!(captured.spans(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_uri_over_8_kib_is_a_414_in_the_json_error_shape() {
        let long = format!("/items?q={}", "a".repeat(MAX_URI_BYTES));
        let r = call(StatusCode::OK, &long).await;
        assert_eq!(r.status(), StatusCode::URI_TOO_LONG);
        assert!(r.headers().contains_key(X_REQUEST_ID));
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "INVALID_ARGUMENT", "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("at most 8192"),
            "{body}"
        );
        let just_fits = format!("/{}", "a".repeat(MAX_URI_BYTES - 1));
        assert_eq!(call(StatusCode::OK, &just_fits).await.status(), StatusCode::OK);
    }
}
