//! The per-call layer every server runs its gRPC routes behind.
//!
//! Each call runs inside [`telemetry::scope_with`] with the caller's
//! `x-request-id` and the trace id of its `traceparent` (the gateway
//! forwards both), so every log line written while serving it carries
//! `request_id` and `trace_id` and can be tied to the HTTP request that
//! caused it; no span is created. At its end the call logs:
//!
//! - `rpc done` at INFO under the `access` target, only with the access log
//!   on (`MESH_ACCESS_LOG=1`);
//! - `slow call` at WARN when it took longer than `MESH_SLOW_MS`;
//! - `rpc failed` at WARN when it ended with a server-fault code (`UNKNOWN`,
//!   `DEADLINE_EXCEEDED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`) and had not
//!   logged a warning of its own. Codes that are the caller's mistake
//!   (`NOT_FOUND`, `INVALID_ARGUMENT`, ...) are not logged. The code is read
//!   from the response head, where tonic puts the status of a call that
//!   fails before its first message (every unary call); a stream that fails
//!   later reports its code in trailers, which this layer does not read.
//!
//! When the call is dropped unfinished (tonic enforces the caller's
//! `grpc-timeout` by dropping the handler, which also abandons any database
//! query in flight), it logs that the work was abandoned.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tonic::Code;

use crate::metrics;
use crate::telemetry::{self, Millis};

/// Adds [`Rpc`] around a service.
#[derive(Clone, Debug, Default)]
pub struct RpcLayer {
    /// Test only: delay calls (to make a replica slow, or stall now and then).
    pub debug_delay: Option<DebugDelay>,
    /// Under mutual TLS, the name the gateway's certificate carries: a call
    /// on a connection with it is [`Peer::gateway`], and only such a call's
    /// `x-mesh-principal` is believed (and logged). `None` without mTLS.
    pub gateway_identity: Option<GatewayIdentity>,
}

/// How many connections' verdicts [`GatewayIdentity`] keeps.
const REMEMBERED_CONNECTIONS: usize = 64;

type PeerCerts = std::sync::Arc<Vec<rustls::pki_types::CertificateDer<'static>>>;

/// Whether a connection's client certificate names the gateway, decided once
/// per connection rather than per call: tonic hands every call on a
/// connection the same `Arc` of peer certificates, so the verdict is kept
/// against that `Arc` (held, so its address cannot be reused) for the most
/// recent connections. Parsing the certificate on every call cost the cache
/// service about a third more CPU per call under mTLS (41 vs 31 µs in one
/// bench run).
#[derive(Clone, Debug)]
pub struct GatewayIdentity {
    name: std::sync::Arc<str>,
    seen: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<(PeerCerts, bool)>>>,
}

impl GatewayIdentity {
    pub fn new(name: &str) -> GatewayIdentity {
        GatewayIdentity {
            name: name.into(),
            seen: Default::default(),
        }
    }

    fn is_gateway(&self, certs: &PeerCerts) -> bool {
        let lock = || self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, verdict)) = lock().iter().find(|(c, _)| std::sync::Arc::ptr_eq(c, certs)) {
            return *verdict;
        }
        let verdict = certs
            .first()
            .is_some_and(|leaf| crate::tls::names(leaf).iter().any(|n| **n == *self.name));
        let mut seen = lock();
        seen.push_front((certs.clone(), verdict));
        seen.truncate(REMEMBERED_CONNECTIONS);
        verdict
    }
}

/// Who is on the other end of a call, for handlers (in the request's
/// extensions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// The server requires client certificates (mutual TLS).
    pub mutual_tls: bool,
    /// The client presented the gateway's certificate.
    pub gateway: bool,
}

impl Peer {
    /// May this caller use the parts of a contract meant for the gateway?
    /// Without mutual TLS there is no identity to check, and the network is
    /// the boundary (loopback, or --insecure), as before.
    pub fn may_act_as_gateway(&self) -> bool {
        !self.mutual_tls || self.gateway
    }
}

type TlsInfo = tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>;

/// What the connection says about the caller.
fn peer<B>(request: &http::Request<B>, gateway_identity: Option<&GatewayIdentity>) -> Peer {
    let Some(identity) = gateway_identity else {
        return Peer::default();
    };
    let gateway = request
        .extensions()
        .get::<TlsInfo>()
        .and_then(|info| info.peer_certs())
        .is_some_and(|certs| identity.is_gateway(&certs));
    Peer {
        mutual_tls: true,
        gateway,
    }
}

