//! One Redis connection per process, shared by every call.
//!
//! The `redis` crate's `ConnectionManager` multiplexes all commands over one
//! connection and reconnects by itself when Redis comes back, so a service
//! never needs a restart after a Redis outage. Every command also runs under a
//! short timeout: while Redis is down, callers fail fast with UNAVAILABLE
//! instead of hanging.
//!
//! The manager reconnects only when its connection breaks. A connection
//! that stays open but goes silent is a different fault: a proxy or NAT
//! that lost the other half, or a path that swallows packets. Every command
//! on it times out, and the manager would keep it for good. So [`Conn`]
//! counts commands in a row that got no answer: after
//! [`REPLACE_AFTER_SILENT`] of them it opens a new connection, at most once
//! per [`REPLACE_AT_MOST_EVERY`].
//!
//! Every command is measured, by the name its caller gives it (a bounded
//! set: `GET`, `SET`, `script:increment`, ...):
//! `mesh_redis_command_duration_seconds{command}` (answered or not) and
//! `mesh_redis_command_errors_total{command,kind}`, where `kind` is
//! `unavailable` (Redis could not be reached, or did not answer in time) or
//! `reply` (Redis answered with an error, such as a script's refusal).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use mesh_common::metrics::register;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

pub use redis;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The longest a single command may take before the call fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(1000);

/// Commands in a row without an answer after which the connection is
/// replaced.
pub const REPLACE_AFTER_SILENT: u32 = 3;

/// The shortest time between two replacements: the commands already in
/// flight on a silent connection time out together, and must not replace
/// the new one too.
pub const REPLACE_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// The shared connection: cheap to clone, one per process.
#[derive(Clone)]
pub struct Conn(Arc<Inner>);

struct Inner {
    client: redis::Client,
    current: Mutex<ConnectionManager>,
    /// Commands in a row that got no answer.
    silent: AtomicU32,
    /// When the connection was last replaced (ms since `epoch`), plus one.
    replaced_ms: AtomicU64,
    epoch: Instant,
}

/// Opens (lazily) the shared connection. Fails only on a malformed URL:
/// an unreachable server is reported by the calls, and by health.
pub fn connect(url: &str) -> redis::RedisResult<Conn> {
    let client = redis::Client::open(url)?;
    let manager = manager(&client)?;
    Ok(Conn(Arc::new(Inner {
        client,
        current: Mutex::new(manager),
        silent: AtomicU32::new(0),
        replaced_ms: AtomicU64::new(0),
        epoch: Instant::now(),
    })))
}

fn manager(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

impl Conn {
    /// The connection to send a command on.
    pub fn manager(&self) -> ConnectionManager {
        self.0.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// [`timed`], and what its outcome says about the connection.
    pub async fn timed<T, F>(&self, command: &'static str, cmd: F) -> redis::RedisResult<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = timed(command, cmd).await;
        self.note(&result);
        result
    }

    /// Counts a command's outcome: an answer (even an error answer) clears
    /// the count, a timeout adds to it.
    pub fn note<T>(&self, result: &redis::RedisResult<T>) {
        match result {
            Err(err) if err.is_timeout() => self.silent(),
            _ => self.0.silent.store(0, Ordering::Relaxed),
        }
    }

    /// A command that got no answer in time (for callers with a timeout of
    /// their own).
    pub fn silent(&self) {
        let inner = &self.0;
        if inner.silent.fetch_add(1, Ordering::Relaxed) + 1 < REPLACE_AFTER_SILENT {
            return;
        }
        let now = inner.epoch.elapsed().as_millis() as u64 + 1;
        let last = inner.replaced_ms.load(Ordering::Relaxed);
        let gap = REPLACE_AT_MOST_EVERY.as_millis() as u64;
        if last != 0 && now < last + gap {
            return;
        }
        if inner
            .replaced_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another caller is replacing it
        }
        match manager(&inner.client) {
            Ok(fresh) => {
                *inner.current.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                inner.silent.store(0, Ordering::Relaxed);
                tracing::warn!(
                    silent = REPLACE_AFTER_SILENT,
                    "the Redis connection stopped answering; opened a new one"
                );
            }
            Err(err) => tracing::warn!(error = %err, "cannot open a new Redis connection"),
        }
    }
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
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
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
pub async fn ping(conn: &Conn) -> bool {
    let mut manager = conn.manager();
    conn.timed("PING", redis::cmd("PING").query_async::<String>(&mut manager))
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
