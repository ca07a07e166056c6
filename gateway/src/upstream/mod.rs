//! Each service's replicas behind one shared client, with the mesh's traffic
//! policies, each in one place:
//!
//! - [`discovery`]: which replicas are in rotation (endpoint spec re-resolved
//!   at run time, active `grpc.health.v1` checks, ejection, panic mode);
//! - [`outlier`]: passive outlier detection, a tower layer per replica;
//! - the transport stack built in [`Upstream::start`], read top to bottom:
//!   load shedding (refuse at once when full) over a global concurrency limit
//!   (the per-service cap on calls in flight) over a buffer (makes the
//!   balancer cloneable and shared) over tower's power-of-two-choices
//!   balancer, which picks between two random replicas by peak-EWMA latency;
//! - [`Upstream::call`]: the typed-call policies: the request's deadline,
//!   retries of idempotent calls on `UNAVAILABLE` under a retry budget, and
//!   hedged reads. (tower's `retry` needs a cloneable request, which an
//!   `http::Request` is not, so retries happen at the typed-call level.)

pub mod discovery;
pub mod outlier;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::error::Overloaded;
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, Retry};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use crate::error::AppError;
use crate::extract::Call;
pub use discovery::{MemberView, Members, Spec, SpecError};

/// What every service client in the gateway sends its calls through.
pub type Transport =
    BoxCloneSyncService<http::Request<tonic::body::Body>, http::Response<tonic::body::Body>, TransportError>;

/// The transport stack's error. A named type rather than a bare `BoxError`:
/// the compiler cannot prove the async call futures `Send` when the client's
/// error type is a trait object (rust-lang/rust#102211).
/// Its `source` is the underlying error itself, so tonic still recognises a
/// connection error in the chain (and reports `UNAVAILABLE`).
#[derive(Debug)]
pub struct TransportError(BoxError);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl TransportError {
    /// Whether the load shedder refused the call (the in-flight cap was reached).
    pub fn is_overloaded(&self) -> bool {
        self.0.is::<Overloaded>()
    }
}

/// Policy settings shared by every upstream.
#[derive(Clone, Debug)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// How often each replica's health is checked.
    pub health_interval: Duration,
    /// How often endpoint specs (DNS names, files) are resolved again.
    pub resolve_interval: Duration,
    /// Consecutive failures that eject a replica.
    pub eject_after: u32,
    /// First ejection's length; each further one doubles, up to `eject_max`.
    pub eject_base: Duration,
    pub eject_max: Duration,
    /// Calls in flight per service before new ones are refused.
    pub max_in_flight: usize,
    /// Retries may add this fraction of the calls made (plus `retry_min_per_sec`).
    pub retry_ratio: f32,
    pub retry_min_per_sec: u32,
    /// Hedged reads: `None` is off.
    pub hedge: Option<HedgeSettings>,
}

#[derive(Clone, Copy, Debug)]
pub struct HedgeSettings {
    /// A read still outstanding past this percentile of recent read latency
    /// is sent to a second replica.
    pub percentile: f64,
    /// Hedges may add at most this fraction of reads.
    pub ratio: f32,
}

/// How a call may be repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Safe to repeat: retried on `UNAVAILABLE`, and hedged when enabled.
    Read,
    /// A write that is safe to repeat because it carries an idempotency key:
    /// retried, never hedged.
    IdempotentWrite,
    /// Never repeated: a second attempt could apply it twice.
    Write,
}

/// One service's replicas, as one client of type `C`.
pub struct Upstream<C> {
    pub name: &'static str,
    /// Shared, so that each call's handle is one reference count.
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    client: C,
    members: Members,
    budget: TpsBudget,
    hedge: Option<hedge::Hedger>,
    max_in_flight: usize,
}

impl<C> Clone for Upstream<C> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            inner: self.inner.clone(),
        }
    }
}

