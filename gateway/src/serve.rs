//! The gateway's HTTP server: an accept loop over hyper (HTTP/1 and HTTP/2 on
//! one port) that never lets a slow or idle client hold resources for long.
//!
//! | what | bound |
//! |------|-------|
//! | request head (line + headers) | `header_read_timeout`, hyper's HTTP/1 timer: it starts when hyper waits for a head, which is also while a keep-alive connection waits for its next request, so an idle HTTP/1 connection is closed after the shorter of this and `idle_timeout` |
//! | request body | `body_read_timeout`: the whole body must arrive within it, counted from when the head arrived (one deadline, so a byte a second does not extend it); past it the answer is 408 and the connection is closed |
//! | idle connection | `idle_timeout`: no request in flight for that long (since the last one finished, or since the connection opened): closed, gracefully (HTTP/2: GOAWAY), and dropped if that takes over 5 s. HTTP/1 and HTTP/2 alike, and a connection that never sends a byte. A response still being sent (server-sent events, a slow upstream call) is in flight, so it is never cut; HTTP/2 keep-alive pings find peers that vanish meanwhile |
//! | open connections | `max_connections`: past it the accept loop waits for a slot, so new clients wait in the kernel's listen backlog (connected, not yet answered) instead of being accepted and dropped; a slot frees as soon as a connection closes, which the timeouts above guarantee. (Accept-and-close would fail clients that a moment later could have been served.) |
//! | memory per connection | hyper's HTTP/1 read buffer is capped at [`Limits::max_buf_size`] (the gateway's header limit + an 8 KiB URI + 16 KiB slack; hyper's default is ~400 KiB), so a request within the gateway's own byte limits reaches its JSON errors (431, 414) rather than hyper's bare ones. Header lines are capped at hyper's default, 100 (past it hyper answers a bare 431): hyper sets aside room for the cap on every request head, and a larger one cost the gateway about 9 % of its CPU per proxied request (callgrind) |
//!
//! With TLS ([`serve`]'s `tls`), each connection's handshake runs in its own
//! task and must finish within `header_read_timeout` (the request head then
//! has its own), so a client that stalls mid-handshake holds only its own
//! slot, and not past shutdown; ALPN offers `h2` and `http/1.1`.
//!
//! On shutdown the loop stops accepting (the listening socket is closed), every
//! connection is asked to finish (HTTP/1: after its response in flight; HTTP/2:
//! GOAWAY) and the server returns once all have closed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};

use crate::error::AppError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The longest URI the gateway answers itself (longer ones get its JSON 414).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Room in hyper's read buffer beyond the header and URI limits.
const BUF_SLACK_BYTES: usize = 16 * 1024;
/// How long a connection asked to close (idle) may take to do so before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How the server treats slow and idle clients (see the module docs).
#[derive(Clone, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// The gateway's own limit on the request's headers (its edge layer answers 431 past it).
    pub max_header_bytes: usize,
}

impl Limits {
    /// hyper's HTTP/1 read buffer: a head up to the gateway's own limits fits,
    /// so the gateway (not hyper) refuses larger ones, with its JSON errors.
    pub fn max_buf_size(&self) -> usize {
        (self.max_header_bytes + MAX_URI_BYTES + BUF_SLACK_BYTES).max(8 * 1024)
    }
}

/// The error a request body gives when it did not arrive in time; its
/// `Display` is the message of the 408. It sits in the `source()` chain of
/// the extractor's rejection (e.g. axum's `JsonRejection`).
#[derive(Clone, Debug)]
pub struct BodyTimedOut {
    pub timeout: Duration,
}

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} ms",
            self.timeout.as_millis()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

impl BodyTimedOut {
    /// Finds a `BodyTimedOut` in `err` or its `source()` chain.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
        let mut next = Some(err);
        while let Some(err) = next {
            if let Some(found) = err.downcast_ref::<BodyTimedOut>() {
                return Some(found);
            }
            next = err.source();
        }
        None
    }

    /// The gateway's 408: `{"error": {"code": "DEADLINE_EXCEEDED", "message": ...}}`.
    pub fn into_app_error(self) -> AppError {
        AppError::BadRequest {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "DEADLINE_EXCEEDED",
            message: self.to_string(),
        }
    }
}

/// hyper's connection settings for `limits`.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Header lines: hyper's default cap (100), whose room is on the stack;
        // any explicit cap is a heap allocation, filled, per request head.
        .max_buf_size(limits.max_buf_size());
    builder
        .http2()
        .timer(TokioTimer::new())
        // Pings find peers that vanished while a response is in flight (an
        // event stream); the idle timeout closes connections with none.
        .keep_alive_interval(limits.idle_timeout.min(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(u32::try_from(limits.max_buf_size()).unwrap_or(u32::MAX))
        // Clients that give up on requests reset streams; the default allows
        // only 20 pending before it closes the whole connection.
        .max_pending_accept_reset_streams(Some(1024));
    builder
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = Arc::new(builder(&limits));
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut at_limit = false;
    tokio::pin!(shutdown);
    loop {
        if slots.available_permits() == 0 && !at_limit {
            at_limit = true;
            tracing::warn!(
                max_connections = limits.max_connections,
                "connection limit reached; new connections wait in the backlog"
            );
        }
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
        };
        if at_limit && slots.available_permits() > 0 {
            at_limit = false;
        }
        let (builder, router, limits, stop) = (builder.clone(), router.clone(), limits.clone(), stop_rx.clone());
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                tokio::spawn(connection(stream, peer, builder, router, limits, stop, permit));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // The handshake has header_read_timeout to finish (then
                    // the request head has its own), and ends at shutdown.
                    let mut stopping = stop.clone();
                    let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    let handshake = tokio::select! {
                        result = handshake => result,
                        _ = stopping.wait_for(|stop| *stop) => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) => connection(stream, peer, builder, router, limits, stop, permit).await,
                        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake did not finish in time"),
                    }
                });
            }
        }
    }
    // Stop accepting at once: new clients are refused rather than queued.
    drop(listener);
    stop_tx.send_replace(true);
    drop(stop_rx);
    // Each connection holds a receiver until it has closed.
    stop_tx.closed().await;
    Ok(())
}

