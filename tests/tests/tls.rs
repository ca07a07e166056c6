//! TLS at the edge and mutual TLS inside (issue: security), with real
//! certificates over real processes:
//!
//! - a mesh on `mesh certs`-style certificates serves HTTPS (HTTP/2 and
//!   HTTP/1.1 by ALPN) and reaches every service over mTLS; the principal
//!   the gateway authenticated reaches the service's log;
//! - a service refuses plaintext clients, clients without a certificate,
//!   with one from another CA, and with an expired one; only the gateway's
//!   certificate may use cache namespaces;
//! - replacing the certificate files changes the serial of the next
//!   handshake, with no restart, while an open connection keeps working;
//! - nothing listens beyond loopback in plaintext, or without
//!   authentication at the gateway, unless told to.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_common::tls;
use mesh_tests::proto::cache::v1::GetRequest;
use mesh_tests::proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_tests::proto::counter::v1::IncrementRequest;
use mesh_tests::proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_tests::{Server, WAIT, args, bin, eventually, gateway_flags_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const ADMIN_SECRET: &str = "mesh_tls-test-admin";

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The development certificates of every service and the gateway.
fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let names = ["items", "cache", "tasks", "counter", "gateway"];
    tls::write_dev_certs(dir.path(), &names, &["gateway"], &[]).unwrap();
    dir
}

fn service_tls_args(dir: &Path, name: &str) -> Vec<String> {
    let p = |f: String| dir.join(f).display().to_string();
    vec![
        "--tls-cert".into(),
        p(format!("{name}.pem")),
        "--tls-key".into(),
        p(format!("{name}.key")),
        "--tls-client-ca".into(),
        p("ca.pem".into()),
        "--tls-reload-ms".into(),
        "100".into(),
    ]
}

/// A TLS channel to a service, as `name` (its certificate from `dir`), or
/// with no client certificate.
fn channel(server: &Server, service: &str, ca_pem: &str, identity: Option<(String, String)>) -> Channel {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(service);
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(config)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy()
}

async fn healthy(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(|_| ())
}

/// A TLS handshake with `addr` (the server's certificate checked against
/// `ca`, as `server_name`): the negotiated ALPN and the leaf's serial.
async fn handshake(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    server_name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Option<Vec<u8>>,
    String,
)> {
    let mut config = tls::client_config(ca, identity).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let stream = connector.connect(name, tcp).await?;
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let serial = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| tls::serial_hex(leaf))
        .unwrap_or_default();
    Ok((stream, alpn, serial))
}