/// A deliberate delay of every `every`th call, for tests of slow replicas.
#[derive(Clone, Debug)]
pub struct DebugDelay {
    delay: Duration,
    every: u64,
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl DebugDelay {
    pub fn new(delay: Duration, every: u64) -> Self {
        Self {
            delay,
            every: every.max(1),
            calls: Default::default(),
        }
    }

    fn next(&self) -> Option<Duration> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        n.is_multiple_of(self.every).then_some(self.delay)
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            debug_delay: self.debug_delay.clone(),
            gateway_identity: self.gateway_identity.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Rpc<S> {
    inner: S,
    debug_delay: Option<DebugDelay>,
    gateway_identity: Option<GatewayIdentity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Rpc<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
    B: Send + 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Health checks and reflection are the mesh's own chatter, not calls.
        if request.uri().path().starts_with("/grpc.") {
            let fut = self.inner.call(request);
            return Box::pin(fut);
        }
        // Cheap clones (reference counts), no formatting: the method name is
        // cut out of the path only if a line is written.
        let uri = request.uri().clone();
        let request_id = request
            .headers()
            .get("x-request-id")
            .cloned()
            .unwrap_or(HeaderValue::from_static("-"));
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.to_str().ok()?));
        // Take the service that was made ready, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let delay = self.debug_delay.as_ref().and_then(DebugDelay::next);
        // The end user's identity, believed only from the gateway (over
        // mutual TLS); a header from anyone else is dropped.
        let principal = request.headers_mut().remove("x-mesh-principal");
        let principal = if self.gateway_identity.is_some() {
            let peer = peer(&request, self.gateway_identity.as_ref());
            request.extensions_mut().insert(peer);
            principal.filter(|_| peer.gateway)
        } else {
            request.extensions_mut().insert(Peer::default());
            None
        };
        // The caller's W3C trace (the gateway sends one on every call).
        let parent = request
            .headers()
            .get(crate::tracecontext::TRACEPARENT)
            .and_then(|v| crate::tracecontext::TraceParent::parse(v.as_bytes()));
        // With tracing on, the call's span, a child of the caller's attempt.
        let span = crate::otel::enabled()
            .then(|| rpc_span(uri.path(), parent, request_id.to_str().unwrap_or("-")))
            .flatten();
        let trace_id = match &span {
            Some(span) => Some(span.ids().0),
            None => parent.map(|p| p.trace_id),
        };
        // What a handler keeps to link later work (a queued task) to this call.
        let call_trace = match &span {
            Some(span) => {
                let (trace_id, span_id, flags) = span.ids();
                Some(crate::tracecontext::format_traceparent(trace_id, span_id, flags))
            }
            // The caller's, rewritten from what was parsed: a later
            // version's extra fields (of any length) are not kept.
            None => parent.map(|p| crate::tracecontext::format_traceparent(p.trace_id, p.parent_id, p.flags)),
        };
        if let Some(call_trace) = call_trace {
            request.extensions_mut().insert(CallTrace(call_trace));
        }
        let ids = telemetry::CallIds {
            request_id,
            trace_id,
            principal,
        };
        Box::pin(telemetry::scope_with(ids, async move {
            let labels = metrics::started(uri.path());
            let mut guard = Unfinished {
                started: Instant::now(),
                deadline,
                uri,
                labels,
                done: false,
            };
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let result = inner.call(request).await;
            guard.done = true;
            let elapsed = guard.started.elapsed();
            let (code, error) = match &result {
                Ok(response) => (
                    response
                        .headers()
                        .get("grpc-status")
                        .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes())),
                    None,
                ),
                Err(err) => (Code::Unknown, Some(err.to_string())),
            };
            metrics::handled(guard.labels, code, elapsed);
            if let Some(mut span) = span {
                span.set("rpc.grpc.status_code", code as i64);
                if is_server_fault(code) {
                    span.fail(format!("{code:?}"));
                }
                span.end();
            }
            let method = method_name(&guard.uri);
            if telemetry::access_log_enabled() {
                tracing::info!(
                    target: telemetry::ACCESS,
                    %method,
                    code = ?code,
                    latency_ms = %Millis(elapsed),
                    "rpc done"
                );
            }
            if telemetry::slow_threshold().is_some_and(|slow| elapsed > slow) {
                tracing::warn!(%method, code = ?code, latency_ms = %Millis(elapsed), "slow call");
            } else if is_server_fault(code) && !telemetry::warned() {
                tracing::warn!(%method, code = ?code, latency_ms = %Millis(elapsed), error, "rpc failed");
            }
            result
        }))
    }
}

/// The W3C `traceparent` of the call being served (its span, or the
/// caller's when this process records none), in the request's extensions.
#[derive(Clone, Debug)]
pub struct CallTrace(pub String);

impl CallTrace {
    /// The call's `traceparent`, if it has one.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<String> {
        request.extensions().get::<CallTrace>().map(|t| t.0.clone())
    }
}

