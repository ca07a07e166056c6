//! The committed contract (`gateway/openapi.json`) is what the code
//! generates, and it covers every route with the protos' words.
//!
//! After changing a route, its JSON types or a proto comment, regenerate it:
//! `UPDATE_OPENAPI=1 cargo test -p mesh-gateway --test openapi`.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use mesh_gateway::Config;
use mesh_gateway::openapi::{CALLS, ERRORS, rpc_comments, spec, spec_for, spec_json};
use mesh_proto::bindings::BINDINGS;
use tower::ServiceExt;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json")
}

#[test]
fn committed_file_is_what_the_code_generates() {
    let generated = spec_json();
    let path = committed_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or(committed.lines().count().min(generated.lines().count()) + 1, |i| i + 1);
        panic!(
            "{} differs from the contract the code generates (first at line {line}).\n\
             Regenerate it with:\n\n    UPDATE_OPENAPI=1 cargo test -p mesh-gateway --test openapi\n\n\
             and commit the result.",
            path.display()
        );
    }
}

/// The route table the router serves, as (METHOD, path) pairs, from the
/// protos' bindings plus the routes with no RPC of their own.
fn routes() -> Vec<(String, String)> {
    let mut routes: Vec<(String, String)> = BINDINGS
        .iter()
        .map(|b| (b.http_method.to_string(), b.path.to_string()))
        .collect();
    for path in [
        "/test",
        "/cached-data",
        "/increment",
        "/start-task",
        "/run-blocking-task",
        "/call-another-service",
        "/healthz",
        "/readyz",
        "/overview",
        "/",
    ] {
        routes.push(("GET".into(), path.into()));
    }
    routes
}

fn operation<'a>(doc: &'a serde_json::Value, method: &str, path: &str) -> Option<&'a serde_json::Value> {
    doc["paths"][path].get(method.to_ascii_lowercase())
}

#[test]
fn every_route_is_documented_with_its_errors_and_headers() {
    let doc = serde_json::to_value(spec()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = routes();
    for (method, path) in &routes {
        let op = operation(&doc, method, path).unwrap_or_else(|| panic!("{method} {path} is not in the contract"));
        let responses = op["responses"].as_object().unwrap();
        let (_, _, errors) = ERRORS
            .iter()
            .find(|(m, p, _)| m == method && p == path)
            .unwrap_or_else(|| panic!("{method} {path} has no row in openapi::ERRORS"));
        for status in errors.iter().chain(&[414, 431]) {
            assert!(
                responses.contains_key(&status.to_string()),
                "{method} {path}: no {status}"
            );
        }
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: no success response"
        );
        let params = op["parameters"].as_array().unwrap();
        assert!(
            params
                .iter()
                .any(|p| p["$ref"] == "#/components/parameters/x-request-id"),
            "{method} {path}: no x-request-id"
        );
    }
    // Nothing documented that the router does not serve.
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(documented, routes.len());
    assert_eq!(ERRORS.len(), routes.len());

    // Headers where they belong.
    let header = |method: &str, path: &str, status: &str, name: &str| {
        operation(&doc, method, path).unwrap()["responses"][status]["headers"]
            .get(name)
            .is_some()
    };
    assert!(header("POST", "/items", "201", "Location"));
    assert!(header("POST", "/tasks", "202", "Location"));
    assert!(header("GET", "/items/{id}", "200", "x-cache"));
    for status in ["429", "503"] {
        let name = doc["paths"]["/counters/{name}/increment"]["post"]["responses"][status]["$ref"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        assert!(doc["components"]["responses"][&name]["headers"]["Retry-After"].is_object());
    }
    for (method, path) in [("POST", "/tasks"), ("POST", "/counters/{name}/increment")] {
        let params = operation(&doc, method, path).unwrap()["parameters"].as_array().unwrap();
        assert!(params.iter().any(|p| p["name"] == "Idempotency-Key"), "{method} {path}");
    }
    let events = &doc["paths"]["/tasks/{id}/events"]["get"]["responses"]["200"]["content"];
    assert!(events.get("text/event-stream").is_some(), "{events}");
}

/// Every `$ref` points at something in the document (schema validators do
/// not follow them).
#[test]
fn every_reference_resolves() {
    fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let doc = serde_json::to_value(spec()).unwrap();
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > 50);
    for r in found {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{r}: not a local reference"));
        assert!(doc.pointer(pointer).is_some(), "{r} points at nothing");
    }
}

