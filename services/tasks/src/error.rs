//! The tasks domain error, and its one mapping to gRPC status codes.

use tonic::{Code, Status};

/// The reason a reused idempotency key is refused, in the message and in the
/// `error-reason` metadata the gateway maps to HTTP 422.
pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    /// A task of a batch was refused: the whole batch is, naming the task
    /// (`tasks[3].payload: ...`).
    #[error("{}", in_batch(*index, source))]
    InBatch { index: usize, source: Box<TaskError> },
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

impl TaskError {
    /// The gRPC code: exhaustive, a batch's error has its task's.
    fn code(&self) -> Code {
        match self {
            TaskError::InvalidArgument { .. } | TaskError::IdempotencyKeyReused => Code::InvalidArgument,
            TaskError::InBatch { source, .. } => source.code(),
            TaskError::NotFound(_) => Code::NotFound,
            TaskError::FailedPrecondition(_) => Code::FailedPrecondition,
            TaskError::Unavailable(_) => Code::Unavailable,
            TaskError::Internal(_) => Code::Internal,
        }
    }

    fn key_reused(&self) -> bool {
        match self {
            TaskError::IdempotencyKeyReused => true,
            TaskError::InBatch { source, .. } => source.key_reused(),
            _ => false,
        }
    }

    /// This error, as the error of the batch's task at `index`.
    pub fn in_batch(self, index: usize) -> Self {
        match self {
            // Not the task's fault: the batch's.
            TaskError::Unavailable(_) | TaskError::Internal(_) => self,
            source => TaskError::InBatch {
                index,
                source: Box::new(source),
            },
        }
    }
}

fn in_batch(index: usize, source: &TaskError) -> String {
    match source {
        TaskError::InvalidArgument { field, message } => format!("tasks[{index}].{field}: {message}"),
        other => format!("tasks[{index}]: {other}"),
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
        let code = err.code();
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
        if err.key_reused() {
            mesh_common::reason::set(&mut status, IDEMPOTENCY_KEY_REUSED);
        }
        status
    }
}
