//! One Redis connection per process, shared by every call.
//!
//! The `redis` crate's `ConnectionManager` multiplexes all commands over one
//! connection and reconnects by itself when Redis comes back, so a service
//! never needs a restart after a Redis outage. Every command also runs under a
//! short timeout: while Redis is down, callers fail fast with UNAVAILABLE
//! instead of hanging.
//!
//! Every command is measured, by the name its caller gives it (a bounded
//! set: `GET`, `SET`, `script:increment`, ...):
//! `mesh_redis_command_duration_seconds{command}` (answered or not) and
//! `mesh_redis_command_errors_total{command,kind}`, where `kind` is
//! `unavailable` (Redis could not be reached, or did not answer in time) or
//! `reply` (Redis answered with an error, such as a script's refusal).
#![forbid(unsafe_code)]

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use mesh_common::metrics::register;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

pub use redis;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The longest a single command may take before the call fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(1000);

/// Opens (lazily) the shared connection. Fails only on a malformed URL:
/// an unreachable server is reported by the calls, and by health.
pub fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

struct Metrics {
    duration: HistogramVec,
    errors: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    Metrics {
    duration: register(
        HistogramVec::new(
            HistogramOpts::new(
                "mesh_redis_command_duration_seconds",
                "How long Redis commands took, answered or not.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["command"],
        )
        .expect("valid metric"),
    ),
    errors: register(
        IntCounterVec::new(
            Opts::new(
                "mesh_redis_command_errors_total",
                "Redis commands that failed: unavailable (unreachable, or no answer in time) or reply (an error answer).",
            ),
            &["command", "kind"],
        )
        .expect("valid metric"),
    ),
}
});

/// Runs `cmd` (named `command` in the metrics) under [`COMMAND_TIMEOUT`]; a
/// timeout becomes an I/O-kind error.
pub async fn timed<T, F>(command: &'static str, cmd: F) -> redis::RedisResult<T>
where
    F: std::future::Future<Output = redis::RedisResult<T>>,
{
    let started = Instant::now();
    let result = match tokio::time::timeout(COMMAND_TIMEOUT, cmd).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "redis command timed out",
        ))),
    };
    if !mesh_common::metrics::enabled() {
        return result;
    }
    let metrics = &*METRICS;
    metrics
        .duration
        .with_label_values(&[command])
        .observe(started.elapsed().as_secs_f64());
    if let Err(err) = &result {
        let kind = if is_unavailable(err) { "unavailable" } else { "reply" };
        metrics.errors.with_label_values(&[command, kind]).inc();
    }
    result
}

/// True when Redis answers PING in time.
pub async fn ping(conn: &ConnectionManager) -> bool {
    let mut conn = conn.clone();
    timed("PING", redis::cmd("PING").query_async::<String>(&mut conn))
        .await
        .is_ok()
}

/// Whether an error means "Redis cannot be reached now" rather than a refused command.
pub fn is_unavailable(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(err.kind(), redis::ErrorKind::Io)
}
