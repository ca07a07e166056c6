//! The cache domain: validation and hit/miss accounting in front of a backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::backend::CacheBackend;
use crate::error::CacheError;

pub const MAX_KEY_CHARS: usize = 512;
pub const MAX_NAMESPACE_BYTES: usize = 64;
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

    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Bytes>, CacheError> {
        let key = storage_key(namespace, key)?;
        let value = self.backend.get(&key).await?;
        let counter = if value.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(value)
    }

    pub async fn set(&self, namespace: &str, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), CacheError> {
        let key = storage_key(namespace, key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(CacheError::invalid(
                "value",
                format!("is {} bytes; at most {MAX_VALUE_BYTES}", value.len()),
            ));
        }
        if ttl.is_some_and(|ttl| ttl.is_zero() || ttl > MAX_TTL) {
            return Err(CacheError::invalid("ttl", "must be positive and at most 365 days"));
        }
        self.backend.set(&key, value, ttl).await
    }

    pub async fn delete(&self, namespace: &str, key: &str) -> Result<bool, CacheError> {
        let key = storage_key(namespace, key)?;
        self.backend.delete(&key).await
    }

    pub async fn stats(&self) -> Result<Stats, CacheError> {
        Ok(Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.backend.entries().await?,
        })
    }
}

/// Where `(namespace, key)` is stored. Public keys (namespace "") are stored
/// as they are; a namespaced key is stored as `"\0{namespace}\0{key}"`.
/// Keys may not contain NUL, so no public key can ever name an entry of
/// another keyspace (such as the gateway's cached items).
fn storage_key(namespace: &str, key: &str) -> Result<String, CacheError> {
    validate_key(key)?;
    if namespace.is_empty() {
        return Ok(key.to_string());
    }
    let valid = namespace.len() <= MAX_NAMESPACE_BYTES
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(CacheError::invalid(
            "namespace",
            format!("must be \"\" or 1 to {MAX_NAMESPACE_BYTES} of a-z, 0-9, '.', '_' and '-'"),
        ));
    }
    Ok(format!("\0{namespace}\0{key}"))
}

fn validate_key(key: &str) -> Result<(), CacheError> {
    if key.contains('\0') {
        return Err(CacheError::invalid(
            "key",
            "must not contain the NUL character (U+0000)",
        ));
    }
    if key.is_empty() {
        return Err(CacheError::invalid("key", "must not be empty"));
    }
    // Characters, not bytes, as the HTTP contract counts a string's length
    // (JSON Schema's maxLength).
    let chars = key.chars().count();
    if chars > MAX_KEY_CHARS {
        return Err(CacheError::invalid(
            "key",
            format!("is {chars} characters; at most {MAX_KEY_CHARS}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;

    #[tokio::test]
    async fn namespaces_never_share_entries() {
        let store = CacheStore::new(Arc::new(MemoryBackend::new(1 << 20)));
        store
            .set("gateway", "item:1", Bytes::from_static(b"real"), None)
            .await
            .unwrap();
        store
            .set("", "item:1", Bytes::from_static(b"forged"), None)
            .await
            .unwrap();
        assert_eq!(store.get("gateway", "item:1").await.unwrap().unwrap(), "real");
        assert_eq!(store.get("", "item:1").await.unwrap().unwrap(), "forged");
        // No public key spells another keyspace's storage key.
        assert!(store.get("", "\0gateway\0item:1").await.is_err());
        assert!(store.set("Gateway!", "k", Bytes::new(), None).await.is_err());
        assert!(store.delete("gateway", "item:1").await.unwrap());
        assert_eq!(store.get("", "item:1").await.unwrap().unwrap(), "forged");
    }
}
