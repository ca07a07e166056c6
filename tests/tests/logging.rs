//! What the mesh logs, over real processes: nothing per request by default,
//! one line per request and per RPC with the access log on, a WARN with the
//! request id for a failed or a slow call, no colour codes into a pipe, and
//! the last line before exit flushed.

use std::time::{Duration, Instant};

use mesh_tests::{Server, args, gateway_flags};
use reqwest::StatusCode;

/// The environment a user gets: none of the logging variables set.
const DEFAULTS: &[(&str, Option<&str>)] = &[
    ("MESH_LOG_FORMAT", None),
    ("RUST_LOG", None),
    ("MESH_ACCESS_LOG", None),
    ("MESH_SLOW_MS", None),
    ("MESH_LOG_ANSI", None),
];

/// An items service and a cache service (which also stands in for tasks and
/// counter) behind a gateway, all started with `env` over [`DEFAULTS`].
struct Small {
    items: Server,
    cache: Server,
    gateway: Server,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Small {
    async fn start(env: &[(&str, Option<&str>)], items_args: &[&str]) -> Small {
        let env: Vec<_> = DEFAULTS.iter().chain(env).copied().collect();
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().display().to_string();
        let items_args = [args(&["--data-dir", &dir]), args(items_args)].concat();
        let items = Server::start_with_env("items-service", &items_args, "127.0.0.1:0", &env).await;
        let cache = Server::start_with_env("cache-service", &[], "127.0.0.1:0", &env).await;
        items.wait_serving().await;
        cache.wait_serving().await;
        let flags = gateway_flags(items.url(), cache.url(), cache.url(), cache.url());
        let gateway = Server::start_with_env("gateway", &flags, "127.0.0.1:0", &env).await;
        Small {
            items,
            cache,
            gateway,
            http: reqwest::Client::new(),
            _data: data,
        }
    }

    async fn get(&self, path: &str, request_id: &str) -> StatusCode {
        self.http
            .get(format!("{}{path}", self.gateway.url()))
            .header("x-request-id", request_id)
            .send()
            .await
            .unwrap()
            .status()
    }
}

/// Waits (up to 10 s) until `server`'s log satisfies `ok`; returns the log.
async fn log_until(server: &Server, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let log = server.logs();
        if ok(&log) {
            return log;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}: no {what} in its log:\n{log}",
            server.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// The `latency_ms=` value of a line, which must have exactly two decimals.
fn latency(line: &str) -> &str {
    let value = line
        .split("latency_ms=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no latency_ms in {line:?}"));
    let (whole, decimals) = value.split_once('.').unwrap_or_else(|| panic!("{line:?}"));
    assert!(
        !whole.is_empty() && whole.bytes().all(|b| b.is_ascii_digit()) && decimals.len() == 2,
        "latency_ms not rounded to 2 decimals in {line:?}"
    );
    value
}

#[tokio::test]
async fn by_default_successful_requests_log_nothing_and_the_last_line_is_flushed() {
    let mut mesh = Small::start(&[], &[]).await;
    let ids: Vec<String> = (0..20).map(|i| format!("quiet-{i}")).collect();
    for id in &ids {
        assert_eq!(mesh.get("/items?page_size=1", id).await, StatusCode::OK);
    }
    // Stop both: what they logged is then all written (and flushed).
    assert!(mesh.gateway.terminate().await.success(), "{}", mesh.gateway.logs());
    assert!(mesh.items.terminate().await.success(), "{}", mesh.items.logs());
    // The last line each logs before exit is there: the writer was flushed.
    let gateway = log_until(&mesh.gateway, "\"gateway stopped\"", |l| l.contains("gateway stopped")).await;
    let items = log_until(&mesh.items, "\"server stopped\"", |l| l.contains("server stopped")).await;
    for (name, log) in [("gateway", &gateway), ("items-service", &items)] {
        for id in &ids {
            assert!(!log.contains(id.as_str()), "{name} logged request {id}:\n{log}");
        }
        for needle in ["access:", "rpc done", "request_id="] {
            assert!(
                !log.contains(needle),
                "{name} logged a per-request line ({needle}):\n{log}"
            );
        }
        // Stderr is a pipe and MESH_LOG_ANSI is unset: no colour codes.
        assert!(!log.contains('\x1b'), "{name} wrote ANSI escapes into a pipe:\n{log:?}");
        // It did log: the start-up and stop lines at INFO.
        assert!(log.contains(" INFO "), "{name}:\n{log}");
    }
}

#[tokio::test]
async fn the_access_log_writes_one_line_per_request_and_per_rpc_with_its_id() {
    let mesh = Small::start(&[("MESH_ACCESS_LOG", Some("1"))], &[]).await;
    const N: usize = 20;
    let ids: Vec<String> = (0..N).map(|i| format!("acc-{i}")).collect();
    for id in &ids {
        assert_eq!(mesh.get("/items?page_size=1", id).await, StatusCode::OK);
    }
    let gateway = log_until(&mesh.gateway, "N access lines", |l| {
        lines_with(l, "access: response").len() >= N
    })
    .await;
    let items = log_until(&mesh.items, "N rpc done lines", |l| {
        lines_with(l, "rpc done").len() >= N
    })
    .await;
    let responses = lines_with(&gateway, "access: response");
    let calls = lines_with(&items, "rpc done");
    assert_eq!(responses.len(), N, "{gateway}");
    assert_eq!(calls.len(), N, "{items}");
    for id in &ids {
        let tag = format!("request_id={id}");
        let line = responses
            .iter()
            .find(|l| l.ends_with(&tag))
            .unwrap_or_else(|| panic!("no access line for {id}:\n{gateway}"));
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains("method=GET path=/items status=200"), "{line}");
        latency(line);
        let call = calls
            .iter()
            .find(|l| l.ends_with(&tag))
            .unwrap_or_else(|| panic!("no rpc line for {id}:\n{items}"));
        assert!(call.contains("method=ListItems"), "{call}");
        latency(call);
    }
    assert!(!gateway.contains('\x1b') && !items.contains('\x1b'));
}

