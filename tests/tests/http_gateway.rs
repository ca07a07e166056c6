//! The HTTP gateway over real sockets, in front of real services.

use std::time::Duration;

use mesh_tests::{Mesh, MeshOptions, Server, WAIT, args, eventually, gateway_flags};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn json_of(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let body = r.text().await.unwrap();
    let value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON ({status}): {body}"));
    (status, value)
}

fn assert_error(v: &Value, code: &str, mentions: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "message {message:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn items_crud_with_cache_aside() {
    let mesh = Mesh::start().await;
    let h = &mesh.http;
    let r = h
        .post(mesh.at("/items"))
        .json(&json!({"name": "pen", "price_cents": 150, "tags": ["office"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/items/1");
    let (status, item) = json_of(r).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (item["name"].as_str(), item["version"].as_i64()),
        (Some("pen"), Some(1))
    );
    let id = item["id"].as_i64().unwrap();

    let first = h.get(mesh.at(&format!("/items/{id}"))).send().await.unwrap();
    assert_eq!(first.headers()["x-cache"], "miss");
    let second = h.get(mesh.at(&format!("/items/{id}"))).send().await.unwrap();
    assert_eq!(second.headers()["x-cache"], "hit");
    assert_eq!(json_of(second).await.1, item);

    let (status, patched) = json_of(
        h.patch(mesh.at(&format!("/items/{id}")))
            .json(&json!({"price_cents": 175, "version": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (patched["price_cents"].as_i64(), patched["version"].as_i64()),
        (Some(175), Some(2))
    );
    let after = h.get(mesh.at(&format!("/items/{id}"))).send().await.unwrap();
    assert_eq!(
        after.headers()["x-cache"],
        "miss",
        "an update invalidates the cached copy"
    );
    assert_eq!(json_of(after).await.1["price_cents"], 175);

    let (status, conflict) = json_of(
        h.patch(mesh.at(&format!("/items/{id}")))
            .json(&json!({"name": "x", "version": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&conflict, "ABORTED", "version");

    for n in 0..3 {
        h.post(mesh.at("/items"))
            .json(&json!({"name": format!("n{n}")}))
            .send()
            .await
            .unwrap();
    }
    let (_, page) = json_of(h.get(mesh.at("/items?page_size=2")).send().await.unwrap()).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let token = page["next_page_token"].as_str().unwrap().to_string();
    let (_, rest) = json_of(
        h.get(mesh.at(&format!("/items?page_size=2&page_token={token}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert_eq!(rest["next_page_token"], "");

    let r = h.delete(mesh.at(&format!("/items/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, gone) = json_of(h.get(mesh.at(&format!("/items/{id}"))).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a delete invalidates the cache too");
    assert_error(&gone, "NOT_FOUND", &id.to_string());
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_never_a_5xx() {
    let mesh = Mesh::start_with(MeshOptions {
        gateway_args: args(&["--max-body-bytes", "4096"]),
        ..Default::default()
    })
    .await;
    let h = &mesh.http;
    let post = |body: &'static str| {
        h.post(mesh.at("/items"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Response, StatusCode, &str, &str)> = vec![
        (
            post("{\"name\":").await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "JSON",
        ),
        (
            post("{\"name\": 5}").await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "name",
        ),
        (
            post("{\"name\": \"x\", \"colour\": 1}").await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "colour",
        ),
        (
            post("{}").await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "name",
        ),
        // JSON has one number type: 150.0 is the integer 150 (JSON Schema
        // agrees), but 1.5 is not an integer.
        (
            post("{\"name\": \"x\", \"price_cents\": 1.5}").await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "price_cents: expected an integer, got a number",
        ),
        (
            post("{\"name\": \"  \"}").await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "name",
        ),
        (
            post("{\"name\": \"x\", \"price_cents\": -1}").await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "price_cents",
        ),
        (
            h.post(mesh.at("/items")).body("{}").send().await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "Content-Type",
        ),
        (
            h.post(mesh.at("/items"))
                .header("content-type", "application/json")
                .body(format!("{{\"name\":\"{}\"}}", "x".repeat(5000)))
                .send()
                .await
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "limit",
        ),
        (
            h.get(mesh.at("/items/abc")).send().await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "id",
        ),
        (
            h.get(mesh.at("/items/-3")).send().await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "id",
        ),
        (
            h.get(mesh.at("/items/987654")).send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "987654",
        ),
        (
            h.get(mesh.at("/items?page_size=banana")).send().await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "page_size",
        ),
        (
            h.get(mesh.at("/items?page_token=zzz")).send().await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "page_token",
        ),
        (
            h.get(mesh.at("/tasks/77777")).send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "77777",
        ),
        (
            h.get(mesh.at("/tasks?status=sleepy")).send().await.unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "status",
        ),
        (
            h.post(mesh.at("/tasks"))
                .json(&json!({"kind": "teleport"}))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "kind",
        ),
        (
            h.post(mesh.at("/tasks"))
                .json(&json!({"kind": "echo", "priority": 99}))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "priority",
        ),
        (
            h.put(mesh.at("/cache/k"))
                .json(&json!({"value": 3}))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "value",
        ),
        (
            h.put(mesh.at("/cache/k"))
                .json(&json!({"value": "v", "ttl_seconds": 0}))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "ttl_seconds",
        ),
        (
            h.get(mesh.at("/cache/nothing-here")).send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "nothing-here",
        ),
        (
            h.post(mesh.at("/counters/c/increment"))
                .json(&json!({"by": "lots"}))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "by",
        ),
        (
            h.get(mesh.at("/no/such/route")).send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "/no/such/route",
        ),
        (
            h.put(mesh.at("/items")).send().await.unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "PUT",
        ),
        (
            h.put(mesh.at("/cache/k"))
                .json(&json!({"value": "v", "ttl_seconds": u64::MAX}))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "ttl_seconds",
        ),
        (
            h.post(mesh.at("/tasks"))
                .json(&json!({"kind": "echo", "countdown_ms": u64::MAX}))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "countdown",
        ),
        (
            h.post(mesh.at("/tasks"))
                .json(&json!({"kind": "echo", "run_at": "+300000000-01-01T00:00:00Z"}))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "run_at",
        ),
        (
            h.post(mesh.at("/tasks"))
                .json(&json!({"kind": "echo", "timeout_ms": 0}))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "timeout",
        ),
    ];
    for (response, status, code, mentions) in cases {
        let url = response.url().to_string();
        let (got, body) = json_of(response).await;
        assert_eq!(got, status, "{url}: {body}");
        assert_error(&body, code, mentions);
    }
    let (status, item) = json_of(post("{\"name\": \"x\", \"price_cents\": 150.0}").await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{item}");
    assert_eq!(item["price_cents"], 150);
}

#[tokio::test]
async fn cache_and_counter_routes() {
    let mesh = Mesh::start().await;
    let h = &mesh.http;
    let (status, put) = json_of(
        h.put(mesh.at("/cache/greeting"))
            .json(&json!({"value": "hello", "ttl_seconds": 60}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(put["value"], "hello");
    let (_, got) = json_of(h.get(mesh.at("/cache/greeting")).send().await.unwrap()).await;
    assert_eq!(got, json!({"key": "greeting", "value": "hello"}));
    assert_eq!(
        h.delete(mesh.at("/cache/greeting")).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.delete(mesh.at("/cache/greeting")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    let (_, one) = json_of(h.post(mesh.at("/counters/visits/increment")).send().await.unwrap()).await;
    assert_eq!(one, json!({"name": "visits", "value": 1}));
    let (_, six) = json_of(
        h.post(mesh.at("/counters/visits/increment"))
            .json(&json!({"by": 5}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(six["value"], 6);
    for _ in 0..3 {
        let (_, same) = json_of(
            h.post(mesh.at("/counters/visits/increment"))
                .header("idempotency-key", "abc")
                .json(&json!({"by": 10}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(same["value"], 16, "a retried idempotent increment counts once");
    }
    let (_, now) = json_of(h.get(mesh.at("/counters/visits")).send().await.unwrap()).await;
    assert_eq!(now["value"], 16);
    let (_, reset) = json_of(h.post(mesh.at("/counters/visits/reset")).send().await.unwrap()).await;
    assert_eq!(reset["value"], 16);
    let (_, zero) = json_of(h.get(mesh.at("/counters/visits")).send().await.unwrap()).await;
    assert_eq!(zero["value"], 0);
}

#[tokio::test]
async fn a_thousand_concurrent_increments_from_many_clients_count_exactly() {
    let mesh = Mesh::start().await;
    let url = mesh.at("/counters/concurrent/increment");
    let clients: Vec<_> = (0..50)
        .map(|_| {
            // A separate client each: separate connections, like separate users.
            let http = mesh.new_client();
            let url = url.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let r = http.post(&url).send().await.unwrap();
                    assert_eq!(r.status(), StatusCode::OK);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let (_, v) = json_of(mesh.http.get(mesh.at("/counters/concurrent")).send().await.unwrap()).await;
    assert_eq!(v["value"], 1000);
}

/// The kinds the contract lists (`SubmitBody.kind`'s enum in the gateway's
/// OpenAPI document) are the kinds a live tasks service runs.
#[tokio::test]
async fn the_documented_task_kinds_are_the_ones_the_tasks_service_runs() {
    let mesh = Mesh::start().await;
    let h = &mesh.http;
    let (_, spec) = json_of(h.get(mesh.at("/openapi.json")).send().await.unwrap()).await;
    let mut documented: Vec<String> = spec["components"]["schemas"]["SubmitBody"]["properties"]["kind"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("no kind enum in {}", spec["components"]["schemas"]["SubmitBody"]))
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    documented.sort();
    let (status, refused) = json_of(
        h.post(mesh.at("/tasks"))
            .json(&json!({"kind": "no-such-kind"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    let (_, known) = message
        .split_once("known kinds: ")
        .unwrap_or_else(|| panic!("{message}"));
    let mut running: Vec<String> = known.split(", ").map(str::to_string).collect();
    running.sort();
    assert_eq!(documented, running);
}

#[tokio::test]
async fn tasks_routes_and_server_sent_events() {
    let mesh = Mesh::start().await;
    let h = &mesh.http;
    let r = h
        .post(mesh.at("/tasks"))
        .json(&json!({"kind": "sleep", "payload": {"ms": 300}, "priority": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (_, accepted) = json_of(r).await;
    let id = accepted["task_id"].as_i64().unwrap();

    let events = h.get(mesh.at(&format!("/tasks/{id}/events"))).send().await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(Duration::from_secs(20), events.text())
        .await
        .expect("stream ends with the task")
        .unwrap();
    let states: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(states.last().unwrap()["status"], "succeeded", "{body}");
    assert!(body.contains("event: task"));

    let (_, task) = json_of(h.get(mesh.at(&format!("/tasks/{id}"))).send().await.unwrap()).await;
    assert_eq!(task["status"], "succeeded");
    assert_eq!(task["result"]["slept_ms"], 300);
    let (_, list) = json_of(h.get(mesh.at("/tasks?status=succeeded")).send().await.unwrap()).await;
    assert!(list["tasks"].as_array().unwrap().iter().any(|t| t["id"] == id));
    let (status, refused) = json_of(h.post(mesh.at(&format!("/tasks/{id}/cancel"))).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&refused, "FAILED_PRECONDITION", "succeeded");
}

#[tokio::test]
async fn the_seeds_routes_work_through_the_mesh() {
    let mesh = Mesh::start().await;
    let h = &mesh.http;
    let (_, test) = json_of(h.get(mesh.at("/test")).send().await.unwrap()).await;
    assert_eq!(test, json!({"message": "Hello, load balanced world!"}));

    let (_, missing) = json_of(h.get(mesh.at("/cached-data?key=k1")).send().await.unwrap()).await;
    assert_eq!(missing, json!({"error": "Data not found in cache."}));
    h.put(mesh.at("/cache/k1"))
        .json(&json!({"value": "v1"}))
        .send()
        .await
        .unwrap();
    let (_, found) = json_of(h.get(mesh.at("/cached-data?key=k1")).send().await.unwrap()).await;
    assert_eq!(found, json!({"data": "v1"}));

    let (_, a) = json_of(h.get(mesh.at("/increment")).send().await.unwrap()).await;
    let (_, b) = json_of(h.get(mesh.at("/increment")).send().await.unwrap()).await;
    assert_eq!(
        (a["shared_resource"].as_i64(), b["shared_resource"].as_i64()),
        (Some(1), Some(2))
    );

    let (_, started) = json_of(h.get(mesh.at("/start-task")).send().await.unwrap()).await;
    assert!(started["task_id"].as_i64().unwrap() > 0);

    let (status, blocking) = json_of(h.get(mesh.at("/run-blocking-task?ms=150")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{blocking}");
    assert_eq!(blocking["result"], "Task complete!");

    // /call-another-service against a second gateway whose upstream is the first one's /test.
    let (status, no_upstream) = json_of(h.get(mesh.at("/call-another-service")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&no_upstream, "UNAVAILABLE", "--upstream");
    let upstream = format!("{}/test", mesh.gateway.url());
    let second = Server::start(
        "gateway",
        &[
            gateway_flags(mesh.items.url(), mesh.cache.url(), mesh.tasks.url(), mesh.counter.url()),
            args(&["--upstream", &upstream]),
        ]
        .concat(),
    )
    .await;
    let (_, called) = json_of(
        h.get(format!("{}/call-another-service", second.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(called, json!({"response": {"message": "Hello, load balanced world!"}}));
}

#[tokio::test]
async fn health_readiness_and_overview_survive_a_dead_service() {
    let mut mesh = Mesh::start().await;
    let h = &mesh.http;
    let (_, healthz) = json_of(h.get(mesh.at("/healthz")).send().await.unwrap()).await;
    assert_eq!(healthz["status"], "ok");
    let (status, ready) = json_of(h.get(mesh.at("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{ready}");

    h.post(mesh.at("/items"))
        .json(&json!({"name": "a"}))
        .send()
        .await
        .unwrap();
    let (_, overview) = json_of(h.get(mesh.at("/overview")).send().await.unwrap()).await;
    assert_eq!(overview["items"]["first"][0]["name"], "a", "{overview}");
    assert!(overview["cache"]["hits"].is_u64());
    assert!(overview["counter"]["shared_resource"].is_i64());
    assert!(overview["tasks"]["recent"].is_array());

    mesh.cache.kill().await;
    // The gateway's health checks notice within a few intervals.
    let ready = eventually("/readyz reports the dead cache", WAIT, async || {
        let (status, ready) = json_of(mesh.http.get(mesh.at("/readyz")).send().await.unwrap()).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            Ok(ready)
        } else {
            Err(ready)
        }
    })
    .await;
    assert_eq!(ready["services"]["cache"]["ready"], false, "{ready}");
    // Per-replica detail is on the admin listener only.
    let admin_ready = format!("{}/readyz", mesh.gateway.admin_url());
    let (_, detail) = json_of(mesh.http.get(admin_ready).send().await.unwrap()).await;
    assert_eq!(detail["services"]["cache"]["replicas"][0]["healthy"], false, "{detail}");
    assert_eq!(ready["services"]["items"]["ready"], true, "{ready}");
    let (status, overview) = json_of(mesh.http.get(mesh.at("/overview")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(overview["cache"]["error"]["code"], "UNAVAILABLE", "{overview}");
    assert_eq!(
        overview["items"]["first"][0]["name"], "a",
        "the other services still answer"
    );

    // With the cache down, item reads bypass it and still answer.
    let r = mesh.http.get(mesh.at("/items/1")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "bypass");
    assert_eq!(r.status(), StatusCode::OK);
    let (status, err) = json_of(mesh.http.get(mesh.at("/cache/x")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&err, "UNAVAILABLE", "cache");
}

#[tokio::test]
async fn request_ids_are_echoed_and_generated() {
    let mesh = Mesh::start().await;
    let r = mesh
        .http
        .get(mesh.at("/test"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-123");
    let first = mesh.http.get(mesh.at("/test")).send().await.unwrap();
    let second = mesh.http.get(mesh.at("/test")).send().await.unwrap();
    let (a, b) = (&first.headers()["x-request-id"], &second.headers()["x-request-id"]);
    assert!(
        !a.is_empty() && a != b,
        "each request without an id gets a new one: {a:?}, {b:?}"
    );
}
