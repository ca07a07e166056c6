//! Passive outlier detection, per replica: the balancer ([`crate::balance`])
//! shows it each attempt's result and, after `threshold` consecutive failures, asks the
//! controller to eject the replica for a while, as Envoy's outlier detection
//! does. A failure is an `UNAVAILABLE` answer, an attempt cut by its per-try
//! timeout (the replica accepted it and never answered: a hung process, a
//! vanished host), or a failed connection, which counts as a whole streak.
//!
//! Other attempts the caller gives up on (its deadline passed, a hedge won,
//! the client went away) end here with no result and are not counted: a slow
//! replica is the balancer's business (its latency estimate), not an outlier.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::mpsc;
use tokio::time::Instant;

/// Carried by an attempt that has a per-try timeout (in the request's
/// extensions): the instant it is cut at. An attempt dropped unanswered at or
/// after that instant was cut for not answering in time.
#[derive(Clone, Copy, Debug)]
pub struct PerTryCut(pub Instant);

/// `grpc-status` 14: the replica itself says it cannot serve.
const UNAVAILABLE: &[u8] = b"14";

/// One replica's outlier detector: its run of consecutive failures, and
/// where to ask for its ejection (the controller).
pub struct Outlier {
    key: Arc<str>,
    failures: Arc<AtomicU32>,
    threshold: u32,
    ejections: mpsc::Sender<Arc<str>>,
}

impl Outlier {
    /// The replica's address.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }

    pub fn new(key: Arc<str>, failures: Arc<AtomicU32>, threshold: u32, ejections: mpsc::Sender<Arc<str>>) -> Self {
        Self {
            key,
            failures,
            threshold: threshold.max(1),
            ejections,
        }
    }

    /// Watches one attempt sent to the replica; `cut_at` is when the caller
    /// will cut it for not answering (its per-try timeout), if ever.
    pub fn attempt(&self, cut_at: Option<Instant>) -> Attempt<'_> {
        Attempt {
            outlier: self,
            cut_at,
            answered: false,
        }
    }

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

/// One attempt in flight on a replica. Dropped unanswered at or past its
/// cut instant, it records one failure (the replica did not answer in time).
pub struct Attempt<'a> {
    outlier: &'a Outlier,
    cut_at: Option<Instant>,
    answered: bool,
}

impl Attempt<'_> {
    /// The replica answered (a response head) or the transport failed.
    pub fn answered<B, E>(mut self, result: &Result<http::Response<B>, E>)
    where
        E: std::error::Error + 'static,
    {
        self.answered = true;
        let outlier = self.outlier;
        // A transport error (refused, reset: the process is likely gone)
        // counts as a whole streak at once; an UNAVAILABLE answer as one.
        let weight = match result {
            Err(err) => {
                tracing::info!(replica = %outlier.key, error = %DisplayChain(err), "call to replica failed in transport");
                outlier.threshold
            }
            Ok(response) => {
                let unavailable = response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|s| s.as_bytes() == UNAVAILABLE);
                u32::from(unavailable)
            }
        };
        outlier.record(weight);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.answered && self.cut_at.is_some_and(|at| Instant::now() >= at) {
            tracing::info!(replica = %self.outlier.key, "no answer within the per-try timeout");
            self.outlier.record(1);
        }
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
