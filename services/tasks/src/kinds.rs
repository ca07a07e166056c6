//! Task kinds: what a worker knows how to run.
//!
//! Adding a kind is one type implementing [`TaskKind`] plus one line in
//! [`Registry::builtin`]. Blocking and CPU-heavy kinds run their work with
//! `spawn_blocking`, so they never stall the async runtime that answers gRPC.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const MAX_SLEEP_MS: u64 = 10 * 60 * 1000;
pub const MAX_HASH_ROUNDS: u64 = 50_000_000;

#[async_trait::async_trait]
pub trait TaskKind: Send + Sync + 'static {
    /// The name clients submit, e.g. `"sleep"`.
    fn name(&self) -> &'static str;
    /// Checks a payload at submit time, so bad input is refused up front
    /// rather than failing later in a worker. The message names the problem.
    fn validate(&self, payload: &Value) -> Result<(), String>;
    /// Runs the task. An `Err` fails the task with that message.
    async fn run(&self, payload: Value) -> Result<Value, String>;
}

/// Returns the payload unchanged.
pub struct Echo;

#[async_trait::async_trait]
impl TaskKind for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn validate(&self, _payload: &Value) -> Result<(), String> {
        Ok(())
    }
    async fn run(&self, payload: Value) -> Result<Value, String> {
        Ok(payload)
    }
}

/// The seed's blocking task: `time.sleep` on a thread of the blocking pool.
/// Payload `{"ms": N}`.
pub struct Sleep;

fn sleep_ms(payload: &Value) -> Result<u64, String> {
    let ms = payload
        .get("ms")
        .and_then(Value::as_u64)
        .ok_or("payload.ms: required, a whole number of milliseconds")?;
    if ms > MAX_SLEEP_MS {
        return Err(format!("payload.ms: at most {MAX_SLEEP_MS}"));
    }
    Ok(ms)
}

#[async_trait::async_trait]
impl TaskKind for Sleep {
    fn name(&self) -> &'static str {
        "sleep"
    }
    fn validate(&self, payload: &Value) -> Result<(), String> {
        sleep_ms(payload).map(drop)
    }
    async fn run(&self, payload: Value) -> Result<Value, String> {
        let ms = sleep_ms(&payload)?;
        tokio::task::spawn_blocking(move || std::thread::sleep(Duration::from_millis(ms)))
            .await
            .map_err(|e| format!("sleep thread failed: {e}"))?;
        Ok(json!({"message": "Task complete!", "slept_ms": ms}))
    }
}

/// CPU-bound work: SHA-256 applied `rounds` times to `data`.
/// Payload `{"data": "...", "rounds": N}`.
pub struct Hash;

fn hash_args(payload: &Value) -> Result<(String, u64), String> {
    let data = match payload.get("data") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("payload.data: must be a string".into()),
    };
    let rounds = match payload.get("rounds") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|r| *r >= 1)
            .ok_or("payload.rounds: must be a whole number >= 1")?,
    };
    if rounds > MAX_HASH_ROUNDS {
        return Err(format!("payload.rounds: at most {MAX_HASH_ROUNDS}"));
    }
    Ok((data, rounds))
}

#[async_trait::async_trait]
impl TaskKind for Hash {
    fn name(&self) -> &'static str {
        "hash"
    }
    fn validate(&self, payload: &Value) -> Result<(), String> {
        hash_args(payload).map(drop)
    }
    async fn run(&self, payload: Value) -> Result<Value, String> {
        let (data, rounds) = hash_args(&payload)?;
        let digest = tokio::task::spawn_blocking(move || {
            let mut digest: [u8; 32] = Sha256::digest(data.as_bytes()).into();
            for _ in 1..rounds {
                digest = Sha256::digest(digest).into();
            }
            digest
        })
        .await
        .map_err(|e| format!("hash thread failed: {e}"))?;
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok(json!({"sha256": hex, "rounds": rounds}))
    }
}

/// The kinds a service runs, by name.
#[derive(Clone)]
pub struct Registry {
    kinds: Arc<BTreeMap<&'static str, Arc<dyn TaskKind>>>,
}

impl Registry {
    pub fn builtin() -> Self {
        Self::new(vec![Arc::new(Echo), Arc::new(Sleep), Arc::new(Hash)])
    }

    pub fn new(kinds: Vec<Arc<dyn TaskKind>>) -> Self {
        Self {
            kinds: Arc::new(kinds.into_iter().map(|k| (k.name(), k)).collect()),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn TaskKind>> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_is_repeated_sha256() {
        let out = Hash.run(json!({"data": "abc", "rounds": 1})).await.unwrap();
        assert_eq!(
            out["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let two = Hash.run(json!({"data": "abc", "rounds": 2})).await.unwrap();
        assert_ne!(out["sha256"], two["sha256"]);
    }

    #[test]
    fn payloads_are_validated_with_named_fields() {
        assert!(Sleep.validate(&json!({"ms": 5})).is_ok());
        assert!(Sleep.validate(&json!({})).unwrap_err().contains("payload.ms"));
        assert!(Sleep.validate(&json!({"ms": -1})).is_err());
        assert!(Hash.validate(&json!({"data": 3})).unwrap_err().contains("payload.data"));
        assert!(
            Hash.validate(&json!({"rounds": 0}))
                .unwrap_err()
                .contains("payload.rounds")
        );
    }
}
