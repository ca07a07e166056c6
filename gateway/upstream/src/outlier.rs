//! Passive outlier detection, per replica: a tower layer that watches each
//! call's result and, after `threshold` consecutive failures, asks the
//! controller to eject the replica for a while, as Envoy's outlier detection
//! does. A failure is an `UNAVAILABLE` answer, an attempt cut by its per-try
//! timeout (the replica accepted it and never answered: a hung process, a
//! vanished host), or a failed connection, which counts as a whole streak.
//!
//! Other attempts the caller gives up on (its deadline passed, a hedge won,
//! the client went away) end here with no result and are not counted: a slow
//! replica is the balancer's business (its latency estimate), not an outlier.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::time::Instant;

/// Carried by an attempt that has a per-try timeout (in the request's
/// extensions): the instant it is cut at. An attempt dropped unanswered at or
/// after that instant was cut for not answering in time.
#[derive(Clone, Copy, Debug)]
pub struct PerTryCut(pub Instant);

/// `grpc-status` 14: the replica itself says it cannot serve.
const UNAVAILABLE: &[u8] = b"14";

#[derive(Clone)]
pub struct Outlier<S> {
    inner: S,
    streak: Streak,
}

/// One replica's run of consecutive failures.
#[derive(Clone)]
struct Streak {
    key: Arc<str>,
    failures: Arc<AtomicU32>,
    threshold: u32,
    /// Where to ask for this replica's ejection (the controller).
    ejections: mpsc::Sender<Arc<str>>,
}

impl Streak {
    /// Records an attempt's outcome: `weight` 0 is a success (the streak
    /// ends), otherwise that many failures.
    fn record(&self, weight: u32) {
        if weight == 0 {
            self.failures.store(0, Ordering::Relaxed);
            return;
        }
        let before = self.failures.fetch_add(weight, Ordering::Relaxed);
        // Report every failure at or past the threshold: the controller
        // ignores reports about a replica already ejected, and a report lost
        // to a full channel is simply made again.
        if before + weight >= self.threshold {
            let _ = self.ejections.try_send(self.key.clone());
        }
    }
}

/// Armed while an attempt with a per-try timeout is outstanding: dropped
/// armed at or past the cut instant, it records one failure.
struct Unanswered {
    streak: Streak,
    cut_at: Instant,
    armed: bool,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if self.armed && Instant::now() >= self.cut_at {
            tracing::info!(replica = %self.streak.key, "no answer within the per-try timeout");
            self.streak.record(1);
        }
    }
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
            streak: Streak {
                key,
                failures,
                threshold: threshold.max(1),
                ejections,
            },
        }
    }
}

impl<S, ReqB, B> tower::Service<http::Request<ReqB>> for Outlier<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<B>>,
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

    fn call(&mut self, request: http::Request<ReqB>) -> Self::Future {
        let cut_at = request.extensions().get::<PerTryCut>().map(|cut| cut.0);
        let call = self.inner.call(request);
        let streak = self.streak.clone();
        Box::pin(async move {
            let mut unanswered = cut_at.map(|cut_at| Unanswered {
                streak: streak.clone(),
                cut_at,
                armed: true,
            });
            let result = call.await;
            if let Some(unanswered) = &mut unanswered {
                unanswered.armed = false;
            }
            // A transport error (refused, reset: the process is likely gone)
            // counts as a whole streak at once; an UNAVAILABLE answer as one.
            let weight = match &result {
                Err(err) => {
                    tracing::info!(replica = %streak.key, error = %DisplayChain(err), "call to replica failed in transport");
                    streak.threshold
                }
                Ok(response) => {
                    let unavailable = response
                        .headers()
                        .get("grpc-status")
                        .is_some_and(|s| s.as_bytes() == UNAVAILABLE);
                    u32::from(unavailable)
                }
            };
            streak.record(weight);
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
