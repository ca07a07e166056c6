//! Redis stops and comes back under traffic: the cache and counter services
//! fail fast with UNAVAILABLE while it is down, item reads bypass the cache,
//! and everything recovers by itself. Uses a redis-server of its own on a
//! spare port; the shared one is never touched.

use std::process::Stdio;
use std::time::{Duration, Instant};

use mesh_tests::proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_tests::{Server, args, eventually, gateway_flags, in_ci};
use serde_json::json;
use tokio::process::{Child, Command};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// While Redis is down, each failing call must answer within this.
const FAIL_FAST: Duration = Duration::from_millis(2500);
/// Health must notice an outage (or a recovery) within this.
const NOTICE: Duration = Duration::from_secs(10);

async fn start_redis(port: u16) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

async fn health(server: &Server) -> i32 {
    let mut c = HealthClient::new(server.channel());
    match c.check(HealthCheckRequest { service: String::new() }).await {
        Ok(r) => r.into_inner().status,
        Err(_) => -1,
    }
}

#[tokio::test]
async fn services_fail_fast_while_redis_is_down_and_recover_without_restart() {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !in_ci(),
            "redis-server is not installed; CI must run the Redis outage test"
        );
        eprintln!("SKIPPED redis outage test: no redis-server binary");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = start_redis(port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let cache = Server::start("cache-service", &args(&["--redis-url", &url])).await;
    let counter = Server::start("counter-service", &args(&["--redis-url", &url])).await;
    let items = Server::start("items-service", &args(&["--data-dir", &data])).await;
    let tasks = Server::start("tasks-service", &args(&["--data-dir", &data])).await;
    let gateway = Server::start(
        "gateway",
        &gateway_flags(items.url(), cache.url(), tasks.url(), counter.url()),
    )
    .await;
    let http = reqwest::Client::new();
    let at = |p: &str| format!("{}{p}", gateway.url());
    let r = http
        .post(at("/items"))
        .json(&json!({"name": "survivor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        http.get(at("/items/1")).send().await.unwrap().headers()["x-cache"],
        "miss"
    );
    assert_eq!(
        http.get(at("/items/1")).send().await.unwrap().headers()["x-cache"],
        "hit"
    );
    assert_eq!(
        http.post(at("/counters/c/increment")).send().await.unwrap().status(),
        200
    );

    // Redis goes away.
    redis.kill().await.unwrap();
    redis.wait().await.unwrap();
    for (what, request) in [
        ("cache read", http.get(at("/cache/k"))),
        ("cache write", http.put(at("/cache/k")).json(&json!({"value": "v"}))),
        ("counter", http.post(at("/counters/c/increment"))),
    ] {
        let started = Instant::now();
        let r = request.send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 503, "{what}");
        assert!(took < FAIL_FAST, "{what} took {took:?} to fail");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "UNAVAILABLE", "{what}: {body}");
    }
    let started = Instant::now();
    let r = http.get(at("/items/1")).send().await.unwrap();
    assert!(
        started.elapsed() < FAIL_FAST,
        "a cache outage must not stall item reads"
    );
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "bypass");
    eventually("cache-service reports NOT_SERVING", NOTICE, async || {
        health(&cache).await == 2
    })
    .await;
    eventually("counter-service reports NOT_SERVING", NOTICE, async || {
        health(&counter).await == 2
    })
    .await;

    // Redis comes back on the same port: everything recovers, no restarts.
    let _redis = start_redis(port).await;
    eventually("cache-service reports SERVING again", NOTICE, async || {
        health(&cache).await == 1
    })
    .await;
    eventually("counter-service reports SERVING again", NOTICE, async || {
        health(&counter).await == 1
    })
    .await;
    eventually("cache writes work again", NOTICE, async || {
        http.put(at("/cache/k"))
            .json(&json!({"value": "v"}))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let r = http.post(at("/counters/c/increment")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["value"], 1,
        "the restarted Redis kept nothing, and the counter starts over from it"
    );
    assert_eq!(
        http.get(at("/items/1")).send().await.unwrap().headers()["x-cache"],
        "miss"
    );
    assert_eq!(
        http.get(at("/items/1")).send().await.unwrap().headers()["x-cache"],
        "hit"
    );
    let mut direct = CacheServiceClient::new(cache.channel());
    let stats = direct
        .stats(mesh_tests::proto::cache::v1::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(stats.entries >= 2, "{stats:?}");
}

/// A Redis connection that stays open but never answers (a proxy that lost
/// its other half, a path that swallows packets) is replaced: the manager
/// of the `redis` crate reconnects only when a connection breaks, so the
/// service counts commands in a row without an answer and opens a new one.
/// The first connection through this proxy works, then goes silent (held
/// open, nothing forwarded); later ones reach the real Redis.
#[tokio::test]
async fn a_redis_connection_that_goes_silent_is_replaced_without_a_restart() {
    use mesh_tests::backends::{KeysGuard, redis, unique};
    use mesh_tests::proto::counter::v1::counter_service_client::CounterServiceClient;
    use mesh_tests::proto::counter::v1::{GetRequest, IncrementRequest};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let Some(url) = redis("silent_redis_connection").await else {
        return;
    };
    let target = {
        let parsed = reqwest::Url::parse(&url).unwrap();
        let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
        tokio::net::lookup_host((host.as_str(), parsed.port().unwrap_or(6379)))
            .await
            .unwrap()
            .next()
            .expect("redis address")
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let silence = Arc::new(tokio::sync::Notify::new());
    let proxying = tokio::spawn({
        let (accepted, silence) = (accepted.clone(), silence.clone());
        async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let n = accepted.fetch_add(1, Ordering::SeqCst);
                let silence = silence.clone();
                connections.spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    if n > 0 {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                    // The first connection works until told to go silent;
                    // from then on it reads and drops everything, answers
                    // nothing and never closes.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                        () = silence.notified() => {}
                    }
                    let _ = tokio::io::copy(&mut inbound, &mut tokio::io::sink()).await;
                    std::future::pending::<()>().await;
                });
            }
        }
    });
    let prefix = format!("{}:", unique("silent"));
    let _keys = KeysGuard::new(&url, &prefix);
    let counter = Server::start(
        "counter-service",
        &args(&["--redis-url", &format!("redis://{proxy}"), "--redis-prefix", &prefix]),
    )
    .await;
    let mut client = CounterServiceClient::new(counter.channel());
    // Every increment has a key of its own, and a refused one is sent again
    // under its key until answered: whether a refused call reached Redis or
    // not, each key counts once.
    let increment = |client: &mut CounterServiceClient<tonic::transport::Channel>, key: usize| {
        let mut client = client.clone();
        async move {
            client
                .increment(IncrementRequest {
                    name: "silent".into(),
                    delta: None,
                    idempotency_key: format!("k{key}"),
                })
                .await
        }
    };
    increment(&mut client, 0)
        .await
        .expect("answered on the first connection");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection so far");
    silence.notify_one();
    // Calls fail (UNAVAILABLE) while the first connection swallows them,
    // then succeed on a new one.
    let mut refused = Vec::new();
    let mut next = 1;
    eventually(
        "an increment succeeds on a new connection",
        mesh_tests::WAIT,
        async || {
            let key = next;
            next += 1;
            match increment(&mut client, key).await {
                Ok(_) => Ok(()),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    refused.push(key);
                    Err(format!("{status:?}"))
                }
            }
        },
    )
    .await;
    assert!(!refused.is_empty(), "the first connection swallowed calls");
    assert!(accepted.load(Ordering::SeqCst) >= 2, "a second connection was opened");
    eventually("the service logs the replacement", mesh_tests::WAIT, async || {
        counter
            .logs()
            .contains("the Redis connection stopped answering; opened a new one")
    })
    .await;
    // The refused keys again, and five more: each answered now.
    let keys: Vec<usize> = refused.iter().copied().chain(next..next + 5).collect();
    for key in &keys {
        increment(&mut client, *key)
            .await
            .expect("answered on the new connection");
    }
    let value = client
        .get(GetRequest { name: "silent".into() })
        .await
        .unwrap()
        .into_inner()
        .value;
    let distinct = 1 + (next - 1) + 5; // k0, k1..k(next-1), and five more
    assert_eq!(value, distinct as i64, "each key counted once");
    proxying.abort();
}
