//! The tonic server every service runs.
//!
//! A service hands its own routes to [`GrpcServer`], which adds the standard
//! ones: `grpc.health.v1.Health` and server reflection in both `v1` and
//! `v1alpha` (grpcurl 1.8 speaks only `v1alpha`), over the mesh's descriptor
//! set, and runs every call behind [`crate::rpc::RpcLayer`].
//!
//! Health is `SERVING` only while all of these hold: the backend probe (if
//! any) succeeds, no operator has put the replica in maintenance (SIGUSR1 in,
//! SIGUSR2 out), and shutdown has not begun. On SIGTERM the replica first
//! reports `NOT_SERVING` and keeps serving for `--drain-ms`, so health-checking
//! clients (the gateway) move new calls elsewhere; then it stops accepting and
//! finishes the calls in flight.
//!
//! Beside the gRPC port every service runs an admin listener (plaintext HTTP,
//! loopback by default, see [`crate::admin`]): `GET /healthz`, and `GET
//! /readyz`, which answers 200 exactly while the health above is `SERVING`.
//! It stops with the server.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::Health;
use crate::rpc::RpcLayer;

type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// How often a backend probe runs.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Failed backend probes in a row that make a replica NOT_SERVING.
const PROBE_MISSES: u32 = 2;

/// Serving settings every server binary shares (flattened into its config).
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// On SIGTERM, how long to keep serving while reporting NOT_SERVING, so
    /// load balancers move traffic away before the listener closes, in ms.
    #[arg(long, env = "MESH_DRAIN_MS", default_value_t = 1500)]
    pub drain_ms: u64,

    /// Address of the admin listener (plaintext HTTP: GET /healthz, GET
    /// /readyz). Default: loopback on the service's own admin port, items
    /// 127.0.0.1:9051, cache 9052, tasks 9053, counter 9054. Port 0 picks a
    /// free port (announced on stdout).
    #[arg(long, env = "MESH_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Test only: delay every call by this many ms (a deliberately slow replica).
    #[arg(long, env = "MESH_DEBUG_DELAY_MS", hide = true)]
    pub debug_delay_ms: Option<u64>,

    /// Test only: with --debug-delay-ms, delay only every Nth call (a replica
    /// with occasional stalls).
    #[arg(long, env = "MESH_DEBUG_DELAY_EVERY", hide = true, default_value_t = 1)]
    pub debug_delay_every: u64,

    /// Certificate chain (PEM) to serve gRPC over TLS with; needs --tls-key.
    /// Re-read when the file changes and on SIGHUP: new handshakes get the
    /// new certificate, open connections stay.
    #[arg(long, env = "MESH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "MESH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA (PEM) that clients' certificates must chain to (mutual TLS): a
    /// client without one is refused at the handshake.
    #[arg(long, env = "MESH_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the certificate files are checked for changes, in ms.
    #[arg(long, env = "MESH_TLS_RELOAD_MS", default_value_t = 5000)]
    pub tls_reload_ms: u64,

    /// Serve plaintext on a non-loopback address. Without it, a service
    /// refuses to listen beyond loopback unless --tls-* is given.
    #[arg(long, env = "MESH_INSECURE")]
    pub insecure: bool,

    /// Serve gRPC server reflection (what grpcurl lists and describes with);
    /// `false` for production.
    #[arg(long, env = "MESH_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,

    /// The DNS name (a subject alternative name) of the gateway's client
    /// certificate. Under mutual TLS only a client with it may pass an
    /// end user's identity (`x-mesh-principal`) or use the gateway-only
    /// parts of a contract (e.g. cache namespaces).
    #[arg(long, env = "MESH_GATEWAY_IDENTITY", default_value = "gateway")]
    pub gateway_identity: String,

    /// Parse and validate the configuration (flags, environment, the
    /// certificate files), print `configuration OK` and exit, without
    /// listening or connecting anywhere.
    #[arg(long)]
    pub check_config: bool,

    #[command(flatten)]
    pub log: crate::telemetry::LogArgs,
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            drain_ms: 0,
            admin_listen: None,
            debug_delay_ms: None,
            debug_delay_every: 1,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_reload_ms: 5000,
            insecure: false,
            reflection: true,
            gateway_identity: "gateway".into(),
            check_config: false,
            log: crate::telemetry::LogArgs::default(),
        }
    }
}

impl ServeArgs {
    /// The TLS files, when --tls-cert and --tls-key are given.
    fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }

    /// Refuses to serve beyond loopback without mutual TLS (unless --insecure).
    fn refuse_exposure(&self, service: &str, local: SocketAddr) -> anyhow::Result<()> {
        let tls = self.tls_files();
        let mutual = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !mutual && !local.ip().is_loopback() && !self.insecure {
            anyhow::bail!(
                "{service} would serve {} on {local}, which is not a loopback address, where anyone who reaches it \
                 could call every RPC: give --tls-cert, --tls-key and --tls-client-ca (mutual TLS), or \
                 --insecure to serve anyway",
                if tls.is_some() {
                    "TLS without client certificates"
                } else {
                    "plaintext"
                }
            );
        }
        Ok(())
    }

    /// `--check-config`: what serving on `listen` would refuse, and the
    /// certificate files, read and parsed.
    pub fn check(&self, service: &str, listen: SocketAddr) -> anyhow::Result<()> {
        self.refuse_exposure(service, listen)?;
        if let Some(files) = self.tls_files() {
            crate::tls::server_config(&files, &[b"h2"])?;
        }
        Ok(())
    }
}

