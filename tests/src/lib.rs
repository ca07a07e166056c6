//! Fixtures for the integration tests: real server processes on free ports.
//!
//! Every server is started with `--listen 127.0.0.1:0` and announces the port
//! it bound on stdout, so tests never guess ports and never race for them.
//! A [`Server`] is killed when dropped, also when a test fails, and keeps its
//! log so a test can assert on it (or print it when something goes wrong).
//!
//! Tests wait for states with [`eventually`] (a bounded poll, never a fixed
//! sleep) and assert behaviour, not speed. What a test creates outside
//! itself is removed by a guard even when it fails: [`backends::SchemaGuard`],
//! [`backends::KeysGuard`], [`ProcessGroupGuard`].
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_proto::services::{self, Service};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

pub use mesh_proto as proto;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where cargo put the workspace's binaries: the test executable lives in
/// `target/<profile>/deps/`, the binaries one level up.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps layout");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so that cargo builds every binary",
        path.display()
    );
    path
}

/// How a test reaches a server that requires mutual TLS: the CA, the client
/// certificate and key to present (PEM), and the name its certificate has.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub server_name: String,
}

/// A running server process.
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    /// Set when the server requires mutual TLS: [`Server::channel`] uses it.
    pub tls: Option<ClientTls>,
    /// Its admin listener (`/healthz`, `/readyz`; the gateway's `/overview`),
    /// from its second stdout line; `None` if it printed none (or exited first).
    pub admin: Option<SocketAddr>,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts binary `name` with `args` plus `--listen 127.0.0.1:0` (and
    /// `--admin-listen 127.0.0.1:0` unless `args` has one) and waits for the
    /// addresses it announces.
    pub async fn start(name: &str, args: &[String]) -> Server {
        Self::start_on(name, args, "127.0.0.1:0").await
    }

    /// Like [`Server::start`], on a given address (for restarting a server
    /// where its clients expect it).
    pub async fn start_on(name: &str, args: &[String], listen: &str) -> Server {
        Self::start_with_env(name, args, listen, &[]).await
    }

    /// Like [`Server::start_on`], with `env` applied over the fixture's
    /// defaults: `(name, Some(value))` sets a variable, `(name, None)` removes it.
    ///
    /// The defaults: `MESH_LOG_ANSI=0`, and `RUST_LOG=info` and the access log
    /// on (`MESH_ACCESS_LOG=1`: tests count calls by their `rpc done` lines)
    /// unless the test run's own environment sets them.
    pub async fn start_with_env(name: &str, args: &[String], listen: &str, env: &[(&str, Option<&str>)]) -> Server {
        Self::start_program(&bin(name), name, args, listen, env).await
    }

    /// Like [`Server::start_with_env`], for an executable outside this build
    /// (another release's binary, in the rolling-upgrade test).
    pub async fn start_program(
        program: &std::path::Path,
        name: &str,
        args: &[String],
        listen: &str,
        env: &[(&str, Option<&str>)],
    ) -> Server {
        let mut cmd = Command::new(program);
        cmd.args(args).arg("--listen").arg(listen);
        if !args.iter().any(|a| a.starts_with("--admin-listen")) {
            // Never the fixed default admin ports: tests run side by side.
            cmd.arg("--admin-listen").arg("127.0.0.1:0");
        }
        cmd.env("MESH_LOG_ANSI", "0")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env(
                "MESH_ACCESS_LOG",
                std::env::var("MESH_ACCESS_LOG").unwrap_or_else(|_| "1".into()),
            );
        for (key, value) in env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        let mut stderr_done = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let line = match tokio::time::timeout(START_TIMEOUT, stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                // Whatever it said before dying (or hanging) is in its log:
                // stop it, and wait for the log to be read to its end.
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut stderr_done).await;
                panic!(
                    "{name} did not announce its address ({other:?}); log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name} announced {line:?}"));
        // The admin line follows once the server's start-up is done; a server
        // that exits (or never prints one) leaves `admin` empty.
        let admin = match tokio::time::timeout(START_TIMEOUT, stdout.next_line()).await {
            Ok(Ok(Some(line))) => line
                .split_once(" admin listening on ")
                .and_then(|(_, a)| a.trim().parse().ok()),
            _ => None,
        };
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Server {
            name: name.to_string(),
            addr,
            tls: None,
            admin,
            child,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://<admin address>`; panics if the server announced none.
    pub fn admin_url(&self) -> String {
        let admin = self
            .admin
            .unwrap_or_else(|| panic!("{} announced no admin listener; log:\n{}", self.name, self.logs()));
        format!("http://{admin}")
    }

    /// A lazily connecting channel to this server (over mutual TLS when it
    /// requires it).
    pub fn channel(&self) -> Channel {
        let Some(tls) = &self.tls else {
            return tonic::transport::Endpoint::from_shared(self.url())
                .expect("valid url")
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy();
        };
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca))
            .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key))
            .domain_name(tls.server_name.clone());
        tonic::transport::Endpoint::from_shared(format!("https://{}", self.addr))
            .expect("valid url")
            .tls_config(config)
            .expect("valid TLS settings")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy()
    }

    /// Waits until `grpc.health.v1` reports SERVING for the whole server.
    pub async fn wait_serving(&self) {
        let mut client = HealthClient::new(self.channel());
        let what = format!("{} reports SERVING", self.name);
        let serving = async || match client.check(HealthCheckRequest { service: String::new() }).await {
            Ok(r) if r.get_ref().status == 1 => Ok(()),
            other => Err(format!("{other:?}\n{}", self.logs())),
        };
        eventually(&what, START_TIMEOUT, serving).await;
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id() {
            kill(Pid::from_raw(pid as i32), signal).expect("send signal");
        }
    }

    /// SIGTERM, then the exit status (panics if it takes over 30 s).
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait().await
    }

    pub async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within 30 s", self.name))
            .expect("wait for child")
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// A generous deadline for a state change that normally takes well under a
/// second: on a busy two-core machine it may take many times longer, and a
/// test must not fail for that. Tests assert what happens, not how fast.
pub const WAIT: Duration = Duration::from_secs(30);

