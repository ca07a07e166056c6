//! Extractors that turn every kind of bad input into the gateway's JSON error.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::AppError;
use crate::state::AppState;

/// `axum::Json`, but a rejection (bad syntax, wrong types, wrong content type,
/// too large) becomes an [`AppError`] with the same `{"error": ...}` shape.
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(value))
    }
}

/// Like [`Json`], but an empty body means `T::default()` (for optional bodies).
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let empty = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v == "0")
            || (req.headers().get(axum::http::header::CONTENT_TYPE).is_none()
                && req.headers().get(axum::http::header::TRANSFER_ENCODING).is_none()
                && req.headers().get(axum::http::header::CONTENT_LENGTH).is_none());
        if empty {
            return Ok(OptionalJson(T::default()));
        }
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(OptionalJson(value))
    }
}

/// `axum::extract::Query` with the gateway's error shape.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// Per-request call settings: the deadline every service call of the request
/// shares (sent to services as `grpc-timeout`, so they stop working when the
/// caller has stopped waiting), and the request id each call forwards.
#[derive(Clone, Debug)]
pub struct Call {
    pub request_id: Option<String>,
    pub deadline: tokio::time::Instant,
}

impl Call {
    /// Wraps a message for a gRPC call: `grpc-timeout` is the time left
    /// until the deadline, and `x-request-id` the request's id.
    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let left = self.deadline.saturating_duration_since(tokio::time::Instant::now());
        request.set_timeout(left.max(Duration::from_millis(1)));
        if let Some(id) = self.request_id.as_deref().and_then(|id| id.parse().ok()) {
            request.metadata_mut().insert("x-request-id", id);
        }
        request
    }

    /// The same call settings with a later deadline (for routes that wait on
    /// long work on purpose).
    pub fn with_timeout(&self, timeout: Duration) -> Call {
        Call {
            request_id: self.request_id.clone(),
            deadline: tokio::time::Instant::now() + timeout,
        }
    }
}

impl FromRequestParts<AppState> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Call {
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            deadline: tokio::time::Instant::now() + state.route_timeout,
        })
    }
}

/// The `Idempotency-Key` header ("" when absent), read without copying the
/// rest of the headers.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get("idempotency-key") {
            None => Ok(IdempotencyKey(String::new())),
            Some(v) => v
                .to_str()
                .map(|k| IdempotencyKey(k.to_owned()))
                .map_err(|_| AppError::invalid("Idempotency-Key: must be visible ASCII")),
        }
    }
}

/// Parses a path segment that must be a positive id, naming it in the error.
pub fn parse_id(raw: &str, what: &str) -> Result<i64, AppError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| AppError::invalid(format!("{what}: must be a positive integer, got {raw:?}")))
}
