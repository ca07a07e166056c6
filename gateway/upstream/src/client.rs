//! [`Client`]: a generated gRPC client over an [`Upstream`], and
//! [`Client::unary`], the one way a call is made through it:
//!
//! ```ignore
//! let page = state.items.unary(&call, message, ItemServiceClient::list_items).await?;
//! ```
//!
//! Whether a call may be repeated is not said at the call site: it follows
//! from the request message's RPC ([`Kind::of`]).

use std::future::Future;
use std::sync::Arc;

use crate::context::CallContext;
use crate::error::UpstreamError;
use mesh_proto::bindings::Rpc;

use crate::kind::Kind;
use crate::outlier::PerTryCut;
use crate::transport::Transport;
use crate::upstream::Upstream;

/// A generated client (`ItemServiceClient<Transport>`) over one service's
/// upstream. Cloning it is two reference counts.
pub struct Client<C> {
    upstream: Upstream,
    client: Arc<C>,
}

impl<C> Clone for Client<C> {
    fn clone(&self) -> Self {
        Self {
            upstream: self.upstream.clone(),
            client: self.client.clone(),
        }
    }
}

impl<C> Client<C> {
    /// A client over `upstream`; `make` is the generated client's `new`
    /// (`ItemServiceClient::new`).
    pub fn new(upstream: Upstream, make: impl FnOnce(Transport) -> C) -> Self {
        let client = Arc::new(make(upstream.transport()));
        Self { upstream, client }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }
}

impl<C: Clone + Send + Sync + 'static> Client<C> {
    /// Makes one call of `method` (a generated client's method, such as
    /// `ItemServiceClient::list_items`) with `message`, under the upstream's
    /// policies for the message's [`Kind`] (from the RPC's `idempotency_level`
    /// and the message's idempotency key): each attempt gets a fresh client handle and a
    /// copy of `message`, carrying `call`'s deadline and request id.
    ///
    /// Also opens server streams (`TaskServiceClient::watch_task`): opening
    /// is the call; the stream itself is never repeated.
    ///
    /// The returned future owns what it uses, so it is `Send` and `'static`
    /// for any caller, including spawned tasks.
    pub fn unary<M, R, F>(
        &self,
        call: &CallContext,
        message: M,
        method: F,
    ) -> impl Future<Output = Result<R, UpstreamError>> + Send + 'static
    where
        M: Rpc + Clone + Send + Sync + 'static,
        R: Send + 'static,
        F: for<'c> Method<'c, C, M, Response = R> + Send + Sync + 'static,
    {
        let this = self.clone();
        let call = call.clone();
        let kind = Kind::of(&message);
        async move {
            let labels = mesh_common::metrics::client_started(M::GRPC_PATH);
            let started = std::time::Instant::now();
            let attempt = |cut_at: Option<PerTryCut>| {
                let mut client = C::clone(&this.client);
                // With tracing on, each attempt is a client span of its own.
                let span = attempt_span(&call, M::GRPC_PATH);
                let mut request = call.request_in(message.clone(), span.as_ref().map(|s| s.ids().1));
                if let Some(cut_at) = cut_at {
                    request.extensions_mut().insert(cut_at);
                }
                let method = &method;
                async move {
                    let result = method.invoke(&mut client, request).await;
                    if let Some(mut span) = span {
                        let code = result.as_ref().map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
                        span.set("rpc.grpc.status_code", code as i64);
                        if let Err(status) = &result {
                            span.fail(status.message().to_string());
                        }
                        span.end();
                    }
                    result
                }
            };
            let result = this.upstream.run(&call, kind, attempt).await;
            let code = match &result {
                Ok(_) => tonic::Code::Ok,
                Err(err) => err.code(),
            };
            mesh_common::metrics::client_handled(labels, code, started.elapsed());
            result.map(tonic::Response::into_inner)
        }
    }
}

/// The span of one attempt at `path` (`/mesh.items.v1.ItemService/GetItem`),
/// a child of the request's span; `None` unless that span is recorded.
fn attempt_span(call: &CallContext, path: &'static str) -> Option<mesh_common::otel::Active> {
    use mesh_common::otel;
    let trace = call.trace.as_ref().filter(|_| otel::enabled())?;
    let parent = otel::Parent {
        trace_id: trace.trace_id,
        span_id: trace.span_id?,
        flags: trace.flags,
        remote: false,
    };
    let name = path.trim_start_matches('/');
    let mut span = otel::start(
        name.to_string(),
        otel::Kind::Client,
        Some(parent),
        call.request_id.as_deref().unwrap_or("-"),
    )?;
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    span.set("rpc.system", "grpc");
    span.set("rpc.service", service);
    span.set("rpc.method", method);
    Some(span)
}

/// A generated client's method, as a value: `ItemServiceClient::list_items`
/// is a `Method<'c, ItemServiceClient<T>, ListItemsRequest>`.
///
/// A trait rather than an `Fn` bound because the future a method returns
/// borrows the client: its type depends on that borrow's lifetime `'c`,
/// which a plain `Fn(&mut C, _) -> Fut` bound cannot say.
pub trait Method<'c, C: 'c, M> {
    type Response;
    type Future: Future<Output = Result<tonic::Response<Self::Response>, tonic::Status>> + Send + 'c;

    fn invoke(&self, client: &'c mut C, request: tonic::Request<M>) -> Self::Future;
}

impl<'c, C, M, R, F, Fut> Method<'c, C, M> for F
where
    C: 'c,
    F: Fn(&'c mut C, tonic::Request<M>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>> + Send + 'c,
{
    type Response = R;
    type Future = Fut;

    fn invoke(&self, client: &'c mut C, request: tonic::Request<M>) -> Fut {
        self(client, request)
    }
}
