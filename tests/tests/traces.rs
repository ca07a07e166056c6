//! Traces over OTLP, received by a collector inside the test (the
//! `opentelemetry-proto` crate's generated server on port 0): a cold
//! `GET /items/{id}` that a client traced is one trace, gateway → cache →
//! items → cache, every hop's span the child of the span that called it;
//! a trace the client did not sample is not recorded anywhere; a task queued
//! over HTTP and run by another tasks replica is a trace of its own, linked
//! to the call that queued it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mesh_tests::{Server, WAIT, args, eventually, gateway_flags};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;

/// A span as received, with the service that sent it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
    /// (trace id, span id) of each span it links to.
    links: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Got>>>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                format!("{:?}", a.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect();
                    got.push(Got {
                        service: service.clone(),
                        name: span.name,
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        attributes,
                        links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves on a free loopback port; returns its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        format!("http://{addr}")
    }

    fn all(&self) -> Vec<Got> {
        self.0.lock().unwrap().clone()
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Got> {
        let got = self.0.lock().unwrap();
        got.iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }
}

/// The environment that makes a server export its spans to `endpoint`,
/// every 100 ms rather than every 5 s.
fn exporting_to(endpoint: &str) -> [(&'static str, Option<&str>); 2] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", Some(endpoint)),
        ("OTEL_BSP_SCHEDULE_DELAY", Some("100")),
    ]
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_cold_item_read_is_one_trace_across_gateway_cache_and_items() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let env = &exporting_to(&endpoint);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let items = Server::start_with_env("items-service", &args(&["--data-dir", &dir]), "127.0.0.1:0", env).await;
    let cache = Server::start_with_env("cache-service", &[], "127.0.0.1:0", env).await;
    items.wait_serving().await;
    cache.wait_serving().await;
    let flags = gateway_flags(items.url(), cache.url(), cache.url(), cache.url());
    let gateway = Server::start_with_env("gateway", &flags, "127.0.0.1:0", env).await;
    let http = reqwest::Client::new();
    let mut at = Vec::new();
    for name in ["untraced", "traced"] {
        let item: serde_json::Value = http
            .post(format!("{}/items", gateway.url()))
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        at.push(format!("{}/items/{}", gateway.url(), item["id"]));
    }
    // A trace the client did not sample: nothing of it may be recorded.
    let unsampled = "11111111111111111111111111111111";
    let r = http
        .get(&at[0])
        .header("traceparent", format!("00-{unsampled}-{CLIENT_SPAN}-00"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A cold read the client traced.
    let r = http
        .get(&at[1])
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "miss");

    // Until every hop is in: each process exports on its own schedule, and
    // the cache fill may end after the response (and its span).
    let spans = eventually("the trace's spans at the collector", WAIT, async || {
        let spans = collector.of_trace(TRACE);
        let has = |name: &str, kind: SpanKind| spans.iter().any(|s| s.name == name && s.kind == kind as i32);
        let calls = [
            "mesh.cache.v1.CacheService/Get",
            "mesh.items.v1.ItemService/GetItem",
            "mesh.cache.v1.CacheService/Set",
        ];
        let complete = has("GET /items/{id}", SpanKind::Server)
            && calls
                .iter()
                .all(|c| has(c, SpanKind::Client) && has(c, SpanKind::Server))
            // Every attempt's own server span (a second cache lookup's too).
            && spans
                .iter()
                .filter(|c| c.kind == SpanKind::Client as i32)
                .all(|c| spans.iter().any(|s| s.parent == c.span_id));
        complete.then_some(spans)
    })
    .await;
    let all = format!("{spans:#?}");
    let root: Vec<&Got> = spans.iter().filter(|s| s.name == "GET /items/{id}").collect();
    assert_eq!(root.len(), 1, "{all}");
    let root = root[0];
    assert_eq!(
        root.parent, CLIENT_SPAN,
        "the client's span is the gateway span's parent:\n{all}"
    );
    assert!(root.service.contains("gateway"), "{all}");
    assert!(root.attributes["http.route"].contains("/items/{id}"), "{all}");
    assert!(root.attributes["http.response.status_code"].contains("200"), "{all}");
    // Every call the gateway made is a client span under its request span,
    // and every service's span is a child of the attempt that called it.
    let clients: Vec<&Got> = spans.iter().filter(|s| s.kind == SpanKind::Client as i32).collect();
    let servers: Vec<&Got> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32 && s.span_id != root.span_id)
        .collect();
    assert!(!clients.is_empty(), "{all}");
    for client in &clients {
        assert_eq!(client.parent, root.span_id, "{all}");
        assert!(client.service.contains("gateway"), "{all}");
        let served: Vec<&&Got> = servers.iter().filter(|s| s.parent == client.span_id).collect();
        assert_eq!(served.len(), 1, "one server span per attempt ({}):\n{all}", client.name);
        assert_eq!(served[0].name, client.name, "{all}");
        assert!(served[0].attributes.contains_key("rpc.grpc.status_code"), "{all}");
    }
    for server in &servers {
        assert!(
            clients.iter().any(|c| c.span_id == server.parent),
            "an orphan span:\n{all}"
        );
        let (service, wanted) = if server.name.starts_with("mesh.items") {
            (&items, "items-service")
        } else {
            (&cache, "cache-service")
        };
        assert!(
            server.service.contains(wanted),
            "{} from {}:\n{all}",
            server.name,
            service.name
        );
    }
    let names: Vec<&str> = clients.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&"mesh.cache.v1.CacheService/Get"), "{names:?}");
    assert!(names.contains(&"mesh.items.v1.ItemService/GetItem"), "{names:?}");
    assert!(names.contains(&"mesh.cache.v1.CacheService/Set"), "{names:?}");
    // Every span carries the request's id.
    assert!(
        spans.iter().all(|s| s.attributes.contains_key("mesh.request_id")),
        "{all}"
    );
    // The unsampled request left nothing: its spans were never made.
    assert!(
        collector.of_trace(unsampled).is_empty(),
        "an unsampled trace was recorded"
    );
}

