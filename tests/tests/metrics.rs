//! Every service serves Prometheus metrics on its admin listener (issue:
//! observability): gRPC calls under go-grpc-prometheus's names, the task
//! queue's own; the numbers move as the traffic says, and a scrape passes
//! `promtool check metrics`.

use mesh_tests::proto::counter::v1::IncrementRequest;
use mesh_tests::proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_tests::proto::json::to_proto;
use mesh_tests::proto::tasks::v1::task_service_client::TaskServiceClient;
use mesh_tests::proto::tasks::v1::{SubmitTaskRequest, SubmitTasksRequest};
use mesh_tests::{Server, WAIT, args, eventually};
use serde_json::json;

async fn scrape(server: &Server) -> String {
    let admin = server.admin.expect("the server announced its admin listener");
    let response = reqwest::get(format!("http://{admin}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.unwrap()
}

/// The value of one series (its full name with labels, as written), 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `promtool check metrics` on a scrape: it must find nothing to complain
/// about. promtool comes with Debian's `prometheus` (CI installs it); a
/// machine without it skips this part, except under CI.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED promtool check: cannot run promtool ({err})");
            return;
        }
        Err(err) => panic!("promtool is required under CI: {err}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n{text}"
    );
}

const SERVICE: &str = "grpc_service=\"mesh.counter.v1.CounterService\",grpc_type=\"unary\"";

