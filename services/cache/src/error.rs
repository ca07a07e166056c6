//! The cache domain error, and its one mapping to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    /// The backend (Redis) cannot be reached right now.
    #[error("cache backend unavailable: {0}")]
    Unavailable(String),
    /// The backend refused a command in a way that points at a bug.
    #[error("cache backend error: {0}")]
    Internal(String),
}

impl CacheError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

impl From<redis::RedisError> for CacheError {
    fn from(err: redis::RedisError) -> Self {
        if mesh_redis::is_unavailable(&err) {
            Self::Unavailable(err.to_string())
        } else {
            Self::Internal(err.to_string())
        }
    }
}

impl From<CacheError> for Status {
    fn from(err: CacheError) -> Self {
        let code = match &err {
            CacheError::InvalidArgument { .. } => Code::InvalidArgument,
            CacheError::Unavailable(_) => Code::Unavailable,
            CacheError::Internal(_) => Code::Internal,
        };
        if code != Code::InvalidArgument {
            tracing::warn!(error = %err, "cache call failed");
        }
        // The client gets the kind of failure, never the driver's text
        // (SQL, addresses, internals): that stays in the log line above.
        let message = match code {
            Code::Unavailable => "the cache backend is unavailable; try again".to_string(),
            Code::Internal => "internal error in the cache service; the details are in its log".to_string(),
            _ => err.to_string(),
        };
        Status::new(code, message)
    }
}