#[tokio::test]
async fn a_task_run_by_another_replica_links_back_to_the_request_that_queued_it() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let env = &exporting_to(&endpoint);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    // The replica behind the gateway only takes submits; the other, on the
    // same database and not behind the gateway, runs them.
    let api = Server::start_with_env(
        "tasks-service",
        &args(&["--data-dir", &dir, "--workers", "0"]),
        "127.0.0.1:0",
        env,
    )
    .await;
    let worker = Server::start_with_env(
        "tasks-service",
        &args(&["--data-dir", &dir, "--workers", "1"]),
        "127.0.0.1:0",
        env,
    )
    .await;
    let cache = Server::start_with_env("cache-service", &[], "127.0.0.1:0", env).await;
    for s in [&api, &worker, &cache] {
        s.wait_serving().await;
    }
    let flags = gateway_flags(cache.url(), cache.url(), api.url(), cache.url());
    let gateway = Server::start_with_env("gateway", &flags, "127.0.0.1:0", env).await;
    let queued = "5ce0e9a56015fec5aadfa328ae398115";
    let r = reqwest::Client::new()
        .post(format!("{}/tasks", gateway.url()))
        .header("traceparent", format!("00-{queued}-{CLIENT_SPAN}-01"))
        .json(&json!({"kind": "echo", "payload": "traced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let task: serde_json::Value = r.json().await.unwrap();

    let (run, submit, request) = eventually("the task's span, the submit's and the request's", WAIT, async || {
        let all = collector.all();
        // The gateway's attempt and the tasks service's call share a name:
        // each span is told by its kind too.
        let find = |trace: Option<&str>, name: &str, kind: SpanKind| {
            all.iter()
                .find(|s| trace.is_none_or(|t| s.trace_id == t) && s.name == name && s.kind == kind as i32)
                .cloned()
        };
        let run = find(None, "task echo", SpanKind::Consumer)?;
        let submit = find(Some(queued), "mesh.tasks.v1.TaskService/SubmitTask", SpanKind::Server)?;
        let request = find(Some(queued), "POST /tasks", SpanKind::Server)?;
        Some((run, submit, request))
    })
    .await;
    let all = format!("{:#?}", collector.all());
    assert_eq!(run.kind, SpanKind::Consumer as i32, "{all}");
    assert!(run.service.contains("tasks-service"), "{all}");
    assert_ne!(run.trace_id, queued, "a trace of its own:\n{all}");
    assert!(run.parent.is_empty(), "the root of its trace:\n{all}");
    assert_eq!(
        run.links,
        [(queued.to_string(), submit.span_id.clone())],
        "linked to the submit's span:\n{all}"
    );
    assert!(
        run.attributes["mesh.task.id"].contains(&task["task_id"].to_string()),
        "{all}"
    );
    assert!(run.attributes["mesh.task.outcome"].contains("succeeded"), "{all}");
    // The submit itself is in the client's trace, under the gateway's span.
    assert_eq!(request.parent, CLIENT_SPAN, "{all}");
    assert!(submit.service.contains("tasks-service"), "{all}");
    // Under the gateway's attempt, which is under the request's span.
    let attempt = collector
        .of_trace(queued)
        .into_iter()
        .find(|s| s.span_id == submit.parent)
        .unwrap_or_else(|| panic!("no parent for the submit's span:\n{all}"));
    assert_eq!(attempt.kind, SpanKind::Client as i32, "{all}");
    assert_eq!(attempt.parent, request.span_id, "{all}");
    // And the replica behind the gateway ran nothing.
    assert!(!api.logs().contains("task started"), "{}", api.logs());
    assert!(worker.logs().contains("task started"), "{}", worker.logs());
}
