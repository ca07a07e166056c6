//! A rolling upgrade: replicas of the previous release and of this build
//! serve side by side on one PostgreSQL schema, which this build's first
//! replica migrates while the old ones keep serving, under a read load that
//! must not see one failed read.
//!
//! The previous release's binaries come from `deploy/upgrade/build-from.sh`
//! (it builds the commit named in `deploy/upgrade/FROM` into
//! `target/upgrade-from/<commit>/`; `.ci/run` runs it). Without them the
//! test prints `SKIPPED` and passes, except under CI, where it fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use mesh_tests::backends::{SchemaGuard, postgres, unique};
use mesh_tests::{Server, WAIT, args, eventually, gateway_flags, in_ci};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The directory holding the previous release's binaries, or `None` after
/// printing why the test is skipped (a failure under CI).
fn previous_release(test: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let from = std::fs::read_to_string(root.join("deploy/upgrade/FROM")).expect("deploy/upgrade/FROM");
    let commit = from
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("a commit in deploy/upgrade/FROM")
        .to_string();
    let dir = std::env::var_os("MESH_UPGRADE_FROM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/upgrade-from").join(&commit));
    if ["items-service", "tasks-service"].iter().all(|b| dir.join(b).exists()) {
        return Some(dir);
    }
    let why = format!(
        "no binaries of {commit} in {} (run deploy/upgrade/build-from.sh)",
        dir.display()
    );
    assert!(!in_ci(), "{test}: {why}; CI must run it");
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// How many calls of `method` a replica has served (from its per-call log).
fn calls(server: &Server, method: &str) -> usize {
    let method = format!("method={method}");
    server
        .logs()
        .lines()
        .filter(|l| l.contains(&method) && l.contains("rpc done"))
        .count()
}

/// The newest migration applied to a schema (sqlx's table).
async fn schema_version(url: &str, schema: &str) -> i64 {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let row = sqlx::query(&format!("SELECT max(version) FROM \"{schema}\"._sqlx_migrations"))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    row.get(0)
}

