//! Redis counters: every replica increments the same key, atomically, inside
//! Redis. One Lua script does the idempotency check, INCRBY and the key's
//! record, so a retried request can never count twice, whichever replica
//! receives the retry.

use std::time::Duration;

use mesh_redis::redis::{AsyncCommands, Script};

use super::CounterBackend;
use crate::error::{CounterError, IDEMPOTENCY_KEY_REUSED};

/// KEYS[1]: the counter. KEYS[2]: the counter's generation (raised by each
/// reset). KEYS[3] (optional): the idempotency record, `"gen:delta:value"`.
/// ARGV[1]: delta. ARGV[2]: the record's lifetime in ms.
///
/// A record from an older generation (the counter was reset since) no longer
/// applies. The generation key lives at least as long as any record of its
/// generation (each keyed increment extends it), so a record never outlives
/// the generation it names. Values travel as strings: Lua numbers are
/// doubles and would round counters past 2^53.
const INCREMENT: &str = r"
local gen = redis.call('GET', KEYS[2]) or '0'
if KEYS[3] then
  local record = redis.call('GET', KEYS[3])
  if record then
    local g, d, v = string.match(record, '^(%d+):(%-?%d+):(%-?%d+)$')
    if not g then return record end
    if g == gen then
      if d ~= ARGV[1] then return redis.error_reply('IDEMPOTENCY_KEY_REUSED ' .. d) end
      return v
    end
  end
end
redis.call('INCRBY', KEYS[1], ARGV[1])
local value = redis.call('GET', KEYS[1])
if KEYS[3] then
  redis.call('SET', KEYS[3], gen .. ':' .. ARGV[1] .. ':' .. value, 'PX', ARGV[2])
  if gen ~= '0' then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
end
return value
";

/// KEYS[1]: the counter. KEYS[2]: its generation. ARGV[1]: the idempotency
/// window in ms. Deletes the counter and starts a new generation, so keys
/// used before the reset no longer apply. Returns the old value.
const RESET: &str = r"
local old = redis.call('GET', KEYS[1]) or '0'
redis.call('DEL', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return old
";

pub struct RedisBackend {
    conn: mesh_redis::Conn,
    prefix: String,
    window: Duration,
    increment: Script,
    reset: Script,
}

impl RedisBackend {
    pub fn new(conn: mesh_redis::Conn, prefix: String, window: Duration) -> Self {
        Self {
            conn,
            prefix,
            window,
            increment: Script::new(INCREMENT),
            reset: Script::new(RESET),
        }
    }

    fn counter_key(&self, name: &str) -> String {
        format!("{}c:{name}", self.prefix)
    }

    fn generation_key(&self, name: &str) -> String {
        format!("{}g:{name}", self.prefix)
    }

    fn window_ms(&self) -> u64 {
        self.window.as_millis().max(1) as u64
    }
}

#[async_trait::async_trait]
impl CounterBackend for RedisBackend {
    async fn increment(&self, name: &str, delta: i64, idempotency_key: Option<&str>) -> Result<i64, CounterError> {
        let mut conn = self.conn.manager();
        let mut invocation = self.increment.key(self.counter_key(name));
        invocation.key(self.generation_key(name));
        if let Some(k) = idempotency_key {
            // Length-prefix the name so ("a:b", "c") and ("a", "b:c") differ.
            invocation.key(format!("{}i:{}:{name}:{k}", self.prefix, name.len()));
        }
        invocation.arg(delta).arg(self.window_ms());
        match self
            .conn
            .timed("script:increment", invocation.invoke_async::<i64>(&mut conn))
            .await
        {
            Ok(v) => Ok(v),
            Err(err) if err.code() == Some(IDEMPOTENCY_KEY_REUSED) => Err(CounterError::IdempotencyKeyReused {
                first_delta: err
                    .detail()
                    .and_then(|d| d.split_whitespace().next()?.parse().ok())
                    .unwrap_or_default(),
                delta,
            }),
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
        let mut conn = self.conn.manager();
        let v: Option<i64> = self.conn.timed("GET", conn.get(self.counter_key(name))).await?;
        Ok(v.unwrap_or(0))
    }

    async fn reset(&self, name: &str) -> Result<i64, CounterError> {
        let mut conn = self.conn.manager();
        let mut invocation = self.reset.key(self.counter_key(name));
        invocation.key(self.generation_key(name)).arg(self.window_ms());
        Ok(self
            .conn
            .timed("script:reset", invocation.invoke_async::<i64>(&mut conn))
            .await?)
    }

    async fn ping(&self) -> bool {
        mesh_redis::ping(&self.conn).await
    }
}
