//! `mesh --backend postgres,redis`: the launcher runs replicas of every
//! service on the shared backends, and they answer as one.

use std::process::Stdio;
use std::time::Duration;

use mesh_tests::ProcessGroupGuard;
use mesh_tests::backends::{KeysGuard, SchemaGuard, postgres, redis, unique};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn the_launcher_runs_replicas_on_postgres_and_redis() {
    let Some(pg) = postgres("launcher_on_backends").await else {
        return;
    };
    let Some(redis) = redis("launcher_on_backends").await else {
        return;
    };
    let tag = unique("launch");
    let schema_prefix = format!("{tag}_");
    let key_prefix = format!("{tag}:");
    // Dropped last: the schemas and keys go once every process is gone.
    let _schemas = SchemaGuard::new(&pg, [format!("{schema_prefix}items"), format!("{schema_prefix}tasks")]);
    let _keys = KeysGuard::new(&redis, &key_prefix);
    // The launcher in a process group of its own, with every replica it
    // starts: if the test fails anywhere, the guard kills them all.
    let mut mesh = Command::new(mesh_tests::bin("mesh"))
        .args([
            "--backend",
            "postgres,redis",
            "--replicas",
            "items=2,cache=2,counter=3,tasks=2",
        ])
        .args([
            "--ephemeral-ports",
            "--gateway-listen",
            "127.0.0.1:0",
            "--database-url",
            &pg,
            "--redis-url",
            &redis,
        ])
        .env("MESH_DB_SCHEMA_PREFIX", &schema_prefix)
        .env("CACHE_REDIS_PREFIX", format!("{key_prefix}cache:"))
        .env("COUNTER_REDIS_PREFIX", format!("{key_prefix}counter:"))
        .env("MESH_LOG_ANSI", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _group = ProcessGroupGuard::new(mesh.id().expect("launcher pid"));
    let mut lines = BufReader::new(mesh.stdout.take().unwrap()).lines();
    let mut summary = String::new();
    let gateway = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("mesh exited while starting");
            summary.push_str(&line);
            summary.push('\n');
            if let Some(addr) = line.trim().strip_prefix("gateway") {
                break addr.trim().to_string();
            }
        }
    })
    .await
    .expect("the mesh came up");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    for name in ["items-2", "cache-2", "counter-3", "tasks-2"] {
        assert!(summary.contains(name), "{name} missing:\n{summary}");
    }

    let http = reqwest::Client::new();
    let at = |p: &str| format!("http://{gateway}{p}");
    let created: Value = http
        .post(at("/items"))
        .json(&json!({"name": "shared"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    for _ in 0..4 {
        let r = http.get(at(&format!("/items/{id}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let increments: Vec<_> = (0..200)
        .map(|_| {
            let http = http.clone();
            let url = at("/counters/launched/increment");
            tokio::spawn(async move { http.post(url).send().await.unwrap().status() })
        })
        .collect();
    for i in increments {
        assert_eq!(i.await.unwrap(), 200);
    }
    let total: Value = http
        .get(at("/counters/launched"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(total["value"], 200, "three counter replicas, one count");
    let r: Value = http
        .get(at("/run-blocking-task?ms=50"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"], "Task complete!");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mesh.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), mesh.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "mesh exited {status}");
    // The guards then kill anything left in the group and drop the data.
}
