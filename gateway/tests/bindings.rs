//! The protos' HTTP bindings (`google.api.http`, as `mesh_proto::bindings`)
//! and the gateway's router agree:
//!
//! - every binding is a route: its method on its path (sample path values, a
//!   minimal valid body) reaches a handler, not the router's fallbacks (404
//!   "no route for ..." or 405 `METHOD_NOT_ALLOWED`);
//! - every RPC of every mesh service has a binding, or is in [`NOT_EXPOSED`]
//!   with the reason.
//!
//! The router is driven with `oneshot` (no sockets). Its services are
//! 127.0.0.1:9, where nothing listens: a handler that calls one answers 503
//! or 504, which proves that the route exists and took the request.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use mesh_gateway::Config;
use mesh_proto::bindings::{BINDINGS, Binding};
use tower::ServiceExt;

/// The mesh RPCs with no route of their own, and why.
const NOT_EXPOSED: &[(&str, &str)] = &[(
    "/mesh.cache.v1.CacheService/Stats",
    "only part of GET /overview (beside the other services' figures); no route of its own",
)];

/// Every RPC of every mesh service, read from the descriptor set (not from
/// the generated table, so a table that missed an RPC fails here too).
fn mesh_rpcs() -> Vec<String> {
    use prost::Message;
    let fds = prost_types::FileDescriptorSet::decode(mesh_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut rpcs = Vec::new();
    for file in fds.file.iter().filter(|f| f.package().starts_with("mesh.")) {
        for service in &file.service {
            for method in &service.method {
                rpcs.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
            }
        }
    }
    rpcs
}

/// The template with each `{var}` (or `{var=...}`) filled with a sample value.
fn sample_path(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').expect("unclosed '{' in a path template");
        let var = rest[open + 1..close].split('=').next().unwrap();
        out.push_str(match var {
            "id" => "1",
            _ => "sample",
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A minimal body the route's handler accepts, for bindings that take one.
fn sample_body(binding: &Binding) -> Option<serde_json::Value> {
    if binding.body.is_empty() {
        return None;
    }
    Some(match binding.grpc_path {
        "/mesh.items.v1.ItemService/CreateItem" => serde_json::json!({"name": "pen"}),
        "/mesh.items.v1.ItemService/UpdateItem" => serde_json::json!({"price_cents": 175, "version": 1}),
        "/mesh.cache.v1.CacheService/Set" => serde_json::json!({"value": "v", "ttl_seconds": 5}),
        "/mesh.tasks.v1.TaskService/SubmitTask" => serde_json::json!({"kind": "echo"}),
        "/mesh.tasks.v1.TaskService/SubmitTasks" => serde_json::json!({"tasks": [{"kind": "echo"}]}),
        "/mesh.counter.v1.CounterService/Increment" => serde_json::json!({"by": 1}),
        // A binding with a body this test does not know: `{}` still shows
        // whether the route exists (a 400 is not a fallback's answer).
        _ => serde_json::json!({}),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binding_is_a_route_and_every_rpc_is_bound_or_listed() {
    // Coverage first: it needs no router.
    let rpcs = mesh_rpcs();
    assert!(rpcs.len() >= 19, "{rpcs:?}");
    for rpc in &rpcs {
        let bound = BINDINGS.iter().any(|b| b.grpc_path == rpc.as_str());
        let listed = NOT_EXPOSED.iter().any(|(r, _)| r == rpc);
        assert!(
            bound || listed,
            "{rpc} has no google.api.http binding and is not in NOT_EXPOSED (with a reason)"
        );
        assert!(!(bound && listed), "{rpc} has a binding: take it out of NOT_EXPOSED");
    }
    for (rpc, reason) in NOT_EXPOSED {
        assert!(
            rpcs.contains(&rpc.to_string()),
            "NOT_EXPOSED names {rpc}, which is not a mesh RPC"
        );
        assert!(!reason.is_empty());
    }

    let config = Config::parse_from([
        "gateway",
        "--items",
        "http://127.0.0.1:9",
        "--cache",
        "http://127.0.0.1:9",
        "--tasks",
        "http://127.0.0.1:9",
        "--counter",
        "http://127.0.0.1:9",
        "--route-timeout-ms",
        "2000",
        "--health-interval-ms",
        "200",
    ]);
    let state = config.state().await.expect("a client pool over refused endpoints");
    let app = mesh_gateway::app(state, config.max_body_bytes, config.max_header_bytes);

    let mut failures = Vec::new();
    for binding in BINDINGS {
        let path = sample_path(binding.path);
        let mut request = Request::builder().method(binding.http_method).uri(&path);
        let body = match sample_body(binding) {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let request = request.body(body).unwrap();
        let what = format!("{} {path} ({})", binding.http_method, binding.grpc_path);
        let response = tokio::time::timeout(Duration::from_secs(30), app.clone().oneshot(request))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            failures.push(format!(
                "{what}: the router has the path but not the method: {status} {text}"
            ));
        } else if status == StatusCode::NOT_FOUND && text.contains("no route for") {
            failures.push(format!("{what}: the router has no such path: {status} {text}"));
        } else if !matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ) {
            // Reached a handler, but it did not get as far as calling its
            // service: the sample request (or the binding's body) is wrong.
            failures.push(format!(
                "{what}: expected the unreachable service's 503/504, got {status} {text}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "router and annotations disagree:\n{}",
        failures.join("\n")
    );
}
