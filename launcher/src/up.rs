//! `mesh` with no subcommand: bring the whole mesh up and keep it up.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use mesh_common::telemetry::LogFormat;
use mesh_proto::services::{self, Service};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The gateway's admin listener (/healthz, /readyz, /overview), on loopback.
/// (Each service's, and where replica n of a service listens, is in
/// `mesh_proto::services`: items on 50051, 50061, ..., admin 9051, 9061, ....)
const GATEWAY_ADMIN_PORT: u16 = 9080;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Replicas per service, e.g. `items=2,tasks=3` (default 1 each).
    #[arg(long, env = "MESH_REPLICAS", value_parser = parse_replicas, default_value = "")]
    replicas: BTreeMap<String, u16>,

    /// Data directory for the embedded SQLite databases.
    #[arg(long, env = "MESH_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,

    /// Shared backends with local defaults: `postgres`, `redis`, or both (`postgres,redis`).
    #[arg(long, env = "MESH_BACKEND", value_delimiter = ',')]
    backend: Vec<String>,

    /// PostgreSQL URL for items and tasks (overrides --backend postgres's default).
    #[arg(long, env = "MESH_DATABASE_URL")]
    database_url: Option<String>,

    /// Redis URL for cache and counter (overrides --backend redis's default).
    #[arg(long, env = "MESH_REDIS_URL")]
    redis_url: Option<String>,

    /// Address of the HTTP gateway.
    #[arg(long, env = "MESH_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    gateway_listen: SocketAddr,

    /// Interface the services listen on.
    #[arg(long, env = "MESH_HOST", default_value = "127.0.0.1")]
    host: IpAddr,

    /// Let every service pick a free port (printed once up) instead of the defaults.
    #[arg(long, env = "MESH_EPHEMERAL_PORTS")]
    ephemeral_ports: bool,

    /// Plain-HTTP upstream for the gateway's /call-another-service (default:
    /// a small "another service" the launcher runs itself).
    #[arg(long, env = "MESH_UPSTREAM")]
    upstream: Option<String>,

    /// More destinations `fetch` tasks may reach, as tasks-service's
    /// --fetch-allow takes them (IP:PORT, CIDR:PORT, HOSTNAME:PORT, ...). The
    /// gateway and the launcher's "another service" are always allowed.
    #[arg(long, env = "MESH_FETCH_ALLOW", value_delimiter = ',', value_parser = mesh_tasks::fetch_policy::parse_entry)]
    fetch_allow: Vec<mesh_tasks::fetch_policy::AllowEntry>,

    /// Mutual TLS between the gateway and every service, and HTTPS at the
    /// gateway, with development certificates from `--certs-dir` (made
    /// there by `mesh certs` if missing).
    #[arg(long, env = "MESH_TLS")]
    tls: bool,

    /// Where --tls finds (or makes) its certificates (default: DATA_DIR/certs).
    #[arg(long, env = "MESH_CERTS_DIR")]
    certs_dir: Option<PathBuf>,

    /// The launcher's and every process's log format.
    #[command(flatten)]
    log: mesh_common::telemetry::LogArgs,
}

/// The names `mesh certs` makes certificates for: every service, and the gateway.
pub fn cert_names() -> Vec<&'static str> {
    services::ALL.iter().map(|s| s.name).chain(["gateway"]).collect()
}

/// The development certificates `--tls` uses, made if missing.
fn dev_certs(dir: &std::path::Path, host: IpAddr) -> anyhow::Result<()> {
    let missing = std::iter::once("ca".to_string())
        .chain(cert_names().into_iter().map(str::to_string))
        .any(|name| !dir.join(format!("{name}.pem")).exists());
    if missing {
        mesh_common::tls::write_dev_certs(dir, &cert_names(), &["gateway"], &[host.to_string()])?;
        println!("development certificates written to {}", dir.display());
    }
    Ok(())
}