/// Out of file descriptors and the like: wait a little instead of spinning
/// (as hyper's and axum's servers do). A peer that reset before the accept is
/// not worth a pause.
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(err.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %err, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// How many requests a connection has in flight, and when the last one
/// finished: what the idle timeout is decided on.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `epoch` to the end of the last request (0: none yet).
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Release);
    }

    /// How long the connection has been idle; `None` while a request is in flight.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        Some(self.epoch.elapsed().saturating_sub(last))
    }
}

/// Counts a request in flight from when its head arrives until its response
/// body has been sent (or dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        // No timestamp needed: while in flight, the connection is not idle.
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection: hyper drives the protocol; this task adds the idle
/// timeout and the graceful close on shutdown. `_permit` is its slot.
async fn connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        epoch: Instant::now(),
        in_flight: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
    });
    let service = {
        let activity = activity.clone();
        let limits = limits.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // Who is on the other end (rate limits key anonymous callers by it).
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            let in_flight = InFlight::start(&activity);
            handle(router.clone(), request, limits.body_read_timeout, in_flight)
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    let (mut closing, mut stopping) = (false, false);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            () = &mut idle => {
                if closing {
                    tracing::debug!("connection did not close in time; dropping it");
                    return;
                }
                match activity.idle_for() {
                    Some(idle_for) if idle_for >= limits.idle_timeout => {
                        tracing::debug!(idle_ms = idle_for.as_millis() as u64, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        idle.as_mut().reset(Instant::now() + CLOSE_GRACE);
                    }
                    Some(idle_for) => idle.as_mut().reset(Instant::now() + (limits.idle_timeout - idle_for)),
                    None => idle.as_mut().reset(Instant::now() + limits.idle_timeout),
                }
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One request through the router, its body under the body deadline, its
/// response body carrying the in-flight count until it is sent.
async fn handle(
    router: Router,
    request: Request<Incoming>,
    body_timeout: Duration,
    in_flight: InFlight,
) -> Result<Response<Tracked>, Infallible> {
    let version = request.version();
    let (parts, body) = request.into_parts();
    // Most requests have no body: no timer, no allocation for them.
    let timed_out = (!body.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
    let body = match &timed_out {
        None => Body::new(body),
        Some(flag) => Body::new(TimedBody {
            inner: body,
            deadline: Instant::now() + body_timeout,
            timeout: body_timeout,
            sleep: None,
            timed_out: flag.clone(),
        }),
    };
    let mut response = tower::ServiceExt::oneshot(router, Request::from_parts(parts, body))
        .await
        .unwrap_or_else(|never| match never {});
    if timed_out.is_some_and(|flag| flag.load(Ordering::Acquire)) {
        // Whatever the handler made of the failed read, the answer is the
        // 408; the rest of the body is not coming, so the connection ends.
        let id = response.headers().get(&X_REQUEST_ID).cloned();
        response = BodyTimedOut { timeout: body_timeout }.into_app_error().into_response();
        if let Some(id) = id {
            response.headers_mut().insert(X_REQUEST_ID, id);
        }
        if version < Version::HTTP_2 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    Ok(response.map(|body| Tracked {
        inner: body,
        _in_flight: in_flight,
    }))
}

/// A request body that must be complete by `deadline`.
struct TimedBody<B> {
    inner: B,
    deadline: Instant,
    timeout: Duration,
    /// Made on the first wait: a body that is already there needs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        let late = this.sleep.as_ref().is_some_and(|s| s.is_elapsed());
        if !late {
            if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
                return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
            }
            let deadline = this.deadline;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        this.timed_out.store(true, Ordering::Release);
        Poll::Ready(Some(Err(Box::new(BodyTimedOut { timeout: this.timeout }))))
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted as in flight until hyper
/// has sent it (or dropped it).
pub struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::FromRequest;

    use super::*;

    /// A body whose bytes never come.
    struct Never;

    impl HttpBody for Never {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    /// What an extractor sees when the deadline passes, and how error
    /// mapping finds it in the rejection.
    #[tokio::test]
    async fn a_late_body_fails_reads_with_body_timed_out_in_the_rejection() {
        let timeout = Duration::from_millis(20);
        let flag = Arc::new(AtomicBool::new(false));
        let body = Body::new(TimedBody {
            inner: Never,
            deadline: Instant::now() + timeout,
            timeout,
            sleep: None,
            timed_out: flag.clone(),
        });
        let request = Request::builder().body(body).unwrap();
        let rejection = Bytes::from_request(request, &()).await.unwrap_err();
        assert!(flag.load(Ordering::Acquire));
        let found = BodyTimedOut::find(&rejection).expect("in the source chain");
        assert_eq!(found.timeout, timeout);
        let (status, code, message) = found.clone().into_app_error().parts();
        assert_eq!((status, code), (StatusCode::REQUEST_TIMEOUT, "DEADLINE_EXCEEDED"));
        assert_eq!(message, "the request body did not arrive within 20 ms");
    }

    #[test]
    fn hyper_limits_cover_the_gateways_own() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
        };
        assert_eq!(limits.max_buf_size(), 40 * 1024);
    }
}