/// One HTTP/1.1 request over a TLS stream: the status line and the body.
async fn https_get(
    mut stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    method: &str,
    path: &str,
    headers: &str,
) -> String {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: 0\r\n{headers}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn a_mesh_over_mutual_tls_serves_https_and_refuses_strangers() {
    let dir = certs();
    let d = dir.path();
    let keys = d.join("api-keys");
    std::fs::write(
        &keys,
        format!("admin {} read,write,admin\n", mesh_auth::keys::hash_hex(ADMIN_SECRET)),
    )
    .unwrap();

    let mut starting = Vec::new();
    for service in mesh_tests::proto::services::ALL {
        let mut a = service_tls_args(d, service.name);
        if matches!(service.name, "items" | "tasks") {
            a.extend(args(&["--data-dir", d.to_str().unwrap()]));
        }
        starting.push((service, Server::start(service.binary, &a).await));
    }
    let mut gw = gateway_flags_with(|s| {
        let (_, server) = starting.iter().find(|(svc, _)| svc.name == s.name).unwrap();
        format!("http://{}", server.addr)
    });
    let p = |f: &str| d.join(f).display().to_string();
    gw.extend([
        "--services-tls-ca".into(),
        p("ca.pem"),
        "--services-tls-cert".into(),
        p("gateway.pem"),
        "--services-tls-key".into(),
        p("gateway.key"),
        "--tls-cert".into(),
        p("gateway.pem"),
        "--tls-key".into(),
        p("gateway.key"),
        "--auth".into(),
        "keys".into(),
        "--api-keys".into(),
        keys.display().to_string(),
    ]);
    let gateway = Server::start("gateway", &gw).await;
    let ca = d.join("ca.pem");
    let server = |name: &str| &starting.iter().find(|(s, _)| s.name == name).unwrap().1;

    // HTTPS at the edge, HTTP/2 or HTTP/1.1 by ALPN.
    let (_, alpn, _) = handshake(gateway.addr, &ca, None, "localhost", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (stream, alpn, _) = handshake(gateway.addr, &ca, None, "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let response = https_get(stream, "GET", "/test", "").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("Hello, load balanced world!"), "{response}");

    // Through the gateway to a service over mTLS, once the gateway's health
    // checks (themselves over mTLS) find the counter ready.
    let auth = format!("authorization: Bearer {ADMIN_SECRET}\r\n");
    let response = eventually("an increment through the gateway over mTLS", WAIT, async || {
        let (stream, _, _) = handshake(gateway.addr, &ca, None, "localhost", &[b"http/1.1"])
            .await
            .ok()?;
        let response = https_get(stream, "POST", "/counters/tls/increment", &auth).await;
        response.starts_with("HTTP/1.1 200").then_some(response)
    })
    .await;
    assert!(response.contains("\"value\":1"), "{response}");
    // The service believed the principal, because it came with the gateway's certificate.
    let counter = server("counter");
    eventually("the principal in the counter's log", WAIT, async || {
        counter
            .logs()
            .lines()
            .any(|l| l.contains("rpc done") && l.contains("principal=key:admin"))
    })
    .await;

    // Strangers at a service: plaintext, no certificate, another CA's, an expired one.
    let items = server("items");
    let ca_pem = read(d.join("ca.pem"));
    let gateway_id = || Some((read(d.join("gateway.pem")), read(d.join("gateway.key"))));
    healthy(channel(items, "items", &ca_pem, gateway_id()))
        .await
        .expect("the gateway's certificate is accepted");
    let plaintext = Endpoint::from_shared(format!("http://{}", items.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let plaintext = tokio::time::timeout(WAIT, async { healthy(plaintext.connect_lazy()).await }).await;
    assert!(
        matches!(plaintext, Ok(Err(_))),
        "a plaintext client is refused: {plaintext:?}"
    );
    assert!(
        healthy(channel(items, "items", &ca_pem, None)).await.is_err(),
        "no client certificate"
    );
    let (other_ca, other_key) = tls::new_ca("another CA").unwrap();
    let stranger = tls::issue_leaf(&other_ca, &other_key, "gateway", 30, -1).unwrap();
    assert!(
        healthy(channel(items, "items", &ca_pem, Some(stranger))).await.is_err(),
        "another CA"
    );
    let expired = tls::issue_leaf(&ca_pem, &read(d.join("ca.key")), "gateway", -1, -10).unwrap();
    assert!(
        healthy(channel(items, "items", &ca_pem, Some(expired))).await.is_err(),
        "expired"
    );

    // A client certificate from the CA that is not the gateway's: it may
    // call, but not use cache namespaces, and its x-mesh-principal is dropped.
    let reporting = tls::issue_leaf(&ca_pem, &read(d.join("ca.key")), "reporting", 30, -1).unwrap();
    let cache = server("cache");
    let get = GetRequest {
        namespace: "items".into(),
        key: "1".into(),
    };
    let refused = CacheServiceClient::new(channel(cache, "cache", &ca_pem, Some(reporting.clone())))
        .get(get.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    CacheServiceClient::new(channel(cache, "cache", &ca_pem, gateway_id()))
        .get(get)
        .await
        .unwrap();
    let public = GetRequest {
        namespace: String::new(),
        key: "k".into(),
    };
    CacheServiceClient::new(channel(cache, "cache", &ca_pem, Some(reporting.clone())))
        .get(public)
        .await
        .unwrap();
    let mut increment = tonic::Request::new(IncrementRequest {
        name: "spoofed".into(),
        ..Default::default()
    });
    increment
        .metadata_mut()
        .insert("x-request-id", "spoof-1".parse().unwrap());
    increment
        .metadata_mut()
        .insert("x-mesh-principal", "key:admin".parse().unwrap());
    CounterServiceClient::new(channel(counter, "counter", &ca_pem, Some(reporting)))
        .increment(increment)
        .await
        .unwrap();
    let line = eventually("the spoofed call's access line", WAIT, async || {
        counter
            .logs()
            .lines()
            .find(|l| l.contains("rpc done") && l.contains("spoof-1"))
            .map(str::to_owned)
    })
    .await;
    assert!(
        !line.contains("principal="),
        "a principal from a non-gateway certificate was believed: {line}"
    );

    // A service's own certificate is a server certificate only: it cannot call.
    let as_items = Some((read(d.join("items.pem")), read(d.join("items.key"))));
    assert!(
        healthy(channel(cache, "cache", &ca_pem, as_items)).await.is_err(),
        "a server certificate as a client"
    );
}

#[tokio::test]
async fn replaced_certificates_are_served_without_a_restart() {
    let dir = certs();
    let d = dir.path();
    let items = Server::start("items-service", &{
        let mut a = service_tls_args(d, "items");
        a.extend(args(&["--data-dir", d.to_str().unwrap()]));
        a
    })
    .await;
    let p = |f: &str| d.join(f).display().to_string();
    let mut gw = gateway_flags_with(|_| "http://127.0.0.1:9".into());
    gw.extend(args(&[
        "--tls-cert",
        &p("gateway.pem"),
        "--tls-key",
        &p("gateway.key"),
        "--tls-reload-ms",
        "100",
    ]));
    let gateway = Server::start("gateway", &gw).await;
    let ca = d.join("ca.pem");
    let (cert, key) = (d.join("gateway.pem"), d.join("gateway.key"));
    let identity = Some((cert.as_path(), key.as_path()));

    let (_, _, items_before) = handshake(items.addr, &ca, identity, "items", &[b"h2"]).await.unwrap();
    let (_, _, edge_before) = handshake(gateway.addr, &ca, None, "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    // A connection opened before the swap, kept open across it.
    let ca_pem = read(d.join("ca.pem"));
    let open = channel(
        &items,
        "items",
        &ca_pem,
        Some((read(d.join("gateway.pem")), read(d.join("gateway.key")))),
    );
    healthy(open.clone()).await.unwrap();

    // New certificates for the same names, from the same CA, written in place.
    let ca_key = read(d.join("ca.key"));
    for name in ["items", "gateway"] {
        let (cert, key) = tls::issue_leaf(&ca_pem, &ca_key, name, 30, -1).unwrap();
        std::fs::write(d.join(format!("{name}.key")), key).unwrap();
        std::fs::write(d.join(format!("{name}.pem")), cert).unwrap();
    }
    let items_after = eventually("the service's next handshake shows the new serial", WAIT, async || {
        let (_, _, serial) = handshake(items.addr, &ca, identity, "items", &[b"h2"]).await.ok()?;
        (serial != items_before).then_some(serial)
    })
    .await;
    assert!(!items_after.is_empty());
    eventually("the gateway's next handshake shows the new serial", WAIT, async || {
        let (_, _, serial) = handshake(gateway.addr, &ca, None, "localhost", &[b"http/1.1"])
            .await
            .ok()?;
        (serial != edge_before).then_some(())
    })
    .await;
    // The connection from before still works.
    for _ in 0..3 {
        healthy(open.clone())
            .await
            .expect("the open connection survives the swap");
    }
    assert!(!items.logs().contains("panicked"));
}

/// SIGHUP swaps the certificates at once (the timer is an hour here), while
/// calls keep going: over a connection opened before the swap, over fresh
/// connections to the service, and over fresh HTTPS connections to the
/// gateway. Not one of them fails, and calls after the swap see the new
/// serial, from the same processes.
#[tokio::test]
async fn a_sighup_swaps_certificates_under_load_without_a_failed_call() {
    let dir = certs();
    let d = dir.path();
    let hour = "3600000";
    let mut items_args: Vec<String> = service_tls_args(d, "items")
        .into_iter()
        .map(|a| if a == "100" { hour.into() } else { a })
        .collect();
    items_args.extend(args(&["--data-dir", d.to_str().unwrap()]));
    let items = Server::start("items-service", &items_args).await;
    let p = |f: &str| d.join(f).display().to_string();
    let mut gw = gateway_flags_with(|_| "http://127.0.0.1:9".into());
    gw.extend(args(&[
        "--tls-cert",
        &p("gateway.pem"),
        "--tls-key",
        &p("gateway.key"),
        "--tls-reload-ms",
        hour,
    ]));
    let gateway = Server::start("gateway", &gw).await;
    let ca = d.join("ca.pem");
    let ca_pem = read(d.join("ca.pem"));
    let client = (read(d.join("gateway.pem")), read(d.join("gateway.key")));
    let open = channel(&items, "items", &ca_pem, Some(client.clone()));
    healthy(open.clone()).await.unwrap();
    let (_, _, items_before) = {
        let (cert, key) = (d.join("gateway.pem"), d.join("gateway.key"));
        handshake(items.addr, &ca, Some((&cert, &key)), "items", &[b"h2"])
            .await
            .unwrap()
    };
    let (_, _, edge_before) = handshake(gateway.addr, &ca, None, "localhost", &[b"http/1.1"])
        .await
        .unwrap();

    // The load: three kinds of call, one after another, until told to stop.
    // The client identity is copied first: the files are about to change.
    let client_dir = tempfile::tempdir().unwrap();
    let (client_cert, client_key) = (client_dir.path().join("c.pem"), client_dir.path().join("c.key"));
    std::fs::write(&client_cert, &client.0).unwrap();
    std::fs::write(&client_key, &client.1).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rounds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = tokio::spawn({
        let (stop, rounds) = (stop.clone(), rounds.clone());
        let (open, ca, ca_pem) = (open.clone(), ca.clone(), ca_pem.clone());
        let (items_addr, edge_addr) = (items.addr, gateway.addr);
        let items_server_addr = items.addr;
        async move {
            let mut calls = 0usize;
            let mut failures = Vec::new();
            let mut serials = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Err(e) = healthy(open.clone()).await {
                    failures.push(format!("open connection: {e}"));
                }
                let fresh = Endpoint::from_shared(format!("https://{items_server_addr}"))
                    .unwrap()
                    .tls_config(
                        ClientTlsConfig::new()
                            .ca_certificate(Certificate::from_pem(&ca_pem))
                            .identity(Identity::from_pem(&client.0, &client.1))
                            .domain_name("items"),
                    )
                    .unwrap()
                    .connect_timeout(Duration::from_secs(5))
                    .connect_lazy();
                if let Err(e) = healthy(fresh).await {
                    failures.push(format!("fresh connection: {e}"));
                }
                match handshake(items_addr, &ca, Some((&client_cert, &client_key)), "items", &[b"h2"]).await {
                    Ok((_, _, serial)) => {
                        serials.insert(serial);
                    }
                    Err(e) => failures.push(format!("service handshake: {e}")),
                }
                match handshake(edge_addr, &ca, None, "localhost", &[b"http/1.1"]).await {
                    Ok((stream, _, _)) => {
                        let answer = https_get(stream, "GET", "/test", "").await;
                        if !answer.starts_with("HTTP/1.1 200") {
                            failures.push(format!("edge: {answer}"));
                        }
                    }
                    Err(e) => failures.push(format!("edge handshake: {e}")),
                }
                calls += 4;
                rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (calls, failures, serials)
        }
    });

    // Some rounds before the swap, some after it.
    let rounds_past = async |n: usize| {
        let from = rounds.load(std::sync::atomic::Ordering::Relaxed);
        eventually(&format!("{n} more rounds of calls"), WAIT, async || {
            rounds.load(std::sync::atomic::Ordering::Relaxed) >= from + n
        })
        .await;
    };
    rounds_past(2).await;

    // New certificates for the same names, written in place, then SIGHUP.
    let ca_key = read(d.join("ca.key"));
    for name in ["items", "gateway"] {
        let (cert, key) = tls::issue_leaf(&ca_pem, &ca_key, name, 30, -1).unwrap();
        std::fs::write(d.join(format!("{name}.key")), key).unwrap();
        std::fs::write(d.join(format!("{name}.pem")), cert).unwrap();
    }
    items.signal(nix::sys::signal::Signal::SIGHUP);
    gateway.signal(nix::sys::signal::Signal::SIGHUP);
    let (cert, key) = (client_dir.path().join("c.pem"), client_dir.path().join("c.key"));
    eventually("the service's next handshake shows the new serial", WAIT, async || {
        let (_, _, serial) = handshake(items.addr, &ca, Some((&cert, &key)), "items", &[b"h2"])
            .await
            .ok()?;
        (serial != items_before).then_some(())
    })
    .await;
    eventually("the gateway's next handshake shows the new serial", WAIT, async || {
        let (_, _, serial) = handshake(gateway.addr, &ca, None, "localhost", &[b"http/1.1"])
            .await
            .ok()?;
        (serial != edge_before).then_some(())
    })
    .await;
    rounds_past(2).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, failures, serials) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:#?}",
        failures.len()
    );
    eprintln!("SIGHUP under load: {calls} calls, none failed; serials {serials:?}");
    assert!(
        serials.contains(&items_before) && serials.len() == 2,
        "the load met the old certificate, then the new one: {serials:?}"
    );
    for server in [&items, &gateway] {
        eventually(
            &format!("{} logs the reload on SIGHUP", server.name),
            WAIT,
            async || {
                let logs = server.logs();
                logs.lines()
                    .any(|l| l.contains("reloaded TLS certificate") && l.contains("SIGHUP"))
                    .then_some(())
                    .ok_or(logs)
            },
        )
        .await;
    }
    healthy(open)
        .await
        .expect("the connection from before the swap still works");
}

/// What a binary says when it refuses to start.
async fn refusal(binary: &str, a: &[&str]) -> String {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(bin(binary))
            .args(a)
            .env("MESH_LOG_ANSI", "0")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("it exits")
    .unwrap();
    assert!(!out.status.success(), "{binary} {a:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn nothing_listens_beyond_loopback_in_the_clear_unless_told_to() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let said = refusal(
        "items-service",
        &[
            "--listen",
            "0.0.0.0:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
            dir,
        ],
    )
    .await;
    assert!(
        said.contains("not a loopback address") && said.contains("--insecure"),
        "{said}"
    );
    let said = refusal("gateway", &["--listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0"]).await;
    assert!(
        said.contains("not a loopback address") && said.contains("--auth none"),
        "{said}"
    );
    // Said explicitly, both start.
    let mut items = Server::start_on("items-service", &args(&["--insecure", "--data-dir", dir]), "0.0.0.0:0").await;
    let mut gateway = Server::start_on("gateway", &args(&["--auth", "none"]), "0.0.0.0:0").await;
    assert!(items.terminate().await.success());
    assert!(gateway.terminate().await.success());
}