/// What the launcher's "another service" answers, on any path.
const ANOTHER_BODY: &str = r#"{"service":"another","message":"Hello from another service"}"#;

/// Starts the "another service" in this process: a plain-HTTP JSON answer
/// for the gateway's `/call-another-service`. Returns the address to call.
async fn start_another(host: IpAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(host, 0))
        .await
        .with_context(|| format!("cannot start the another service on {host}"))?;
    let addr = reachable(listener.local_addr()?);
    let app =
        axum::Router::new().fallback(async || ([(axum::http::header::CONTENT_TYPE, "application/json")], ANOTHER_BODY));
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "the another service stopped");
        }
    });
    Ok(addr)
}

/// The gateway's address, fixed before the tasks replicas start (they are
/// told they may fetch from it): port 0 becomes a port free now, which the
/// gateway binds a moment later.
fn fix_gateway_port(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    let probe = std::net::TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    Ok(probe.local_addr()?)
}

/// An address to connect to: a wildcard listen address is reached through
/// loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

fn parse_replicas(s: &str) -> Result<BTreeMap<String, u16>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, n) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected SERVICE=N, e.g. items=2"))?;
        if services::by_name(name).is_none() {
            let names: Vec<&str> = services::ALL.iter().map(|s| s.name).collect();
            return Err(format!("{name:?} is not a service ({})", names.join(", ")));
        }
        let n: u16 = n.parse().map_err(|_| format!("{part:?}: N must be a whole number"))?;
        if !(1..=9).contains(&n) {
            return Err(format!("{part:?}: between 1 and 9 replicas"));
        }
        out.insert(name.to_string(), n);
    }
    Ok(out)
}

struct Proc {
    name: String,
    addr: SocketAddr,
    /// Its admin listener, as it announced it.
    admin: Option<SocketAddr>,
    child: Child,
}

