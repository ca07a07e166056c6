//! Rate limits at the gateway (issue: security): two gateways share one
//! limit through Redis, so a flood through both is admitted at the limit's
//! rate, not twice it; refusals are 429 with `Retry-After` and the IETF
//! draft's `RateLimit` headers; with Redis unreachable each gateway still
//! limits on its own (fail open to the local limit, never closed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mesh_tests::backends::{KeysGuard, redis, unique};
use mesh_tests::{Server, WAIT, args, eventually, gateway_flags_with};

/// The shared limit: N a second, with a burst of B.
const N: u64 = 40;
const B: u64 = 10;
/// How long the flood lasts, and how many clients send it (each request
/// answered before the client sends its next: a bounded load).
const FLOOD: Duration = Duration::from_secs(5);
const CLIENTS: usize = 16;

async fn gateway(extra: &[String]) -> Server {
    // No service is called: /test is the gateway's own, anonymous route.
    let mut flags = gateway_flags_with(|_| "http://127.0.0.1:9".into());
    flags.extend(extra.iter().cloned());
    Server::start("gateway", &flags).await
}

#[tokio::test]
async fn two_gateways_share_one_limit_through_redis() {
    let Some(url) = redis("two_gateways_share_one_limit_through_redis").await else {
        return;
    };
    let prefix = format!("{}:", unique("ratelimit"));
    let _keys = KeysGuard::new(&url, &prefix);
    let flags = args(&[
        "--rate-limit",
        &format!("anonymous={N}/s:{B}"),
        "--redis-url",
        &url,
        "--redis-prefix",
        &prefix,
    ]);
    let gateways = [gateway(&flags).await, gateway(&flags).await];
    let urls: Arc<Vec<String>> = Arc::new(gateways.iter().map(|g| format!("{}/test", g.url())).collect());

    let http = reqwest::Client::new();
    let (admitted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (http, urls, admitted, refused) = (http.clone(), urls.clone(), admitted.clone(), refused.clone());
        clients.spawn(async move {
            let mut n = c;
            while started.elapsed() < FLOOD {
                let response = http.get(&urls[n % 2]).send().await.expect("the gateway answers");
                n += 1;
                match response.status().as_u16() {
                    200 => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {
                        let headers = response.headers();
                        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                        assert!(retry >= 1, "Retry-After {retry}");
                        assert_eq!(headers["ratelimit-policy"], format!("\"anonymous\";q={N};w=1").as_str());
                        let left = headers["ratelimit"].to_str().unwrap();
                        assert!(left.starts_with("\"anonymous\";r=0;t="), "{left}");
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("unexpected {other}: {}", response.text().await.unwrap_or_default()),
                }
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (admitted, refused) = (admitted.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    let bound = N as f64 * elapsed + B as f64;
    eprintln!("admitted {admitted}, refused {refused} in {elapsed:.2} s; the limit allows {bound:.0}");
    assert!(refused > 0, "the flood was never refused: it did not reach the limit");
    assert!(
        admitted as f64 <= bound,
        "admitted {admitted} > N·T + burst = {bound:.0}"
    );
    assert!(
        admitted as f64 >= bound / 2.0,
        "admitted {admitted} < half of {bound:.0}"
    );
    for g in &gateways {
        assert!(
            !g.logs().contains("Redis does not answer"),
            "a gateway fell back to its local limit:\n{}",
            g.logs()
        );
    }
}

#[tokio::test]
async fn without_redis_each_gateway_still_limits_on_its_own() {
    // A port nothing listens on: taken, then released.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let gateway = gateway(&args(&[
        "--rate-limit",
        "anonymous=1/s:3",
        "--redis-url",
        &format!("redis://{dead}"),
    ]))
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/test", gateway.url());
    // Within one second at most 1 + 3 requests pass; sending 20 back to back
    // must meet a refusal, and every answer is 200 or 429, never a 5xx.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(http.get(&url).send().await.unwrap().status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses.contains(&429), "the local limit applied: {statuses:?}");
    eventually("the fallback is logged", WAIT, async || {
        gateway.logs().contains("Redis does not answer")
    })
    .await;
}
