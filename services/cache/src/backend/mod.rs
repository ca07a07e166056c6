//! Where cached values live. Both backends keep TTLs themselves (moka's
//! per-entry expiry, Redis' PX), so an expired entry is never served.

pub mod memory;
pub mod redis;

use std::time::Duration;

use bytes::Bytes;

use crate::error::CacheError;

#[async_trait::async_trait]
pub trait CacheBackend: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError>;
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), CacheError>;
    /// True when the key existed.
    async fn delete(&self, key: &str) -> Result<bool, CacheError>;
    /// Live entries (for Redis, keys under this service's prefix).
    async fn entries(&self) -> Result<u64, CacheError>;
    /// Whether the backend answers; drives health.
    async fn ping(&self) -> bool;
}
