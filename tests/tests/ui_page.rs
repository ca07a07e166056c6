//! The live mesh page (`GET /ui` on the gateway's admin listener), in a
//! real browser: headless Chromium loads it from a real gateway in front of
//! real services, live numbers arrive over server-sent events, one of two
//! items replicas is killed, and the page (never reloaded) shows it
//! unhealthy within a deadline; then a screenshot is saved, and the page is
//! checked to have asked for nothing outside its own origin.
//!
//! Chromium is driven over the DevTools protocol by `tests/ui/drive.mjs`,
//! with Node's own WebSocket: no npm package and no browser download.
//! Without chromium or node the test is skipped, except in CI, where it
//! fails. `MESH_UI_SCREENSHOT=PATH` keeps the screenshot (the README's).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mesh_tests::{CHROMIUM_FLAGS, ProcessGroupGuard, Server, args, chromium, gateway_flags, in_ci};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Node with its own WebSocket (20.10 and later, behind a flag before 22).
fn node() -> bool {
    let found = std::process::Command::new("node")
        .args([
            "--experimental-websocket",
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !in_ci(),
            "node (20.10 or later) is not installed, and CI must run this test"
        );
        eprintln!("SKIPPED: no node with a WebSocket (20.10 or later)");
    }
    found
}

#[tokio::test]
async fn the_live_page_follows_a_replica_that_dies_in_a_real_browser() {
    let Some(browser) = chromium() else { return };
    if !node() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let items_a = Server::start("items-service", &args(&["--data-dir", &dir])).await;
    let mut items_b = Server::start("items-service", &args(&["--data-dir", &dir])).await;
    let cache = Server::start("cache-service", &[]).await;
    let tasks = Server::start("tasks-service", &args(&["--data-dir", &dir])).await;
    let counter = Server::start("counter-service", &[]).await;
    for s in [&items_a, &items_b, &cache, &tasks, &counter] {
        s.wait_serving().await;
    }
    let both = format!("{},{}", items_a.url(), items_b.url());
    let mut flags = gateway_flags(&both, cache.url(), tasks.url(), counter.url());
    flags.extend(args(&["--health-interval-ms", "100"]));
    let gateway = Server::start("gateway", &flags).await;
    let admin = gateway.admin.expect("the gateway announced its admin listener");
    let page = format!("http://{admin}/ui");

    // Traffic for the routes table and the counter, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, base) = (stop.clone(), gateway.url());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let item: serde_json::Value = http
                .post(format!("{base}/items"))
                .json(&serde_json::json!({"name": "pen", "price_cents": 150}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let item = format!("{base}/items/{}", item["id"]);
            for i in 0..3000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = match i % 10 {
                    0 | 5 => http.get(format!("{base}/increment")).send().await,
                    1..=3 => http.get(&item).send().await,
                    // Some queued work, at a few priorities.
                    4 => {
                        let task = serde_json::json!({"kind": "sleep", "payload": {"ms": 300}, "priority": i % 3 * 4});
                        http.post(format!("{base}/tasks")).json(&task).send().await
                    }
                    _ => http.get(format!("{base}/items?page_size=1")).send().await,
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut chrome = Command::new(&browser);
    chrome
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", data.path().join("profile").display()))
        .arg("--remote-debugging-port=0")
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut chrome = chrome.spawn().expect("start chromium");
    let _group = ProcessGroupGuard::new(chrome.id().expect("chromium's pid"));
    let mut stderr = BufReader::new(chrome.stderr.take().unwrap()).lines();
    let ws = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_string();
            }
        }
        panic!("chromium ended without a DevTools address");
    })
    .await
    .expect("chromium's DevTools address within 60 s");
    // Keep reading its stderr so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

    let shot = data.path().join("ui.png");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/drive.mjs");
    let replica = items_b.url();
    let mut driver = Command::new("node")
        .arg("--no-warnings")
        .arg("--experimental-websocket")
        .arg(&script)
        .args([&ws, &page, &replica])
        .arg(&shot)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut said = BufReader::new(driver.stdout.take().unwrap()).lines();
    let mut steps = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(150), async {
        while let Ok(Some(line)) = said.next_line().await {
            if line == "LIVE" {
                // The page shows live numbers: now one replica dies.
                items_b.kill().await;
            }
            steps.push(line);
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;
    let out = driver.wait_with_output().await.expect("node's output");
    assert!(
        read.is_ok(),
        "the driver did not finish within 150 s; it said {steps:?}"
    );
    assert!(
        out.status.success(),
        "the driver failed after {steps:?}:\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gateway.logs()
    );
    assert_eq!(steps, ["LIVE", "UNHEALTHY", "DONE"]);
    let png = std::fs::read(&shot).expect("the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert!(
        png.len() > 10_000,
        "a suspiciously small screenshot: {} bytes",
        png.len()
    );
    if let Some(keep) = std::env::var_os("MESH_UI_SCREENSHOT") {
        std::fs::copy(&shot, &keep).expect("copy the screenshot");
    }
    let _ = chrome.start_kill();
}
