//! Task kinds: what a worker knows how to run.
//!
//! Adding a kind is one type implementing [`TaskKind`] plus one line in
//! [`Registry::builtin`]. A kind gets a [`TaskContext`]: it reports progress
//! through it, and runs blocking or CPU-heavy work on the context's bounded
//! pools, so that such work never stalls the async runtime that answers gRPC.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, watch};

pub const MAX_SLEEP_MS: u64 = 10 * 60 * 1000;
pub const MAX_HASH_ROUNDS: u64 = 50_000_000;
/// The most of a fetched body a `fetch` task reads and keeps.
pub const MAX_FETCH_BODY: usize = 64 * 1024;
/// The longest one `fetch` request may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

#[async_trait::async_trait]
pub trait TaskKind: Send + Sync + 'static {
    /// The name clients submit, e.g. `"sleep"`.
    fn name(&self) -> &'static str;
    /// Checks a payload at submit time, so bad input is refused up front
    /// rather than failing later in a worker. The message names the problem.
    fn validate(&self, payload: &Value) -> Result<(), String>;
    /// Runs one attempt. An `Err` fails the attempt with that message (the
    /// task is retried if it has attempts left). The future may be dropped
    /// at an await point when the task times out or is cancelled.
    async fn run(&self, payload: Value, ctx: &TaskContext) -> Result<Value, String>;
}

/// Bounded pools shared by every task of a process.
#[derive(Clone)]
pub struct Pools {
    /// Blocking work (sleeping, blocking I/O): many threads, still bounded.
    blocking: Arc<Semaphore>,
    /// CPU-bound work: one permit per core, so a flood of such tasks cannot
    /// take more cores than the machine has.
    cpu: Arc<Semaphore>,
    /// One HTTP client for every `fetch` task (connection pooling).
    pub http: reqwest::Client,
}

impl Pools {
    pub fn new(blocking_threads: usize, cpu_threads: usize) -> Self {
        Self {
            blocking: Arc::new(Semaphore::new(blocking_threads.max(1))),
            cpu: Arc::new(Semaphore::new(cpu_threads.max(1))),
            // A whole request is bounded too: a server that accepts and never
            // answers must not hold a worker forever.
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }
}

/// What a running attempt can use.
pub struct TaskContext {
    pub task_id: i64,
    /// 1 for the first attempt.
    pub attempt: u32,
    pools: Pools,
    progress: watch::Sender<Option<(u32, String)>>,
}

impl TaskContext {
    pub fn new(task_id: i64, attempt: u32, pools: Pools, progress: watch::Sender<Option<(u32, String)>>) -> Self {
        Self {
            task_id,
            attempt,
            pools,
            progress,
        }
    }

    /// Reports progress (0..=100 and a message). Cheap: the worker writes the
    /// latest report to the database a few times a second at most.
    pub fn progress(&self, percent: u32, message: impl Into<String>) {
        let _ = self.progress.send(Some((percent.min(100), message.into())));
    }

    /// Runs blocking work on the bounded blocking pool. If the attempt is
    /// abandoned (timeout, cancel), the thread runs on and its result is
    /// ignored; its pool slot stays taken until it ends.
    pub async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        Self::on(&self.pools.blocking, f).await
    }

    /// Runs CPU-bound work on the CPU pool (one slot per core).
    pub async fn cpu<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        Self::on(&self.pools.cpu, f).await
    }

    async fn on<T: Send + 'static>(pool: &Arc<Semaphore>, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        let permit = pool
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "worker pool closed".to_string())?;
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            out
        })
        .await
        .map_err(|e| format!("worker thread failed: {e}"))
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.pools.http
    }
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
    async fn run(&self, payload: Value, _ctx: &TaskContext) -> Result<Value, String> {
        Ok(payload)
    }
}

fn whole(payload: &Value, field: &str, min: u64, max: u64) -> Result<u64, String> {
    let n = payload
        .get(field)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("payload.{field}: required, a whole number"))?;
    if n < min || n > max {
        return Err(format!("payload.{field}: between {min} and {max}"));
    }
    Ok(n)
}

/// The seed's blocking task: `time.sleep` on a thread of the blocking pool.
/// Payload `{"ms": N}`.
pub struct Sleep;

#[async_trait::async_trait]
impl TaskKind for Sleep {
    fn name(&self) -> &'static str {
        "sleep"
    }
    fn validate(&self, payload: &Value) -> Result<(), String> {
        whole(payload, "ms", 0, MAX_SLEEP_MS).map(drop)
    }
    async fn run(&self, payload: Value, ctx: &TaskContext) -> Result<Value, String> {
        let ms = whole(&payload, "ms", 0, MAX_SLEEP_MS)?;
        ctx.blocking(move || std::thread::sleep(Duration::from_millis(ms)))
            .await?;
        Ok(json!({"message": "Task complete!", "slept_ms": ms}))
    }
}

/// CPU-bound work: SHA-256 applied `rounds` times to `data`, on the CPU pool.
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
        Some(_) => whole(payload, "rounds", 1, MAX_HASH_ROUNDS)?,
    };
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
    async fn run(&self, payload: Value, ctx: &TaskContext) -> Result<Value, String> {
        let (data, rounds) = hash_args(&payload)?;
        let digest = ctx
            .cpu(move || {
                let mut digest: [u8; 32] = Sha256::digest(data.as_bytes()).into();
                for _ in 1..rounds {
                    digest = Sha256::digest(digest).into();
                }
                digest
            })
            .await?;
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok(json!({"sha256": hex, "rounds": rounds}))
    }
}

