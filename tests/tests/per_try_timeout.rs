//! Per-try timeouts: a replica that accepts calls and never answers costs a
//! read one per-try timeout, not the route's whole deadline; the attempt is
//! cut and retried on another replica.
//!
//! The hung replica is an items service whose health says SERVING (health
//! checks are never delayed) but which holds every call for 60 s
//! (`--debug-delay-ms`): the gateway's health checks cannot catch it, so
//! only the per-try timeout can keep reads off the 5 s route deadline, and
//! the cuts count as the replica's failures, so outlier detection ejects it.

use std::time::{Duration, Instant};

use futures::StreamExt;
use mesh_tests::proto::services;
use mesh_tests::{Server, WAIT, args, eventually, gateway_flags_with};
use reqwest::StatusCode;
use serde_json::Value;

/// How long the hung replica holds each call: "never", for these tests.
const HUNG_MS: &str = "60000";

/// Every read must be answered within this: far below the gateway's 5 s
/// route deadline (its default), which a read waiting on the hung replica
/// would run into (a 504), and farther below the 60 s the replica holds a
/// call. Not a speed threshold: a bound that only a cut attempt can meet.
const BOUND: Duration = Duration::from_secs(4);

/// What the gateway logs when it cuts an attempt.
const CUT: &str = "no answer within the per-try timeout";

/// What the gateway logs when outlier detection ejects a replica.
const EJECTED: &str = "replica failed repeatedly; ejected";

/// What a replica logs when its caller resets a call it was still working on.
const ABANDONED: &str = "caller went away: abandoned the call's work";

/// The tests here each run a small fleet; one at a time, so they do not
/// compete with each other for the machine's cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts an items replica on the shared data directory (`extra` flags
/// added) and waits until it reports SERVING.
async fn items_replica(data: &tempfile::TempDir, extra: &[&str]) -> Server {
    let dir = data.path().display().to_string();
    let server = Server::start("items-service", &[args(&["--data-dir", &dir]), args(extra)].concat()).await;
    server.wait_serving().await;
    server
}

/// A gateway whose `--items` is `items`; the other services are one cache
/// service (these tests only read items).
async fn gateway(items: &str, other: &Server, extra: &[&str]) -> Server {
    let flags = gateway_flags_with(|service| {
        if *service == services::ITEMS {
            items.to_string()
        } else {
            other.url()
        }
    });
    Server::start("gateway", &[flags, args(extra)].concat()).await
}

/// Waits until the gateway has `n` items replicas in rotation (admin `/readyz`).
async fn wait_rotation(http: &reqwest::Client, gateway: &Server, n: usize) {
    let url = format!("{}/readyz", gateway.admin_url());
    eventually(&format!("{n} items replicas in rotation"), WAIT, async || {
        let ready: Value = http
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let replicas = ready["services"]["items"]["replicas"].clone();
        let in_rotation = replicas
            .as_array()
            .map_or(0, |r| r.iter().filter(|r| r["in_rotation"] == true).count());
        if in_rotation == n {
            Ok(())
        } else {
            Err(replicas.to_string())
        }
    })
    .await;
}

/// `n` reads of `GET /items?page_size=2`, `clients` at a time: each one's
/// status and how long it took.
async fn timed_reads(
    http: &reqwest::Client,
    gateway: &Server,
    n: usize,
    clients: usize,
) -> Vec<(StatusCode, Duration)> {
    let url = format!("{}/items?page_size=2", gateway.url());
    futures::stream::iter(0..n)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let started = Instant::now();
                let status = http
                    .get(url)
                    .send()
                    .await
                    .map(|r| r.status())
                    .unwrap_or(StatusCode::IM_A_TEAPOT);
                (status, started.elapsed())
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await
}

