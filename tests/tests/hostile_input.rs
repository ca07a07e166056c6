//! What a hostile client tried, and what it gets now: deep payloads, forged
//! cache entries, NUL bytes, unbounded counter names, reused idempotency
//! keys and malformed requests. Each case is a clear 4xx (or gRPC code) and
//! never a 5xx, a broken page or a wrong answer.

use mesh_tests::backends::{self, SchemaGuard, unique};
use mesh_tests::proto::cache::v1 as cache_pb;
use mesh_tests::proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_tests::proto::counter::v1 as counter_pb;
use mesh_tests::proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_tests::proto::items::v1 as items_pb;
use mesh_tests::proto::items::v1::item_service_client::ItemServiceClient;
use mesh_tests::proto::tasks::v1 as tasks_pb;
use mesh_tests::proto::tasks::v1::task_service_client::TaskServiceClient;
use mesh_tests::{Mesh, MeshOptions, Server, args, gateway_flags};
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

async fn json_of(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let body = r.text().await.unwrap();
    let value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON ({status}): {body:?}"));
    (status, value)
}

fn nested(levels: usize, object: bool) -> Value {
    let mut v = json!(1);
    for _ in 0..levels {
        v = if object { json!({ "k": v }) } else { json!([v]) };
    }
    v
}