#[tokio::test]
async fn a_request_that_fails_with_a_5xx_logs_a_warning_with_its_request_id() {
    let mut mesh = Small::start(&[], &[]).await;
    mesh.cache.kill().await;
    let status = mesh.get("/cache/some-key", "broken-1").await;
    assert!(status.is_server_error(), "{status}");
    let log = log_until(&mesh.gateway, "WARN line for broken-1", |l| {
        l.lines()
            .any(|l| l.contains(" WARN ") && l.contains("request_id=broken-1"))
    })
    .await;
    // A client's mistake (4xx) is not a warning.
    let status = mesh.get("/items/not-a-number", "client-1").await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(mesh.get("/items?page_size=1", "fine-1").await, StatusCode::OK);
    assert!(log.contains("request_id=broken-1"));
    // One writer thread keeps the order of lines: once a later failure shows
    // up, anything the two requests before it logged would be there too.
    assert!(mesh.get("/cache/other-key", "broken-2").await.is_server_error());
    let log = log_until(&mesh.gateway, "WARN line for broken-2", |l| {
        l.contains("request_id=broken-2")
    })
    .await;
    assert!(!log.contains("request_id=client-1"), "a 4xx was logged:\n{log}");
    assert!(!log.contains("request_id=fine-1"), "a 200 was logged:\n{log}");
}

#[tokio::test]
async fn a_slow_call_logs_slow_with_its_request_id_and_latency() {
    let mesh = Small::start(&[("MESH_SLOW_MS", Some("100"))], &["--debug-delay-ms", "300"]).await;
    assert_eq!(mesh.get("/items?page_size=1", "slow-1").await, StatusCode::OK);
    let tagged = |needle: &'static str| {
        move |log: &str| {
            log.lines()
                .any(|l| l.contains(needle) && l.ends_with("request_id=slow-1"))
        }
    };
    let gateway = log_until(&mesh.gateway, "slow request", tagged("slow request")).await;
    let items = log_until(&mesh.items, "slow call", tagged("slow call")).await;
    let line = lines_with(&gateway, "slow request")[0];
    assert!(line.contains(" WARN ") && line.contains("status=200"), "{line}");
    let ms: f64 = latency(line).parse().unwrap();
    assert!(ms >= 300.0, "{line}");
    let line = lines_with(&items, "slow call")[0];
    assert!(line.contains(" WARN ") && line.contains("method=ListItems"), "{line}");
    assert!(latency(line).parse::<f64>().unwrap() >= 300.0, "{line}");
}

