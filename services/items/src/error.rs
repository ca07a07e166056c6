//! The items domain error, and its one mapping to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    /// The request is malformed; `field` names the offending field.
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("item {0} not found")]
    NotFound(i64),
    /// Optimistic concurrency: the caller's version is stale.
    #[error("item {id} is at version {actual}, not the expected {expected}")]
    VersionConflict { id: i64, expected: i64, actual: i64 },
    /// The database cannot be reached or is overloaded right now.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else the database said; a bug or corrupt data.
    #[error("database error: {0}")]
    Internal(String),
}

impl ItemError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for ItemError {
    fn from(err: sqlx::Error) -> Self {
        if mesh_sql::is_unavailable(&err) {
            Self::Unavailable(err.to_string())
        } else {
            Self::Internal(err.to_string())
        }
    }
}

impl From<ItemError> for Status {
    fn from(err: ItemError) -> Self {
        // Exhaustive on purpose: a new variant must choose its code.
        let code = match &err {
            ItemError::InvalidArgument { .. } => Code::InvalidArgument,
            ItemError::NotFound(_) => Code::NotFound,
            ItemError::VersionConflict { .. } => Code::Aborted,
            ItemError::Unavailable(_) => Code::Unavailable,
            ItemError::Internal(_) => Code::Internal,
        };
        if code == Code::Internal || code == Code::Unavailable {
            tracing::error!(error = %err, "items call failed");
        }
        // The client gets the kind of failure, never the driver's text
        // (SQL, addresses, internals): that stays in the log line above.
        let message = match code {
            Code::Unavailable => "the database is unavailable; try again".to_string(),
            Code::Internal => "internal error in the items service; the details are in its log".to_string(),
            _ => err.to_string(),
        };
        Status::new(code, message)
    }
}
