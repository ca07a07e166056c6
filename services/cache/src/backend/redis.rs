//! Redis backend: every replica sees the same keys, and Redis keeps the TTLs.

use std::time::Duration;

use bytes::Bytes;
use mesh_redis::redis::{self, AsyncCommands};

use super::CacheBackend;
use crate::error::CacheError;

pub struct RedisBackend {
    conn: mesh_redis::Conn,
    /// Namespaces this service's keys, so it can share a Redis with others
    /// (and tests can share one Redis without seeing each other's keys).
    prefix: String,
}

impl RedisBackend {
    pub fn new(conn: mesh_redis::Conn, prefix: String) -> Self {
        Self { conn, prefix }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait::async_trait]
impl CacheBackend for RedisBackend {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        let mut conn = self.conn.manager();
        let value: Option<Vec<u8>> = self.conn.timed("GET", conn.get(self.key(key))).await?;
        Ok(value.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), CacheError> {
        let mut conn = self.conn.manager();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value.as_ref());
        if let Some(ttl) = ttl {
            // PX takes whole milliseconds; never round a short TTL down to 0.
            cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
        }
        let _: () = self.conn.timed("SET", cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let mut conn = self.conn.manager();
        let removed: u64 = self.conn.timed("DEL", conn.del(self.key(key))).await?;
        Ok(removed > 0)
    }

    async fn entries(&self) -> Result<u64, CacheError> {
        // SCAN, not KEYS: it never blocks Redis. Cost grows with the keyspace,
        // so Stats is an operator call, not a hot path.
        let mut conn = self.conn.manager();
        let pattern = format!("{}*", escape_glob(&self.prefix));
        let mut cursor: u64 = 0;
        let mut count: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .conn
                .timed(
                    "SCAN",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            count += keys.len() as u64;
            if next == 0 {
                return Ok(count);
            }
            cursor = next;
        }
    }

    async fn ping(&self) -> bool {
        mesh_redis::ping(&self.conn).await
    }
}

/// Escapes Redis glob metacharacters so the prefix matches literally.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