#[tokio::test]
async fn colours_only_when_asked_for_into_a_pipe() {
    let plain = Server::start_with_env("cache-service", &[], "127.0.0.1:0", DEFAULTS).await;
    let env: Vec<_> = DEFAULTS
        .iter()
        .chain(&[("MESH_LOG_ANSI", Some("1"))])
        .copied()
        .collect();
    let coloured = Server::start_with_env("cache-service", &[], "127.0.0.1:0", &env).await;
    let coloured_log = log_until(&coloured, "a line", |l| l.contains("starting")).await;
    let plain_log = log_until(&plain, "a line", |l| l.contains("starting")).await;
    assert!(
        coloured_log.contains('\x1b'),
        "MESH_LOG_ANSI=1 gave no colour:\n{coloured_log:?}"
    );
    assert!(!plain_log.contains('\x1b'), "{plain_log:?}");
}

/// The lines of `log` that `jq` selects with `filter` (compact JSON, one a
/// line), after `jq` has parsed every line: a line that is not JSON fails.
fn jq(log: &str, filter: &str, args: &[(&str, &str)]) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut cmd = std::process::Command::new("jq");
    cmd.arg("-c");
    for (name, value) in args {
        cmd.args(["--arg", name, value]);
    }
    let mut child = cmd
        .arg(filter)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("jq (Debian's jq) must be installed");
    child.stdin.take().unwrap().write_all(log.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "jq {filter}: {}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn json_logs_parse_with_jq_and_carry_the_clients_trace_across_hops() {
    let mesh = Small::start(
        &[("MESH_ACCESS_LOG", Some("1")), ("MESH_LOG_FORMAT", Some("json"))],
        &[],
    )
    .await;
    // A client that traces: its trace id must be on the gateway's line and
    // on the service's, and a bad traceparent starts a trace of the gateway's own.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = |traceparent: String, request_id: &'static str| {
        mesh.http
            .get(format!("{}/items?page_size=1", mesh.gateway.url()))
            .header("x-request-id", request_id)
            .header("traceparent", traceparent)
            .header("tracestate", "congo=t61rcWkgMzE")
            .send()
    };
    let traced = sent(format!("00-{trace}-00f067aa0ba902b7-01"), "traced-1")
        .await
        .unwrap();
    assert_eq!(traced.status(), StatusCode::OK);
    let bad = sent(format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)), "untraced-1")
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::OK);
    let both = |l: &str| l.contains("\"request_id\":\"traced-1\"") && l.contains("\"request_id\":\"untraced-1\"");
    let gateway = log_until(&mesh.gateway, "both access lines", both).await;
    let items = log_until(&mesh.items, "both rpc lines", both).await;
    // Every line of both processes is one JSON object (jq fails otherwise).
    for log in [&gateway, &items] {
        let lines = jq(log, ".", &[]);
        assert_eq!(lines.len(), log.lines().count());
        assert!(
            lines
                .iter()
                .all(|l| l["timestamp"].is_string() && l["level"].is_string()),
            "{log}"
        );
    }
    let of = |log: &str, id: &str| jq(log, "select(.request_id == $id)", &[("id", id)]);
    let (gw, svc) = (of(&gateway, "traced-1"), of(&items, "traced-1"));
    assert_eq!((gw.len(), svc.len()), (1, 1), "{gateway}\n{items}");
    assert_eq!(gw[0]["message"], "response");
    assert_eq!(gw[0]["target"], "access");
    assert_eq!(gw[0]["status"], 200);
    assert_eq!(gw[0]["path"], "/items");
    assert_eq!(svc[0]["message"], "rpc done");
    assert_eq!(gw[0]["trace_id"], trace, "{gateway}");
    assert_eq!(svc[0]["trace_id"], trace, "{items}");
    // The refused traceparent: a new trace, the same on both hops.
    let (gw, svc) = (of(&gateway, "untraced-1"), of(&items, "untraced-1"));
    let started = gw[0]["trace_id"].as_str().expect("a trace id").to_string();
    assert_eq!(started.len(), 32);
    assert!(started.bytes().all(|b| b.is_ascii_hexdigit()) && started != "0".repeat(32));
    assert_eq!(svc[0]["trace_id"], started.as_str());
    // jq filters by trace: one line per hop.
    assert_eq!(jq(&gateway, "select(.trace_id == $t)", &[("t", trace)]).len(), 1);
    assert_eq!(jq(&items, "select(.trace_id == $t)", &[("t", trace)]).len(), 1);
}
