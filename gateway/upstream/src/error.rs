//! [`UpstreamError`]: every way a call through an upstream can fail. The
//! gateway turns it into its HTTP error by an exhaustive match, so a new
//! variant forces a choice of HTTP status there.

/// Why a call failed. `service` is the upstream's name (`items`, ...).
#[derive(Clone, Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The service answered with a non-OK status (after any retries).
    #[error("{service} service: {status}")]
    Status {
        service: &'static str,
        status: tonic::Status,
    },
    /// No replica of the service has been resolved yet.
    #[error("no replica of the {service} service is known")]
    NoReplica { service: &'static str },
    /// The connection to a replica broke mid-call (a replica died), and the
    /// call could not be repeated or its repeats broke too.
    #[error("the connection to the {service} service broke")]
    ConnectionBroken { service: &'static str },
    /// The call's deadline passed before the service answered.
    #[error("the {service} service did not answer before the deadline")]
    DeadlineExceeded { service: &'static str },
    /// Refused before it was sent: the service's in-flight cap is reached.
    #[error("the {service} service is at its limit of {limit} calls in flight")]
    Overloaded { service: &'static str, limit: usize },
}

impl UpstreamError {
    /// The gRPC status code the call ended with, as the caller saw it: the
    /// service's own, or the one a gRPC client reports for the same fault.
    pub fn code(&self) -> tonic::Code {
        match self {
            UpstreamError::Status { status, .. } => status.code(),
            UpstreamError::NoReplica { .. } | UpstreamError::ConnectionBroken { .. } => tonic::Code::Unavailable,
            UpstreamError::DeadlineExceeded { .. } => tonic::Code::DeadlineExceeded,
            UpstreamError::Overloaded { .. } => tonic::Code::ResourceExhausted,
        }
    }
}
