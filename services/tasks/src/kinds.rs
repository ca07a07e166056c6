//! Task kinds: what a worker knows how to run.
//!
//! Adding a kind is one type implementing [`TaskKind`] plus one line in
//! [`Registry::builtin`]. A kind gets a [`TaskContext`]: it reports progress
//! through it, and runs blocking or CPU-heavy work on the context's bounded
//! pools, so that such work never stalls the async runtime that answers gRPC.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HOST, LOCATION};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, watch};

use crate::fetch_policy::{FetchPolicy, display_dest};

/// How much work one task may ask for (`--max-sleep-ms`, `--max-hash-rounds`):
/// a client cannot hold a worker or a core for longer than the operator allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest `sleep`, and the longest `ticker` (steps × step_ms), in ms.
    pub max_sleep_ms: u64,
    /// The most SHA-256 rounds of one `hash` task.
    pub max_hash_rounds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sleep_ms: 10 * 60 * 1000,
            max_hash_rounds: 50_000_000,
        }
    }
}
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
}

impl Pools {
    pub fn new(blocking_threads: usize, cpu_threads: usize) -> Self {
        Self {
            blocking: Arc::new(Semaphore::new(blocking_threads.max(1))),
            cpu: Arc::new(Semaphore::new(cpu_threads.max(1))),
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
    /// ignored; its pool slot stays taken until it ends (so blocking work
    /// that can stop early should watch for that: see [`Sleep`]).
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
pub struct Sleep {
    pub max_ms: u64,
}

#[async_trait::async_trait]
impl TaskKind for Sleep {
    fn name(&self) -> &'static str {
        "sleep"
    }
    fn validate(&self, payload: &Value) -> Result<(), String> {
        whole(payload, "ms", 0, self.max_ms).map(drop)
    }
    async fn run(&self, payload: Value, ctx: &TaskContext) -> Result<Value, String> {
        let ms = whole(&payload, "ms", 0, self.max_ms)?;
        // The thread blocks as `time.sleep` would, but on a channel that this
        // attempt holds: an attempt that is abandoned (cancelled, timed out)
        // drops the sender, which wakes the thread at once and frees its slot
        // in the blocking pool, instead of sleeping on for nobody.
        let (abandoned, wake) = std::sync::mpsc::channel::<()>();
        let slept = ctx.blocking(move || {
            let _ = wake.recv_timeout(Duration::from_millis(ms));
        });
        slept.await?;
        drop(abandoned);
        Ok(json!({"message": "Task complete!", "slept_ms": ms}))
    }
}

/// CPU-bound work: SHA-256 applied `rounds` times to `data`, on the CPU pool.
/// Payload `{"data": "...", "rounds": N}`.
pub struct Hash {
    pub max_rounds: u64,
}

fn hash_args(payload: &Value, max_rounds: u64) -> Result<(String, u64), String> {
    let data = match payload.get("data") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("payload.data: must be a string".into()),
    };
    let rounds = match payload.get("rounds") {
        None => 1,
        Some(_) => whole(payload, "rounds", 1, max_rounds)?,
    };
    Ok((data, rounds))
}

#[async_trait::async_trait]
impl TaskKind for Hash {
    fn name(&self) -> &'static str {
        "hash"
    }
    fn validate(&self, payload: &Value) -> Result<(), String> {
        hash_args(payload, self.max_rounds).map(drop)
    }
    async fn run(&self, payload: Value, ctx: &TaskContext) -> Result<Value, String> {
        let (data, rounds) = hash_args(&payload, self.max_rounds)?;
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
/// step. Payload `{"steps": N, "step_ms": M}`; N × M at most `max_ms`.
pub struct Ticker {
    pub max_ms: u64,
}

impl Ticker {
    fn args(&self, payload: &Value) -> Result<(u64, u64), String> {
        let steps = whole(payload, "steps", 1, 10_000)?;
        let step_ms = whole(payload, "step_ms", 0, 60_000)?;
        if steps * step_ms > self.max_ms {
            return Err(format!(
                "payload: steps × step_ms is {} ms; at most {}",
                steps * step_ms,
                self.max_ms
            ));
        }
        Ok((steps, step_ms))
    }
}

#[async_trait::async_trait]
impl TaskKind for Ticker {
    fn name(&self) -> &'static str {
        "ticker"
    }
    fn validate(&self, payload: &Value) -> Result<(), String> {
        self.args(payload).map(drop)
    }
    async fn run(&self, payload: Value, ctx: &TaskContext) -> Result<Value, String> {
        let (steps, step_ms) = self.args(&payload)?;
        let step = Duration::from_millis(step_ms);
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

/// Calls an HTTP URL (the seed's call to another service, done as
/// background work). Payload `{"url": "http://..."}`. A non-2xx answer or no
/// answer fails the attempt.
///
/// Only destinations the `--fetch-allow` list allows are reached (see
/// [`FetchPolicy`]): the host is resolved here, only allowed addresses are
/// kept, and the request goes to exactly such an address (with the original
/// `Host` header), so DNS rebinding cannot swap the address after the check.
/// Redirects are followed by hand, each hop checked the same way; proxies
/// from the environment are ignored. URLs with credentials are refused, and
/// messages name only `host:port`, never the whole URL.
pub struct Fetch {
    policy: FetchPolicy,
    /// One client for every `fetch` task (connection pooling); connections
    /// only ever go to checked addresses.
    client: reqwest::Client,
}

/// Redirects one `fetch` follows at most.
pub const MAX_FETCH_REDIRECTS: usize = 5;
/// The longest connecting to a `fetch` destination may take.
pub const FETCH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Fetch {
    pub fn new(policy: FetchPolicy) -> Self {
        if policy.is_empty() {
            tracing::info!("fetch tasks are disabled: no --fetch-allow destinations");
        } else {
            tracing::info!(allow = %policy, "fetch tasks may reach these destinations");
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(FETCH_CONNECT_TIMEOUT)
            // A whole request is bounded too: a server that accepts and never
            // answers must not hold a worker forever.
            .timeout(FETCH_TIMEOUT)
            .build()
            // Only fails on TLS set-up, and this build has no TLS; never fall
            // back to a default client (it would follow redirects and proxies).
            .expect("the fetch HTTP client builds");
        Self { policy, client }
    }

    /// Resolves `url`, keeps the allowed addresses and sends to the first
    /// that accepts a connection.
    async fn send(&self, url: &reqwest::Url) -> Result<reqwest::Response, String> {
        let dest = display_dest(url);
        let addrs = self.policy.allowed_addrs(url).await?;
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let mut last = None;
        for ip in addrs {
            let mut direct = url.clone();
            direct
                .set_ip_host(ip)
                .map_err(|()| format!("GET {dest}: cannot address {ip}"))?;
            direct.set_fragment(None);
            // hyper keeps an explicit Host header (it only adds one if absent).
            match self.client.get(direct).header(HOST, &host).send().await {
                Ok(response) => return Ok(response),
                Err(e) if e.is_connect() => last = Some(e),
                Err(e) => return Err(format!("GET {dest}: {}", error_chain(e))),
            }
        }
        Err(format!(
            "GET {dest}: {}",
            last.map_or_else(|| "no address".to_string(), error_chain)
        ))
    }
}

/// A reqwest error and its causes, without the URL.
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The rules every URL a `fetch` visits must meet, whatever its host.
fn check_hop(url: &reqwest::Url) -> Result<(), String> {
    if url.scheme() != "http" {
        return Err("only http:// URLs (this build has no TLS)".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL (user:password@) are not allowed".into());
    }
    Ok(())
}

fn fetch_url(payload: &Value) -> Result<reqwest::Url, String> {
    let raw = payload
        .get("url")
        .and_then(Value::as_str)
        .ok_or("payload.url: required, a string")?;
    // The parser's messages never repeat the input.
    let url = reqwest::Url::parse(raw).map_err(|e| format!("payload.url: {e}"))?;
    check_hop(&url).map_err(|e| format!("payload.url: {e}"))?;
    Ok(url)
}

#[async_trait::async_trait]
impl TaskKind for Fetch {
    fn name(&self) -> &'static str {
        "fetch"
    }
    fn validate(&self, payload: &Value) -> Result<(), String> {
        if self.policy.is_empty() {
            // Say so before anything else: no URL can be right.
            return Err(format!("payload.url: {}", FetchPolicy::disabled()));
        }
        let url = fetch_url(payload)?;
        self.policy
            .check_without_dns(&url)
            .map_err(|e| format!("payload.url: {e}"))
    }
    async fn run(&self, payload: Value, _ctx: &TaskContext) -> Result<Value, String> {
        let mut url = fetch_url(&payload)?;
        let mut redirects = 0;
        let mut response = loop {
            let response = self.send(&url).await.map_err(|e| match redirects {
                0 => e,
                n => format!("after {n} redirect(s): {e}"),
            })?;
            let status = response.status();
            let location = response.headers().get(LOCATION);
            let (true, Some(location)) = (status.is_redirection(), location) else {
                break response;
            };
            let dest = display_dest(&url);
            if redirects == MAX_FETCH_REDIRECTS {
                return Err(format!(
                    "GET {dest}: HTTP {}: too many redirects (more than {MAX_FETCH_REDIRECTS})",
                    status.as_u16()
                ));
            }
            let next = location
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| format!("GET {dest}: HTTP {} with an unreadable Location", status.as_u16()))?;
            check_hop(&next).map_err(|e| format!("GET {dest}: HTTP {}: redirect refused: {e}", status.as_u16()))?;
            redirects += 1;
            url = next;
        };
        let dest = display_dest(&url);
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {dest}: HTTP {}", status.as_u16()));
        }
        // Read at most MAX_FETCH_BODY bytes, however large the body is.
        let mut body = Vec::new();
        while body.len() < MAX_FETCH_BODY {
            match response
                .chunk()
                .await
                .map_err(|e| format!("GET {dest}: {}", error_chain(e)))?
            {
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
    /// The built-in kinds; `fetch` reaches only what `fetch_policy` allows.
    pub fn builtin(limits: Limits, fetch_policy: FetchPolicy) -> Self {
        Self::new(vec![
            Arc::new(Echo),
            Arc::new(Sleep {
                max_ms: limits.max_sleep_ms,
            }),
            Arc::new(Hash {
                max_rounds: limits.max_hash_rounds,
            }),
            Arc::new(Ticker {
                max_ms: limits.max_sleep_ms,
            }),
            Arc::new(Flaky),
            Arc::new(Fetch::new(fetch_policy)),
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

    fn fetch(allow: &str) -> Fetch {
        Fetch::new(if allow.is_empty() {
            FetchPolicy::default()
        } else {
            FetchPolicy::parse(allow).unwrap()
        })
    }

    const SLEEP: Sleep = Sleep { max_ms: 600_000 };
    const HASH: Hash = Hash { max_rounds: 50_000_000 };
    const TICKER: Ticker = Ticker { max_ms: 600_000 };

    fn ctx(attempt: u32) -> TaskContext {
        TaskContext::new(1, attempt, Pools::new(2, 1), watch::channel(None).0)
    }

    #[tokio::test]
    async fn hash_is_repeated_sha256() {
        let out = HASH.run(json!({"data": "abc", "rounds": 1}), &ctx(1)).await.unwrap();
        assert_eq!(
            out["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let two = HASH.run(json!({"data": "abc", "rounds": 2}), &ctx(1)).await.unwrap();
        assert_ne!(out["sha256"], two["sha256"]);
    }

    #[test]
    fn the_operators_limits_bound_sleep_hash_and_ticker() {
        let limits = Limits {
            max_sleep_ms: 2000,
            max_hash_rounds: 1000,
        };
        let registry = Registry::builtin(limits, FetchPolicy::default());
        let kind = |name: &str| registry.get(name).unwrap().clone();
        assert!(kind("sleep").validate(&json!({"ms": 2000})).is_ok());
        let err = kind("sleep").validate(&json!({"ms": 2001})).unwrap_err();
        assert_eq!(err, "payload.ms: between 0 and 2000");
        assert!(kind("hash").validate(&json!({"rounds": 1000})).is_ok());
        let err = kind("hash").validate(&json!({"rounds": 1001})).unwrap_err();
        assert_eq!(err, "payload.rounds: between 1 and 1000");
        assert!(kind("ticker").validate(&json!({"steps": 20, "step_ms": 100})).is_ok());
        let err = kind("ticker")
            .validate(&json!({"steps": 21, "step_ms": 100}))
            .unwrap_err();
        assert_eq!(err, "payload: steps × step_ms is 2100 ms; at most 2000");
    }

    #[tokio::test]
    async fn an_abandoned_sleep_frees_its_blocking_thread_at_once() {
        // One blocking slot: a second sleep can only run once the first,
        // abandoned after 50 ms of its 10 minutes, has given the slot back.
        let pools = Pools::new(1, 1);
        let ctx = |id| TaskContext::new(id, 1, pools.clone(), watch::channel(None).0);
        let long = ctx(1);
        let abandoned = tokio::time::timeout(Duration::from_millis(50), SLEEP.run(json!({"ms": 600_000}), &long)).await;
        assert!(abandoned.is_err(), "the 10-minute sleep cannot have finished");
        let short = ctx(2);
        let next = tokio::time::timeout(Duration::from_secs(60), SLEEP.run(json!({"ms": 1}), &short))
            .await
            .expect("the blocking slot was given back long before the first sleep's 10 minutes");
        assert_eq!(next.unwrap()["slept_ms"], 1);
    }

    #[tokio::test]
    async fn flaky_fails_its_first_attempts() {
        assert!(Flaky.run(json!({"fail_times": 2}), &ctx(2)).await.is_err());
        assert!(Flaky.run(json!({"fail_times": 2}), &ctx(3)).await.is_ok());
    }

    #[test]
    fn payloads_are_validated_with_named_fields() {
        assert!(SLEEP.validate(&json!({"ms": 5})).is_ok());
        assert!(SLEEP.validate(&json!({})).unwrap_err().contains("payload.ms"));
        assert!(SLEEP.validate(&json!({"ms": -1})).is_err());
        assert!(HASH.validate(&json!({"data": 3})).unwrap_err().contains("payload.data"));
        assert!(
            HASH.validate(&json!({"rounds": 0}))
                .unwrap_err()
                .contains("payload.rounds")
        );
        assert!(
            TICKER
                .validate(&json!({"steps": 0, "step_ms": 1}))
                .unwrap_err()
                .contains("payload.steps")
        );
        // Without --fetch-allow, every fetch is refused, naming the flag.
        let off = fetch("");
        for url in ["http://10.0.0.1/", "http://example.com/", "nope"] {
            let err = off.validate(&json!({ "url": url })).unwrap_err();
            assert!(err.starts_with("payload.url: fetch is disabled"), "{err}");
            assert!(err.contains("--fetch-allow HOST:PORT"), "{err}");
        }
        let on = fetch("10.0.0.0/8:80,127.0.0.1:8080");
        assert!(on.validate(&json!({"url": "http://10.1.2.3/x?y=1"})).is_ok());
        assert!(on.validate(&json!({"url": "http://127.0.0.1:8080/"})).is_ok());
        assert!(on.validate(&json!({"url": "http://localhost:8080/"})).is_ok());
        assert!(on.validate(&json!({"url": "http://service.internal/"})).is_ok());
        assert!(
            on.validate(&json!({"url": "https://x"}))
                .unwrap_err()
                .contains("http://")
        );
        assert!(
            on.validate(&json!({"url": "nope"}))
                .unwrap_err()
                .contains("payload.url")
        );
        assert!(on.validate(&json!({})).unwrap_err().contains("payload.url"));
        for url in [
            "http://127.0.0.1:9/",
            "http://localhost:9/",
            "http://2130706433:9/",
            "http://[::1]:8080/",
            "http://169.254.169.254/",
            "http://11.0.0.1/",
        ] {
            let err = on.validate(&json!({ "url": url })).unwrap_err();
            assert!(err.starts_with("payload.url: destination not allowed"), "{url}: {err}");
        }
        // Credentials are refused and never repeated.
        for url in [
            "http://user:s3cret@10.1.2.3/",
            "http://s3cret@10.1.2.3/",
            "http://:s3cret@10.1.2.3/",
        ] {
            let err = on.validate(&json!({ "url": url })).unwrap_err();
            assert!(err.contains("credentials") && !err.contains("s3cret"), "{err}");
        }
    }

    #[tokio::test]
    async fn fetch_refuses_at_run_time_what_resolves_outside_the_list() {
        let on = fetch("127.0.0.1:8080");
        let err = on
            .run(json!({"url": "http://localhost:9/"}), &ctx(1))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "destination not allowed: localhost:9 (allowed by --fetch-allow: none match)"
        );
        let err = fetch("")
            .run(json!({"url": "http://localhost:9/"}), &ctx(1))
            .await
            .unwrap_err();
        assert!(err.contains("fetch is disabled"), "{err}");
    }
}
