//! The counter domain error, and its one mapping to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    /// The increment would take the counter past the range of a 64-bit integer.
    #[error("counter {name:?} would overflow: {value} + {delta} is out of range")]
    Overflow { name: String, value: i64, delta: i64 },
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
            CounterError::Unavailable(_) => Code::Unavailable,
            CounterError::Internal(_) => Code::Internal,
        };
        if matches!(code, Code::Unavailable | Code::Internal) {
            tracing::warn!(error = %err, "counter call failed");
        }
        Status::new(code, err.to_string())
    }
}