/// Async work in steps, reporting progress after each; cancellable at every
/// step. Payload `{"steps": N, "step_ms": M}`.
pub struct Ticker;

#[async_trait::async_trait]
impl TaskKind for Ticker {
    fn name(&self) -> &'static str {
        "ticker"
    }
    fn validate(&self, payload: &Value) -> Result<(), String> {
        whole(payload, "steps", 1, 10_000)?;
        whole(payload, "step_ms", 0, 60_000).map(drop)
    }
    async fn run(&self, payload: Value, ctx: &TaskContext) -> Result<Value, String> {
        let steps = whole(&payload, "steps", 1, 10_000)?;
        let step = Duration::from_millis(whole(&payload, "step_ms", 0, 60_000)?);
        for i in 1..=steps {
            tokio::time::sleep(step).await;
            ctx.progress((i * 100 / steps) as u32, format!("step {i} of {steps}"));
        }
        Ok(json!({"steps": steps}))
    }
}

/// Fails its first `fail_times` attempts, then succeeds: retries made visible.
/// Payload `{"fail_times": N}`.
pub struct Flaky;

#[async_trait::async_trait]
impl TaskKind for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn validate(&self, payload: &Value) -> Result<(), String> {
        whole(payload, "fail_times", 0, 100).map(drop)
    }
    async fn run(&self, payload: Value, ctx: &TaskContext) -> Result<Value, String> {
        let fail_times = whole(&payload, "fail_times", 0, 100)?;
        if u64::from(ctx.attempt) <= fail_times {
            return Err(format!(
                "flaky: failing attempt {} of the first {fail_times}",
                ctx.attempt
            ));
        }
        Ok(json!({"succeeded_on_attempt": ctx.attempt}))
    }
}

/// Calls an HTTP URL with the shared client (the seed's call to another
/// service, done as background work). Payload `{"url": "http://..."}`.
/// A non-2xx answer or no answer fails the attempt.
pub struct Fetch;

fn fetch_url(payload: &Value) -> Result<reqwest::Url, String> {
    let raw = payload
        .get("url")
        .and_then(Value::as_str)
        .ok_or("payload.url: required, a string")?;
    let url = reqwest::Url::parse(raw).map_err(|e| format!("payload.url: {e}"))?;
    if url.scheme() != "http" {
        return Err("payload.url: only http:// URLs (this build has no TLS)".into());
    }
    Ok(url)
}

#[async_trait::async_trait]
impl TaskKind for Fetch {
    fn name(&self) -> &'static str {
        "fetch"
    }
    fn validate(&self, payload: &Value) -> Result<(), String> {
        fetch_url(payload).map(drop)
    }
    async fn run(&self, payload: Value, ctx: &TaskContext) -> Result<Value, String> {
        let url = fetch_url(&payload)?;
        let mut response = ctx
            .http()
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {}", status.as_u16()));
        }
        // Read at most MAX_FETCH_BODY bytes, however large the body is.
        let mut body = Vec::new();
        while body.len() < MAX_FETCH_BODY {
            match response.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        body.truncate(MAX_FETCH_BODY);
        let body = body.as_slice();
        let parsed = serde_json::from_slice::<Value>(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
        Ok(json!({"status": status.as_u16(), "body": parsed}))
    }
}

/// The kinds a service runs, by name.
#[derive(Clone)]
pub struct Registry {
    kinds: Arc<BTreeMap<&'static str, Arc<dyn TaskKind>>>,
}

impl Registry {
    pub fn builtin() -> Self {
        Self::new(vec![
            Arc::new(Echo),
            Arc::new(Sleep),
            Arc::new(Hash),
            Arc::new(Ticker),
            Arc::new(Flaky),
            Arc::new(Fetch),
        ])
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

    fn ctx(attempt: u32) -> TaskContext {
        TaskContext::new(1, attempt, Pools::new(2, 1), watch::channel(None).0)
    }

    #[tokio::test]
    async fn hash_is_repeated_sha256() {
        let out = Hash.run(json!({"data": "abc", "rounds": 1}), &ctx(1)).await.unwrap();
        assert_eq!(
            out["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let two = Hash.run(json!({"data": "abc", "rounds": 2}), &ctx(1)).await.unwrap();
        assert_ne!(out["sha256"], two["sha256"]);
    }

    #[tokio::test]
    async fn flaky_fails_its_first_attempts() {
        assert!(Flaky.run(json!({"fail_times": 2}), &ctx(2)).await.is_err());
        assert!(Flaky.run(json!({"fail_times": 2}), &ctx(3)).await.is_ok());
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
        assert!(
            Ticker
                .validate(&json!({"steps": 0, "step_ms": 1}))
                .unwrap_err()
                .contains("payload.steps")
        );
        assert!(
            Fetch
                .validate(&json!({"url": "https://x"}))
                .unwrap_err()
                .contains("http://")
        );
        assert!(
            Fetch
                .validate(&json!({"url": "nope"}))
                .unwrap_err()
                .contains("payload.url")
        );
    }
}