/// Where a process's admin listener goes: loopback, on `port` (0 with --ephemeral-ports).
fn admin_listen(ephemeral: bool, port: u16) -> String {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), if ephemeral { 0 } else { port }).to_string()
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let _log = mesh_common::telemetry::init(args.log.log_format); // flushes the log when run returns
    // Installed now, so a signal at any point stops the children we started.
    let mut shutdown = Box::pin(mesh_common::shutdown::signal());
    let database_url = args.database_url.clone().or_else(|| {
        args.backend
            .iter()
            .any(|b| b == "postgres")
            .then(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
    });
    let redis_url = args.redis_url.clone().or_else(|| {
        args.backend
            .iter()
            .any(|b| b == "redis")
            .then(|| "redis://127.0.0.1:6379".to_string())
    });
    for b in &args.backend {
        if b != "postgres" && b != "redis" {
            bail!("--backend {b:?}: expected postgres, redis or both");
        }
    }
    for stateful in [services::CACHE.name, services::COUNTER.name] {
        let n = args.replicas.get(stateful).copied().unwrap_or(1);
        if n > 1 && redis_url.is_none() {
            bail!(
                "{n} {stateful} replicas on the in-process backend would each keep their own state and \
                 give different answers; share Redis instead: --backend redis (or --redis-url URL)"
            );
        }
    }

    let gateway_listen = fix_gateway_port(args.gateway_listen)?;
    // The gateway's --upstream: the user's, or the launcher's own "another service".
    let another = match &args.upstream {
        Some(_) => None,
        None => Some(start_another(args.host).await?),
    };
    let upstream = match (&args.upstream, another) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(addr)) => Some(format!("http://{addr}/")),
        (None, None) => None,
    };
    // fetch tasks may reach this mesh's own HTTP services, and what the user adds.
    let fetch_allow: Vec<String> = [Some(reachable(gateway_listen)), another]
        .into_iter()
        .flatten()
        .map(|addr| addr.to_string())
        .chain(args.fetch_allow.iter().map(ToString::to_string))
        .collect();
    let fetch_allow = fetch_allow.join(",");

    let certs = args
        .tls
        .then(|| args.certs_dir.clone().unwrap_or_else(|| args.data_dir.join("certs")));
    let launcher_tls = match &certs {
        Some(dir) => {
            dev_certs(dir, args.host)?;
            Some(mesh_upstream::ClientTls {
                ca_pem: std::fs::read(dir.join("ca.pem"))?,
                identity: Some((
                    std::fs::read(dir.join("gateway.pem"))?,
                    std::fs::read(dir.join("gateway.key"))?,
                )),
            })
        }
        None => None,
    };
    let exe = std::env::current_exe().context("cannot find the mesh executable")?;
    let log_format = match args.log.log_format {
        mesh_common::telemetry::LogFormat::Text => "text",
        mesh_common::telemetry::LogFormat::Json => "json",
    };
    let mut procs: Vec<Proc> = Vec::new();
    let mut endpoints: Vec<(&Service, Vec<String>)> = Vec::new();
    let started = async {
        for service in services::ALL {
            let mut listed = Vec::new();
            for replica in 0..args.replicas.get(service.name).copied().unwrap_or(1) {
                let (port, admin_port) = service.replica_ports(replica);
                let port = if args.ephemeral_ports { 0 } else { port };
                let listen = SocketAddr::new(args.host, port);
                let mut cmd = Command::new(&exe);
                cmd.arg(service.name).arg("--listen").arg(listen.to_string());
                cmd.arg("--log-format").arg(log_format);
                traced(&mut cmd, &args.log.otel);
                metered(&mut cmd, args.log.metrics);
                cmd.arg("--admin-listen")
                    .arg(admin_listen(args.ephemeral_ports, admin_port));
                if let Some(dir) = &certs {
                    cmd.arg("--tls-cert").arg(dir.join(format!("{}.pem", service.name)));
                    cmd.arg("--tls-key").arg(dir.join(format!("{}.key", service.name)));
                    cmd.arg("--tls-client-ca").arg(dir.join("ca.pem"));
                }
                // Backend URLs (which may hold a password) go in the child's
                // environment, not its command line, which any user can list.
                // Items and tasks keep their rows in SQL; cache and counter in Redis.
                match *service {
                    services::ITEMS | services::TASKS => {
                        cmd.arg("--data-dir").arg(&args.data_dir);
                        if let Some(url) = &database_url {
                            cmd.env("MESH_DATABASE_URL", url);
                        }
                        if service == &services::TASKS {
                            cmd.arg("--fetch-allow").arg(&fetch_allow);
                        }
                    }
                    _ => {
                        if let Some(url) = &redis_url {
                            let var = if service == &services::CACHE {
                                "CACHE_REDIS_URL"
                            } else {
                                "COUNTER_REDIS_URL"
                            };
                            cmd.env(var, url);
                        }
                    }
                }
                let name = format!("{}-{}", service.name, replica + 1);
                // One at a time: replicas on one SQLite file must not race
                // each other through the first migration.
                let proc = spawn(name, cmd, args.log.log_format).await?;
                wait_serving(&proc, service.name, launcher_tls.as_ref()).await?;
                listed.push(format!("http://{}", proc.addr));
                procs.push(proc);
            }
            endpoints.push((service, listed));
        }
        let mut cmd = Command::new(&exe);
        cmd.arg("gateway").arg("--listen").arg(gateway_listen.to_string());
        cmd.arg("--log-format").arg(log_format);
        traced(&mut cmd, &args.log.otel);
        metered(&mut cmd, args.log.metrics);
        cmd.arg("--admin-listen")
            .arg(admin_listen(args.ephemeral_ports, GATEWAY_ADMIN_PORT));
        for (service, list) in &endpoints {
            cmd.arg(format!("--{}", service.flag)).arg(list.join(","));
        }
        if let Some(upstream) = &upstream {
            cmd.arg("--upstream").arg(upstream);
        }
        if let Some(dir) = &certs {
            cmd.arg("--services-tls-ca").arg(dir.join("ca.pem"));
            cmd.arg("--services-tls-cert").arg(dir.join("gateway.pem"));
            cmd.arg("--services-tls-key").arg(dir.join("gateway.key"));
            cmd.arg("--tls-cert").arg(dir.join("gateway.pem"));
            cmd.arg("--tls-key").arg(dir.join("gateway.key"));
        }
        procs.push(spawn("gateway".into(), cmd, args.log.log_format).await?);
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        r = started => r,
        () = &mut shutdown => Err(anyhow::anyhow!("interrupted while starting")),
    };
    if let Err(err) = outcome {
        stop_all(&mut procs).await;
        return Err(err);
    }

    println!("\nmesh is up (Ctrl-C stops everything):");
    for p in &procs {
        println!("  {:<10} {}", p.name, p.addr);
    }
    if let Some(addr) = another {
        println!("  {:<10} {addr} (in the launcher; the gateway's --upstream)", "another");
    }
    println!("  fetch tasks may reach: {fetch_allow}");
    println!("\nadmin listeners (loopback: /healthz, /readyz, /metrics; the gateway's also /overview and /ui):");
    for p in &procs {
        if let Some(admin) = p.admin {
            println!("  {:<10} {admin}", p.name);
        }
    }
    if let Some(admin) = procs.last().and_then(|p| p.admin) {
        println!("  live mesh page: http://{}/ui", reachable(admin));
    }
    let gateway = reachable(procs.last().map(|p| p.addr).unwrap_or(gateway_listen));
    if let Some(dir) = &certs {
        let d = dir.display();
        println!(
            "\ntry (TLS; the CA is {d}/ca.pem):\n  curl --cacert {d}/ca.pem https://localhost:{}/test\n  grpcurl -cacert {d}/ca.pem -cert {d}/gateway.pem -key {d}/gateway.key -servername {} {} list\n",
            gateway.port(),
            services::ALL[0].name,
            procs.first().map(|p| p.addr).unwrap_or(gateway)
        );
    } else {
        println!(
            "\ntry:\n  curl http://{gateway}/test\n  curl http://{gateway}/call-another-service\n  curl -X POST http://{gateway}/items -H 'content-type: application/json' -d '{{\"name\":\"pen\",\"price_cents\":150}}'\n  curl -X POST http://{gateway}/tasks -H 'content-type: application/json' -d '{{\"kind\":\"fetch\",\"payload\":{{\"url\":\"http://{gateway}/test\"}}}}'\n  grpcurl -plaintext {} list\n",
            procs.first().map(|p| p.addr).unwrap_or(gateway)
        );
    }

    let died = tokio::select! {
        () = &mut shutdown => None,
        name = any_exit(&mut procs) => Some(name),
    };
    if let Some(name) = &died {
        tracing::error!(process = %name, "a process exited; stopping the mesh");
    }
    stop_all(&mut procs).await;
    match died {
        Some(name) => bail!("{name} exited unexpectedly"),
        None => Ok(()),
    }
}