/// The server span of a call to `path`, under the caller's span if it sent one.
fn rpc_span(
    path: &str,
    parent: Option<crate::tracecontext::TraceParent>,
    request_id: &str,
) -> Option<crate::otel::Active> {
    let parent = parent.map(|p| crate::otel::Parent {
        trace_id: p.trace_id,
        span_id: p.parent_id,
        flags: p.flags,
        remote: true,
    });
    // Named only by the contract's own methods: a path a client made up
    // must not become a span name (a trace store's index grows with them).
    let (service, method) =
        mesh_proto::bindings::method(path).map_or(("unknown", "unknown"), |m| (m.service, m.method));
    let mut span = crate::otel::start(
        format!("{service}/{method}"),
        crate::otel::Kind::Server,
        parent,
        request_id,
    )?;
    span.set("rpc.system", "grpc");
    span.set("rpc.service", service);
    span.set("rpc.method", method);
    Some(span)
}

/// Codes that say the server failed, not the caller.
fn is_server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown | Code::DeadlineExceeded | Code::Internal | Code::Unavailable | Code::DataLoss
    )
}

/// `ListItems` from `/mesh.items.v1.ItemService/ListItems`.
fn method_name(uri: &http::Uri) -> &str {
    uri.path().rsplit('/').next().unwrap_or("")
}

/// Logs, when dropped before the call finished, that its work was abandoned.
struct Unfinished {
    started: Instant,
    deadline: Option<Duration>,
    uri: http::Uri,
    /// The call's metric labels (see [`metrics::started`]).
    labels: [&'static str; 3],
    done: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let elapsed = self.started.elapsed();
        let method = method_name(&self.uri);
        // The caller's own timer may fire a moment before ours (it started
        // earlier): within a small margin of the deadline, that is the deadline.
        // (Dropped inside the call's scope, so the lines carry its request id.)
        const MARGIN: Duration = Duration::from_millis(50);
        let passed = self.deadline.is_some_and(|deadline| elapsed + MARGIN >= deadline);
        let code = if passed {
            Code::DeadlineExceeded
        } else {
            Code::Cancelled
        };
        metrics::handled(self.labels, code, elapsed);
        match self.deadline {
            Some(deadline) if elapsed + MARGIN >= deadline => tracing::warn!(
                %method,
                elapsed_ms = elapsed.as_millis() as u64,
                deadline_ms = deadline.as_millis() as u64,
                "deadline passed: abandoned the call's work"
            ),
            // A client that stops waiting is no fault of ours: an access-log line.
            _ => tracing::info!(
                target: telemetry::ACCESS,
                %method,
                elapsed_ms = elapsed.as_millis() as u64,
                "caller went away: abandoned the call's work"
            ),
        }
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use tower::{Layer, Service, ServiceExt};

    /// A call through the layer to a service answering with `grpc-status: code`.
    async fn call(code: Code) {
        let inner = tower::service_fn(move |_: http::Request<()>| async move {
            let mut response = http::Response::new(());
            let status = HeaderValue::from_str(&(code as i32).to_string()).unwrap();
            response.headers_mut().insert("grpc-status", status);
            Ok::<_, std::convert::Infallible>(response)
        });
        let request = http::Request::builder()
            .uri("/mesh.items.v1.ItemService/GetItem")
            .header("x-request-id", "rid-7")
            .body(())
            .unwrap();
        let mut rpc = RpcLayer::default().layer(inner);
        rpc.ready().await.unwrap().call(request).await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn by_default_a_good_call_costs_no_tracing_work_and_a_failed_one_warns_with_its_id() {
        let (dispatch, captured) = telemetry::testing::capture("info", false);
        let _default = tracing::dispatcher::set_default(&dispatch);
        for _ in 0..100 {
            call(Code::Ok).await;
        }
        call(Code::NotFound).await;
        call(Code::InvalidArgument).await;
        assert_eq!((captured.spans(), captured.events()), (0, 0), "{}", captured.text());
        call(Code::Internal).await;
        let text = captured.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(" WARN "), "{text}");
        assert!(text.contains("rpc failed method=GetItem code=Internal"), "{text}");
        assert!(text.trim_end().ends_with("request_id=rid-7"), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_the_access_log_each_call_logs_one_line_with_its_id() {
        let (dispatch, captured) = telemetry::testing::capture("warn", true);
        let _default = tracing::dispatcher::set_default(&dispatch);
        for _ in 0..3 {
            call(Code::Ok).await;
        }
        let text = captured.text();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for line in lines {
            assert!(line.contains(" INFO access: rpc done"), "{line}");
            assert!(line.ends_with("request_id=rid-7"), "{line}");
        }
        assert_eq!(captured.spans(), 0);
    }

    #[test]
    fn grpc_timeouts_parse_every_unit_and_refuse_junk() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        for junk in ["", "m", "12", "123456789m", "5x", "-5m"] {
            assert_eq!(parse_grpc_timeout(junk), None, "{junk}");
        }
    }
}
