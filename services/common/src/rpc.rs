//! The per-call layer every server runs its gRPC routes behind.
//!
//! For each call it opens a `rpc` span carrying the method and the caller's
//! `x-request-id` (the gateway forwards it), so every log line written while
//! serving the call can be tied to the HTTP request that caused it. It logs
//! the call's end, and, when the call is dropped unfinished (tonic enforces
//! the caller's `grpc-timeout` by dropping the handler, which also abandons
//! any database query in flight), it logs that the work was abandoned.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tracing::Instrument;

/// Adds [`Rpc`] around a service.
#[derive(Clone, Debug, Default)]
pub struct RpcLayer {
    /// Test only: delay calls (to make a replica slow, or stall now and then).
    pub debug_delay: Option<DebugDelay>,
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
        }
    }
}

#[derive(Clone, Debug)]
pub struct Rpc<S> {
    inner: S,
    debug_delay: Option<DebugDelay>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Rpc<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Health checks and reflection are the mesh's own chatter, not calls.
        if request.uri().path().starts_with("/grpc.") {
            let fut = self.inner.call(request);
            return Box::pin(fut);
        }
        let method = request.uri().path().rsplit('/').next().unwrap_or("").to_string();
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.to_str().ok()?));
        let span = tracing::info_span!("rpc", %method, %request_id);
        // Take the service that was made ready, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let delay = self.debug_delay.as_ref().and_then(DebugDelay::next);
        Box::pin(
            async move {
                let mut guard = Unfinished {
                    started: Instant::now(),
                    deadline,
                    done: false,
                };
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                let result = inner.call(request).await;
                guard.done = true;
                tracing::info!(elapsed_ms = guard.started.elapsed().as_millis() as u64, "rpc done");
                result
            }
            .instrument(span),
        )
    }
}

/// Logs, when dropped before the call finished, that its work was abandoned.
struct Unfinished {
    started: Instant,
    deadline: Option<Duration>,
    done: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let elapsed = self.started.elapsed();
        // The caller's own timer may fire a moment before ours (it started
        // earlier): within a small margin of the deadline, that is the deadline.
        const MARGIN: Duration = Duration::from_millis(50);
        match self.deadline {
            Some(deadline) if elapsed + MARGIN >= deadline => tracing::warn!(
                elapsed_ms = elapsed.as_millis() as u64,
                deadline_ms = deadline.as_millis() as u64,
                "deadline passed: abandoned the call's work"
            ),
            _ => tracing::info!(
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
