//! [`CallContext`]: what every service call made on behalf of one request
//! carries: the deadline they share and the request's id.

use std::time::Duration;

use mesh_common::tracecontext::{TRACEPARENT, TRACESTATE, Trace};
use tokio::time::Instant;

/// Per-request call settings: the deadline every service call of the request
/// shares (sent to services as `grpc-timeout`, so they stop working when the
/// caller has stopped waiting), and the request id each call forwards (so
/// every service's log line for the request carries it).
#[derive(Clone, Debug)]
pub struct CallContext {
    pub request_id: Option<String>,
    pub deadline: Instant,
    /// Who the gateway authenticated, sent as `x-mesh-principal`.
    pub principal: Option<std::sync::Arc<str>>,
    /// The request's W3C trace: every attempt sends `traceparent` with a
    /// span id of its own (and the client's `tracestate`).
    pub trace: Option<Trace>,
}

impl CallContext {
    /// Settings for a request that may take `timeout` from now.
    pub fn new(request_id: Option<String>, timeout: Duration) -> CallContext {
        CallContext {
            request_id,
            deadline: Instant::now() + timeout,
            principal: None,
            trace: None,
        }
    }

    /// The same request with a later deadline (for routes that wait on long
    /// work on purpose).
    pub fn with_timeout(&self, timeout: Duration) -> CallContext {
        CallContext {
            principal: self.principal.clone(),
            trace: self.trace.clone(),
            ..CallContext::new(self.request_id.clone(), timeout)
        }
    }

    /// The same request, made on behalf of `principal`.
    pub fn with_principal(mut self, principal: Option<std::sync::Arc<str>>) -> CallContext {
        self.principal = principal;
        self
    }

    /// The same request, in `trace`.
    pub fn with_trace(mut self, trace: Option<Trace>) -> CallContext {
        self.trace = trace;
        self
    }

    /// What is left until the deadline (zero once it has passed).
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Wraps a message for one gRPC attempt: `grpc-timeout` is the time left
    /// until the deadline, `x-request-id` the request's id, `traceparent`
    /// its trace with a new span id (and `tracestate` as the client sent it).
    ///
    /// The first three values differ on every call, so they are sent as never-indexed
    /// HPACK literals: indexing them would only churn the connection's
    /// header table (each insert evicting entries that do repeat), which
    /// cost the gateway more CPU per call than the rest of the headers.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.request_in(message, None)
    }

    /// [`CallContext::request`] for an attempt recorded as span `span_id`
    /// (its `traceparent` names it; without one, a new span id).
    pub fn request_in<T>(&self, message: T, span_id: Option<u64>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.time_left().max(Duration::from_millis(1)));
        let metadata = request.metadata_mut();
        if let Some(timeout) = metadata.get_mut("grpc-timeout") {
            timeout.set_sensitive(true);
        }
        if let Some(mut id) = self
            .request_id
            .as_deref()
            .and_then(|id| id.parse::<tonic::metadata::AsciiMetadataValue>().ok())
        {
            id.set_sensitive(true);
            metadata.insert("x-request-id", id);
        }
        if let Some(trace) = &self.trace {
            let parent = match span_id {
                Some(span_id) => trace.traceparent_for(span_id),
                None => trace.traceparent_bytes(),
            };
            if let Ok(mut parent) = tonic::metadata::AsciiMetadataValue::try_from(&parent[..]) {
                parent.set_sensitive(true);
                metadata.insert(TRACEPARENT, parent);
            }
            if let Some(state) = trace
                .state
                .as_deref()
                .and_then(|s| s.parse::<tonic::metadata::AsciiMetadataValue>().ok())
            {
                metadata.insert(TRACESTATE, state);
            }
        }
        if let Some(principal) = self
            .principal
            .as_deref()
            .and_then(|p| p.parse::<tonic::metadata::AsciiMetadataValue>().ok())
        {
            metadata.insert("x-mesh-principal", principal);
        }
        request
    }
}