impl<C: Clone> Upstream<C> {
    /// Resolves the spec, starts discovery and builds the transport stack.
    pub async fn start(name: &'static str, spec: Spec, settings: &Settings, make: fn(Transport) -> C) -> Self {
        let (discover, members) = discovery::start(name, spec, settings.clone()).await;
        let balancer = Buffer::new(Balance::new(discover), 1024);
        let transport = BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_err(TransportError)
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(settings.max_in_flight.max(1)))
                .service(balancer),
        );
        Self {
            name,
            inner: Arc::new(Inner {
                client: make(transport),
                members,
                budget: TpsBudget::new(
                    Duration::from_secs(10),
                    settings.retry_min_per_sec,
                    settings.retry_ratio,
                ),
                hedge: settings.hedge.map(hedge::Hedger::new),
                max_in_flight: settings.max_in_flight,
            }),
        }
    }

    pub fn members(&self) -> &Members {
        &self.inner.members
    }

    /// Runs one gRPC call under the gateway's policies. `attempt` makes one
    /// attempt with a fresh client handle; it may run more than once for
    /// `Kind::Read` and `Kind::IdempotentWrite`.
    ///
    /// The returned future owns what it uses (a clone of this upstream), so it
    /// is `Send` for any caller, including spawned tasks.
    pub fn call<'a, R, F, Fut>(
        &self,
        call: &Call,
        kind: Kind,
        attempt: F,
    ) -> impl Future<Output = Result<R, AppError>> + Send + 'a
    where
        C: Send + Sync + 'static,
        R: Send + 'a,
        F: Fn(C) -> Fut + Send + Sync + 'a,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>> + Send + 'a,
    {
        let this = self.clone();
        let deadline = call.deadline;
        async move {
            if this.inner.members.in_rotation() == 0 {
                return Err(AppError::Unavailable(format!(
                    "no replica of the {} service is known",
                    this.name
                )));
            }
            let one = tower::service_fn(|()| attempt(this.inner.client.clone()));
            let run = async {
                match kind {
                    Kind::Write => one.oneshot(()).await,
                    Kind::Read | Kind::IdempotentWrite => {
                        this.inner.budget.deposit();
                        // With one replica a retry can only land on the same
                        // one: allow a single quick retry (a blip), not three.
                        let policy = RetryPolicy {
                            service: this.name,
                            upstream: &this.inner,
                            attempts_left: if this.inner.members.known() > 1 { 3 } else { 1 },
                            retried: 0,
                        };
                        let retried = Retry::new(policy, one);
                        match (&this.inner.hedge, kind) {
                            (Some(hedger), Kind::Read) => hedger.run(retried).await,
                            _ => retried.oneshot(()).await,
                        }
                    }
                }
            };
            match tokio::time::timeout_at(deadline, run).await {
                Err(_) => Err(AppError::DeadlineExceeded(this.name)),
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(this.classify(status, deadline)),
            }
        }
    }

    /// Tells the gateway's own refusals apart from the service's answers.
    fn classify(&self, status: tonic::Status, deadline: tokio::time::Instant) -> AppError {
        // A service enforcing the deadline we sent may answer (CANCELLED,
        // "Timeout expired") a moment before our own timer fires: same cause.
        let deadline_passed = tokio::time::Instant::now() + Duration::from_millis(10) >= deadline;
        let expired = status.code() == tonic::Code::DeadlineExceeded
            || (status.code() == tonic::Code::Cancelled && deadline_passed);
        if is_shed(&status) {
            AppError::Overloaded {
                service: self.name,
                limit: self.inner.max_in_flight,
            }
        } else if expired {
            AppError::DeadlineExceeded(self.name)
        } else if is_broken_connection(&status) {
            tracing::warn!(service = self.name, error = %status, "connection to a replica broke mid-call");
            AppError::Unavailable(format!("the connection to the {} service broke; try again", self.name))
        } else {
            AppError::Upstream {
                service: self.name,
                status,
            }
        }
    }
}

/// A call that failed in the transport (the connection broke mid-call, as
/// when a replica dies), not with a status the service sent: tonic reports
/// those as `UNKNOWN` and keeps the underlying error as the source. Whether
/// the service acted on the call is unknown, so only idempotent calls repeat it.
fn is_broken_connection(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unknown && std::error::Error::source(status).is_some() && !is_shed(status)
}

/// The gateway's own load shedder refused the call (the in-flight cap was
/// reached): not the replica's fault, and never worth a retry.
fn is_shed(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err
            .downcast_ref::<TransportError>()
            .is_some_and(TransportError::is_overloaded)
            || err.is::<Overloaded>()
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Retries `UNAVAILABLE` and broken connections (the replica could not take
/// the call; the balancer will likely pick another) while the budget allows.
struct RetryPolicy<'a, C> {
    // (Clone by hand below: a derive would demand `C: Clone`.)
    service: &'static str,
    upstream: &'a Inner<C>,
    attempts_left: u8,
    /// Retries made so far: each waits a little longer (5, 20, 50 ms).
    retried: u8,
}

impl<C> Clone for RetryPolicy<'_, C> {
    fn clone(&self) -> Self {
        Self { ..*self }
    }
}

