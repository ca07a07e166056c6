//! The tasks domain error, and its one mapping to gRPC status codes.

use tonic::{Code, Status};

/// The reason a reused idempotency key is refused, in the message and in the
/// `error-reason` metadata the gateway maps to HTTP 422.
pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    /// The idempotency key was used before with a different request.
    #[error(
        "{IDEMPOTENCY_KEY_REUSED}: idempotency_key was first used with a different request; \
         use a new key for a different task"
    )]
    IdempotencyKeyReused,
    #[error("task {0} not found")]
    NotFound(i64),
    /// The task is not in a state that allows the call (e.g. cancelling a finished task).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Internal(String),
}

impl TaskError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for TaskError {
    fn from(err: sqlx::Error) -> Self {
        if mesh_sql::is_unavailable(&err) {
            Self::Unavailable(err.to_string())
        } else {
            Self::Internal(err.to_string())
        }
    }
}

impl From<TaskError> for Status {
    fn from(err: TaskError) -> Self {
        let code = match &err {
            TaskError::InvalidArgument { .. } | TaskError::IdempotencyKeyReused => Code::InvalidArgument,
            TaskError::NotFound(_) => Code::NotFound,
            TaskError::FailedPrecondition(_) => Code::FailedPrecondition,
            TaskError::Unavailable(_) => Code::Unavailable,
            TaskError::Internal(_) => Code::Internal,
        };
        if matches!(code, Code::Unavailable | Code::Internal) {
            tracing::error!(error = %err, "tasks call failed");
        }
        // The client gets the kind of failure, never the driver's text
        // (SQL, addresses, internals): that stays in the log line above.
        let message = match code {
            Code::Unavailable => "the database is unavailable; try again".to_string(),
            Code::Internal => "internal error in the tasks service; the details are in its log".to_string(),
            _ => err.to_string(),
        };
        let mut status = Status::new(code, message);
        if matches!(err, TaskError::IdempotencyKeyReused) {
            mesh_common::reason::set(&mut status, IDEMPOTENCY_KEY_REUSED);
        }
        status
    }
}
