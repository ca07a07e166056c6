//! The counter domain error, and its one mapping to gRPC status codes.

use tonic::{Code, Status};

/// The reason a reused idempotency key is refused, in the message and in the
/// `error-reason` metadata the gateway maps to HTTP 422.
pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    /// The increment would take the counter past the range of a 64-bit integer.
    #[error("counter {name:?} would overflow: {value} + {delta} is out of range")]
    Overflow { name: String, value: i64, delta: i64 },
    /// The idempotency key was used before with a different request (another
    /// delta): answering the first result would silently drop this one.
    #[error(
        "{IDEMPOTENCY_KEY_REUSED}: idempotency_key was first used on this counter with delta {first_delta}, \
         not {delta}; use a new key for a different request"
    )]
    IdempotencyKeyReused { first_delta: i64, delta: i64 },
    /// The in-process backend holds as many counters as it may.
    #[error(
        "the in-process counter backend holds its limit of {limit} counters; raise --max-counters, \
         or use --redis-url for a shared store"
    )]
    TooManyCounters { limit: usize },
    #[error("counter backend unavailable: {0}")]
    Unavailable(String),
    #[error("counter backend error: {0}")]
    Internal(String),
}

impl CounterError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

impl From<redis::RedisError> for CounterError {
    fn from(err: redis::RedisError) -> Self {
        if mesh_redis::is_unavailable(&err) {
            Self::Unavailable(err.to_string())
        } else {
            Self::Internal(err.to_string())
        }
    }
}

impl From<CounterError> for Status {
    fn from(err: CounterError) -> Self {
        let code = match &err {
            CounterError::InvalidArgument { .. } => Code::InvalidArgument,
            CounterError::Overflow { .. } => Code::OutOfRange,
            CounterError::IdempotencyKeyReused { .. } => Code::InvalidArgument,
            CounterError::TooManyCounters { .. } => Code::ResourceExhausted,
            CounterError::Unavailable(_) => Code::Unavailable,
            CounterError::Internal(_) => Code::Internal,
        };
        if matches!(code, Code::Unavailable | Code::Internal) {
            tracing::warn!(error = %err, "counter call failed");
        }
        // The client gets the kind of failure, never the driver's text
        // (SQL, addresses, internals): that stays in the log line above.
        let message = match code {
            Code::Unavailable => "the counter backend is unavailable; try again".to_string(),
            Code::Internal => "internal error in the counter service; the details are in its log".to_string(),
            _ => err.to_string(),
        };
        let mut status = Status::new(code, message);
        if matches!(err, CounterError::IdempotencyKeyReused { .. }) {
            mesh_common::reason::set(&mut status, IDEMPOTENCY_KEY_REUSED);
        }
        status
    }
}
