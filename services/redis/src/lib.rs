//! One Redis connection per process, shared by every call.
//!
//! The `redis` crate's `ConnectionManager` multiplexes all commands over one
//! connection and reconnects by itself when Redis comes back, so a service
//! never needs a restart after a Redis outage. Every command also runs under a
//! short timeout: while Redis is down, callers fail fast with UNAVAILABLE
//! instead of hanging.
#![forbid(unsafe_code)]

use std::time::Duration;

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

/// Runs `cmd` under [`COMMAND_TIMEOUT`]; a timeout becomes an I/O-kind error.
pub async fn timed<T, F>(cmd: F) -> redis::RedisResult<T>
where
    F: std::future::Future<Output = redis::RedisResult<T>>,
{
    match tokio::time::timeout(COMMAND_TIMEOUT, cmd).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "redis command timed out",
        ))),
    }
}

/// True when Redis answers PING in time.
pub async fn ping(conn: &ConnectionManager) -> bool {
    let mut conn = conn.clone();
    timed(redis::cmd("PING").query_async::<String>(&mut conn)).await.is_ok()
}

/// Whether an error means "Redis cannot be reached now" rather than a refused command.
pub fn is_unavailable(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(err.kind(), redis::ErrorKind::Io)
}
