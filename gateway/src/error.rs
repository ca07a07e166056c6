//! The gateway's one error type and its HTTP form:
//! `{"error": {"code": "NOT_FOUND", "message": "..."}}`.
//!
//! gRPC codes map to HTTP by the standard table (google.rpc.Code). A 5xx body
//! never carries an upstream's internal message; the details go to the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mesh_upstream::UpstreamError;
use tonic::Code;

use crate::openapi::{ErrorBody, ErrorDetail};

/// The reason services give when an idempotency key comes back with a
/// different request: answered 422, as the IETF Idempotency-Key draft says,
/// the one input error that is not a 400.
pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

#[derive(Clone, Debug, thiserror::Error)]
pub enum AppError {
    /// A service answered with a non-OK status.
    #[error("{service} service: {status}")]
    Upstream {
        service: &'static str,
        status: tonic::Status,
    },
    /// The request itself is malformed (bad JSON, a bad path or query value).
    #[error("{message}")]
    BadRequest {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    /// A plain-HTTP upstream failed or is not configured.
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    Unavailable(String),
    /// The request's deadline passed before the service answered.
    #[error("the {0} service did not answer before the deadline")]
    DeadlineExceeded(&'static str),
    /// The gateway refused the call: the service's in-flight cap is reached.
    #[error("the {service} service is at its limit of {limit} calls in flight")]
    Overloaded { service: &'static str, limit: usize },
}

impl AppError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::BadRequest {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_ARGUMENT",
            message: message.into(),
        }
    }

    pub fn upstream(service: &'static str) -> impl Fn(tonic::Status) -> Self {
        move |status| Self::Upstream { service, status }
    }
}

/// The HTTP status for a gRPC code. Exhaustive: a new code must choose.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        // The request is well formed but the resource's state does not allow
        // it (cancel a finished task): a conflict with that state, as 409.
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `NOT_FOUND` for `Code::NotFound`, and so on.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl AppError {
    /// (HTTP status, error code name, message safe to show the client).
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            AppError::Upstream { service, status } => {
                let code = status.code();
                let http = http_status(code);
                if mesh_common::reason::get(status) == Some(IDEMPOTENCY_KEY_REUSED) {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        code_name(code),
                        status.message().to_string(),
                    );
                }
                let message = match code {
                    Code::Unavailable => format!("the {service} service is unavailable; try again"),
                    Code::DeadlineExceeded => {
                        format!("the {service} service did not answer in time")
                    }
                    Code::Cancelled => format!("the call to the {service} service was cancelled"),
                    _ if http.is_server_error() => {
                        format!("the {service} service failed; see the gateway log")
                    }
                    _ => status.message().to_string(),
                };
                (http, code_name(code), message)
            }
            AppError::BadRequest { status, code, message } => (*status, code, message.clone()),
            AppError::NotFound(m) => (StatusCode::NOT_FOUND, "NOT_FOUND", m.clone()),
            AppError::BadGateway(m) => (StatusCode::BAD_GATEWAY, "UNAVAILABLE", m.clone()),
            AppError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", m.clone()),
            AppError::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED", self.to_string()),
            AppError::Overloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                format!("{self}; retry shortly"),
            ),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        // Shedding is the gateway working as designed, and logging every
        // refused call would add load exactly when there is too much.
        if status.is_server_error() && !matches!(self, AppError::Overloaded { .. }) {
            tracing::warn!(error = %self, http = status.as_u16(), "request failed");
        }
        let reason = match &self {
            AppError::Upstream { status, .. } => mesh_common::reason::get(status).map(str::to_owned),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail { code, message, reason },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// What a failed service call means to the HTTP client. Exhaustive: a new
/// way to fail must choose its HTTP form here.
impl From<UpstreamError> for AppError {
    fn from(err: UpstreamError) -> Self {
        match err {
            UpstreamError::Status { service, status } => AppError::Upstream { service, status },
            UpstreamError::NoReplica { service } => {
                AppError::Unavailable(format!("no replica of the {service} service is known"))
            }
            UpstreamError::ConnectionBroken { service } => {
                AppError::Unavailable(format!("the connection to the {service} service broke; try again"))
            }
            UpstreamError::DeadlineExceeded { service } => AppError::DeadlineExceeded(service),
            UpstreamError::Overloaded { service, limit } => AppError::Overloaded { service, limit },
        }
    }
}