#[test]
fn operations_that_call_an_rpc_carry_its_proto_comments() {
    let doc = serde_json::to_value(spec()).unwrap();
    let comments = rpc_comments();
    assert!(comments.len() >= 19, "{comments:?}");
    for b in BINDINGS {
        let text = comments.get(b.grpc_path).unwrap();
        assert!(!text.is_empty(), "{} has no comment in its proto", b.grpc_path);
        let description = operation(&doc, b.http_method, b.path).unwrap()["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            description.contains(text.as_str()),
            "{} {}: the description is not {}'s comments:\n{description}",
            b.http_method,
            b.path,
            b.grpc_path
        );
    }
    for (method, path, rpcs) in CALLS {
        let description = operation(&doc, method, path).unwrap()["description"].as_str().unwrap();
        for rpc in *rpcs {
            assert!(description.contains(comments[*rpc].as_str()), "{method} {path}: {rpc}");
        }
    }
    // One sample, in the protos' own words.
    let create = operation(&doc, "POST", "/items").unwrap()["description"]
        .as_str()
        .unwrap();
    assert!(create.contains("Creates an item. `name` is required"), "{create}");
    assert!(
        create.contains("Answers 201 with a `Location: /items/{id}` header."),
        "{create}"
    );
}

#[tokio::test]
async fn served_at_openapi_json_and_docs_and_root() {
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
    ]);
    let state = config.state().await.unwrap();
    let app = mesh_gateway::app(state, config.max_body_bytes, config.max_header_bytes);
    let get = |path: &'static str| {
        let app = app.clone();
        async move {
            let request = Request::get(path).body(Body::empty()).unwrap();
            let response = tokio::time::timeout(Duration::from_secs(10), app.oneshot(request))
                .await
                .unwrap()
                .unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let body = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
                .await
                .unwrap();
            (status, headers, body)
        }
    };
    // Without --auth: every route open, nothing about credentials.
    let (status, _, body) = get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let served: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(served, serde_json::to_value(spec_for(None, false)).unwrap());
    assert!(served["components"].get("securitySchemes").is_none());
    assert!(
        served["paths"]["/items/{id}"]["delete"]["responses"]
            .get("401")
            .is_none()
    );

    let (status, headers, _) = get("/docs").await;
    assert!(status.is_redirection(), "{status}");
    assert_eq!(headers["location"], "/docs/");
    let (status, _, body) = get("/docs/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("swagger-ui"));
    let (status, _, body) = get("/docs/swagger-initializer.js").await;
    assert_eq!(status, StatusCode::OK);
    let init = String::from_utf8_lossy(&body);
    assert!(init.contains("/openapi.json"), "{init}");

    let (status, _, body) = get("/").await;
    assert_eq!(status, StatusCode::OK);
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(index, serde_json::json!({"docs": "/docs", "openapi": "/openapi.json"}));
}