/// How often [`eventually`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One poll of [`eventually`]: ready with a value, or not yet (with what was
/// seen, for the failure message).
pub trait Attempt {
    type Value;
    fn ready(self) -> Result<Self::Value, String>;
}

impl<T> Attempt for Option<T> {
    type Value = T;
    fn ready(self) -> Result<T, String> {
        self.ok_or_else(|| "None".to_string())
    }
}

impl<T, E: std::fmt::Debug> Attempt for Result<T, E> {
    type Value = T;
    fn ready(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

impl Attempt for bool {
    type Value = ();
    fn ready(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".to_string()) }
    }
}

/// Polls `f` every [`POLL_INTERVAL`] until it returns `Some`, `Ok` or `true`,
/// and returns that value. Past `deadline` it panics, naming `what` and the
/// last value seen (an `Err`'s contents say what was wrong).
///
/// Use it wherever a test waits for a state; a fixed sleep is a guess that a
/// busy machine eventually proves wrong.
pub async fn eventually<T, A>(what: &str, deadline: Duration, mut f: impl AsyncFnMut() -> A) -> T
where
    A: Attempt<Value = T>,
{
    let started = std::time::Instant::now();
    let mut polls = 0u32;
    loop {
        polls += 1;
        match f().await.ready() {
            Ok(value) => return value,
            Err(last) if started.elapsed() >= deadline => {
                panic!("{what}: not within {deadline:?} ({polls} polls); last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Kills a whole process group with SIGKILL when dropped: also when the test
/// fails, so a launcher's children are never left running. Start the
/// launcher with `process_group(0)` and guard its pid.
pub struct ProcessGroupGuard {
    pgid: i32,
}

impl ProcessGroupGuard {
    /// `leader` is the pid of a process started with `process_group(0)`.
    pub fn new(leader: u32) -> ProcessGroupGuard {
        ProcessGroupGuard {
            pgid: i32::try_from(leader).expect("pid fits i32"),
        }
    }

    pub fn pgid(&self) -> i32 {
        self.pgid
    }
}

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        // ESRCH (nobody left in the group) is the expected case after a clean stop.
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
    }
}

/// Runs async clean-up from a `Drop` (which cannot await): on a thread of its
/// own with a small runtime, and waits for it. A failure is reported; it
/// panics only if the test is not already panicking (a second panic would
/// abort the whole test binary).
fn clean_up<F, Fut>(what: String, work: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let outcome = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("clean-up runtime")
            .block_on(async move { tokio::time::timeout(Duration::from_secs(60), work()).await.is_ok() })
    })
    .join();
    let problem = match outcome {
        Ok(true) => return,
        Ok(false) => "timed out after 60 s".to_string(),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".to_string()),
    };
    if std::thread::panicking() {
        eprintln!("clean-up failed: {what}: {problem}");
    } else {
        panic!("clean-up failed: {what}: {problem}");
    }
}

/// Every service of `mesh_proto::services` and a gateway in front of them,
/// on embedded backends in a temporary data directory.
pub struct Mesh {
    pub items: Server,
    pub cache: Server,
    pub tasks: Server,
    pub counter: Server,
    pub gateway: Server,
    pub http: reqwest::Client,
    pub data: tempfile::TempDir,
}

/// `MESH_TEST_SECURE=1` starts every [`Mesh`] as a production deployment
/// would run: mutual TLS between the gateway and the services, and API keys
/// at the gateway (its [`Mesh::http`] client sends an admin key). CI runs the
/// hostile-input tests this way too.
pub fn secure_meshes() -> bool {
    std::env::var("MESH_TEST_SECURE").is_ok_and(|v| v == "1")
}

/// An HTTP client for a [`Mesh`]'s gateway: with the admin key when meshes
/// are secure.
fn http_client() -> reqwest::Client {
    if !secure_meshes() {
        return reqwest::Client::new();
    }
    let mut headers = reqwest::header::HeaderMap::new();
    let key = format!("Bearer {SECURE_MESH_ADMIN_KEY}");
    headers.insert(reqwest::header::AUTHORIZATION, key.parse().expect("header"));
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// The admin key of a secure [`Mesh`].
pub const SECURE_MESH_ADMIN_KEY: &str = "mesh_test-secure-mesh-admin";

#[derive(Default, Clone)]
pub struct MeshOptions {
    /// Extra flags for the tasks service (e.g. `--workers 1`).
    pub tasks_args: Vec<String>,
    /// Extra flags for the gateway.
    pub gateway_args: Vec<String>,
}

/// The gateway's service flags (`--items LIST`, ...): one per service of
/// the table, `endpoints(service)` giving its comma-separated endpoint list.
pub fn gateway_flags_with(mut endpoints: impl FnMut(&Service) -> String) -> Vec<String> {
    services::ALL
        .iter()
        .flat_map(|service| [format!("--{}", service.flag), endpoints(service)])
        .collect()
}

/// The gateway's service flags, each a comma-separated endpoint list, given
/// in the table's order (items, cache, tasks, counter).
pub fn gateway_flags(
    items: impl AsRef<str>,
    cache: impl AsRef<str>,
    tasks: impl AsRef<str>,
    counter: impl AsRef<str>,
) -> Vec<String> {
    let lists = [items.as_ref(), cache.as_ref(), tasks.as_ref(), counter.as_ref()];
    let mut lists = lists.into_iter();
    gateway_flags_with(|_| lists.next().unwrap_or_default().to_string())
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl Mesh {
    pub async fn start() -> Mesh {
        Self::start_with(MeshOptions::default()).await
    }

    pub async fn start_with(options: MeshOptions) -> Mesh {
        let data = tempfile::tempdir().expect("temp dir");
        let dir = data.path().display().to_string();
        let secure = secure_meshes();
        let certs = data.path().join("certs");
        let cert = |name: &str| certs.join(name).display().to_string();
        if secure {
            let names: Vec<&str> = services::ALL.iter().map(|s| s.name).chain(["gateway"]).collect();
            mesh_common::tls::write_dev_certs(&certs, &names, &["gateway"], &[]).expect("certificates");
            std::fs::write(
                certs.join("api-keys"),
                format!(
                    "admin {} read,write,admin\n",
                    mesh_auth::keys::hash_hex(SECURE_MESH_ADMIN_KEY)
                ),
            )
            .expect("key file");
        }
        // Every service at once, each with the flags it needs.
        let mut starting = tokio::task::JoinSet::new();
        for service in services::ALL {
            let mut service_args = Vec::new();
            if [services::ITEMS, services::TASKS].contains(service) {
                service_args.extend(args(&["--data-dir", &dir]));
            }
            if *service == services::TASKS {
                service_args.extend(options.tasks_args.iter().cloned());
            }
            if secure {
                service_args.extend([
                    "--tls-cert".into(),
                    cert(&format!("{}.pem", service.name)),
                    "--tls-key".into(),
                    cert(&format!("{}.key", service.name)),
                    "--tls-client-ca".into(),
                    cert("ca.pem"),
                ]);
            }
            starting.spawn(async move { (service.name, Server::start(service.binary, &service_args).await) });
        }
        let mut servers = std::collections::HashMap::new();
        while let Some(started) = starting.join_next().await {
            let (name, server) = started.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            servers.insert(name, server);
        }
        let mut gw_args = gateway_flags_with(|service| servers[service.name].url());
        if secure {
            let read = |name: &str| std::fs::read_to_string(certs.join(name)).expect("certificate");
            for (name, server) in servers.iter_mut() {
                server.tls = Some(ClientTls {
                    ca: read("ca.pem"),
                    cert: read("gateway.pem"),
                    key: read("gateway.key"),
                    server_name: name.to_string(),
                });
            }
            gw_args.extend([
                "--services-tls-ca".into(),
                cert("ca.pem"),
                "--services-tls-cert".into(),
                cert("gateway.pem"),
                "--services-tls-key".into(),
                cert("gateway.key"),
                "--auth".into(),
                "keys".into(),
                "--api-keys".into(),
                cert("api-keys"),
            ]);
        }
        gw_args.extend(options.gateway_args);
        let gateway = Server::start("gateway", &gw_args).await;
        for server in servers.values() {
            server.wait_serving().await;
        }
        let mut take = |service: &Service| {
            servers
                .remove(service.name)
                .unwrap_or_else(|| panic!("{} was started above", service.name))
        };
        Mesh {
            items: take(&services::ITEMS),
            cache: take(&services::CACHE),
            tasks: take(&services::TASKS),
            counter: take(&services::COUNTER),
            gateway,
            http: http_client(),
            data,
        }
    }

    /// A client of its own (its own connections), as [`Mesh::http`] is.
    pub fn new_client(&self) -> reqwest::Client {
        http_client()
    }

    /// `http://<gateway><path>`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url())
    }
}

/// Debian's `chromium` (or `chromium-browser`) on `PATH`. Without it: `None`
/// after printing `SKIPPED`, except under CI (which installs it), where
/// it panics.
pub fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].into_iter().find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| std::path::Path::new(dir).join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !in_ci(),
            "chromium is not installed, and CI must run this test (.ci/run installs it)"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
    }
    found
}

/// Headless Chromium that reaches nothing but loopback: every host but
/// 127.0.0.1 resolves to nothing, and its own calls home are off.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // The browser's own calls home (network time, component and
    // safe-browsing updates, hints, translation): off, so that the
    // net log holds only what the page asked for.
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,MediaRouter,\
             DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater,\
             InterestFeedContentSuggestions,PrivacySandboxSettings4",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--no-pings",
    "--safebrowsing-disable-auto-update",
    "--metrics-recording-only",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
];

