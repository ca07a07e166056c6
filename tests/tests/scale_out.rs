//! Replicas on shared PostgreSQL and Redis stay correct (issue: scale out).
//! Each test gets its own schema or key prefix, so runs never share data.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mesh_tests::backends::{KeysGuard, SchemaGuard, postgres, redis, unique};
use mesh_tests::proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_tests::proto::cache::v1::{GetRequest, SetRequest};
use mesh_tests::proto::items::v1::item_service_client::ItemServiceClient;
use mesh_tests::proto::items::v1::{CreateItemRequest, GetItemRequest, UpdateItemRequest};
use mesh_tests::proto::tasks::v1::task_service_client::TaskServiceClient;
use mesh_tests::proto::tasks::v1::{GetTaskRequest, SubmitTaskRequest, TaskStatus};
use mesh_tests::{Server, WAIT, args, eventually, gateway_flags};
use serde_json::json;
use tonic::Code;

fn urls(servers: &[Server]) -> String {
    servers.iter().map(Server::url).collect::<Vec<_>>().join(",")
}

async fn replicas(bin: &str, n: usize, extra: &[String]) -> Vec<Server> {
    let mut out = Vec::new();
    for _ in 0..n {
        let s = Server::start(bin, extra).await;
        s.wait_serving().await;
        out.push(s);
    }
    out
}

