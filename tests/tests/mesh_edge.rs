//! The gateway as a mesh edge: a client should not notice when a replica
//! dies, hangs, slows down or drains, and an overload is refused quickly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mesh_tests::backends::{KeysGuard, redis, unique};
use mesh_tests::{Server, WAIT, args, eventually, gateway_flags};
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Timing-sensitive tests take this, so they do not compete with each other
/// for the machine's cores (the other tests in this file run alongside).
static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Items replicas sharing one SQLite file, and a gateway in front of them
/// (the other services are a single cache, tasks and counter).
struct Fleet {
    items: Vec<Server>,
    /// Cache, tasks and counter: kept so they live as long as the fleet.
    _others: Vec<Server>,
    gateway: Server,
    http: reqwest::Client,
    data: tempfile::TempDir,
}

impl Fleet {
    async fn start(replica_args: &[Vec<String>], gateway_args: &[&str]) -> Fleet {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().display().to_string();
        let mut items = Vec::new();
        for extra in replica_args {
            let s = Server::start("items-service", &[args(&["--data-dir", &dir]), extra.clone()].concat()).await;
            s.wait_serving().await;
            items.push(s);
        }
        let cache = Server::start("cache-service", &[]).await;
        let tasks = Server::start("tasks-service", &args(&["--data-dir", &dir])).await;
        let counter = Server::start("counter-service", &[]).await;
        let list: Vec<String> = items.iter().map(Server::url).collect();
        let mut gw = gateway_flags(list.join(","), cache.url(), tasks.url(), counter.url());
        gw.extend(args(gateway_args));
        let gateway = Server::start("gateway", &gw).await;
        let fleet = Fleet {
            items,
            _others: vec![cache, tasks, counter],
            gateway,
            http: reqwest::Client::new(),
            data,
        };
        fleet.wait_rotation(fleet.items.len()).await;
        fleet
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url())
    }

    /// The items replicas as the gateway's admin `/readyz` shows them (the
    /// public one has no per-replica detail).
    async fn items_replicas(&self) -> Vec<Value> {
        let ready: Value = self
            .http
            .get(format!("{}/readyz", self.gateway.admin_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ready["services"]["items"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `n` items replicas are in rotation.
    async fn wait_rotation(&self, n: usize) {
        eventually(&format!("{n} items replicas in rotation"), WAIT, async || {
            let replicas = self.items_replicas().await;
            let in_rotation = replicas
                .iter()
                .filter(|r| r["in_rotation"] == true && r["healthy"] == true)
                .count();
            if in_rotation == n { Ok(()) } else { Err(replicas) }
        })
        .await;
    }
}

/// How many ListItems calls a replica has served (from its per-call log).
fn list_calls(server: &Server) -> usize {
    server
        .logs()
        .lines()
        .filter(|l| l.contains("method=ListItems") && l.contains("rpc done"))
        .count()
}

/// `n` reads of `GET /items?page_size=2` from `clients` concurrent clients;
/// returns every status seen.
async fn reads(fleet: &Fleet, n: usize, clients: usize) -> Vec<StatusCode> {
    futures::stream::iter(0..n)
        .map(|_| {
            let http = fleet.http.clone();
            let url = fleet.at("/items?page_size=2");
            async move {
                http.get(url)
                    .send()
                    .await
                    .map(|r| r.status())
                    .unwrap_or(StatusCode::IM_A_TEAPOT)
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await
}

#[tokio::test]
async fn a_killed_replica_costs_no_reads_and_is_used_again_once_back() {
    let _serial = TIMING.lock().await;
    let fleet = Fleet::start(&[vec![], vec![], vec![]], &[]).await;
    let mut fleet = fleet;
    // Reads, 8 at a time, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load = {
        let http = fleet.http.clone();
        let url = fleet.at("/items?page_size=2");
        let (stop, answered) = (stop.clone(), answered.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let batch = futures::future::join_all((0..8).map(|_| async {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == StatusCode::OK => (StatusCode::OK, String::new()),
                        Ok(r) => (r.status(), r.text().await.unwrap_or_default()),
                        Err(e) => (StatusCode::IM_A_TEAPOT, e.to_string()),
                    }
                }))
                .await;
                statuses.extend(batch);
                answered.fetch_add(8, Ordering::Relaxed);
            }
            statuses
        })
    };
    // The victim is serving part of the load when it is killed.
    eventually("the replica to kill serves reads", WAIT, async || {
        list_calls(&fleet.items[1]) > 0
    })
    .await;
    let victim = fleet.items[1].addr;
    fleet.items[1].signal(Signal::SIGKILL);
    fleet.items[1].wait().await;
    // Plenty of reads after the kill, then stop.
    let after_kill = answered.load(Ordering::Relaxed);
    eventually("400 more reads answered after the kill", WAIT, async || {
        answered.load(Ordering::Relaxed) >= after_kill + 400
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let statuses = load.await.unwrap();
    let failed: Vec<_> = statuses.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    assert!(
        failed.is_empty(),
        "{} of {} reads failed around the kill: {failed:?}",
        failed.len(),
        statuses.len()
    );

    // Out of rotation (health checks every 500 ms; the bound is generous).
    eventually("the killed replica leaves the rotation", WAIT, async || {
        let replicas = fleet.items_replicas().await;
        let dead = replicas
            .iter()
            .find(|r| r["address"] == format!("http://{victim}"))
            .unwrap();
        if dead["in_rotation"] == false {
            Ok(())
        } else {
            Err(replicas)
        }
    })
    .await;

    // Restarted on its address, it gets traffic again.
    let dir = fleet.data.path().display().to_string();
    let back = Server::start_on("items-service", &args(&["--data-dir", &dir]), &victim.to_string()).await;
    fleet.items[1] = back;
    fleet.wait_rotation(3).await;
    let statuses = reads(&fleet, 300, 8).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    // Log lines are written by a background thread: poll for them.
    eventually("the restarted replica gets calls", WAIT, async || {
        list_calls(&fleet.items[1]) > 0
    })
    .await;
}

#[tokio::test]
async fn a_slow_replica_gets_a_clearly_smaller_share() {
    let _serial = TIMING.lock().await;
    let fleet = Fleet::start(&[vec![], args(&["--debug-delay-ms", "100"]), vec![]], &[]).await;
    let statuses = reads(&fleet, 600, 8).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    // Log lines are written by a background thread: wait for all 600.
    let calls = eventually("every call is logged", WAIT, async || {
        let calls: Vec<usize> = fleet.items.iter().map(list_calls).collect();
        if calls.iter().sum::<usize>() >= 600 {
            Ok(calls)
        } else {
            Err(calls)
        }
    })
    .await;
    let (fast, slow) = (calls[0].min(calls[2]), calls[1]);
    assert!(slow * 2 < fast, "slow replica share too large: {calls:?}");
}

#[tokio::test]
async fn a_not_serving_replica_receives_no_new_calls() {
    let fleet = Fleet::start(&[vec![], vec![]], &[]).await;
    fleet.items[1].signal(Signal::SIGUSR1); // maintenance: NOT_SERVING, still running
    eventually("the NOT_SERVING replica leaves the rotation", WAIT, async || {
        let replicas = fleet.items_replicas().await;
        if replicas
            .iter()
            .any(|r| r["healthy"] == false && r["in_rotation"] == false)
        {
            Ok(())
        } else {
            Err(replicas)
        }
    })
    .await;
    let before = list_calls(&fleet.items[1]);
    let statuses = reads(&fleet, 200, 8).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    // Log lines are written by a background thread: wait for all 200.
    eventually("the serving replica's 200 calls are logged", WAIT, async || {
        list_calls(&fleet.items[0]) >= 200
    })
    .await;
    assert_eq!(
        list_calls(&fleet.items[1]),
        before,
        "a NOT_SERVING replica was sent calls"
    );

    fleet.items[1].signal(Signal::SIGUSR2); // back in service
    fleet.wait_rotation(2).await;
}

#[tokio::test]
async fn two_hundred_concurrent_reads_of_a_cold_item_make_one_items_call() {
    let fleet = Fleet::start(&[vec![]], &[]).await;
    let created: Value = fleet
        .http
        .post(fleet.at("/items"))
        .json(&json!({"name": "hot"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = fleet.at(&format!("/items/{}", created["id"]));
    let statuses = futures::future::join_all((0..200).map(|_| fleet.http.get(&url).send())).await;
    assert!(statuses.into_iter().all(|r| r.unwrap().status() == StatusCode::OK));
    // Log lines are written by a background thread: wait for the first.
    let gets = || {
        fleet.items[0]
            .logs()
            .lines()
            .filter(|l| l.contains("method=GetItem") && l.contains("rpc done"))
            .count()
    };
    eventually("the items call is logged", WAIT, async || gets() > 0).await;
    assert_eq!(gets(), 1, "one items call for 200 concurrent cold reads");
}

#[tokio::test]
async fn a_passed_deadline_is_a_quick_504_and_the_service_abandons_the_work() {
    let _serial = TIMING.lock().await;
    // The replica would answer after 10 s; the route's deadline is 300 ms.
    const REPLICA_DELAY: Duration = Duration::from_secs(10);
    let fleet = Fleet::start(&[args(&["--debug-delay-ms", "10000"])], &["--route-timeout-ms", "300"]).await;
    let started = Instant::now();
    let r = fleet.http.get(fleet.at("/items?page_size=1")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "DEADLINE_EXCEEDED", "{body}");
    // An order, not a speed: the 504 came at the deadline, not when the
    // slow replica would have answered.
    assert!(
        took < REPLICA_DELAY,
        "504 after {took:?}: the gateway waited for the replica"
    );
    eprintln!("504 after {took:?} with a 300 ms route deadline (information only)");
    // The service drops the work itself, and says so.
    eventually("the replica abandons the call's work", WAIT, async || {
        if fleet.items[0]
            .logs()
            .contains("deadline passed: abandoned the call's work")
        {
            Ok(())
        } else {
            Err(fleet.items[0].logs())
        }
    })
    .await;
}

#[tokio::test]
async fn past_the_in_flight_cap_the_gateway_refuses_fast_and_recovers() {
    let _serial = TIMING.lock().await;
    // Each call the replica serves takes 3 s.
    let fleet = Fleet::start(&[args(&["--debug-delay-ms", "3000"])], &["--max-in-flight", "4"]).await;
    let timed = futures::future::join_all((0..40).map(|_| {
        let http = fleet.http.clone();
        let url = fleet.at("/items?page_size=1");
        async move {
            let started = Instant::now();
            let r = http.get(url).send().await.unwrap();
            (r.status(), r.headers().get("retry-after").is_some(), started.elapsed())
        }
    }))
    .await;
    let shed: Vec<_> = timed
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let served = timed.iter().filter(|(s, _, _)| *s == StatusCode::OK).count();
    assert!(served >= 4, "{timed:?}");
    assert!(shed.len() >= 30, "only {} of 40 shed: {timed:?}", shed.len());
    assert!(
        shed.iter().all(|(_, retry_after, _)| *retry_after),
        "503 without Retry-After"
    );
    // Refusals are the gateway's own and are not retried: the replica saw at
    // most the 4 calls let through (plus none from retries).
    let calls = list_calls(&fleet.items[0]);
    assert!(
        calls <= 8,
        "the replica got {calls} calls; refusals must not be retried"
    );
    // A refusal does not wait for a slot: every one is answered before any
    // served call (each of which takes the replica's 3 s) is. An order, not
    // a speed; the times are printed for information.
    let mut refusals: Vec<Duration> = shed.iter().map(|(_, _, d)| *d).collect();
    refusals.sort();
    let slowest_refusal = refusals[refusals.len() - 1];
    let first_served = timed
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::OK)
        .map(|(_, _, d)| *d)
        .min()
        .unwrap();
    assert!(
        slowest_refusal < first_served,
        "a refusal ({slowest_refusal:?}) waited as long as a served call ({first_served:?})"
    );
    eprintln!(
        "refusals: median {:?}, slowest {slowest_refusal:?}; first served call {first_served:?}",
        refusals[refusals.len() / 2]
    );
    // Load gone: served again.
    let r = fleet.http.get(fleet.at("/items?page_size=1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_request_id_reaches_the_services_log_line() {
    let fleet = Fleet::start(&[vec![]], &[]).await;
    let r = fleet
        .http
        .get(fleet.at("/items?page_size=1"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Log lines are written by a background thread: wait for them.
    let tagged = |server: &Server| {
        server
            .logs()
            .lines()
            .find(|l| l.contains("request_id=trace-me-42"))
            .map(str::to_owned)
    };
    let line = eventually("the items service logs the request id", WAIT, async || {
        tagged(&fleet.items[0])
    })
    .await;
    assert!(line.contains("method=ListItems"), "{line}");
    eventually("the gateway logs the request id", WAIT, async || tagged(&fleet.gateway)).await;
}

#[tokio::test]
async fn replicas_listed_in_a_file_are_picked_up_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let a = Server::start("items-service", &args(&["--data-dir", &dir])).await;
    let b = Server::start("items-service", &args(&["--data-dir", &dir])).await;
    let list = data.path().join("items.endpoints");
    std::fs::write(&list, format!("# items replicas\n{}\n", a.url())).unwrap();
    let others = [
        Server::start("cache-service", &[]).await,
        Server::start("counter-service", &[]).await,
    ];
    let gateway = Server::start(
        "gateway",
        &[
            gateway_flags(
                format!("@{}", list.display()),
                others[0].url(),
                others[0].url(),
                others[1].url(),
            ),
            args(&["--resolve-interval-ms", "200"]),
        ]
        .concat(),
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/items?page_size=1", gateway.url());
    for _ in 0..20 {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
    assert_eq!(list_calls(&b), 0);
    // Replace the file atomically, as an operator's tooling would.
    let next = data.path().join("items.endpoints.next");
    std::fs::write(&next, format!("{}\n{}\n", a.url(), b.url())).unwrap();
    std::fs::rename(&next, &list).unwrap();
    eventually("the replica added to the file gets calls", WAIT, async || {
        futures::future::join_all((0..4).map(|_| http.get(&url).send())).await;
        if list_calls(&b) > 0 {
            Ok(())
        } else {
            Err(gateway.logs())
        }
    })
    .await;
}

#[tokio::test]
async fn a_rolling_restart_of_every_counter_replica_loses_no_idempotent_increment() {
    let _serial = TIMING.lock().await;
    let Some(url) = redis("rolling_restart_of_counters").await else {
        return;
    };
    let prefix = format!("{}:", unique("rolling"));
    let _keys = KeysGuard::new(&url, &prefix);
    let counter_args = args(&["--redis-url", &url, "--redis-prefix", &prefix, "--drain-ms", "800"]);
    let mut counters = Vec::new();
    for _ in 0..3 {
        let s = Server::start("counter-service", &counter_args).await;
        s.wait_serving().await;
        counters.push(s);
    }
    let data = tempfile::tempdir().unwrap();
    let items = Server::start(
        "items-service",
        &args(&["--data-dir", &data.path().display().to_string()]),
    )
    .await;
    let list: Vec<String> = counters.iter().map(Server::url).collect();
    let gateway = Server::start(
        "gateway",
        &[
            gateway_flags(items.url(), items.url(), items.url(), list.join(",")),
            args(&["--health-interval-ms", "200"]),
        ]
        .concat(),
    )
    .await;
    let http = reqwest::Client::new();
    let inc = format!("{}/counters/rolling/increment", gateway.url());
    // Increments, each with its own idempotency key, 8 at a time, until told
    // to stop; `answered` counts the answers so far.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let stream = tokio::spawn({
        let http = http.clone();
        let (stop, answered) = (stop.clone(), answered.clone());
        async move {
            futures::stream::iter(0..)
                .take_while(move |_| std::future::ready(!stop.load(Ordering::Relaxed)))
                .map(|i| {
                    let http = http.clone();
                    let inc = inc.clone();
                    let answered = answered.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let r = http
                            .post(&inc)
                            .header("idempotency-key", format!("op-{i}"))
                            .send()
                            .await
                            .unwrap();
                        let answer = (r.status(), r.text().await.unwrap_or_default());
                        answered.fetch_add(1, Ordering::Relaxed);
                        answer
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
        }
    });
    // Restart each replica in turn, on its own address, while the stream
    // runs: before each restart, and after the last, the stream makes
    // progress (counted, not timed).
    let progress = async |what: String| {
        let from = answered.load(Ordering::Relaxed);
        eventually(&what, WAIT, async || answered.load(Ordering::Relaxed) >= from + 100).await;
    };
    for (n, replica) in counters.iter_mut().enumerate() {
        progress(format!("100 increments answered before restart {}", n + 1)).await;
        let addr = replica.addr.to_string();
        assert!(replica.terminate().await.success());
        let fresh = Server::start_on("counter-service", &counter_args, &addr).await;
        fresh.wait_serving().await;
        *replica = fresh;
    }
    progress("100 increments answered after the last restart".into()).await;
    stop.store(true, Ordering::Relaxed);
    let results = stream.await.unwrap();
    let sent = results.len();
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    assert!(
        failed.is_empty(),
        "{} increments failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let total: Value = http
        .get(format!("{}/counters/rolling", gateway.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        total["value"], sent as i64,
        "every one of the {sent} increments counted once"
    );
}

#[tokio::test]
async fn hedged_reads_cut_the_tail_that_stalling_replicas_cause() {
    let _serial = TIMING.lock().await;
    // Both replicas stall one call in five for 400 ms.
    let stall = args(&["--debug-delay-ms", "400", "--debug-delay-every", "5"]);
    let fleet = Fleet::start(&[stall.clone(), stall], &[]).await;
    let list: Vec<String> = fleet.items.iter().map(Server::url).collect();
    let hedged = Server::start(
        "gateway",
        &[
            gateway_flags(
                list.join(","),
                fleet._others[0].url(),
                fleet._others[1].url(),
                fleet._others[2].url(),
            ),
            args(&["--hedge-percentile", "70", "--hedge-ratio", "0.5"]),
        ]
        .concat(),
    )
    .await;
    /// Sequential reads through `gateway`; how many of the last 100 took at
    /// least the 400 ms a stall takes. (Not a speed threshold: an unhedged
    /// read that meets a stall cannot take less; a hedged one need not wait
    /// for it.)
    async fn slow_reads(http: &reqwest::Client, gateway: &Server) -> usize {
        let url = format!("{}/items?page_size=1", gateway.url());
        let mut slow = 0;
        for i in 0..140 {
            let started = Instant::now();
            assert_eq!(http.get(&url).send().await.unwrap().status(), StatusCode::OK);
            // The first 40 teach the hedger the usual latency.
            if i >= 40 && started.elapsed() >= Duration::from_millis(400) {
                slow += 1;
            }
        }
        slow
    }
    let plain = slow_reads(&fleet.http, &fleet.gateway).await;
    let with_hedging = slow_reads(&fleet.http, &hedged).await;
    assert!(
        plain >= 10,
        "the stalls did not show without hedging ({plain} slow reads)"
    );
    assert!(
        with_hedging * 4 <= plain,
        "hedging left {with_hedging} slow reads (vs {plain} without)"
    );
}