pub struct GrpcServer {
    routes: Routes,
    service_name: &'static str,
    probe: Option<Probe>,
    args: Option<ServeArgs>,
    admin_port: u16,
    refresh: Option<crate::admin::Refresh>,
}

/// What health is computed from.
#[derive(Clone, Copy, Debug)]
enum HealthEvent {
    Backend(bool),
    Maintenance(bool),
    Draining,
}

impl GrpcServer {
    /// A server for one gRPC service (`S::NAME` is what health reports on).
    pub fn new<S>(service: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        Self {
            routes: Routes::new(service),
            service_name: S::NAME,
            probe: None,
            args: None,
            admin_port: 0,
            refresh: None,
        }
    }

    /// Runs `refresh` before each `GET /metrics` (to set gauges read from a
    /// database, such as the task queue's depth).
    pub fn with_metrics_refresh<F, Fut>(mut self, refresh: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.refresh = Some(Arc::new(move || Box::pin(refresh())));
        self
    }

    /// The admin listener's port on 127.0.0.1 when `--admin-listen` is not
    /// given (each service has its own, so probes can name it); without this,
    /// a free port.
    pub fn with_default_admin_port(mut self, port: u16) -> Self {
        self.admin_port = port;
        self
    }

    /// Checks the backend every second; while `probe` answers false, health is
    /// `NOT_SERVING` (callers also get `UNAVAILABLE` from the calls themselves).
    pub fn with_probe<F, Fut>(mut self, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.probe = Some(Arc::new(move || Box::pin(probe())));
        self
    }

    pub fn with_args(mut self, args: &ServeArgs) -> Self {
        self.args = Some(args.clone());
        self
    }

    /// Serves on `listener` until `shutdown` resolves, drains, then stops
    /// accepting and lets in-flight calls finish.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> anyhow::Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        let args = self.args.unwrap_or_default();
        let local = listener.local_addr()?;
        let tls = args.tls_files();
        args.refuse_exposure(self.service_name, local)?;
        let admin_addr = args
            .admin_listen
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port)));
        let admin_listener = crate::admin::bind(admin_addr).await?;
        let (health, health_service) = tonic_health::server::health_reporter();
        set_all(&health, self.service_name, ServingStatus::Serving).await;
        let (health_view, health_view_rx) = watch::channel(Health {
            service: self.service_name,
            serving: true,
            backend_up: true,
            maintenance: false,
            draining: false,
        });
        let (admin_stop, mut admin_stop_rx) = watch::channel(false);
        let admin = tokio::spawn(crate::admin::serve(
            admin_listener,
            crate::admin::router(health_view_rx, self.refresh.clone()),
            async move {
                let _ = admin_stop_rx.wait_for(|stop| *stop).await;
            },
        ));
        let (events, events_rx) = mpsc::channel(16);
        let health_task = tokio::spawn(track_health(health, health_view, self.service_name, events_rx));
        let prober = self
            .probe
            .map(|probe| tokio::spawn(watch_backend(probe, events.clone())));
        let maintenance = tokio::spawn(watch_maintenance_signals(events.clone()));

        // Advertise only what this server serves: the descriptor set holds
        // every mesh service, but `grpcurl list` must not show the others.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(mesh_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
                .with_service_name(self.service_name)
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        };
        let mut routes = self.routes.add_service(health_service);
        if args.reflection {
            routes = routes
                .add_service(reflection().build_v1()?)
                .add_service(reflection().build_v1alpha()?);
        }

        let drain = Duration::from_millis(args.drain_ms);
        let (cert_stop, cert_stop_rx) = watch::channel(false);
        let incoming = match &tls {
            None => Incoming::Plain(TcpIncoming::from(listener).with_nodelay(Some(true))),
            Some(files) => {
                let (config, reloading) = crate::tls::server_config(files, &[b"h2"])?;
                let mut stop = cert_stop_rx.clone();
                reloading.watch(Duration::from_millis(args.tls_reload_ms.max(100)), async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
                tracing::info!(
                    mutual = files.client_ca.is_some(),
                    cert = %files.cert.display(),
                    "serving gRPC over TLS"
                );
                Incoming::Tls(tls_incoming(listener, tokio_rustls::TlsAcceptor::from(config)))
            }
        };
        let gateway_identity = (tls.as_ref().is_some_and(|t| t.client_ca.is_some()))
            .then(|| crate::rpc::GatewayIdentity::new(&args.gateway_identity));
        let builder = Server::builder()
            // Clients that give up on calls (deadlines, a load generator
            // stopping) reset streams; h2's default allows only 20 such resets
            // pending before it tears the whole connection down, which would
            // fail every other call multiplexed on it.
            .http2_max_pending_accept_reset_streams(Some(10_000))
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(RpcLayer {
                debug_delay: args
                    .debug_delay_ms
                    .map(|ms| crate::rpc::DebugDelay::new(Duration::from_millis(ms), args.debug_delay_every)),
                gateway_identity,
            })
            .add_routes(routes);
        let shutdown = async move {
            shutdown.await;
            if let Some(prober) = prober {
                prober.abort();
            }
            maintenance.abort();
            let _ = events.send(HealthEvent::Draining).await;
            if !drain.is_zero() {
                tracing::info!(
                    drain_ms = drain.as_millis() as u64,
                    "NOT_SERVING; draining before the listener closes"
                );
                tokio::time::sleep(drain).await;
            }
        };
        let served = match incoming {
            Incoming::Plain(incoming) => builder.serve_with_incoming_shutdown(incoming, shutdown).await,
            Incoming::Tls(incoming) => builder.serve_with_incoming_shutdown(incoming, shutdown).await,
        };
        cert_stop.send_replace(true);
        health_task.abort();
        // The admin listener goes last: its /readyz says NOT_SERVING while draining.
        admin_stop.send_replace(true);
        let admin = admin.await;
        served?;
        match admin {
            Ok(result) => result?,
            Err(err) => tracing::warn!(error = %err, "admin listener task failed"),
        }
        tracing::info!("server stopped; in-flight calls finished");
        Ok(())
    }
}