#[tokio::test]
async fn deep_payloads_are_refused_and_a_stored_one_never_breaks_a_page() {
    let mesh = Mesh::start_with(MeshOptions {
        tasks_args: args(&["--workers", "0"]),
        ..Default::default()
    })
    .await;
    let h = &mesh.http;
    let submit = |payload: Value| {
        h.post(mesh.at("/tasks"))
            .json(&json!({"kind": "echo", "payload": payload}))
            .send()
    };
    for levels in [33, 50, 100, 126] {
        let (status, body) = json_of(submit(nested(levels, levels % 2 == 0)).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{levels} deep: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("payload:") && message.contains("32"), "{message}");
    }
    let (status, body) = json_of(submit(nested(32, true)).await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "32 deep is the limit: {body}");

    // Over gRPC: INVALID_ARGUMENT naming the field and the limit.
    let mut tasks = TaskServiceClient::new(mesh.tasks.channel());
    let err = tasks
        .submit_task(tasks_pb::SubmitTaskRequest {
            kind: "echo".into(),
            payload: Some(mesh_tests::proto::json::to_proto(nested(40, false))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("payload:") && err.message().contains("32"),
        "{err:?}"
    );

    // A row stored before the limit existed (written straight into the
    // queue's SQLite file) must not break any page that holds it.
    let deep = nested(50, false).to_string();
    {
        use sqlx::Connection;
        let db = mesh.data.path().join("tasks.db");
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let now = 1_700_000_000_000_i64;
        sqlx::query(
            "INSERT INTO tasks (kind, payload, priority, status, attempts, result, created_ms, updated_ms, \
             finished_ms, max_attempts, run_at_ms, queued_ms, eff_priority, queue) \
             VALUES ('echo', ?1, 0, 'succeeded', 1, ?1, ?2, ?2, ?2, 1, ?2, ?2, 0, 'default')",
        )
        .bind(&deep)
        .bind(now)
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    for path in ["/tasks", "/tasks?status=succeeded", "/overview"] {
        let (status, body) = json_of(h.get(mesh.at(path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(
            !body.to_string().contains("\"error\""),
            "{path} has an error part: {body}"
        );
    }
    let (_, page) = json_of(h.get(mesh.at("/tasks?status=succeeded")).send().await.unwrap()).await;
    let shown = page["tasks"][0]["payload"].to_string();
    assert!(shown.contains("not shown: nested deeper than 32 levels"), "{shown}");
    let listed = tasks.list_tasks(tasks_pb::ListTasksRequest::default()).await.unwrap();
    assert_eq!(listed.get_ref().tasks.len(), 2);
}

#[tokio::test]
async fn item_reads_cannot_be_forged_through_the_cache() {
    let mesh = Mesh::start().await;
    let h = &mesh.http;
    let (status, item) = json_of(
        h.post(mesh.at("/items"))
            .json(&json!({"name": "pen", "price_cents": 150}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = item["id"].as_i64().unwrap();
    let forged = |id: i64| {
        items_pb::Item {
            id,
            name: "forged".into(),
            price_cents: 1,
            version: 1,
            ..Default::default()
        }
        .encode_to_vec()
    };
    // The bytes of an encoded item are valid UTF-8 here, so they can be PUT.
    for target in [id, 99] {
        let text = String::from_utf8(forged(target)).unwrap();
        let r = h
            .put(mesh.at(&format!("/cache/item:{target}")))
            .json(&json!({"value": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    for _ in 0..2 {
        let r = h.get(mesh.at(&format!("/items/{id}"))).send().await.unwrap();
        let (status, got) = json_of(r).await;
        assert_eq!((status, got["name"].as_str()), (StatusCode::OK, Some("pen")));
    }
    let (status, _) = json_of(h.get(mesh.at("/items/99")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a forged entry must not create an item");

    // Over gRPC, the gateway's own keyspace can still be written (until
    // callers are authenticated); an entry holding another item, or bytes that
    // do not decode, is a miss, and the real item replaces it.
    let mut cache = CacheServiceClient::new(mesh.cache.channel());
    for value in [forged(id + 1), b"\xffnot an item".to_vec()] {
        cache
            .set(cache_pb::SetRequest {
                key: format!("item:{id}"),
                value,
                namespace: "gateway".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let r = h.get(mesh.at(&format!("/items/{id}"))).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], "miss");
        assert_eq!(json_of(r).await.1["name"], "pen");
        let r = h.get(mesh.at(&format!("/items/{id}"))).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], "hit", "the real item replaced the bad entry");
        assert_eq!(json_of(r).await.1["name"], "pen");
    }
}

/// Items and tasks refuse NUL in text on SQLite and on PostgreSQL alike,
/// naming the field, and never show SQL text.
#[tokio::test]
async fn nul_characters_are_refused_on_both_backends() {
    let sqlite = Mesh::start().await;
    let h = &sqlite.http;
    for (body, field) in [
        (json!({"name": "a\u{0}b"}), "name"),
        (json!({"name": "a", "description": "x\u{0}"}), "description"),
        (json!({"name": "a", "tags": ["\u{0}"]}), "tags"),
    ] {
        let (status, err) = json_of(h.post(sqlite.at("/items")).json(&body).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert!(err["error"]["message"].as_str().unwrap().starts_with(field), "{err}");
    }
    let mut backends = vec![(sqlite.items.channel(), sqlite.tasks.channel())];

    let mut _postgres = None;
    if let Some(url) = backends::postgres("nul_characters_are_refused_on_both_backends").await {
        let schema = format!("{}_", unique("nul"));
        let guard = SchemaGuard::new(&url, [format!("{schema}items"), format!("{schema}tasks")]);
        let flags = args(&["--database-url", &url, "--db-schema-prefix", &schema, "--workers", "0"]);
        let items = Server::start("items-service", &flags[..4]).await;
        let tasks = Server::start("tasks-service", &flags).await;
        items.wait_serving().await;
        tasks.wait_serving().await;
        backends.push((items.channel(), tasks.channel()));
        _postgres = Some((guard, items, tasks));
    }
    for (items, tasks) in backends {
        let mut items = ItemServiceClient::new(items);
        let err = items
            .create_item(items_pb::CreateItemRequest {
                name: "a\u{0}b".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with("name:"), "{err:?}");
        let mut tasks = TaskServiceClient::new(tasks);
        let err = tasks
            .submit_task(tasks_pb::SubmitTaskRequest {
                kind: "echo".into(),
                idempotency_key: "k\u{0}".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with("idempotency_key:"), "{err:?}");
        // A NUL inside the JSON payload is escaped text, stored as it is.
        let task = tasks
            .submit_task(tasks_pb::SubmitTaskRequest {
                kind: "echo".into(),
                payload: Some(mesh_tests::proto::json::to_proto(json!("a\u{0}b"))),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let read = tasks.get_task(tasks_pb::GetTaskRequest { id: task.id }).await.unwrap();
        assert_eq!(
            mesh_tests::proto::json::from_proto(read.into_inner().payload.unwrap()),
            json!("a\u{0}b")
        );
    }
}

#[tokio::test]
async fn in_process_counters_are_capped() {
    let counter = Server::start("counter-service", &args(&["--max-counters", "3"])).await;
    let gateway = Server::start(
        "gateway",
        &gateway_flags(
            "http://127.0.0.1:9",
            "http://127.0.0.1:9",
            "http://127.0.0.1:9",
            counter.url(),
        ),
    )
    .await;
    counter.wait_serving().await;
    let h = reqwest::Client::new();
    let increment = |name: &str| h.post(format!("{}/counters/{name}/increment", gateway.url())).send();
    for name in ["a", "b", "c"] {
        assert_eq!(increment(name).await.unwrap().status(), StatusCode::OK);
    }
    let (status, err) = json_of(increment("d").await.unwrap()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{err}");
    assert_eq!(err["error"]["code"], "RESOURCE_EXHAUSTED");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--max-counters") && message.contains("--redis-url"),
        "{message}"
    );
    let (status, v) = json_of(increment("a").await.unwrap()).await;
    assert_eq!((status, v["value"].as_i64()), (StatusCode::OK, Some(2)));
    // A reset frees the name's slot.
    let r = h
        .post(format!("{}/counters/b/reset", gateway.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(increment("d").await.unwrap().status(), StatusCode::OK);
}

fn assert_reused(status: StatusCode, err: &Value) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["code"], "INVALID_ARGUMENT", "{err}");
    assert_eq!(err["error"]["reason"], "IDEMPOTENCY_KEY_REUSED", "{err}");
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_request_is_refused() {
    let mesh = Mesh::start_with(MeshOptions {
        tasks_args: args(&["--workers", "0"]),
        ..Default::default()
    })
    .await;
    let h = &mesh.http;
    let increment = |key: &'static str, by: i64| {
        h.post(mesh.at("/counters/x/increment"))
            .header("idempotency-key", key)
            .json(&json!({ "by": by }))
            .send()
    };
    assert_eq!(json_of(increment("k1", 5).await.unwrap()).await.1["value"], 5);
    let (status, err) = json_of(increment("k1", 100).await.unwrap()).await;
    assert_reused(status, &err);
    assert_eq!(
        json_of(increment("k1", 5).await.unwrap()).await.1["value"],
        5,
        "a true retry"
    );
    let (_, now) = json_of(h.get(mesh.at("/counters/x")).send().await.unwrap()).await;
    assert_eq!(now["value"], 5);
    // A reset ends the counter's keys: the replay counts on the new counter.
    let (_, reset) = json_of(h.post(mesh.at("/counters/x/reset")).send().await.unwrap()).await;
    assert_eq!(reset["value"], 5);
    assert_eq!(json_of(increment("k1", 5).await.unwrap()).await.1["value"], 5);
    assert_eq!(json_of(increment("k1", 5).await.unwrap()).await.1["value"], 5);

    // Tasks: the same key with another payload is refused; no second row.
    let submit = |payload: Value| {
        h.post(mesh.at("/tasks"))
            .header("idempotency-key", "t1")
            .json(&json!({"kind": "echo", "payload": payload}))
            .send()
    };
    let (status, first) = json_of(submit(json!({"a": 1})).await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, again) = json_of(submit(json!({"a": 1})).await.unwrap()).await;
    assert_eq!((status, &again["task_id"]), (StatusCode::ACCEPTED, &first["task_id"]));
    let (status, err) = json_of(submit(json!({"a": 2})).await.unwrap()).await;
    assert_reused(status, &err);
    let mut tasks = TaskServiceClient::new(mesh.tasks.channel());
    let err = tasks
        .submit_task(tasks_pb::SubmitTaskRequest {
            kind: "echo".into(),
            priority: 7,
            idempotency_key: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("IDEMPOTENCY_KEY_REUSED"), "{err:?}");
    let (_, page) = json_of(h.get(mesh.at("/tasks")).send().await.unwrap()).await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");
}

/// The same rules on Redis, where several replicas share the keys.
#[tokio::test]
async fn reused_keys_and_resets_on_redis() {
    let Some(url) = backends::redis("reused_keys_and_resets_on_redis").await else {
        return;
    };
    let prefix = format!("{}:", unique("reuse"));
    let _keys = backends::KeysGuard::new(&url, &prefix);
    let counter = Server::start(
        "counter-service",
        &args(&["--redis-url", &url, "--redis-prefix", &prefix]),
    )
    .await;
    counter.wait_serving().await;
    let mut c = CounterServiceClient::new(counter.channel());
    let increment = |delta: i64| counter_pb::IncrementRequest {
        name: "n".into(),
        delta: Some(delta),
        idempotency_key: "k".into(),
    };
    assert_eq!(c.increment(increment(5)).await.unwrap().get_ref().value, 5);
    assert_eq!(c.increment(increment(5)).await.unwrap().get_ref().value, 5);
    let err = c.increment(increment(100)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("IDEMPOTENCY_KEY_REUSED") && err.message().contains("delta 5"),
        "{err:?}"
    );
    let get = || counter_pb::GetRequest { name: "n".into() };
    assert_eq!(c.get(get()).await.unwrap().get_ref().value, 5);
    let reset = c.reset(counter_pb::ResetRequest { name: "n".into() }).await.unwrap();
    assert_eq!(reset.get_ref().value, 5);
    assert_eq!(c.increment(increment(5)).await.unwrap().get_ref().value, 5);
    assert_eq!(c.increment(increment(5)).await.unwrap().get_ref().value, 5);
    assert_eq!(c.get(get()).await.unwrap().get_ref().value, 5);
}

#[tokio::test]
async fn input_errors_are_400s_in_the_apis_own_words() {
    let mesh = Mesh::start().await;
    let h = &mesh.http;
    let (_, item) = json_of(
        h.post(mesh.at("/items"))
            .json(&json!({"name": "pen"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let id = item["id"].as_i64().unwrap();
    let post = |body: &'static str| {
        h.post(mesh.at("/items"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        (
            post("[\"pen\", \"\", 1, []]").await.unwrap(),
            "a JSON object, got an array",
        ),
        (
            post("{\"name\": 5}").await.unwrap(),
            "name: expected a string, got a number",
        ),
        (
            post("{\"name\": \"a\", \"price_cents\": \"x\"}").await.unwrap(),
            "price_cents: expected an integer, got a string",
        ),
        (
            post("{\"name\": \"a\", \"tags\": {}}").await.unwrap(),
            "tags: expected an array",
        ),
        (post("{\"colour\": 1}").await.unwrap(), "colour"),
        (post("{}").await.unwrap(), "name"),
        (
            h.patch(mesh.at(&format!("/items/{id}")))
                .json(&json!({"version": 0}))
                .send()
                .await
                .unwrap(),
            "version: must be at least 1",
        ),
        (
            h.delete(mesh.at(&format!("/items/{id}?version=-2")))
                .send()
                .await
                .unwrap(),
            "version: must be at least 1",
        ),
        (
            h.get(mesh.at("/items?page_size=lots")).send().await.unwrap(),
            "page_size",
        ),
        (h.get(mesh.at("/items/%ff")).send().await.unwrap(), "UTF-8"),
        (h.get(mesh.at("/cache/%ff%fe")).send().await.unwrap(), "UTF-8"),
        (
            h.post(mesh.at("/counters/c/increment"))
                .json(&json!({"by": 1.5}))
                .send()
                .await
                .unwrap(),
            "by: expected an integer, got a number",
        ),
    ];
    for (r, mentions) in cases {
        let (status, err) = json_of(r).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err["error"]["code"], "INVALID_ARGUMENT", "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{message:?} should mention {mentions:?}");
        for rust in ["struct ", "i64", "i32", "u64", "expected_version", "Failed to"] {
            assert!(!message.contains(rust), "{message:?} speaks Rust ({rust})");
        }
    }
    // Oversized headers and URIs get the JSON shape too.
    let (status, err) = json_of(
        h.get(mesh.at("/test"))
            .header("x-padding", "p".repeat(20 * 1024))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{err}");
    let (status, err) = json_of(
        h.get(mesh.at(&format!("/cache/{}", "u".repeat(9 * 1024))))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::URI_TOO_LONG, "{err}");
}
