//! [`CallContext`]: what every service call made on behalf of one request
//! carries: the deadline they share and the request's id.

use std::time::Duration;

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
}

impl CallContext {
    /// Settings for a request that may take `timeout` from now.
    pub fn new(request_id: Option<String>, timeout: Duration) -> CallContext {
        CallContext {
            request_id,
            deadline: Instant::now() + timeout,
            principal: None,
        }
    }

    /// The same request with a later deadline (for routes that wait on long
    /// work on purpose).
    pub fn with_timeout(&self, timeout: Duration) -> CallContext {
        CallContext {
            principal: self.principal.clone(),
            ..CallContext::new(self.request_id.clone(), timeout)
        }
    }

    /// The same request, made on behalf of `principal`.
    pub fn with_principal(mut self, principal: Option<std::sync::Arc<str>>) -> CallContext {
        self.principal = principal;
        self
    }

    /// What is left until the deadline (zero once it has passed).
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Wraps a message for one gRPC attempt: `grpc-timeout` is the time left
    /// until the deadline, and `x-request-id` the request's id.
    ///
    /// Both values differ on every call, so they are sent as never-indexed
    /// HPACK literals: indexing them would only churn the connection's
    /// header table (each insert evicting entries that do repeat), which
    /// cost the gateway more CPU per call than the rest of the headers.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
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
