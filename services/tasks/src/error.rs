//! The tasks domain error, and its one mapping to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
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
            TaskError::InvalidArgument { .. } => Code::InvalidArgument,
            TaskError::NotFound(_) => Code::NotFound,
            TaskError::FailedPrecondition(_) => Code::FailedPrecondition,
            TaskError::Unavailable(_) => Code::Unavailable,
            TaskError::Internal(_) => Code::Internal,
        };
        if matches!(code, Code::Unavailable | Code::Internal) {
            tracing::error!(error = %err, "tasks call failed");
        }
        Status::new(code, err.to_string())
    }
}
