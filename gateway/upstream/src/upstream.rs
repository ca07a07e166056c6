//! [`Upstream`]: one service's replicas behind one shared transport, and the
//! policies each call runs under, in one place: the call's deadline, retries
//! of repeatable calls under a retry budget with per-try timeouts, hedged
//! reads, and telling the gateway's own refusals from the service's answers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use crate::balance::Rotation;
use crate::context::CallContext;
use crate::controller;
use crate::error::UpstreamError;
use crate::hedge::Hedger;
use crate::kind::Kind;
use crate::members::Members;
use crate::outlier::PerTryCut;
use crate::per_try::PerTry;
use crate::retry::Retry;
use crate::settings::Settings;
use crate::spec::Spec;
use crate::transport::{self, Transport, is_broken_connection, is_shed};

/// Repeats of a failed or slow attempt allowed when the service has several
/// replicas. With one, a repeat can only land on the same replica: one quick
/// repeat (a blip), not three.
const RETRIES: u8 = 3;

/// A replica's state and load, as [`Upstream::replicas`] reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicaStats {
    #[serde(flatten)]
    pub member: crate::members::MemberView,
    /// Calls sent to it and not yet answered.
    pub pending: usize,
    /// The balancer's peak-EWMA latency estimate, in ms (in rotation only).
    pub latency_ms: Option<f64>,
}

/// One service's replicas, with the mesh's traffic policies. Cloning it is
/// one reference count.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    name: &'static str,
    transport: Transport,
    members: Members,
    /// The balancer's replicas (their calls in flight and latency).
    rotation: Rotation,
    budget: TpsBudget,
    per_try: PerTry,
    hedge: Option<Hedger>,
    max_in_flight: usize,
}

impl Upstream {
    /// Resolves the spec, starts discovery and builds the transport stack.
    pub async fn start(name: &'static str, spec: Spec, settings: &Settings) -> Upstream {
        let (rotation, members) = controller::start(name, spec, settings.clone()).await;
        Upstream {
            inner: Arc::new(Inner {
                name,
                transport: transport::stack(rotation.clone(), settings.max_in_flight),
                members,
                rotation,
                budget: TpsBudget::new(
                    Duration::from_secs(10),
                    settings.retry_min_per_sec,
                    settings.retry_ratio,
                ),
                per_try: PerTry::new(settings.per_try_timeout),
                hedge: settings.hedge.map(|hedge| Hedger::new(name, hedge)),
                max_in_flight: settings.max_in_flight,
            }),
        }
    }

    /// The service's name (`items`, ...), as errors and logs give it.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    pub fn members(&self) -> &Members {
        &self.inner.members
    }

    /// Every known replica as the gateway sees it now, and for those in
    /// rotation their calls in flight and the balancer's latency estimate.
    pub fn replicas(&self) -> Vec<ReplicaStats> {
        let in_balancer = self.inner.rotation.snapshot();
        self.inner
            .members
            .snapshot()
            .into_iter()
            .map(|member| {
                let replica = in_balancer.iter().find(|r| r.address().as_ref() == member.address);
                ReplicaStats {
                    pending: replica.map_or(0, |r| r.in_flight()),
                    latency_ms: replica.map(|r| r.latency().as_secs_f64() * 1000.0),
                    member,
                }
            })
            .collect()
    }

    /// The stack every call to the service goes through (a cheap clone).
    pub fn transport(&self) -> Transport {
        self.inner.transport.clone()
    }

    /// Runs one call under the policies. `attempt` makes one attempt; it
    /// runs more than once only for repeatable kinds.
    pub(crate) async fn run<R, A, Fut>(
        &self,
        call: &CallContext,
        kind: Kind,
        attempt: A,
    ) -> Result<tonic::Response<R>, UpstreamError>
    where
        A: Fn(Option<PerTryCut>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let inner = &*self.inner;
        if inner.members.in_rotation() == 0 {
            return Err(UpstreamError::NoReplica { service: inner.name });
        }
        let deadline = call.deadline;
        let run = async {
            if !kind.is_repeatable() {
                return attempt(None).await;
            }
            inner.budget.deposit();
            let retry = Retry {
                service: inner.name,
                budget: &inner.budget,
                retries: if inner.members.known() > 1 { RETRIES } else { 1 },
                deadline,
                latency: &inner.per_try,
            };
            match (&inner.hedge, kind) {
                (Some(hedger), Kind::Read) => hedger.run(|| retry.run(&attempt)).await,
                _ => retry.run(&attempt).await,
            }
        };
        match tokio::time::timeout_at(deadline, run).await {
            Err(_) => Err(UpstreamError::DeadlineExceeded { service: inner.name }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(status)) => Err(self.classify(status, deadline)),
        }
    }

    /// Tells the gateway's own refusals apart from the service's answers.
    fn classify(&self, status: tonic::Status, deadline: Instant) -> UpstreamError {
        let service = self.inner.name;
        // A service enforcing the deadline we sent may answer (CANCELLED,
        // "Timeout expired") a moment before our own timer fires: same cause.
        let deadline_passed = Instant::now() + Duration::from_millis(10) >= deadline;
        let expired = status.code() == tonic::Code::DeadlineExceeded
            || (status.code() == tonic::Code::Cancelled && deadline_passed);
        if is_shed(&status) {
            crate::metrics::shed(service);
            UpstreamError::Overloaded {
                service,
                limit: self.inner.max_in_flight,
            }
        } else if expired {
            UpstreamError::DeadlineExceeded { service }
        } else if is_broken_connection(&status) {
            tracing::warn!(service, error = %status, "connection to a replica broke mid-call");
            UpstreamError::ConnectionBroken { service }
        } else {
            UpstreamError::Status { service, status }
        }
    }
}
