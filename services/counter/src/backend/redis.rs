//! Redis counters: every replica increments the same key, atomically, inside
//! Redis. One Lua script does the idempotency check, INCRBY and the key's
//! record, so a retried request can never count twice, whichever replica
//! receives the retry.

use std::time::Duration;

use mesh_redis::redis::{self, AsyncCommands, Script, aio::ConnectionManager};
use mesh_redis::timed;

use super::CounterBackend;
use crate::error::CounterError;

/// KEYS[1]: the counter. KEYS[2] (optional): the idempotency record.
/// ARGV[1]: delta. ARGV[2]: the record's lifetime in ms.
const INCREMENT: &str = r"
if KEYS[2] then
  local first = redis.call('GET', KEYS[2])
  if first then return tonumber(first) end
end
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if KEYS[2] then
  redis.call('SET', KEYS[2], value, 'PX', ARGV[2])
end
return value
";

pub struct RedisBackend {
    conn: ConnectionManager,
    prefix: String,
    window: Duration,
    script: Script,
}

impl RedisBackend {
    pub fn new(conn: ConnectionManager, prefix: String, window: Duration) -> Self {
        Self {
            conn,
            prefix,
            window,
            script: Script::new(INCREMENT),
        }
    }

    fn counter_key(&self, name: &str) -> String {
        format!("{}c:{name}", self.prefix)
    }
}

#[async_trait::async_trait]
impl CounterBackend for RedisBackend {
    async fn increment(&self, name: &str, delta: i64, idempotency_key: Option<&str>) -> Result<i64, CounterError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(self.counter_key(name));
        if let Some(k) = idempotency_key {
            // Length-prefix the name so ("a:b", "c") and ("a", "b:c") differ.
            invocation.key(format!("{}i:{}:{name}:{k}", self.prefix, name.len()));
        }
        invocation.arg(delta).arg(self.window.as_millis().max(1) as u64);
        match timed(invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(v) => Ok(v),
            Err(err) if err.to_string().contains("overflow") => {
                let value = self.get(name).await.unwrap_or_default();
                Err(CounterError::Overflow {
                    name: name.to_string(),
                    value,
                    delta,
                })
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn get(&self, name: &str) -> Result<i64, CounterError> {
        let mut conn = self.conn.clone();
        let v: Option<i64> = timed(conn.get(self.counter_key(name))).await?;
        Ok(v.unwrap_or(0))
    }

    async fn reset(&self, name: &str) -> Result<i64, CounterError> {
        let mut conn = self.conn.clone();
        let v: Option<i64> = timed(redis::cmd("GETDEL").arg(self.counter_key(name)).query_async(&mut conn)).await?;
        Ok(v.unwrap_or(0))
    }

    async fn ping(&self) -> bool {
        mesh_redis::ping(&self.conn).await
    }
}
