//! `GET /docs` works with no network: headless Chromium loads the page from a
//! real gateway process, the page renders the contract's operations, and
//! nothing leaves loopback (read from Chromium's net log).
//!
//! Chromium is Debian's `chromium` (installed by `.ci/run`). Without it the
//! test is skipped, except in CI, where it fails. Chromium runs in a process
//! group of its own that a guard kills, also when the test fails.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mesh_tests::{ProcessGroupGuard, Server, chromium, gateway_flags};
use tokio::process::Command;

/// Operations the rendered page must show (Swagger UI's `data-path`).
const PATHS: &[&str] = &[
    "/items",
    "/items/{id}",
    "/cache/{key}",
    "/tasks/stats",
    "/tasks/{id}/retry",
    "/tasks/{id}/events",
    "/counters/{name}/increment",
    "/run-blocking-task",
    "/overview",
];

/// Runs headless Chromium on `url` with `extra` flags, its profile and net
/// log in `dir`, and returns its stdout. Every host but 127.0.0.1 resolves
/// to nothing, so a request that tried to leave would fail and show in the log.
async fn run_chromium(browser: &Path, dir: &Path, name: &str, url: &str, extra: &[String]) -> String {
    let profile = dir.join(format!("profile-{name}"));
    let net_log = dir.join(format!("net-{name}.json"));
    let mut command = Command::new(browser);
    command
        .args(mesh_tests::CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--log-net-log={}", net_log.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let child = command.spawn().expect("start chromium");
    let _group = ProcessGroupGuard::new(child.id().expect("chromium's pid"));
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("chromium ({name}) did not finish within 90 s"))
        .expect("chromium's output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium ({name}) failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_loopback_only(&net_log, name);
    stdout
}

/// What the net log shows: nothing left loopback, and the page asked only
/// for loopback URLs.
///
/// - Every TCP connection attempt, and every UDP datagram sent, is to a
///   loopback address (QUIC is off; Chromium's UDP "connect" to a public
///   address to learn its own IPv6 route sends nothing and is not counted).
/// - Every host looked up is loopback, or was answered by the resolver rule
///   (`~NOTFOUND`): the browser's own calls home (update checks, network
///   time) are refused there and never reach a socket.
/// - Every request made for the page (its network isolation key is the
///   gateway's site) is to loopback, and they include the page itself and
///   `/openapi.json`.
fn assert_loopback_only(net_log: &Path, name: &str) {
    let text = std::fs::read_to_string(net_log).unwrap_or_else(|e| panic!("{}: {e}", net_log.display()));
    let log: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", net_log.display()));
    let types: std::collections::HashMap<u64, String> = log["constants"]["logEventTypes"]
        .as_object()
        .expect("a net log names its event types")
        .iter()
        .filter_map(|(name, id)| Some((id.as_u64()?, name.clone())))
        .collect();
    let events = log["events"].as_array().expect("a net log has events");
    let mut problems = Vec::new();
    let mut page = Vec::new();
    let mut refused = std::collections::BTreeSet::new();
    for event in events {
        let kind = event["type"]
            .as_u64()
            .and_then(|t| types.get(&t))
            .map_or("", String::as_str);
        let params = &event["params"];
        let text = |key: &str| params[key].as_str().unwrap_or_default().to_string();
        match kind {
            "TCP_CONNECT_ATTEMPT" | "UDP_BYTES_SENT" => {
                let address = text("address");
                if !address.is_empty() && !is_loopback(&address) {
                    problems.push(format!("{kind} to {address}"));
                }
            }
            "TCP_CONNECT" => {
                for key in ["remote_address", "address_list"] {
                    let address = text(key);
                    if !address.is_empty() && !is_loopback(&address) {
                        problems.push(format!("{kind} to {address}"));
                    }
                }
            }
            "HOST_RESOLVER_MANAGER_REQUEST" => {
                let host = text("host");
                if !host.is_empty() && !is_loopback(&host) && !host.contains("~notfound") {
                    problems.push(format!("looked up {host}"));
                }
            }
            "URL_REQUEST_START_JOB" => {
                let url = text("url");
                if url.is_empty() {
                    continue;
                }
                let key = text("network_isolation_key");
                if key.contains("://127.0.0.1") || key.contains("://localhost") {
                    if !is_loopback(&url) {
                        problems.push(format!("the page requested {url}"));
                    }
                    page.push(url);
                } else if !is_loopback(&url) {
                    refused.insert(url.split('?').next().unwrap_or_default().to_string());
                }
            }
            _ => {}
        }
    }
    assert!(problems.is_empty(), "({name}) traffic left loopback: {problems:#?}");
    for want in ["/docs/", "/openapi.json"] {
        assert!(
            page.iter().any(|url| url.ends_with(want)),
            "({name}) the page never requested {want}: {page:#?}"
        );
    }
    if !refused.is_empty() {
        eprintln!("({name}) the browser's own requests, refused by the resolver rule: {refused:?}");
    }
}

/// Whether `address` (`host:port`, `[v6]:port`, a URL, or a bare host) is loopback.
fn is_loopback(address: &str) -> bool {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[tokio::test]
async fn docs_page_renders_the_operations_without_the_network() {
    let Some(browser) = chromium() else { return };
    // No service is needed to render the docs: nothing listens on port 9.
    let none = "http://127.0.0.1:9";
    let gateway = Server::start("gateway", &gateway_flags(none, none, none, none)).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/docs", gateway.url());

    let dom = run_chromium(
        &browser,
        dir.path(),
        "dom",
        &url,
        &["--dump-dom".into(), "--virtual-time-budget=10000".into()],
    )
    .await;
    assert!(dom.contains("swagger-ui"), "not the Swagger UI page:\n{dom}");
    let missing: Vec<&&str> = PATHS
        .iter()
        .filter(|p| !dom.contains(&format!("data-path=\"{p}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "the page does not show {missing:?}; gateway log:\n{}\nDOM:\n{dom}",
        gateway.logs()
    );
    assert!(dom.contains("mesh gateway"), "the contract's title is missing");

    let screenshot = dir.path().join("docs.png");
    run_chromium(
        &browser,
        dir.path(),
        "screenshot",
        &url,
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,1600".into(),
            "--virtual-time-budget=10000".into(),
        ],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    // Keep it where a person can look at it after the run.
    if let Ok(keep) = std::env::var("DOCS_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }
}
