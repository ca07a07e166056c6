//! The gateway's per-request edge layer: what every request needs before it
//! reaches a route, in one pass:
//!
//! - refuse requests whose headers add up to more than the limit (431);
//! - take the request's `x-request-id`, or give it one, and echo it on the
//!   response (service calls forward it from the request);
//! - open the `http` span (method, path, request id) that every log line of
//!   the request, and every service call's, is tied to, and log the response
//!   (status, latency) at INFO.
//!
//! One small layer rather than a stack of general ones: it runs on every
//! request, and with INFO logging off it does no tracing work at all.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::error::AppError;
use crate::request_id::RequestIds;

pub const X_REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

#[derive(Clone, Debug)]
pub struct EdgeLayer {
    pub max_header_bytes: usize,
    pub ids: RequestIds,
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            max_header_bytes: self.max_header_bytes,
            ids: self.ids.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
    max_header_bytes: usize,
    ids: RequestIds,
}

impl<S> tower::Service<Request> for Edge<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let size: usize = request
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if size > self.max_header_bytes {
            let refusal = AppError::BadRequest {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                code: "INVALID_ARGUMENT",
                message: format!("request headers are {size} bytes; at most {}", self.max_header_bytes),
            };
            return Box::pin(std::future::ready(Ok(refusal.into_response())));
        }
        let id = match request.headers().get(X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.next();
                request.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        // Take the service that was made ready, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !tracing::enabled!(tracing::Level::INFO) {
            return Box::pin(async move {
                let mut response = inner.call(request).await?;
                response.headers_mut().insert(X_REQUEST_ID, id);
                Ok(response)
            });
        }
        let span = tracing::info_span!(
            "http",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = %id.to_str().unwrap_or("-")
        );
        let started = Instant::now();
        Box::pin(
            async move {
                let mut response = inner.call(request).await?;
                tracing::info!(
                    status = response.status().as_u16(),
                    latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "response"
                );
                response.headers_mut().insert(X_REQUEST_ID, id);
                Ok(response)
            }
            .instrument(span),
        )
    }
}