/// Every child exports traces where the launcher was told to.
fn traced(cmd: &mut Command, otel: &mesh_common::otel::OtelArgs) {
    if let Some(endpoint) = &otel.otlp_endpoint {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
    }
    cmd.env("MESH_TRACE_SAMPLE_RATIO", otel.trace_sample_ratio.to_string());
}

/// Every child records metrics, or none does.
fn metered(cmd: &mut Command, on: bool) {
    cmd.env("MESH_METRICS", if on { "true" } else { "false" });
}

/// A child's log line as the launcher writes it: `NAME | line`, or in JSON
/// the object with `"process":"NAME"` first (a line that is not an object,
/// such as a panic message, is wrapped in one), so the launcher's own
/// output stays one JSON object per line.
fn mark(name: &str, line: &str, format: LogFormat) -> String {
    match format {
        LogFormat::Text => format!("{name:>10} | {line}"),
        LogFormat::Json => match line.strip_prefix('{') {
            Some(rest) if line.ends_with('}') && rest.len() > 1 => format!("{{\"process\":{name:?},{rest}"),
            _ => format!("{{\"process\":{name:?},\"message\":{}}}", serde_json::Value::from(line)),
        },
    }
}

/// Starts one child, forwards its logs marked with its name (a prefix, or
/// in JSON a `process` field), and reads the addresses it announces on
/// stdout (its listener, then its admin listener).
async fn spawn(name: String, mut cmd: Command, format: LogFormat) -> anyhow::Result<Proc> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("cannot start {name}"))?;
    if let Some(stderr) = child.stderr.take() {
        let prefix = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{}", mark(&prefix, &line, format));
            }
        });
    }
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
        .await
        .with_context(|| format!("{name} did not start in time"))??
        .with_context(|| format!("{name} exited during start-up (see its log above)"))?;
    let addr: SocketAddr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{name} announced {line:?}, not an address"))?;
    // The admin line follows once the server's start-up is done.
    let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
        .await
        .with_context(|| format!("{name} did not start in time"))??
        .with_context(|| format!("{name} exited during start-up (see its log above)"))?;
    let admin = line
        .split_once(" admin listening on ")
        .and_then(|(_, a)| a.trim().parse().ok());
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Proc {
        name,
        addr,
        admin,
        child,
    })
}

