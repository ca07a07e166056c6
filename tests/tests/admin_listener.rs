//! Every server's admin listener (`--admin-listen`, loopback by default):
//! health and readiness for probes there, operators' detail only there, and
//! passwords in URLs never in a log.

use mesh_tests::{Mesh, Server, WAIT, args, eventually};
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn get(http: &reqwest::Client, url: String) -> (StatusCode, Value) {
    let r = http.get(&url).send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status();
    (
        status,
        r.json().await.unwrap_or_else(|e| panic!("{url}: not JSON: {e}")),
    )
}

#[tokio::test]
async fn every_server_answers_health_and_readiness_on_its_admin_listener() {
    let mesh = Mesh::start().await;
    let http = &mesh.http;
    for server in [&mesh.items, &mesh.cache, &mesh.tasks, &mesh.counter] {
        let admin = server.admin.expect("an admin address");
        assert!(admin.ip().is_loopback(), "{admin}");
        assert_ne!(admin, server.addr);
        let (status, body) = get(http, format!("{}/healthz", server.admin_url())).await;
        assert_eq!(
            (status, &body),
            (StatusCode::OK, &json!({"status": "ok"})),
            "{}",
            server.name
        );
        let (status, body) = get(http, format!("{}/readyz", server.admin_url())).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", server.name);
        assert_eq!(body["ready"], true, "{body}");
        assert_eq!(body["status"], "SERVING", "{body}");
    }
    let (status, body) = get(http, format!("{}/healthz", mesh.gateway.admin_url())).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    // The gateway is ready once its own health checks have seen every service.
    let ready = eventually("the gateway's admin /readyz is 200", WAIT, async || {
        let (status, body) = get(http, format!("{}/readyz", mesh.gateway.admin_url())).await;
        if status == StatusCode::OK { Ok(body) } else { Err(body) }
    })
    .await;
    assert_eq!(
        ready["services"]["items"]["replicas"][0]["address"],
        mesh.items.url(),
        "{ready}"
    );
}

#[tokio::test]
async fn a_service_in_maintenance_is_not_ready_on_its_admin_listener() {
    let mesh = Mesh::start().await;
    let url = format!("{}/readyz", mesh.counter.admin_url());
    mesh.counter.signal(Signal::SIGUSR1);
    let body = eventually("admin /readyz turns 503", WAIT, async || {
        let (status, body) = get(&mesh.http, url.clone()).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await;
    assert_eq!(body["status"], "NOT_SERVING", "{body}");
    assert_eq!(body["maintenance"], true, "{body}");
    mesh.counter.signal(Signal::SIGUSR2);
    eventually("admin /readyz is 200 again", WAIT, async || {
        get(&mesh.http, url.clone()).await.0 == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn the_public_port_shows_no_replica_addresses_nor_task_data() {
    let mesh = Mesh::start().await;
    let http = &mesh.http;
    let secret = "payload-only-its-owner-should-see";
    let r = http
        .post(mesh.at("/tasks"))
        .json(&json!({"kind": "echo", "payload": {"note": secret}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let submitted: Value = r.json().await.unwrap();
    let id = submitted["task_id"].as_i64().unwrap_or_else(|| panic!("{submitted}"));
    eventually("the echo task succeeds", WAIT, async || {
        let (_, task) = get(http, mesh.at(&format!("/tasks/{id}"))).await;
        task["status"] == "succeeded"
    })
    .await;
    eventually("the gateway is ready", WAIT, async || {
        get(http, mesh.at("/readyz")).await.0 == StatusCode::OK
    })
    .await;

    let addresses: Vec<String> = [&mesh.items, &mesh.cache, &mesh.tasks, &mesh.counter]
        .iter()
        .map(|s| s.addr.to_string())
        .collect();
    let (status, ready) = get(http, mesh.at("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["ready"], true, "{ready}");
    for service in ["items", "cache", "tasks", "counter"] {
        assert_eq!(ready["services"][service], json!({"ready": true}), "{ready}");
    }
    let (_, overview) = get(http, mesh.at("/overview")).await;
    let recent = &overview["tasks"]["recent"];
    let task = recent
        .as_array()
        .and_then(|r| r.iter().find(|t| t["id"] == id))
        .unwrap_or_else(|| panic!("task {id} not in {overview}"));
    assert_eq!(task["status"], "succeeded", "{task}");
    for public in [ready.to_string(), overview.to_string()] {
        for addr in &addresses {
            assert!(!public.contains(addr.as_str()), "{addr} shown publicly: {public}");
        }
        assert!(!public.contains(secret), "a task's data shown publicly: {public}");
    }

    // The admin listener has it all.
    let (_, ready) = get(http, format!("{}/readyz", mesh.gateway.admin_url())).await;
    let (_, overview) = get(http, format!("{}/overview", mesh.gateway.admin_url())).await;
    for detail in [ready.to_string(), overview.to_string()] {
        for addr in &addresses {
            assert!(detail.contains(addr.as_str()), "{addr} missing: {detail}");
        }
    }
    let task = overview["tasks"]["recent"]
        .as_array()
        .and_then(|r| r.iter().find(|t| t["id"] == id))
        .unwrap_or_else(|| panic!("task {id} not in {overview}"))
        .clone();
    assert_eq!(task["payload"]["note"], secret, "{task}");
    assert_eq!(task["result"]["note"], secret, "{task}");
}

/// A database URL's password shows up in no log line and no error, whether
/// the server cannot reach the database or does not support the URL.
#[tokio::test]
async fn database_passwords_never_reach_the_log() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    for (url, said) in [
        // Port 1: connection refused.
        (
            "postgres://mesh:hunter2@127.0.0.1:1/x",
            "cannot connect to the database",
        ),
        (
            "mysql://mesh:hunter2@127.0.0.1:1/x",
            "\"mysql://mesh:***@127.0.0.1:1/x\"",
        ),
        (
            "postgres://mesh:hunter2@127.0.0.1:notaport/x",
            "cannot connect to the database",
        ),
    ] {
        let mut server = Server::start("items-service", &args(&["--data-dir", &dir, "--database-url", url])).await;
        let status = server.wait().await;
        assert!(!status.success(), "{url}: started anyway");
        let log = eventually("the start-up error is in the log", WAIT, async || {
            let log = server.logs();
            if log.contains("Error") { Ok(log) } else { Err(log) }
        })
        .await;
        assert!(!log.contains("hunter2"), "{url}: the password is in the log:\n{log}");
        assert!(log.contains(said), "{url}: the error should say {said:?}:\n{log}");
    }
}
