//! The cache domain: validation and hit/miss accounting in front of a backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::backend::CacheBackend;
use crate::error::CacheError;

pub const MAX_KEY_BYTES: usize = 512;
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// A year: longer TTLs are almost certainly unit mistakes.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
}

#[derive(Clone)]
pub struct CacheStore {
    backend: Arc<dyn CacheBackend>,
    /// Counted per process: with several replicas, each reports its own.
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl CacheStore {
    pub fn new(backend: Arc<dyn CacheBackend>) -> Self {
        Self {
            backend,
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    pub fn backend(&self) -> &Arc<dyn CacheBackend> {
        &self.backend
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        validate_key(key)?;
        let value = self.backend.get(key).await?;
        let counter = if value.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(value)
    }

    pub async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), CacheError> {
        validate_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(CacheError::invalid(
                "value",
                format!("is {} bytes; at most {MAX_VALUE_BYTES}", value.len()),
            ));
        }
        if ttl.is_some_and(|ttl| ttl.is_zero() || ttl > MAX_TTL) {
            return Err(CacheError::invalid("ttl", "must be positive and at most 365 days"));
        }
        self.backend.set(key, value, ttl).await
    }

    pub async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        validate_key(key)?;
        self.backend.delete(key).await
    }

    pub async fn stats(&self) -> Result<Stats, CacheError> {
        Ok(Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.backend.entries().await?,
        })
    }
}

fn validate_key(key: &str) -> Result<(), CacheError> {
    if key.is_empty() {
        return Err(CacheError::invalid("key", "must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(CacheError::invalid(
            "key",
            format!("is {} bytes; at most {MAX_KEY_BYTES}", key.len()),
        ));
    }
    Ok(())
}
