//! Tracing set-up, called once from each binary's `main`.

use tracing_subscriber::EnvFilter;

/// Installs a compact stderr subscriber. `RUST_LOG` picks the levels (default
/// `info`); `MESH_LOG_ANSI=0` turns colours off (launchers and tests set it).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::env::var("MESH_LOG_ANSI").map_or(true, |v| v != "0");
    // try_init: a second call (the launcher re-executing itself) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