/// Where connections come from: the listener itself, or TLS handshakes done
/// off the accept loop.
enum Incoming {
    Plain(TcpIncoming),
    Tls(
        tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>,
    ),
}

/// TLS handshakes in progress at most.
const MAX_HANDSHAKES: usize = 1024;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts on `listener` and hands over each connection once its TLS
/// handshake is done. Each handshake runs in its own task with a deadline,
/// so a client that stalls mid-handshake holds up no one else. Ends (and
/// closes the listener) when the server stops taking connections.
fn tls_incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = mpsc::channel(256);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // At most MAX_HANDSHAKES at once: past that, new clients wait in
            // the listen backlog.
            let permit = tokio::select! {
                () = tx.closed() => return,
                permit = handshakes.clone().acquire_owned() => permit.expect("never closed"),
            };
            let (stream, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake did not finish in time"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Sets the overall status (the empty name) and the named service's together.
async fn set_all(health: &HealthReporter, name: &str, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(name, status).await;
}

/// Owns the health state; every change arrives as an event. `view` mirrors
/// it for the admin listener's `/readyz`.
async fn track_health(
    health: HealthReporter,
    view: watch::Sender<Health>,
    name: &'static str,
    mut events: mpsc::Receiver<HealthEvent>,
) {
    let (mut backend_up, mut maintenance, mut draining) = (true, false, false);
    let mut serving = true;
    while let Some(event) = events.recv().await {
        match event {
            HealthEvent::Backend(up) => backend_up = up,
            HealthEvent::Maintenance(on) => maintenance = on,
            HealthEvent::Draining => draining = true,
        }
        let now = backend_up && !maintenance && !draining;
        view.send_replace(Health {
            service: name,
            serving: now,
            backend_up,
            maintenance,
            draining,
        });
        if now != serving {
            serving = now;
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::info!(
                service = name,
                ?status,
                backend_up,
                maintenance,
                draining,
                "health changed"
            );
            set_all(&health, name, status).await;
        }
    }
}

/// Probes the backend every [`PROBE_EVERY`]. One success says it is up;
/// it is down after [`PROBE_MISSES`] failures in a row, so one probe lost
/// on a busy machine does not take the replica out of rotation (its calls
/// that fail answer UNAVAILABLE on their own).
async fn watch_backend(probe: Probe, events: mpsc::Sender<HealthEvent>) {
    let (mut up, mut failures) = (true, 0u32);
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        failures = if probe().await { 0 } else { failures + 1 };
        let now_up = failures < PROBE_MISSES;
        if now_up != up {
            up = now_up;
            if up {
                tracing::info!("backend reachable again");
            } else {
                tracing::warn!("backend unreachable");
            }
            if events.send(HealthEvent::Backend(up)).await.is_err() {
                return;
            }
        }
    }
}

/// SIGUSR1 takes the replica out of rotation (NOT_SERVING) without stopping
/// it; SIGUSR2 puts it back.
async fn watch_maintenance_signals(events: mpsc::Sender<HealthEvent>) {
    let (Ok(mut enter), Ok(mut leave)) = (signal(SignalKind::user_defined1()), signal(SignalKind::user_defined2()))
    else {
        tracing::warn!("cannot listen for SIGUSR1/SIGUSR2; maintenance mode unavailable");
        return;
    };
    loop {
        let on = tokio::select! {
            _ = enter.recv() => true,
            _ = leave.recv() => false,
        };
        tracing::info!(maintenance = on, "maintenance signal received");
        if events.send(HealthEvent::Maintenance(on)).await.is_err() {
            return;
        }
    }
}