#[tokio::test]
async fn grpc_calls_are_counted_under_go_grpc_prometheus_names() {
    let counter = Server::start("counter-service", &[]).await;
    counter.wait_serving().await;
    let mut client = CounterServiceClient::new(counter.channel());
    let handled =
        |code: &str| format!("grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"Increment\",{SERVICE}}}");
    let started = format!("grpc_server_started_total{{grpc_method=\"Increment\",{SERVICE}}}");
    let timed = format!("grpc_server_handling_seconds_count{{grpc_method=\"Increment\",{SERVICE}}}");
    let before = scrape(&counter).await;
    for _ in 0..25 {
        client
            .increment(IncrementRequest {
                name: "metrics".into(),
                delta: None,
                idempotency_key: String::new(),
            })
            .await
            .unwrap();
    }
    let refused = client
        .increment(IncrementRequest {
            name: String::new(),
            delta: None,
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let after = scrape(&counter).await;
    let rose = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(rose(&handled("OK")), 25.0, "{after}");
    assert_eq!(rose(&handled("InvalidArgument")), 1.0, "{after}");
    assert_eq!(rose(&started), 26.0, "{after}");
    assert_eq!(rose(&timed), 26.0, "{after}");
    // Health checks are the mesh's own chatter, not calls.
    assert!(!after.contains("grpc.health"), "{after}");
    promtool_accepts(&after);
}

#[tokio::test]
async fn the_task_queue_reports_its_depth_and_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    // Workers off: the tasks wait.
    let mut front = Server::start("tasks-service", &args(&["--data-dir", &data, "--workers", "0"])).await;
    front.wait_serving().await;
    let mut client = TaskServiceClient::new(front.channel());
    let echo = |priority: i32| SubmitTaskRequest {
        kind: "echo".into(),
        payload: Some(to_proto(json!(priority))),
        priority,
        ..Default::default()
    };
    let mut batch = vec![echo(3); 5];
    batch.push(echo(7));
    client.submit_tasks(SubmitTasksRequest { tasks: batch }).await.unwrap();
    let text = scrape(&front).await;
    assert_eq!(value(&text, "tasks_queued{priority=\"3\"}"), 5.0, "{text}");
    assert_eq!(value(&text, "tasks_queued{priority=\"7\"}"), 1.0, "{text}");
    assert_eq!(value(&text, "tasks_queued{priority=\"0\"}"), 0.0, "{text}");
    // Per queue too (every task here is in the default queue).
    assert_eq!(
        value(&text, "tasks_queued_by_queue{priority=\"3\",queue=\"default\"}"),
        5.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "tasks_queued_by_queue{priority=\"7\",queue=\"default\"}"),
        1.0,
        "{text}"
    );
    // Six tasks wait: the oldest one's age is exported (its value is a time).
    assert!(
        text.lines().any(|l| l.starts_with("tasks_oldest_ready_age_seconds ")),
        "{text}"
    );
    promtool_accepts(&text);
    front.terminate().await;

    // A replica with workers runs them and counts each attempt.
    let worker = Server::start("tasks-service", &args(&["--data-dir", &data, "--workers", "2"])).await;
    worker.wait_serving().await;
    let text = eventually("the six attempts are counted", WAIT, async || {
        let text = scrape(&worker).await;
        // The gauges are read at the scrape, the counters when each end is
        // recorded: wait for both to agree.
        if value(&text, "tasks_attempts_total{kind=\"echo\",outcome=\"succeeded\"}") == 6.0
            && value(&text, "tasks_ended{status=\"succeeded\"}") == 6.0
        {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    assert_eq!(value(&text, "tasks_queued{priority=\"3\"}"), 0.0, "{text}");
    assert!(
        !text.contains("tasks_queued_by_queue{"),
        "nothing waits in any queue:\n{text}"
    );
    assert_eq!(value(&text, "tasks_running"), 0.0, "{text}");
    assert_eq!(value(&text, "tasks_ended{status=\"succeeded\"}"), 6.0, "{text}");
    assert_eq!(
        value(&text, "tasks_attempt_seconds_count{kind=\"echo\"}"),
        6.0,
        "{text}"
    );
    promtool_accepts(&text);
}

#[tokio::test]
async fn the_gateway_times_each_route_and_counts_its_calls_to_the_services() {
    let mesh = mesh_tests::Mesh::start().await;
    let http = reqwest::Client::new();
    // Labels come in name order.
    let timed = "http_server_request_duration_seconds_count{http_request_method=\"POST\",\
                 http_response_status_code=\"200\",http_route=\"/counters/{name}/increment\"}";
    let calls = format!("grpc_client_handled_total{{grpc_code=\"OK\",grpc_method=\"Increment\",{SERVICE}}}");
    let before = scrape(&mesh.gateway).await;
    for n in 0..12 {
        // Each a different counter: the label is the route, never the name.
        let r = http
            .post(format!("{}/counters/metrics-{n}/increment", mesh.gateway.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // An item read twice: a cache miss, then a hit.
    let item: serde_json::Value = http
        .post(format!("{}/items", mesh.gateway.url()))
        .json(&json!({"name": "metered"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let at = format!("{}/items/{}", mesh.gateway.url(), item["id"]);
    for expected in ["miss", "hit"] {
        let r = http.get(&at).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], expected);
    }
    let missing = http
        .get(format!("{}/no/such/route", mesh.gateway.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let after = scrape(&mesh.gateway).await;
    let rose = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(rose(timed), 12.0, "{after}");
    assert_eq!(rose(&calls), 12.0, "{after}");
    assert!(!after.contains("metrics-"), "a counter's name became a label:\n{after}");
    assert!(!after.contains("/no/such/route"), "a path became a label:\n{after}");
    assert!(after.contains("http_server_active_requests"), "{after}");
    assert_eq!(
        rose("mesh_gateway_cache_lookups_total{outcome=\"miss\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        rose("mesh_gateway_cache_lookups_total{outcome=\"hit\"}"),
        1.0,
        "{after}"
    );
    // The miss led one shared read; the hit needed none.
    let flight =
        |outcome: &str| format!("mesh_gateway_singleflight_total{{flight=\"item_read\",outcome=\"{outcome}\"}}");
    assert_eq!(rose(&flight("led")), 1.0, "{after}");
    assert_eq!(rose(&flight("joined")), 0.0, "{after}");
    promtool_accepts(&after);
}

#[tokio::test]
async fn the_gateway_shows_each_replica_and_follows_one_that_dies() {
    use mesh_tests::gateway_flags;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let items_a = Server::start("items-service", &args(&["--data-dir", &dir])).await;
    let mut items_b = Server::start("items-service", &args(&["--data-dir", &dir])).await;
    let cache = Server::start("cache-service", &[]).await;
    for s in [&items_a, &items_b, &cache] {
        s.wait_serving().await;
    }
    let both = format!("{},{}", items_a.url(), items_b.url());
    let mut flags = gateway_flags(&both, cache.url(), cache.url(), cache.url());
    flags.extend(args(&["--health-interval-ms", "100"]));
    let gateway = Server::start("gateway", &flags).await;
    let series = |name: &str, replica: &Server| format!("{name}{{replica=\"{}\",service=\"items\"}}", replica.url());
    let http = reqwest::Client::new();
    for _ in 0..20 {
        let r = http
            .get(format!("{}/items?page_size=1", gateway.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let text = scrape(&gateway).await;
    for replica in [&items_a, &items_b] {
        for gauge in ["mesh_upstream_replica_healthy", "mesh_upstream_replica_in_rotation"] {
            assert_eq!(value(&text, &series(gauge, replica)), 1.0, "{gauge}:\n{text}");
        }
        assert_eq!(value(&text, &series("mesh_upstream_replica_ejected", replica)), 0.0);
        assert!(
            text.contains(&series("mesh_upstream_replica_pending", replica)),
            "{text}"
        );
    }
    // Each replica in rotation has the balancer's latency estimate.
    for replica in [&items_a, &items_b] {
        let estimate = series("mesh_upstream_replica_latency_seconds", replica);
        assert!(text.contains(&estimate), "{estimate}:\n{text}");
    }
    promtool_accepts(&text);
    // One replica dies: the gauges follow.
    items_b.kill().await;
    let text = eventually("the dead replica shown out of rotation", WAIT, async || {
        let text = scrape(&gateway).await;
        (value(&text, &series("mesh_upstream_replica_healthy", &items_b)) == 0.0
            && value(&text, &series("mesh_upstream_replica_in_rotation", &items_b)) == 0.0)
            .then_some(text)
    })
    .await;
    assert!(
        text.contains(&series("mesh_upstream_replica_healthy", &items_b)),
        "still listed:\n{text}"
    );
    assert_eq!(
        value(&text, &series("mesh_upstream_replica_in_rotation", &items_a)),
        1.0,
        "{text}"
    );
    assert!(
        !text.contains(&series("mesh_upstream_replica_latency_seconds", &items_b)),
        "{text}"
    );
    promtool_accepts(&text);
}

fn increment(name: &str) -> IncrementRequest {
    IncrementRequest {
        name: name.into(),
        delta: None,
        idempotency_key: String::new(),
    }
}

#[tokio::test]
async fn redis_commands_are_timed_and_their_failures_counted() {
    use mesh_tests::backends::{self, KeysGuard};
    let Some(url) = backends::redis("redis_commands_are_timed_and_their_failures_counted").await else {
        return;
    };
    let prefix = format!("{}:", backends::unique("redis_metrics"));
    let _keys = KeysGuard::new(&url, &prefix);
    let counter = Server::start(
        "counter-service",
        &args(&["--redis-url", &url, "--redis-prefix", &prefix]),
    )
    .await;
    counter.wait_serving().await;
    let script = "mesh_redis_command_duration_seconds_count{command=\"script:increment\"}";
    let failed =
        |kind: &str| format!("mesh_redis_command_errors_total{{command=\"script:increment\",kind=\"{kind}\"}}");
    let mut client = CounterServiceClient::new(counter.channel());
    let before = scrape(&counter).await;
    for _ in 0..7 {
        client.increment(increment("n")).await.unwrap();
    }
    let after = scrape(&counter).await;
    assert_eq!(value(&after, script) - value(&before, script), 7.0, "{after}");
    assert_eq!(value(&after, &failed("unavailable")), 0.0, "{after}");
    promtool_accepts(&after);

    // A Redis that is not there: each refused increment is one error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("redis://127.0.0.1:{port}");
    let lost = Server::start("counter-service", &args(&["--redis-url", &dead])).await;
    let mut client = CounterServiceClient::new(lost.channel());
    for _ in 0..3 {
        let err = client.increment(increment("n")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    }
    let text = scrape(&lost).await;
    assert_eq!(value(&text, &failed("unavailable")), 3.0, "{text}");
    assert_eq!(value(&text, script), 3.0, "failed commands are timed too:\n{text}");
    promtool_accepts(&text);
}

#[tokio::test]
async fn the_database_pool_is_shown_per_service() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let items = Server::start(
        "items-service",
        &args(&["--data-dir", &dir, "--db-max-connections", "3"]),
    )
    .await;
    items.wait_serving().await;
    let text = scrape(&items).await;
    assert_eq!(
        value(&text, "mesh_db_pool_max_connections{pool=\"items\"}"),
        3.0,
        "{text}"
    );
    let open = value(&text, "mesh_db_pool_connections{pool=\"items\",state=\"idle\"}")
        + value(&text, "mesh_db_pool_connections{pool=\"items\",state=\"in_use\"}");
    assert!(
        (1.0..=3.0).contains(&open),
        "the pool has its migration's connection open:\n{text}"
    );
    assert!(
        text.contains("mesh_db_pool_connections{pool=\"items\",state=\"in_use\"}"),
        "{text}"
    );
    promtool_accepts(&text);
}

#[tokio::test]
async fn with_metrics_off_calls_are_not_recorded_and_the_scrape_still_answers() {
    let counter = Server::start("counter-service", &args(&["--metrics", "false"])).await;
    counter.wait_serving().await;
    let mut client = CounterServiceClient::new(counter.channel());
    for _ in 0..5 {
        client.increment(increment("off")).await.unwrap();
    }
    let text = scrape(&counter).await;
    // No series of the method at all: neither started, handled nor timed
    // (the scrape itself answered 200, see `scrape`).
    assert!(!text.contains("grpc_method=\"Increment\""), "{text}");
    promtool_accepts(&text);
}