/// Whether backend-dependent tests must fail rather than skip (CI sets `CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Shared backends for the scale-out tests.
///
/// `MESH_TEST_POSTGRES_URL` / `MESH_TEST_REDIS_URL` name the servers. When a
/// variable is set (CI sets both) the server must answer, or the test fails.
/// When it is unset, the local default is tried, and if nothing answers the
/// test prints why it is skipped and passes.
pub mod backends {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
    const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

    async fn reachable(url: &str) -> bool {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return false;
        };
        let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
        let port = parsed
            .port()
            .unwrap_or(if parsed.scheme() == "redis" { 6379 } else { 5432 });
        matches!(
            tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect((host.as_str(), port))
            )
            .await,
            Ok(Ok(_))
        )
    }

    async fn backend(var: &str, default: &str, test: &str) -> Option<String> {
        match std::env::var(var) {
            Ok(url) => {
                assert!(
                    reachable(&url).await,
                    "{var}={url} is set but nothing answers there ({test} must not skip)"
                );
                Some(url)
            }
            Err(_) if reachable(default).await => Some(default.to_string()),
            Err(_) => {
                assert!(
                    !super::in_ci(),
                    "{var} is not set and {default} does not answer; CI must run {test}"
                );
                eprintln!("SKIPPED {test}: no server at {default} (set {var} to run it)");
                None
            }
        }
    }

    /// A PostgreSQL URL, or `None` (the test should return) when there is none here.
    pub async fn postgres(test: &str) -> Option<String> {
        backend("MESH_TEST_POSTGRES_URL", DEFAULT_POSTGRES, test).await
    }

    /// A Redis URL, or `None` (the test should return) when there is none here.
    pub async fn redis(test: &str) -> Option<String> {
        backend("MESH_TEST_REDIS_URL", DEFAULT_REDIS, test).await
    }

    /// A name no other test run uses: schemas and key prefixes are made from
    /// it, so runs sharing one server never see each other's data.
    pub fn unique(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!(
            "t_{tag}_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Drops a test's schema (and its tables).
    pub async fn drop_schema(url: &str, schema: &str) {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect to drop schema");
        conn.execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
            .await
            .expect("drop schema");
    }

    /// Deletes every Redis key under a test's prefix. SCAN in batches rather
    /// than one KEYS, and a generous reply timeout: on a busy machine with
    /// tens of thousands of keys, one blocking KEYS can outlast the default.
    pub async fn drop_keys(url: &str, prefix: &str) {
        let client = redis::Client::open(url).expect("redis url");
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("redis");
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("scan");
            if !keys.is_empty() {
                let _: () = redis::cmd("UNLINK")
                    .arg(keys)
                    .query_async(&mut conn)
                    .await
                    .expect("unlink");
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }

    /// Drops PostgreSQL schemas when dropped: at the end of the test, and also
    /// when it fails. Create it before the servers that use the schemas, so
    /// that they are stopped first (locals drop in reverse order).
    pub struct SchemaGuard {
        url: String,
        schemas: Vec<String>,
    }

    impl SchemaGuard {
        pub fn new<S: Into<String>>(url: &str, schemas: impl IntoIterator<Item = S>) -> SchemaGuard {
            SchemaGuard {
                url: url.to_string(),
                schemas: schemas.into_iter().map(Into::into).collect(),
            }
        }
    }

    impl Drop for SchemaGuard {
        fn drop(&mut self) {
            let url = self.url.clone();
            let schemas = std::mem::take(&mut self.schemas);
            super::clean_up(format!("drop schemas {schemas:?}"), move || async move {
                for schema in &schemas {
                    drop_schema(&url, schema).await;
                }
            });
        }
    }

    /// Deletes every Redis key under a prefix when dropped: at the end of the
    /// test, and also when it fails. Create it before the servers that write
    /// the keys, so that they are stopped first.
    pub struct KeysGuard {
        url: String,
        prefix: String,
    }

    impl KeysGuard {
        pub fn new(url: &str, prefix: &str) -> KeysGuard {
            KeysGuard {
                url: url.to_string(),
                prefix: prefix.to_string(),
            }
        }
    }

    impl Drop for KeysGuard {
        fn drop(&mut self) {
            let (url, prefix) = (self.url.clone(), self.prefix.clone());
            super::clean_up(format!("delete keys {prefix}*"), move || async move {
                drop_keys(&url, &prefix).await;
            });
        }
    }
}

/// A TCP forwarder a test can cut and restore, to take a shared server
/// (PostgreSQL) "down" for one service without touching the server itself.
pub struct TcpProxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), target).await
    }

    /// Listens on `listen` (give the old address to restore a cut proxy).
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every
            // connection, so a cut is immediate for open connections too.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        TcpProxy { addr, target, task }
    }

    /// Closes the listener and every forwarded connection.
    pub async fn cut(mut self) -> (SocketAddr, SocketAddr) {
        self.task.abort();
        let _ = (&mut self.task).await;
        (self.addr, self.target)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