#[tokio::test]
async fn three_counter_replicas_on_redis_count_exactly_even_with_retries() {
    let Some(url) = redis("three_counter_replicas_on_redis").await else {
        return;
    };
    let prefix = format!("{}:", unique("counter"));
    let _keys = KeysGuard::new(&url, &prefix);
    let counters = replicas(
        "counter-service",
        3,
        &args(&["--redis-url", &url, "--redis-prefix", &prefix]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let items = Server::start(
        "items-service",
        &args(&["--data-dir", &dir.path().display().to_string()]),
    )
    .await;
    let gateway = Server::start(
        "gateway",
        &gateway_flags(items.url(), items.url(), items.url(), urls(&counters)),
    )
    .await;

    // 20,000 increments from 64 concurrent clients; then the same again on a
    // second counter with every request sent twice under one idempotency key.
    const TOTAL: usize = 20_000;
    const CLIENTS: usize = 64;
    for (name, repeat) in [("plain", 1), ("retried", 2)] {
        let url = format!("{}/counters/{name}/increment", gateway.url());
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let http = reqwest::Client::new();
                let url = url.clone();
                tokio::spawn(async move {
                    for i in (c..TOTAL).step_by(CLIENTS) {
                        for _ in 0..repeat {
                            let mut req = http.post(&url);
                            if repeat > 1 {
                                req = req.header("idempotency-key", format!("op-{i}"));
                            }
                            let r = req.send().await.unwrap();
                            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // Read the final value through each replica: they must all agree.
        for counter in &counters {
            let mut c =
                mesh_tests::proto::counter::v1::counter_service_client::CounterServiceClient::new(counter.channel());
            let v = c
                .get(mesh_tests::proto::counter::v1::GetRequest { name: name.into() })
                .await
                .unwrap()
                .into_inner()
                .value;
            assert_eq!(v, TOTAL as i64, "{name} through {}", counter.addr);
        }
    }
}

#[tokio::test]
async fn two_items_replicas_on_postgres_share_writes_and_versions() {
    let Some(url) = postgres("two_items_replicas_on_postgres").await else {
        return;
    };
    let schema = format!("{}_", unique("items"));
    let _schemas = SchemaGuard::new(&url, [format!("{schema}items")]);
    let servers = replicas(
        "items-service",
        2,
        &args(&["--database-url", &url, "--db-schema-prefix", &schema]),
    )
    .await;
    let mut a = ItemServiceClient::new(servers[0].channel());
    let mut b = ItemServiceClient::new(servers[1].channel());
    let created = a
        .create_item(CreateItemRequest {
            name: "shared".into(),
            price_cents: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seen = b
        .get_item(GetItemRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen, created, "a write through one replica is read through the other");

    // Concurrent same-version updates spread over both replicas: exactly one wins.
    let attempts = (0..10).map(|n| {
        let mut client = if n % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            client
                .update_item(UpdateItemRequest {
                    id: created.id,
                    price_cents: Some(100 + n),
                    expected_version: Some(1),
                    ..Default::default()
                })
                .await
        }
    });
    let results = futures::future::join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| e.code() == Code::Aborted)
    );
    let after = a
        .get_item(GetItemRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.version, 2);
}

#[tokio::test]
async fn two_cache_replicas_on_redis_agree_and_honour_ttls() {
    let Some(url) = redis("two_cache_replicas_on_redis").await else {
        return;
    };
    let prefix = format!("{}:", unique("cache"));
    let _keys = KeysGuard::new(&url, &prefix);
    let servers = replicas(
        "cache-service",
        2,
        &args(&["--redis-url", &url, "--redis-prefix", &prefix]),
    )
    .await;
    let mut a = CacheServiceClient::new(servers[0].channel());
    let mut b = CacheServiceClient::new(servers[1].channel());
    a.set(SetRequest {
        key: "k".into(),
        value: b"v".to_vec(),
        ttl: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let got = b
        .get(GetRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        got.found && got.value == b"v",
        "a set through one replica is a hit through the other"
    );

    const TTL: Duration = Duration::from_secs(1);
    let set_at = Instant::now();
    b.set(SetRequest {
        key: "short".into(),
        value: b"x".to_vec(),
        ttl: prost_types::Duration::try_from(TTL).ok(),
        ..Default::default()
    })
    .await
    .unwrap();
    let found = a
        .get(GetRequest {
            key: "short".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .found;
    // Gone already is right only once the TTL has passed (a busy machine may
    // take that long between the two calls); before that it must be there.
    assert!(
        found || set_at.elapsed() >= TTL,
        "expired after {:?}, before its TTL of {TTL:?}",
        set_at.elapsed()
    );
    // Redis expires it, for both replicas.
    for (name, client) in [("a", &mut a), ("b", &mut b)] {
        eventually(
            &format!("the key expires, seen through replica {name}"),
            WAIT,
            async || {
                let got = client
                    .get(GetRequest {
                        key: "short".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                if got.found { Err("still found") } else { Ok(()) }
            },
        )
        .await;
    }
}

/// Waits until every task in `ids` has ended; returns them by id.
async fn wait_all(
    client: &TaskServiceClient<tonic::transport::Channel>,
    ids: &[i64],
    limit: Duration,
) -> HashMap<i64, mesh_tests::proto::tasks::v1::Task> {
    let mut done = HashMap::new();
    eventually("every task ends", limit, async || {
        let pending: Vec<i64> = ids.iter().copied().filter(|id| !done.contains_key(id)).collect();
        let fetched = futures::stream::iter(pending)
            .map(|id| {
                let mut c = client.clone();
                async move { c.get_task(GetTaskRequest { id }).await.unwrap().into_inner() }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        for t in fetched {
            if t.status >= TaskStatus::Succeeded as i32 {
                done.insert(t.id, t);
            }
        }
        if done.len() == ids.len() {
            Ok(())
        } else {
            Err(format!("{} of {} tasks ended", done.len(), ids.len()))
        }
    })
    .await;
    done
}

#[tokio::test]
async fn three_tasks_replicas_on_postgres_run_each_task_exactly_once() {
    let Some(url) = postgres("three_tasks_replicas_on_postgres").await else {
        return;
    };
    let schema = format!("{}_", unique("tasks"));
    let _schemas = SchemaGuard::new(&url, [format!("{schema}tasks")]);
    let servers = replicas(
        "tasks-service",
        3,
        &args(&["--database-url", &url, "--db-schema-prefix", &schema, "--workers", "4"]),
    )
    .await;
    let clients: Vec<_> = servers.iter().map(|s| TaskServiceClient::new(s.channel())).collect();
    // 1,000 tasks, submitted round-robin through the replicas, 16 at a time.
    let ids: Vec<i64> = futures::stream::iter(0..1000)
        .map(|n| {
            let mut c = clients[n % clients.len()].clone();
            async move {
                c.submit_task(SubmitTaskRequest {
                    kind: "echo".into(),
                    payload: Some(mesh_tests::proto::json::to_proto(json!(n))),
                    priority: (n % 10) as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .id
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let done = wait_all(&clients[0], &ids, Duration::from_secs(120)).await;
    for t in done.values() {
        assert_eq!(t.status, TaskStatus::Succeeded as i32, "{t:?}");
        assert_eq!(t.attempts, 1, "task {} ran {} times", t.id, t.attempts);
    }
    // Log lines are written by a background thread: wait until every run
    // is in the logs, then check that none ran twice.
    let runs = || -> Vec<usize> {
        servers
            .iter()
            .map(|s| s.logs().matches("task started").count())
            .collect()
    };
    eventually("every run is logged", WAIT, async || {
        runs().iter().sum::<usize>() >= 1000
    })
    .await;
    let runs = runs();
    assert_eq!(runs.iter().sum::<usize>(), 1000, "runs per replica: {runs:?}");
    assert!(runs.iter().all(|r| *r > 0), "every replica worked: {runs:?}");
}

#[tokio::test]
async fn a_task_whose_worker_is_killed_is_finished_by_another_replica() {
    let Some(url) = postgres("killed_worker_task_is_finished_elsewhere").await else {
        return;
    };
    let schema = format!("{}_", unique("lease"));
    let _schemas = SchemaGuard::new(&url, [format!("{schema}tasks")]);
    let extra = args(&[
        "--database-url",
        &url,
        "--db-schema-prefix",
        &schema,
        "--workers",
        "2",
        "--lease-ms",
        "1000",
    ]);
    let mut servers = replicas("tasks-service", 3, &extra).await;
    let mut client = TaskServiceClient::new(servers[0].channel());
    let task = client
        .submit_task(SubmitTaskRequest {
            kind: "sleep".into(),
            payload: Some(mesh_tests::proto::json::to_proto(json!({"ms": 1500}))),
            priority: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let needle = format!("task={} ", task.id);
    let runner = eventually("a replica starts the task", WAIT, async || {
        servers.iter().position(|s| {
            s.logs()
                .lines()
                .any(|l| l.contains(&needle) && l.contains("task started"))
        })
    })
    .await;
    servers[runner].signal(nix::sys::signal::Signal::SIGKILL);
    servers[runner].wait().await;
    let survivor = (runner + 1) % servers.len();
    let client = TaskServiceClient::new(servers[survivor].channel());
    let done = wait_all(&client, &[task.id], Duration::from_secs(60))
        .await
        .remove(&task.id)
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded as i32, "{done:?}");
    assert_eq!(
        done.attempts, 2,
        "the dead worker's attempt, then the one that finished"
    );
    let finisher = eventually("a replica logs that it finished the task", WAIT, async || {
        servers.iter().position(|s| {
            s.logs()
                .lines()
                .any(|l| l.contains(&needle) && l.contains("task finished"))
        })
    })
    .await;
    assert_ne!(finisher, runner);
}

#[tokio::test]
async fn claiming_stays_an_index_seek_with_100k_tasks_queued() {
    use sqlx::{Connection, Executor, Row};
    let Some(url) = postgres("claim_index_with_100k_queued").await else {
        return;
    };
    let prefix = format!("{}_", unique("claim"));
    let schema = format!("{prefix}tasks");
    let _schemas = SchemaGuard::new(&url, [schema.clone()]);
    // Workers off: the service only creates the schema and applies migrations.
    let server = Server::start(
        "tasks-service",
        &args(&["--database-url", &url, "--db-schema-prefix", &prefix, "--workers", "0"]),
    )
    .await;
    server.wait_serving().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    conn.execute(format!("SET search_path TO \"{schema}\"").as_str())
        .await
        .unwrap();
    conn.execute(
        "INSERT INTO tasks (kind, payload, priority, status, created_ms, updated_ms) \
         SELECT 'echo', 'null', g % 10, 'queued', g, g FROM generate_series(1, 100000) g",
    )
    .await
    .unwrap();
    // The queued ones are the first 100,000 ids; the rest are ended history.
    let last_queued: i64 = sqlx::query("SELECT max(id) FROM tasks")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    conn.execute(
        "INSERT INTO tasks (kind, payload, priority, status, created_ms, updated_ms) \
                  SELECT 'echo', 'null', 5, 'succeeded', g, g FROM generate_series(1, 100000) g",
    )
    .await
    .unwrap();
    conn.execute("ANALYZE tasks").await.unwrap();
    // The candidate search of the service's claim statement (store/lease.rs),
    // for the largest batch a default replica claims (32 per worker × 4).
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN SELECT id FROM tasks WHERE status = 'queued' AND queue IN ('default') AND run_at_ms <= 9999999999999 \
         ORDER BY eff_priority DESC, queued_ms, id LIMIT 128 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<String, _>(0))
    .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("tasks_ready"),
        "the claim must use the partial index:\n{plan}"
    );
    assert!(!plan.contains("Sort"), "no sort of the queue on each claim:\n{plan}");

    // And workers drain that queue, each task exactly once. How fast is not
    // asserted: the plan above is what keeps a claim cheap, and a rate would
    // measure the machine as much as the claim.
    drop(server);
    let mut server = Server::start(
        "tasks-service",
        &args(&["--database-url", &url, "--db-schema-prefix", &prefix, "--workers", "2"]),
    )
    .await;
    server.wait_serving().await;
    const DRAINED: i64 = 50;
    let succeeded_sql = format!("SELECT count(*) FROM tasks WHERE id <= {last_queued} AND status = 'succeeded'");
    eventually(
        &format!("the workers run {DRAINED} of the queued tasks"),
        Duration::from_secs(120),
        async || {
            let ran: i64 = sqlx::query(&succeeded_sql).fetch_one(&mut conn).await.unwrap().get(0);
            if ran >= DRAINED {
                Ok(())
            } else {
                Err(format!("{ran} succeeded"))
            }
        },
    )
    .await;
    let status = server.terminate().await;
    assert!(status.success(), "tasks-service exited {status}:\n{}", server.logs());
    let row = sqlx::query(&format!(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), \
                count(*) FILTER (WHERE attempts > 1) \
         FROM tasks WHERE id <= {last_queued}"
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let (succeeded, repeated): (i64, i64) = (row.get(0), row.get(1));
    assert!(succeeded >= DRAINED, "only {succeeded} succeeded");
    assert_eq!(repeated, 0, "a drained task ran more than once");
    // The service's own log agrees: no task was started twice.
    let mut started: Vec<i64> = server
        .logs()
        .lines()
        .filter(|l| l.contains("task started"))
        .filter_map(|l| l.split("task=").nth(1)?.split([' ', '}']).next()?.parse().ok())
        .collect();
    let starts = started.len();
    started.sort_unstable();
    started.dedup();
    assert_eq!(started.len(), starts, "a task was started twice");
    assert!(
        starts as i64 >= succeeded,
        "{starts} starts for {succeeded} succeeded tasks"
    );
    eprintln!("drained {succeeded} of the 100,000 queued tasks, each exactly once (no rate asserted)");
    conn.close().await.unwrap();
}

/// On PostgreSQL a task queued through one replica wakes the idle workers of
/// another at once (LISTEN/NOTIFY), also when it becomes ready later (a
/// countdown): with polling slowed to ten minutes, the worker replica still
/// starts both long before its next poll.
#[tokio::test]
async fn a_task_queued_on_one_replica_wakes_another_replicas_idle_workers() {
    let Some(url) = postgres("notify_wakes_other_replicas").await else {
        return;
    };
    let schema = format!("{}_", unique("notify"));
    let _schemas = SchemaGuard::new(&url, [format!("{schema}tasks")]);
    let common = [
        "--database-url",
        &url,
        "--db-schema-prefix",
        &schema,
        "--poll-ms",
        "600000",
    ];
    // The front replica only serves the API; the worker replica only works.
    let front = replicas("tasks-service", 1, &args(&[&common[..], &["--workers", "0"]].concat())).await;
    let worker = replicas("tasks-service", 1, &args(&[&common[..], &["--workers", "2"]].concat())).await;
    let mut client = TaskServiceClient::new(front[0].channel());
    let submit = |countdown_ms: u64| SubmitTaskRequest {
        kind: "echo".into(),
        payload: Some(mesh_tests::proto::json::to_proto(json!("wake up"))),
        countdown: (countdown_ms > 0).then(|| prost_types::Duration {
            seconds: 0,
            nanos: (countdown_ms * 1_000_000) as i32,
        }),
        ..Default::default()
    };
    let now = client.submit_task(submit(0)).await.unwrap().into_inner().id;
    let later = client.submit_task(submit(500)).await.unwrap().into_inner().id;
    // WAIT (30 s) is far below the worker's 10-minute poll: only a
    // notification can have woken it.
    let done = wait_all(&client, &[now, later], WAIT).await;
    for t in done.values() {
        assert_eq!(t.status, TaskStatus::Succeeded as i32, "{t:?}");
    }
    eventually("the worker replica ran both", WAIT, async || {
        worker[0].logs().matches("task started").count() == 2
    })
    .await;
}

/// QueueStats costs what is queued and running, not the ended history: with
/// 100,000 ended rows its live query reads only the `tasks_live` partial
/// index (no scan of the tasks table), its ended counts come from the
/// trigger-kept `task_ends`, and the answer is exact.
#[tokio::test]
async fn queue_stats_stay_flat_with_100k_ended_tasks() {
    use sqlx::{Connection, Executor, Row};
    let Some(url) = postgres("stats_flat_with_100k_ended").await else {
        return;
    };
    let prefix = format!("{}_", unique("stats"));
    let schema = format!("{prefix}tasks");
    let _schemas = SchemaGuard::new(&url, [schema.clone()]);
    let server = Server::start(
        "tasks-service",
        &args(&["--database-url", &url, "--db-schema-prefix", &prefix, "--workers", "0"]),
    )
    .await;
    server.wait_serving().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    conn.execute(format!("SET search_path TO \"{schema}\"").as_str())
        .await
        .unwrap();
    // 100,000 ended (a third each succeeded, failed, cancelled), 300 queued
    // in two queues, 20 running.
    conn.execute(
        "INSERT INTO tasks (kind, payload, priority, status, created_ms, updated_ms) \
         SELECT 'echo', 'null', 5, (ARRAY['succeeded','failed','cancelled'])[g % 3 + 1], g, g \
         FROM generate_series(1, 100000) g",
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO tasks (kind, payload, priority, status, created_ms, updated_ms, queue) \
         SELECT 'echo', 'null', g % 10, 'queued', g, g, CASE WHEN g % 2 = 0 THEN 'default' ELSE 'io' END \
         FROM generate_series(1, 300) g",
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO tasks (kind, payload, priority, status, created_ms, updated_ms) \
         SELECT 'echo', 'null', 1, 'running', g, g FROM generate_series(1, 20) g",
    )
    .await
    .unwrap();
    // Rows leave and re-enter the ended states: a retry, a retention purge.
    conn.execute(
        "UPDATE tasks SET status = 'queued' WHERE id IN (SELECT id FROM tasks WHERE status = 'failed' LIMIT 10)",
    )
    .await
    .unwrap();
    conn.execute("DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE status = 'succeeded' LIMIT 100)")
        .await
        .unwrap();
    conn.execute("ANALYZE tasks").await.unwrap();

    // The service's live query (store/api.rs) never scans the tasks table.
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN SELECT status, priority, CASE WHEN run_at_ms > 0 THEN 1 ELSE 0 END AS later, \
                COUNT(*) AS n, MIN(queued_ms) AS oldest \
         FROM tasks WHERE status IN ('queued', 'running') AND (CAST(NULL AS TEXT) IS NULL OR queue = NULL) \
         GROUP BY status, priority, CASE WHEN run_at_ms > 0 THEN 1 ELSE 0 END",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<String, _>(0))
    .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("tasks_live"),
        "the live counts must read the partial index:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan on tasks"),
        "no scan of the whole table:\n{plan}"
    );

    // Exact: the service's answer is what counting every row says.
    let mut client = TaskServiceClient::new(server.channel());
    let stats = client
        .queue_stats(mesh_tests::proto::tasks::v1::QueueStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut real = Vec::new();
    for status in ["succeeded", "failed", "cancelled", "running", "queued"] {
        let sql = format!("SELECT count(*) FROM tasks WHERE status = '{status}'");
        let n: i64 = sqlx::query(&sql).fetch_one(&mut conn).await.unwrap().get(0);
        real.push(n as u64);
    }
    assert_eq!(
        (
            stats.succeeded,
            stats.failed,
            stats.cancelled,
            stats.running,
            stats.queued + stats.scheduled
        ),
        (real[0], real[1], real[2], real[3], real[4])
    );
    // 33,333 succeeded less the 100 purged; 33,334 failed less the 10 retried.
    assert_eq!((real[0], real[1], real[2]), (33_233, 33_324, 33_333));
    conn.close().await.unwrap();
}

/// Batched claims keep priorities across replicas: a priority-9 task queued
/// behind 10,000 priority-1 tasks that two replicas are draining starts
/// before every one of them except those already claimed into the
/// replicas' local queues (at most --claim-batch × --workers per replica).
#[tokio::test]
async fn a_priority_9_task_overtakes_10000_queued_ones_except_those_already_claimed() {
    use mesh_tests::proto::tasks::v1::{QueueStatsRequest, SubmitTasksRequest};
    use sqlx::{Connection, Executor, Row};
    let Some(url) = postgres("priority_across_local_queues").await else {
        return;
    };
    let prefix = format!("{}_", unique("overtake"));
    let schema = format!("{prefix}tasks");
    let _schemas = SchemaGuard::new(&url, [schema.clone()]);
    const CLAIM_BATCH: i64 = 8;
    const WORKERS: i64 = 2;
    const REPLICAS: i64 = 2;
    const QUEUED: usize = 10_000;
    // Aging off for the test's length: it is about the local queues.
    let common = [
        "--database-url",
        &url,
        "--db-schema-prefix",
        &prefix,
        "--aging-ms",
        "600000",
    ];
    let front = replicas("tasks-service", 1, &args(&[&common[..], &["--workers", "0"]].concat())).await;
    let mut client = TaskServiceClient::new(front[0].channel());
    let echo = |priority: i32| SubmitTaskRequest {
        kind: "echo".into(),
        payload: Some(mesh_tests::proto::json::to_proto(json!(priority))),
        priority,
        ..Default::default()
    };
    for _ in 0..QUEUED / 1000 {
        client
            .submit_tasks(SubmitTasksRequest {
                tasks: vec![echo(1); 1000],
            })
            .await
            .unwrap();
    }
    let (batch, workers) = (CLAIM_BATCH.to_string(), WORKERS.to_string());
    let worker_flags = args(&[&common[..], &["--workers", &workers, "--claim-batch", &batch]].concat());
    let workers = replicas("tasks-service", REPLICAS as usize, &worker_flags).await;
    let stats = |client: &TaskServiceClient<tonic::transport::Channel>| {
        let mut c = client.clone();
        async move { c.queue_stats(QueueStatsRequest::default()).await.unwrap().into_inner() }
    };
    eventually("the replicas are draining", Duration::from_secs(120), async || {
        let s = stats(&client).await;
        if s.succeeded >= 500 { Ok(()) } else { Err(s.succeeded) }
    })
    .await;
    // Freeze both replicas mid-drain, so what is claimed and what is queued
    // stands still: a claim sent before the freeze still commits, so wait
    // until two reads agree.
    for w in &workers {
        w.signal(nix::sys::signal::Signal::SIGSTOP);
    }
    let mut last = None;
    eventually("the frozen queue stands still", WAIT, async || {
        let s = stats(&client).await;
        let now = (s.queued, s.running, s.succeeded);
        let still = last == Some(now);
        last = Some(now);
        if still { Ok(()) } else { Err(now) }
    })
    .await;
    let urgent = client.submit_task(echo(9)).await.unwrap().into_inner();
    let queued = stats(&client).await.queued as i64;
    for w in &workers {
        w.signal(nix::sys::signal::Signal::SIGCONT);
    }
    wait_all(&client, &[urgent.id], Duration::from_secs(120)).await;
    eventually("the queue drains", Duration::from_secs(180), async || {
        let s = stats(&client).await;
        if s.queued == 0 && s.running == 0 {
            Ok(())
        } else {
            Err(s)
        }
    })
    .await;

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    conn.execute(format!("SET search_path TO \"{schema}\"").as_str())
        .await
        .unwrap();
    let row = sqlx::query("SELECT created_ms, started_ms, attempts, attempt_log FROM tasks WHERE id = $1")
        .bind(urgent.id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let (created, started, attempts, log): (i64, i64, i32, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(attempts, 1);
    let log: serde_json::Value = serde_json::from_str(&log).unwrap();
    let claimed = log[0]["claimed_ms"]
        .as_i64()
        .expect("the attempt log has the claim time");
    // Nothing started while the replicas were frozen, and the urgent task
    // was queued then. ahead: priority-1 tasks that started after that and
    // before its replica began the claim that took it: they had been claimed
    // before the freeze (the bound is strict: timestamps are milliseconds).
    // claimed_after: those whose claim began at or after its claim's: every
    // one still queued beside it, except what claims timestamped before its
    // claim but run after it took. How many such claims there are depends on
    // how the machine schedules the two replicas as they thaw (a busy one
    // let the other replica's two worker slots each claim a batch first), so
    // the bound is the doc's: what the replicas' local queues can hold.
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE started_ms > $1 AND started_ms < $3), \
                count(*) FILTER (WHERE CAST(CAST(attempt_log AS JSON)->0->>'claimed_ms' AS BIGINT) >= $3), \
                count(*) FILTER (WHERE started_ms > $2), \
                count(*) FILTER (WHERE attempts <> 1 OR status <> 'succeeded') \
         FROM tasks WHERE priority = 1",
    )
    .bind(created)
    .bind(started)
    .bind(claimed)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let (ahead, claimed_after, overtaken, repeated): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    conn.close().await.unwrap();
    let claimed_bound = CLAIM_BATCH * WORKERS * REPLICAS;
    let still_queued = queued - 1;
    eprintln!(
        "priority 9 claimed after {ahead} claimed priority-1 tasks started (bound {claimed_bound}); \
         {claimed_after} of the {still_queued} queued beside it were claimed after it; \
         {overtaken} started after it"
    );
    assert!(
        ahead <= claimed_bound,
        "{ahead} queued tasks started between its insert and its claim; at most {claimed_bound} were claimed"
    );
    assert!(
        claimed_after >= still_queued - claimed_bound,
        "only {claimed_after} of the {still_queued} tasks queued beside it were claimed after it"
    );
    assert_eq!(repeated, 0, "every task succeeded on its one attempt");
}

/// One replica's keeper looks after all its running tasks: a cancel asked
/// for through another replica stops a running task (the keeper's poll),
/// and a replica that was frozen past its lease learns at its next renewal
/// that another replica took the task over, and records nothing.
#[tokio::test]
async fn the_keeper_sees_cancels_from_other_replicas_and_lost_leases() {
    use mesh_tests::proto::tasks::v1::CancelTaskRequest;
    use nix::sys::signal::Signal;
    let Some(url) = postgres("keeper_cancels_and_lost_leases").await else {
        return;
    };
    let schema = format!("{}_", unique("keeper"));
    let _schemas = SchemaGuard::new(&url, [format!("{schema}tasks")]);
    let common = [
        "--database-url",
        &url,
        "--db-schema-prefix",
        &schema,
        "--lease-ms",
        "1000",
    ];
    let front = replicas("tasks-service", 1, &args(&[&common[..], &["--workers", "0"]].concat())).await;
    let mut client = TaskServiceClient::new(front[0].channel());
    let sleep = |ms: u64| SubmitTaskRequest {
        kind: "sleep".into(),
        payload: Some(mesh_tests::proto::json::to_proto(json!({ "ms": ms }))),
        ..Default::default()
    };
    let first = replicas("tasks-service", 1, &args(&[&common[..], &["--workers", "1"]].concat())).await;
    let running = |id: i64| format!("task={id} ");

    // A cancel through the front replica reaches the worker replica's task.
    let long = client.submit_task(sleep(60_000)).await.unwrap().into_inner().id;
    eventually("the worker replica starts the long task", WAIT, async || {
        first[0]
            .logs()
            .lines()
            .any(|l| l.contains(&running(long)) && l.contains("task started"))
    })
    .await;
    client.cancel_task(CancelTaskRequest { id: long }).await.unwrap();
    let done = wait_all(&client, &[long], WAIT).await.remove(&long).unwrap();
    assert_eq!(done.status, TaskStatus::Cancelled as i32, "{done:?}");

    // Frozen past its lease, the worker replica loses its task to another.
    let task = client.submit_task(sleep(3000)).await.unwrap().into_inner().id;
    eventually("the worker replica starts the task", WAIT, async || {
        first[0]
            .logs()
            .lines()
            .any(|l| l.contains(&running(task)) && l.contains("task started"))
    })
    .await;
    first[0].signal(Signal::SIGSTOP);
    let second = replicas("tasks-service", 1, &args(&[&common[..], &["--workers", "1"]].concat())).await;
    eventually("the second replica takes the task over", WAIT, async || {
        second[0]
            .logs()
            .lines()
            .any(|l| l.contains(&running(task)) && l.contains("task started"))
    })
    .await;
    first[0].signal(Signal::SIGCONT);
    // It learns at its next renewal, or (if the sleep ended first, on a slow
    // machine) when it tries to record the end.
    eventually("the first replica learns it lost the task", WAIT, async || {
        first[0]
            .logs()
            .lines()
            .any(|l| l.contains(&running(task)) && (l.contains("lease lost") || l.contains("its lease had been lost")))
    })
    .await;
    let done = wait_all(&client, &[task], WAIT).await.remove(&task).unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded as i32, "{done:?}");
    assert_eq!(
        done.attempts, 2,
        "the lost attempt, then the one that finished: {done:?}"
    );
    let finished = |s: &Server| {
        s.logs()
            .lines()
            .any(|l| l.contains(&running(task)) && l.contains("task finished"))
    };
    eventually("the second replica logs the end", WAIT, async || finished(&second[0])).await;
    assert!(!finished(&first[0]), "the replica that lost the task recorded an end");
}
