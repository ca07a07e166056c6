//! Start-up pieces every mesh server shares, so each service's `main` stays thin.
//!
//! - [`telemetry`]: one tracing subscriber, configured by `RUST_LOG`;
//! - [`shutdown`]: the SIGINT/SIGTERM future handed to every `run(listener, shutdown)`;
//! - [`grpc`]: the tonic server every service runs, with `grpc.health.v1` and server
//!   reflection (`v1` and `v1alpha`) mounted beside the service's own routes;
//! - [`rpc`]: the per-call layer: request-id spans, call logs, abandoned-work logs;
//! - [`announce`]: the one stdout line that tells launchers and tests the bound address.
#![forbid(unsafe_code)]

pub mod grpc;
pub mod rpc;
pub mod shutdown;
pub mod telemetry;

use std::io::Write;
use std::net::SocketAddr;

/// Prints `"<name> listening on <addr>"` to stdout and flushes it.
///
/// Launchers and tests start servers on port 0 and read this line to learn the
/// port; it is printed once the socket is bound, so connecting right after it
/// cannot be refused. Logs go to stderr, so this is the only stdout line.
pub fn announce(name: &str, addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (a launcher that stopped reading) must not stop the server.
    let _ = writeln!(out, "{name} listening on {addr}");
    let _ = out.flush();
}

/// The shared body of every server binary's `main`: bind `listen`, announce the
/// address, and run the server until SIGINT/SIGTERM.
pub async fn serve_main<R, Fut>(name: &str, listen: SocketAddr, run: R) -> anyhow::Result<()>
where
    R: FnOnce(tokio::net::TcpListener, shutdown::Signal) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context;
    telemetry::init();
    // Before anything slow (binding, connecting to a database): from here on
    // SIGTERM means a graceful stop.
    let shutdown = Box::pin(shutdown::signal());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "{name} starting");
    announce(name, addr);
    run(listener, shutdown).await
}