/// Asserts every read succeeded within [`BOUND`], and prints their latencies
/// (for information: the test asserts no speed).
fn check_reads(what: &str, reads: &[(StatusCode, Duration)]) {
    let ok = reads.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(
        ok,
        reads.len(),
        "{what}: only {ok} of {} reads succeeded: {reads:?}",
        reads.len()
    );
    let mut latencies: Vec<Duration> = reads.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    eprintln!(
        "{what}: {} reads, all 200; latency min {:?}, median {:?}, max {:?}; all: {latencies:?}",
        latencies.len(),
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    let slowest = latencies[latencies.len() - 1];
    assert!(
        slowest < BOUND,
        "{what}: a read took {slowest:?}: it waited on the hung replica instead of being cut"
    );
}

/// Waits until the gateway has logged a cut attempt and the hung replica has
/// logged abandoning a call: the per-try timeout did the work (the hung
/// replica was sent reads, and they were answered by the other one).
async fn wait_cut(gateway: &Server, hung: &Server) {
    eventually("the gateway cuts an attempt at the per-try timeout", WAIT, async || {
        gateway.logs().contains(CUT)
    })
    .await;
    eventually("the hung replica abandons a cut call", WAIT, async || {
        hung.logs().contains(ABANDONED)
    })
    .await;
    // Cut attempts are the hung replica's failures: three in a row eject it
    // (`--eject-after`), and only it.
    let replica = format!("replica={}", hung.url());
    eventually("outlier detection ejects the hung replica", WAIT, async || {
        gateway
            .logs()
            .lines()
            .any(|line| line.contains(EJECTED) && line.contains(&replica))
    })
    .await;
    let others: Vec<String> = gateway
        .logs()
        .lines()
        .filter(|line| line.contains(EJECTED) && !line.contains(&replica))
        .map(str::to_owned)
        .collect();
    assert!(others.is_empty(), "another replica was ejected: {others:?}");
    // The cut attempts were repeated, and the gateway's metrics count them.
    let admin = gateway.admin.expect("the gateway's admin listener");
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let retried = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("mesh_upstream_retries_total{reason=\"per_try_timeout\",service=\"items\"} ")?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0);
    assert!(retried >= 1.0, "no per-try retry counted:\n{metrics}");
}

#[tokio::test]
async fn a_hung_replica_costs_a_read_its_per_try_timeout_not_the_deadline() {
    let _one = ONE_AT_A_TIME.lock().await;
    let data = tempfile::tempdir().unwrap();
    let normal = items_replica(&data, &[]).await;
    let hung = items_replica(&data, &["--debug-delay-ms", HUNG_MS]).await;
    let cache = Server::start("cache-service", &[]).await;
    let list = format!("{},{}", normal.url(), hung.url());
    let gateway = gateway(&list, &cache, &["--per-try-timeout-ms", "300"]).await;
    let http = reqwest::Client::new();
    // Both in rotation: the hung replica passes its health checks.
    wait_rotation(&http, &gateway, 2).await;

    let reads = timed_reads(&http, &gateway, 40, 4).await;
    check_reads("--per-try-timeout-ms 300", &reads);
    wait_cut(&gateway, &hung).await;
}

#[tokio::test]
async fn unset_the_per_try_timeout_follows_the_latency_measured() {
    let _one = ONE_AT_A_TIME.lock().await;
    let data = tempfile::tempdir().unwrap();
    let normal = items_replica(&data, &[]).await;
    let cache = Server::start("cache-service", &[]).await;
    // The replicas are listed in a file, so that the hung one can join after
    // the gateway has measured the service's usual latency.
    let endpoints = data.path().join("items.endpoints");
    std::fs::write(&endpoints, format!("{}\n", normal.url())).unwrap();
    let gateway = gateway(
        &format!("@{}", endpoints.display()),
        &cache,
        &["--resolve-interval-ms", "200"],
    )
    .await;
    let http = reqwest::Client::new();
    wait_rotation(&http, &gateway, 1).await;
    // Enough answers for a p99 (the gateway needs 32).
    let warm_up = timed_reads(&http, &gateway, 64, 1).await;
    assert!(warm_up.iter().all(|(s, _)| *s == StatusCode::OK), "{warm_up:?}");

    let hung = items_replica(&data, &["--debug-delay-ms", HUNG_MS]).await;
    let next = data.path().join("items.endpoints.next");
    std::fs::write(&next, format!("{}\n{}\n", normal.url(), hung.url())).unwrap();
    std::fs::rename(&next, &endpoints).unwrap();
    wait_rotation(&http, &gateway, 2).await;

    // Several at a time: the balancer may pick the hung replica again for a
    // retry until its cuts have ejected it.
    let reads = timed_reads(&http, &gateway, 40, 4).await;
    check_reads("derived per-try timeout", &reads);
    wait_cut(&gateway, &hung).await;
}
