//! Start-up pieces every mesh server shares, so each service's `main` stays thin.
//!
//! - [`telemetry`]: one tracing subscriber (`RUST_LOG`, `MESH_ACCESS_LOG`, `MESH_SLOW_MS`, `MESH_LOG_ANSI`), non-blocking;
//! - [`shutdown`]: the SIGINT/SIGTERM future handed to every `run(listener, shutdown)`;
//! - [`grpc`]: the tonic server every service runs, with `grpc.health.v1` and server
//!   reflection (`v1` and `v1alpha`) mounted beside the service's own routes;
//! - [`rpc`]: the per-call layer: request ids on every line, end-of-call logs, abandoned-work logs;
//! - [`announce`]: the stdout line that tells launchers and tests the bound address
//!   ([`announce_admin`]: the second line, the admin listener's);
//! - [`admin`]: the admin listener (`/healthz`, `/readyz`) every server runs;
//! - [`redact`]: passwords masked in URLs before they reach a log or an error;
//! - [`probe`]: `BINARY healthcheck` (for images with no curl) and `--check-config`;
//! - [`tls`]: certificates that reload, mutual TLS configurations, development certificates.
#![forbid(unsafe_code)]

pub mod admin;
pub mod grpc;
pub mod metrics;
pub mod otel;
pub mod probe;
pub mod reason;
pub mod redact;
pub mod rpc;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod tracecontext;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// The name the first [`announce`] used, for [`announce_admin`].
static ANNOUNCED_AS: OnceLock<String> = OnceLock::new();

/// Prints `"<name> listening on <addr>"` to stdout and flushes it.
///
/// Launchers and tests start servers on port 0 and read this line to learn the
/// port; it is printed once the socket is bound, so connecting right after it
/// cannot be refused. Logs go to stderr, so stdout has only this line and
/// [`announce_admin`]'s.
pub fn announce(name: &str, addr: SocketAddr) {
    let _ = ANNOUNCED_AS.set(name.to_string());
    print_line(&format!("{name} listening on {addr}"));
}

/// Prints `"<name> admin listening on <addr>"` (the name [`announce`] used),
/// once the admin listener is bound: always after the first line, and for a
/// service only once its start-up (database, migrations) is done.
pub fn announce_admin(addr: SocketAddr) {
    let name = ANNOUNCED_AS.get().map_or("server", String::as_str);
    print_line(&format!("{name} admin listening on {addr}"));
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (a launcher that stopped reading) must not stop the server.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The shared body of every server binary's `main`: bind `listen`, announce the
/// address, and run the server until SIGINT/SIGTERM.
pub async fn serve_main<R, Fut>(name: &str, listen: SocketAddr, log: telemetry::LogArgs, run: R) -> anyhow::Result<()>
where
    R: FnOnce(tokio::net::TcpListener, shutdown::Signal) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context;
    let _log = telemetry::init(log.log_format); // flushes the log when serve_main returns
    metrics::set_enabled(log.metrics);
    let traces = otel::init(&log.otel, name)?;
    // Before anything slow (binding, connecting to a database): from here on
    // SIGTERM means a graceful stop.
    let shutdown = Box::pin(shutdown::signal());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "{name} starting");
    announce(name, addr);
    let result = run(listener, shutdown).await.map_err(without_passwords);
    if let Some(traces) = traces {
        traces.shutdown().await; // the last spans, before the log's last line
    }
    result
}

/// The error `main` prints, with any URL password in it masked (a bad
/// `--database-url` must not print its password). Unchanged when there is none.
fn without_passwords(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    match redact::passwords(&text) {
        std::borrow::Cow::Borrowed(_) => err,
        std::borrow::Cow::Owned(clean) => anyhow::anyhow!(clean),
    }
}
