//! Retries of repeatable calls ([`crate::kind::Kind::is_repeatable`]):
//! which failures are worth another attempt, how many attempts, the pauses
//! between them, and the per-try timeout that cuts an attempt short.
//!
//! Every repeat, whatever its cause, is paid for from the service's retry
//! budget (tower's `TpsBudget`: a fraction of the calls made plus a few a
//! second), so repeats can never multiply the load on a struggling service.
//! (tower's `retry` middleware needs a cloneable request, which an
//! `http::Request` is not, so repeats happen at the typed-call level.)

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use crate::outlier::PerTryCut;
use crate::per_try::PerTry;
use crate::transport::{is_broken_connection, is_shed};

/// Pauses before the 1st, 2nd and later retries of a failed attempt: short,
/// to let discovery act on the failure (an ejection) first.
const PAUSES_MS: [u64; 3] = [5, 20, 50];

/// How one call is repeated.
pub struct Retry<'a> {
    pub service: &'static str,
    pub budget: &'a TpsBudget,
    /// Repeats allowed after the first attempt.
    pub retries: u8,
    /// The call's deadline: each attempt's per-try limit is worked out from
    /// the time left when it starts, so a second attempt is never given more
    /// than half of what remains.
    pub deadline: Instant,
    /// Gives each attempt that may be followed by another its time limit,
    /// and is told each answered attempt's latency.
    pub latency: &'a PerTry,
}

impl Retry<'_> {
    /// Runs `attempt` until it is answered with something other than
    /// `UNAVAILABLE` or a broken connection, or no repeat is left.
    ///
    /// An attempt that outlives the per-try timeout is dropped (which resets
    /// its HTTP/2 stream: the replica abandons the work) and another is sent,
    /// if the budget allows; if it does not, the attempt is waited for after
    /// all. The last attempt is never cut: it has the rest of the deadline.
    pub async fn run<R, A, Fut>(&self, attempt: &A) -> Result<tonic::Response<R>, tonic::Status>
    where
        A: Fn(Option<PerTryCut>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let mut retried: u8 = 0;
        loop {
            let can_retry = retried < self.retries;
            let started = Instant::now();
            let per_try = self
                .latency
                .limit(self.deadline.saturating_duration_since(started))
                .filter(|_| can_retry);
            // The attempt carries the instant it will be cut at, so the
            // replica's outlier detector counts a cut as that replica's failure.
            let one = attempt(per_try.map(|limit| PerTryCut(started + limit)));
            tokio::pin!(one);
            let result = match per_try {
                None => one.await,
                Some(limit) => match tokio::time::timeout(limit, &mut one).await {
                    Ok(result) => result,
                    Err(_) if self.budget.withdraw() => {
                        crate::metrics::retried(self.service, "per_try_timeout");
                        tracing::info!(
                            service = self.service,
                            per_try_ms = limit.as_millis() as u64,
                            "no answer within the per-try timeout; cut, retrying"
                        );
                        retried += 1;
                        continue;
                    }
                    Err(_) => {
                        crate::metrics::retry_refused(self.service);
                        tracing::warn!(
                            service = self.service,
                            "retry budget exhausted; waiting on past the per-try timeout"
                        );
                        one.await
                    }
                },
            };
            let status = match &result {
                Ok(_) => {
                    self.latency.record(started.elapsed());
                    return result;
                }
                Err(status) if is_shed(status) => return result,
                Err(status) if !is_retryable(status) => {
                    self.latency.record(started.elapsed());
                    return result;
                }
                Err(status) => status,
            };
            if !can_retry {
                return result;
            }
            if !self.budget.withdraw() {
                crate::metrics::retry_refused(self.service);
                tracing::warn!(service = self.service, "retry budget exhausted; not retrying");
                return result;
            }
            crate::metrics::retried(self.service, "unavailable");
            tracing::info!(service = self.service, code = ?status.code(), error = %status.message(), "replica could not serve the call; retrying");
            let pause = PAUSES_MS[usize::from(retried).min(PAUSES_MS.len() - 1)];
            retried += 1;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

/// `UNAVAILABLE`, broken connections, and `CANCELLED` that the gateway did
/// not ask for (a replica killed mid-call resets its streams): the replica
/// could not take the call, and the balancer will likely pick another. Only
/// repeatable calls get here, and a cancel caused by the call's own deadline
/// ends the whole call anyway.
fn is_retryable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Cancelled) || is_broken_connection(status)
}
