//! Where counters live. Each backend makes "read, add, remember the
//! idempotency key" one atomic step, so no increment is lost or counted twice.

pub mod memory;
pub mod redis;

use crate::error::CounterError;

#[async_trait::async_trait]
pub trait CounterBackend: Send + Sync + 'static {
    /// Adds `delta` and returns the new value. With `idempotency_key`, a repeat
    /// within the window returns the first call's value and adds nothing.
    async fn increment(&self, name: &str, delta: i64, idempotency_key: Option<&str>) -> Result<i64, CounterError>;
    async fn get(&self, name: &str) -> Result<i64, CounterError>;
    /// Sets the counter to 0; returns the value it had.
    async fn reset(&self, name: &str) -> Result<i64, CounterError>;
    async fn ping(&self) -> bool;
}
