//! Passive outlier detection, per replica: a tower layer that watches each
//! call's result and, after `threshold` consecutive `UNAVAILABLE` answers or
//! one failed connection, asks the controller to eject the replica for a
//! while, as Envoy's outlier detection does.
//!
//! An attempt the caller gives up on (a per-try timeout, a deadline) ends
//! here with no result, so it is never counted: a slow replica is the
//! balancer's business (its latency estimate), not an outlier.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use tokio::sync::mpsc;

/// `grpc-status` 14: the replica itself says it cannot serve.
const UNAVAILABLE: &[u8] = b"14";

#[derive(Clone)]
pub struct Outlier<S> {
    inner: S,
    key: Arc<str>,
    failures: Arc<AtomicU32>,
    threshold: u32,
    /// Where to ask for this replica's ejection (the controller).
    ejections: mpsc::Sender<Arc<str>>,
}

impl<S> Outlier<S> {
    pub fn new(
        inner: S,
        key: Arc<str>,
        failures: Arc<AtomicU32>,
        threshold: u32,
        ejections: mpsc::Sender<Arc<str>>,
    ) -> Self {
        Self {
            inner,
            key,
            failures,
            threshold: threshold.max(1),
            ejections,
        }
    }
}

impl<S, Req, B> tower::Service<Req> for Outlier<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let call = self.inner.call(request);
        let (key, failures, threshold, ejections) = (
            self.key.clone(),
            self.failures.clone(),
            self.threshold,
            self.ejections.clone(),
        );
        Box::pin(async move {
            let result = call.await;
            // A transport error (refused, reset: the process is likely gone)
            // counts as a whole streak at once; an UNAVAILABLE answer as one.
            let weight = match &result {
                Err(err) => {
                    tracing::info!(replica = %key, error = %DisplayChain(err), "call to replica failed in transport");
                    threshold
                }
                Ok(response) => {
                    let unavailable = response
                        .headers()
                        .get("grpc-status")
                        .is_some_and(|s| s.as_bytes() == UNAVAILABLE);
                    u32::from(unavailable)
                }
            };
            if weight == 0 {
                failures.store(0, Ordering::Relaxed);
            } else {
                let before = failures.fetch_add(weight, Ordering::Relaxed);
                // Report every failure at or past the threshold: the
                // controller ignores reports about a replica already ejected,
                // and a report lost to a full channel is simply made again.
                if before + weight >= threshold {
                    let _ = ejections.try_send(key);
                }
            }
            result
        })
    }
}

/// An error with its sources, `a: b: c`, for logs.
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