/// With `--auth`, the default scopes and `--rate-limit`, the gateway serves
/// the committed contract: its anonymous routes need nothing, the rest a
/// scope, with 401, 403 and 429 documented.
#[tokio::test]
async fn with_auth_the_served_contract_is_the_committed_one() {
    let dir = std::env::temp_dir().join(format!("mesh-openapi-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, "# no keys\n").unwrap();
    let config = Config::parse_from([
        "gateway",
        "--auth",
        "keys",
        "--api-keys",
        keys.to_str().unwrap(),
        "--rate-limit",
        "anonymous=100/s,read=100/s",
        "--items",
        "http://127.0.0.1:9",
        "--cache",
        "http://127.0.0.1:9",
        "--tasks",
        "http://127.0.0.1:9",
        "--counter",
        "http://127.0.0.1:9",
    ]);
    let state = config.state().await;
    std::fs::remove_dir_all(&dir).unwrap();
    let app = mesh_gateway::app(state.unwrap(), config.max_body_bytes, config.max_header_bytes);
    let response = app
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the contract is anonymous");
    let body = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
        .await
        .unwrap();
    let served: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(served, serde_json::to_value(spec()).unwrap());
    let delete = &served["paths"]["/items/{id}"]["delete"];
    assert_eq!(
        delete["security"],
        serde_json::json!([{"bearer": ["admin"]}, {"apiKey": ["admin"]}])
    );
    assert_eq!(delete["responses"]["403"]["$ref"], "#/components/responses/Forbidden");
    assert_eq!(served["paths"]["/test"]["get"]["security"], serde_json::json!([{}]));
    assert!(served["paths"]["/test"]["get"]["responses"].get("401").is_none());
    assert_eq!(
        served["paths"]["/test"]["get"]["responses"]["429"]["$ref"],
        "#/components/responses/TooManyRequests"
    );
    let too_many = &served["components"]["responses"]["TooManyRequests"]["headers"];
    assert!(
        too_many.get("RateLimit").is_some() && too_many.get("Retry-After").is_some(),
        "{too_many}"
    );
}

/// Names and tags are trimmed and must not be blank: the contract's pattern
/// says so with the exact whitespace Rust's `trim` removes, and every field
/// that is trimmed uses it.
#[test]
fn not_blank_means_what_trim_means() {
    use mesh_gateway::openapi::NOT_BLANK_PATTERN;
    // The pattern's whitespace class, expanded (`\uXXXX`, ranges `a-b`, and
    // the escapes it uses).
    let class = NOT_BLANK_PATTERN
        .split_once("*[^\\u0000")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(class, _)| class)
        .expect("pattern shape");
    let mut listed = std::collections::BTreeSet::new();
    let mut rest = class;
    let mut previous: Option<u32> = None;
    while !rest.is_empty() {
        let (c, tail) = if let Some(hex) = rest.strip_prefix("\\u") {
            (u32::from_str_radix(&hex[..4], 16).unwrap(), &hex[4..])
        } else if let Some(tail) = rest.strip_prefix('\\') {
            let c = match &tail[..1] {
                "t" => 9,
                "n" => 10,
                "f" => 12,
                "r" => 13,
                other => panic!("unexpected escape \\{other}"),
            };
            (c, &tail[1..])
        } else if let Some(tail) = rest.strip_prefix('-') {
            let (to, tail) = (u32::from_str_radix(&tail[2..6], 16).unwrap(), &tail[6..]);
            listed.extend(previous.unwrap()..=to);
            rest = tail;
            continue;
        } else {
            let c = rest.chars().next().unwrap();
            (c as u32, &rest[c.len_utf8()..])
        };
        listed.insert(c);
        previous = Some(c);
        rest = tail;
    }
    let whitespace: std::collections::BTreeSet<u32> = (0..=0x10FFFF)
        .filter_map(char::from_u32)
        .filter(|c| c.is_whitespace())
        .map(|c| c as u32)
        .collect();
    assert_eq!(listed, whitespace);

    let schemas = serde_json::to_value(spec()).unwrap()["components"]["schemas"].clone();
    for schema in ["Item", "CreateItem", "PatchItem"] {
        assert_eq!(
            schemas[schema]["properties"]["name"]["pattern"], NOT_BLANK_PATTERN,
            "{schema}.name"
        );
    }
    for schema in ["Item", "CreateItem", "PatchItem"] {
        assert_eq!(
            schemas[schema]["properties"]["tags"]["items"]["pattern"], NOT_BLANK_PATTERN,
            "{schema}.tags"
        );
    }
}