/// Polls `grpc.health.v1` until the server reports SERVING.
async fn wait_serving(proc: &Proc, service: &str, tls: Option<&mesh_upstream::ClientTls>) -> anyhow::Result<()> {
    let channel = match tls {
        None => tonic::transport::Endpoint::from_shared(format!("http://{}", proc.addr))?.connect_lazy(),
        Some(tls) => tonic::transport::Endpoint::from_shared(format!("https://{}", proc.addr))?
            .tls_config(tls.config(service))?
            .connect_lazy(),
    };
    let mut client = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let status = client.check(HealthCheckRequest { service: String::new() }).await;
        if matches!(status, Ok(ref r) if r.get_ref().status == ServingStatus::Serving as i32) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{} did not report SERVING within {READY_TIMEOUT:?}", proc.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resolves with the name of the first child that exits.
async fn any_exit(procs: &mut [Proc]) -> String {
    let waits = procs.iter_mut().map(|p| {
        Box::pin(async move {
            let _ = p.child.wait().await;
            p.name.clone()
        })
    });
    futures::future::select_all(waits).await.0
}

/// SIGTERM to every child (gateway first, so it stops sending calls), then
/// wait; whatever is still running after the timeout is killed.
async fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter().rev() {
        if let Some(pid) = p.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for p in procs.iter_mut().rev() {
        match tokio::time::timeout(STOP_TIMEOUT, p.child.wait()).await {
            Ok(Ok(status)) => tracing::info!(process = %p.name, %status, "stopped"),
            Ok(Err(err)) => {
                tracing::warn!(process = %p.name, error = %err, "cannot wait for process")
            }
            Err(_) => {
                tracing::warn!(process = %p.name, "did not stop in time; killing it");
                let _ = p.child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LogFormat, mark};

    #[test]
    fn child_lines_keep_their_format_with_the_process_named() {
        assert_eq!(mark("items-1", "hello", LogFormat::Text), "   items-1 | hello");
        let json = mark("items-1", r#"{"level":"INFO","message":"hi"}"#, LogFormat::Json);
        assert_eq!(json, r#"{"process":"items-1","level":"INFO","message":"hi"}"#);
        let raw = mark("gateway", "thread 'main' panicked at \"x\"\u{1b}", LogFormat::Json);
        let parsed: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(parsed["process"], "gateway");
        assert_eq!(parsed["message"], "thread 'main' panicked at \"x\"\u{1b}");
        let empty: serde_json::Value = serde_json::from_str(&mark("cache-1", "{}", LogFormat::Json)).unwrap();
        assert_eq!(empty["message"], "{}");
    }
}