impl<C, R> Policy<(), tonic::Response<R>, tonic::Status> for RetryPolicy<'_, C> {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _: &mut (), result: &mut Result<tonic::Response<R>, tonic::Status>) -> Option<Self::Future> {
        let Err(status) = result else { return None };
        if !(status.code() == tonic::Code::Unavailable || is_broken_connection(status)) || self.attempts_left == 0 {
            return None;
        }
        if !self.upstream.budget.withdraw() {
            tracing::warn!(service = self.service, "retry budget exhausted; not retrying");
            return None;
        }
        self.attempts_left -= 1;
        tracing::info!(service = self.service, code = ?status.code(), error = %status.message(), "replica could not serve the call; retrying");
        // A short pause lets discovery act on the failure (ejection) first.
        self.retried += 1;
        let pause = [5, 20, 50][usize::from(self.retried - 1).min(2)];
        Some(tokio::time::sleep(Duration::from_millis(pause)))
    }

    fn clone_request(&mut self, _: &()) -> Option<()> {
        Some(())
    }
}

pub mod hedge {
    //! Hedged reads: when a read is still outstanding past a percentile of
    //! recent read latency, a second copy goes out (the balancer will most
    //! likely pick another replica) and the first answer wins. A budget caps
    //! the extra load.

    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use tower::retry::budget::{Budget, TpsBudget};
    use tower::{Service, ServiceExt};

    use super::HedgeSettings;

    /// Recent read latencies, enough to estimate a percentile.
    const WINDOW: usize = 512;
    /// Until this many reads were seen, no hedging (no percentile yet).
    const MIN_SAMPLES: usize = 32;

    pub struct Hedger {
        settings: HedgeSettings,
        budget: TpsBudget,
        latencies: Mutex<(Vec<Duration>, usize)>,
    }

    impl Hedger {
        pub fn new(settings: HedgeSettings) -> Self {
            Self {
                settings,
                budget: TpsBudget::new(Duration::from_secs(10), 0, settings.ratio),
                latencies: Mutex::new((Vec::with_capacity(WINDOW), 0)),
            }
        }

        fn record(&self, d: Duration) {
            let mut guard = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
            let (samples, next) = &mut *guard;
            if samples.len() < WINDOW {
                samples.push(d);
            } else {
                samples[*next] = d;
            }
            *next = (*next + 1) % WINDOW;
        }

        fn threshold(&self) -> Option<Duration> {
            let guard = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
            if guard.0.len() < MIN_SAMPLES {
                return None;
            }
            let mut sorted = guard.0.clone();
            sorted.sort_unstable();
            let i = ((sorted.len() as f64 - 1.0) * self.settings.percentile / 100.0).round() as usize;
            sorted.get(i).copied()
        }

        /// Runs `service` once, and a second time if the first is slow.
        pub async fn run<S, R, E>(&self, service: S) -> Result<R, E>
        where
            S: Service<(), Response = R, Error = E> + Clone,
        {
            self.budget.deposit();
            let started = Instant::now();
            let first = service.clone().oneshot(());
            tokio::pin!(first);
            let Some(after) = self.threshold() else {
                let out = first.await;
                self.record(started.elapsed());
                return out;
            };
            tokio::select! {
                out = &mut first => {
                    self.record(started.elapsed());
                    return out;
                }
                () = tokio::time::sleep(after) => {}
            }
            if !self.budget.withdraw() {
                let out = first.await;
                self.record(started.elapsed());
                return out;
            }
            tracing::debug!(after_ms = after.as_millis() as u64, "read is slow; hedging");
            let second = service.oneshot(());
            tokio::pin!(second);
            // The first success wins; if one fails, wait for the other.
            let out = tokio::select! {
                out = &mut first => match out {
                    Ok(r) => Ok(r),
                    Err(_) => second.await,
                },
                out = &mut second => match out {
                    Ok(r) => Ok(r),
                    Err(_) => first.await,
                },
            };
            self.record(started.elapsed());
            out
        }
    }
}
