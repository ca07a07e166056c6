//! In-process backend: a size-bounded moka cache with per-entry TTLs.
//! Private to one process, so a second replica would not see its entries.

use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::Expiry;
use moka::future::Cache;

use super::CacheBackend;
use crate::error::CacheError;

#[derive(Clone)]
struct Entry {
    value: Bytes,
    ttl: Option<Duration>,
}

/// Each entry expires after its own TTL (none: only size-based eviction).
struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, entry: &Entry, _now: Instant) -> Option<Duration> {
        entry.ttl
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &Entry,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        entry.ttl
    }
}

pub struct MemoryBackend {
    cache: Cache<String, Entry>,
}

impl MemoryBackend {
    /// `max_bytes` bounds the sum of key and value sizes; least-used entries go first.
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, entry: &Entry| u32::try_from(key.len() + entry.value.len()).unwrap_or(u32::MAX))
            .expire_after(PerEntryTtl)
            .build();
        Self { cache }
    }
}

#[async_trait::async_trait]
impl CacheBackend for MemoryBackend {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        Ok(self.cache.get(key).await.map(|e| e.value))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), CacheError> {
        self.cache.insert(key.to_string(), Entry { value, ttl }).await;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        Ok(self.cache.remove(key).await.is_some())
    }

    async fn entries(&self) -> Result<u64, CacheError> {
        // moka's own count is lazy (expired entries linger in it until its
        // timer wheel turns, up to about a second); iteration skips them.
        // O(entries), which is fine for an operator's Stats call.
        self.cache.run_pending_tasks().await;
        Ok(self.cache.iter().count() as u64)
    }

    async fn ping(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ttl_expires_and_delete_reports_presence() {
        let b = MemoryBackend::new(1 << 20);
        b.set("a", Bytes::from_static(b"1"), Some(Duration::from_millis(50)))
            .await
            .unwrap();
        b.set("b", Bytes::from_static(b"2"), None).await.unwrap();
        assert_eq!(b.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(b.get("a").await.unwrap(), None);
        assert_eq!(b.entries().await.unwrap(), 1);
        assert!(b.delete("b").await.unwrap());
        assert!(!b.delete("b").await.unwrap());
    }
}
