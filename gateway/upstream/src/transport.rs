//! The stack every call to a service goes through, and how to tell its own
//! failures (a refusal, a broken connection) from a service's answers.
//!
//! Read top to bottom:
//! - load shedding: refuse at once when full, instead of queueing;
//! - a global concurrency limit: the per-service cap on calls in flight;
//! - the power-of-two-choices balancer ([`crate::balance`]), which picks
//!   between two random replicas by peak-EWMA latency and calls its channel
//!   on the caller's task (see [`crate::controller`] for the rotation).

use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::error::Overloaded;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder};

use crate::balance::{Balance, Rotation};

/// What every generated client of an upstream sends its calls through.
pub type Transport =
    BoxCloneSyncService<http::Request<tonic::body::Body>, http::Response<tonic::body::Body>, TransportError>;

/// Builds the stack over a service's rotation.
pub fn stack(rotation: Rotation, max_in_flight: usize) -> Transport {
    let balancer = Balance::new(rotation);
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .map_err(TransportError)
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(max_in_flight.max(1)))
            .service(balancer),
    )
}

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

/// A call that failed in the transport (the connection broke mid-call, as
/// when a replica dies), not with a status the service sent: tonic reports
/// those as `UNKNOWN` and keeps the underlying error as the source. Whether
/// the service acted on the call is unknown, so only repeatable calls repeat it.
pub fn is_broken_connection(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unknown && std::error::Error::source(status).is_some() && !is_shed(status)
}

/// The load shedder refused the call (the in-flight cap was reached): not
/// the replica's fault, and never worth a retry.
pub fn is_shed(status: &tonic::Status) -> bool {
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
