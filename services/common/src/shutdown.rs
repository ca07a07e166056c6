//! The shutdown signal: the future every server's `run` is given.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal as listen};

/// A future that resolves on the first SIGINT (Ctrl-C) or SIGTERM.
///
/// The handlers are installed when this function is called, not when the
/// future is first polled: a server reports SERVING before its accept loop
/// polls the shutdown future, and a SIGTERM in that gap must still be a
/// graceful stop, not the default kill.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    let interrupt = listen(SignalKind::interrupt());
    let terminate = listen(SignalKind::terminate());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(interrupt, "SIGINT") => tracing::info!("SIGINT received, shutting down"),
            () = wait(terminate, "SIGTERM") => tracing::info!("SIGTERM received, shutting down"),
        }
    }
}

/// The boxed form of [`signal`] that `serve_main` hands to a server's `run`.
pub type Signal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