/// Writes an endpoints file atomically, as an operator's tooling would.
fn publish(path: &std::path::Path, replicas: &[&Server]) {
    let next = path.with_extension("next");
    let lines: Vec<String> = replicas.iter().map(|s| s.url()).collect();
    std::fs::write(&next, lines.join("\n") + "\n").unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// The replicas of `service` the gateway has in rotation, by address.
async fn in_rotation(http: &reqwest::Client, gateway: &Server, service: &str) -> Result<Vec<String>, String> {
    let ready: Value = http
        .get(format!("{}/readyz", gateway.admin_url()))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let replicas = ready["services"][service]["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(replicas
        .iter()
        .filter(|r| r["in_rotation"] == true && r["healthy"] == true)
        .filter_map(|r| r["address"].as_str().map(str::to_string))
        .collect())
}

/// Waits until the gateway rotates exactly over `replicas` for `service`.
async fn wait_rotation(http: &reqwest::Client, gateway: &Server, service: &str, replicas: &[&Server]) {
    let mut want: Vec<String> = replicas.iter().map(|s| s.url()).collect();
    want.sort();
    let what = format!("{service} in rotation: {want:?}");
    eventually(&what, WAIT, async || {
        let mut seen = in_rotation(http, gateway, service).await?;
        seen.sort();
        if seen == want { Ok(()) } else { Err(format!("{seen:?}")) }
    })
    .await;
}

#[tokio::test]
async fn old_and_new_replicas_serve_side_by_side_on_one_migrated_schema_without_a_failed_read() {
    let test = "rolling_upgrade";
    let Some(old) = previous_release(test) else {
        return;
    };
    let Some(url) = postgres(test).await else {
        return;
    };
    let prefix = format!("{}_", unique("upgrade"));
    let _schemas = SchemaGuard::new(&url, [format!("{prefix}items"), format!("{prefix}tasks")]);
    let data = tempfile::tempdir().unwrap();
    let backend = args(&["--database-url", &url, "--db-schema-prefix", &prefix]);
    let items_args = backend.clone();
    let tasks_args = [backend.clone(), args(&["--workers", "2"])].concat();
    let start_old = async |binary: &str, flags: &[String]| {
        let s = Server::start_program(&old.join(binary), &format!("old {binary}"), flags, "127.0.0.1:0", &[]).await;
        s.wait_serving().await;
        s
    };
    let start_new = async |binary: &str, flags: &[String]| {
        let s = Server::start(binary, flags).await;
        s.wait_serving().await;
        s
    };

    // The previous release, two replicas of each service with a database.
    let mut old_items = vec![
        start_old("items-service", &items_args).await,
        start_old("items-service", &items_args).await,
    ];
    let mut old_tasks = vec![
        start_old("tasks-service", &tasks_args).await,
        start_old("tasks-service", &tasks_args).await,
    ];
    let tasks_schema = format!("{prefix}tasks");
    let old_version = schema_version(&url, &tasks_schema).await;
    let cache = start_new("cache-service", &[]).await;
    let counter = start_new("counter-service", &[]).await;
    let items_list = data.path().join("items.endpoints");
    let tasks_list = data.path().join("tasks.endpoints");
    publish(&items_list, &[&old_items[0], &old_items[1]]);
    publish(&tasks_list, &[&old_tasks[0], &old_tasks[1]]);
    let gateway = Server::start(
        "gateway",
        &[
            gateway_flags(
                format!("@{}", items_list.display()),
                cache.url(),
                format!("@{}", tasks_list.display()),
                counter.url(),
            ),
            args(&["--resolve-interval-ms", "200", "--health-interval-ms", "200"]),
        ]
        .concat(),
    )
    .await;
    let http = reqwest::Client::new();
    wait_rotation(&http, &gateway, "items", &[&old_items[0], &old_items[1]]).await;
    wait_rotation(&http, &gateway, "tasks", &[&old_tasks[0], &old_tasks[1]]).await;

    // Data written by the old release, read all through the upgrade.
    let submit = async |n: usize| -> i64 {
        let r = http
            .post(format!("{}/tasks", gateway.url()))
            .json(&json!({"kind": "echo", "payload": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "submit {n}");
        r.json::<Value>().await.unwrap()["task_id"].as_i64().expect("task id")
    };
    let mut task_ids = Vec::new();
    for n in 0..10 {
        task_ids.push(submit(n).await);
        let r = http
            .post(format!("{}/items", gateway.url()))
            .json(&json!({"name": format!("before-{n}"), "price_cents": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "create item {n}: {}",
            r.text().await.unwrap()
        );
    }

    // The read load: item lists and task reads (both reach the services,
    // not the gateway's cache), 6 at a time, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (http, stop, answered) = (http.clone(), stop.clone(), answered.clone());
        let base = gateway.url();
        let ids = task_ids.clone();
        async move {
            futures::stream::iter(0usize..)
                .take_while(move |_| std::future::ready(!stop.load(Ordering::Relaxed)))
                .map(|i| {
                    let (http, answered) = (http.clone(), answered.clone());
                    let url = if i % 2 == 0 {
                        format!("{base}/items?page_size=5")
                    } else {
                        format!("{base}/tasks/{}", ids[i / 2 % ids.len()])
                    };
                    async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let answer = match http.get(&url).send().await {
                            Ok(r) => (url, r.status().as_u16(), r.text().await.unwrap_or_default()),
                            Err(e) => (url, 0, e.to_string()),
                        };
                        answered.fetch_add(1, Ordering::Relaxed);
                        answer
                    }
                })
                .buffer_unordered(6)
                .collect::<Vec<_>>()
                .await
        }
    });
    let progress = async |what: &str| {
        let from = answered.load(Ordering::Relaxed);
        let what = format!("100 reads answered {what}");
        eventually(&what, WAIT, async || answered.load(Ordering::Relaxed) >= from + 100).await;
    };
    progress("before the upgrade").await;

    // One service at a time, one replica at a time: a new replica joins
    // (the first one migrates the schema under the old ones), serves beside
    // the old ones, then an old one leaves rotation and drains.
    let mut new_items: Vec<Server> = Vec::new();
    let mut new_tasks: Vec<Server> = Vec::new();
    let mut written_during = Vec::new();
    for (service, binary, flags, list, olds, news, method) in [
        (
            "items",
            "items-service",
            &items_args,
            &items_list,
            &mut old_items,
            &mut new_items,
            "ListItems",
        ),
        (
            "tasks",
            "tasks-service",
            &tasks_args,
            &tasks_list,
            &mut old_tasks,
            &mut new_tasks,
            "GetTask",
        ),
    ] {
        while !olds.is_empty() {
            let fresh = start_new(binary, flags).await;
            news.push(fresh);
            let everyone: Vec<&Server> = olds.iter().chain(news.iter()).collect();
            publish(list, &everyone);
            wait_rotation(&http, &gateway, service, &everyone).await;
            // Side by side: both releases serve reads from here on.
            let before: Vec<usize> = everyone.iter().map(|s| calls(s, method)).collect();
            eventually(
                &format!("every {service} replica, old and new, serves reads"),
                WAIT,
                async || {
                    let now: Vec<usize> = everyone.iter().map(|s| calls(s, method)).collect();
                    if now.iter().zip(&before).all(|(n, b)| n > b) {
                        Ok(())
                    } else {
                        Err(format!("{before:?} -> {now:?}"))
                    }
                },
            )
            .await;
            if service == "tasks" {
                // Writes during the mix: either release may queue and run them.
                for n in 0..4 {
                    written_during.push(submit(100 + written_during.len() + n).await);
                }
            }
            // The oldest replica leaves the list, then rotation, then drains.
            let mut leaving = olds.remove(0);
            let staying: Vec<&Server> = olds.iter().chain(news.iter()).collect();
            publish(list, &staying);
            wait_rotation(&http, &gateway, service, &staying).await;
            assert!(
                leaving.terminate().await.success(),
                "{} drains and exits 0",
                leaving.name
            );
            progress(&format!("after an old {service} replica left")).await;
        }
    }

    stop.store(true, Ordering::Relaxed);
    let results = load.await.unwrap();
    let new_version = schema_version(&url, &tasks_schema).await;
    assert!(
        new_version > old_version,
        "this build migrated the tasks schema beyond the old release's ({old_version} -> {new_version})"
    );
    eprintln!(
        "rolling upgrade: tasks schema {old_version} -> {new_version}, {} reads through it",
        results.len()
    );
    let failed: Vec<_> = results.iter().filter(|(_, status, _)| *status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} reads failed, e.g. {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
    assert!(
        results.len() >= 500,
        "the load ran through the upgrade: {} reads",
        results.len()
    );

    // Every task, queued by either release, ran; the new release reads them.
    for id in task_ids.iter().chain(&written_during) {
        eventually(&format!("task {id} succeeded"), WAIT, async || {
            let task: Value = http
                .get(format!("{}/tasks/{id}", gateway.url()))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if task["status"] == "succeeded" {
                Ok(())
            } else {
                Err(task.to_string())
            }
        })
        .await;
    }
    let listed: Value = http
        .get(format!("{}/items?page_size=100", gateway.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(10), "{listed}");
}

/// A tasks schema this build migrated (a replica started, then stopped):
/// its guard, its name and the flags that reach it.
async fn a_migrated_tasks_schema(url: &str, tag: &str) -> (SchemaGuard, String, Vec<String>) {
    let prefix = format!("{}_", unique(tag));
    let schema = format!("{prefix}tasks");
    let guard = SchemaGuard::new(url, [schema.clone()]);
    let flags = args(&["--database-url", url, "--db-schema-prefix", &prefix, "--workers", "0"]);
    let mut first = Server::start("tasks-service", &flags).await;
    first.wait_serving().await;
    assert!(first.terminate().await.success());
    (guard, schema, flags)
}

/// Records migration `version` as applied in sqlx's table, after running
/// `before` (what that migration would have done), as another binary would.
async fn record_migration(url: &str, schema: &str, version: i64, before: &[String]) {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    for statement in before {
        conn.execute(statement.as_str()).await.unwrap();
    }
    conn.execute(
        format!(
            "INSERT INTO \"{schema}\"._sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ({version}, 'not this build''s', true, '\\x00'::bytea, 0)"
        )
        .as_str(),
    )
    .await
    .unwrap();
}

/// A replica of this build starts on a schema that a newer release already
/// migrated further (a rollback, or an old replica restarting mid-rollout):
/// the newer migration, and the column it added, are tolerated.
#[tokio::test]
async fn a_replica_starts_on_a_schema_a_newer_release_migrated() {
    let Some(url) = postgres("starts_on_a_newer_schema").await else {
        return;
    };
    let (_schemas, schema, flags) = a_migrated_tasks_schema(&url, "newer").await;
    let column = format!("ALTER TABLE \"{schema}\".tasks ADD COLUMN from_the_future TEXT");
    record_migration(&url, &schema, 99990101000000, &[column]).await;
    let again = Server::start("tasks-service", &flags).await;
    again.wait_serving().await;
    let http = reqwest::Client::new();
    let ready = http.get(format!("{}/readyz", again.admin_url())).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "{}", again.logs());
}

/// An applied migration this build does not know, but older than its newest
/// (a renamed or deleted migration file): the replica refuses to start and
/// says why, rather than tolerating it as a newer release's.
#[tokio::test]
async fn an_unknown_older_migration_is_refused() {
    let Some(url) = postgres("unknown_older_migration").await else {
        return;
    };
    let (_schemas, schema, flags) = a_migrated_tasks_schema(&url, "older").await;
    record_migration(&url, &schema, 0, &[]).await;
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(mesh_tests::bin("tasks-service"))
            .args(&flags)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("MESH_LOG_ANSI", "0")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the replica exits")
    .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it refuses to start: {said}");
    assert!(
        said.contains("has migration 0 applied, which this binary does not know"),
        "it says why: {said}"
    );
}
