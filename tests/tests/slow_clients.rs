//! Slow and idle clients cannot hold the gateway's connections: a head that
//! trickles in, a body that never completes, an idle keep-alive connection
//! and a connection that never says anything are all closed; the connection
//! cap makes new clients wait, not fail; and a response still in progress is
//! never cut by the idle timeout.
//!
//! These talk raw HTTP/1.1 over TCP, because an HTTP client would not
//! misbehave on purpose. The gateway needs no services for them (its service
//! endpoints are a closed port), except the last test.

use std::time::{Duration, Instant};

use mesh_tests::{Mesh, MeshOptions, Server, WAIT, args, gateway_flags};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway with small timeouts (ms) and services nowhere.
async fn gateway(header_ms: u64, body_ms: u64, idle_ms: u64, extra: &[&str]) -> Server {
    let nowhere = "http://127.0.0.1:1";
    let mut flags = gateway_flags(nowhere, nowhere, nowhere, nowhere);
    flags.extend(args(&[
        "--header-read-timeout-ms",
        &header_ms.to_string(),
        "--body-read-timeout-ms",
        &body_ms.to_string(),
        "--idle-timeout-ms",
        &idle_ms.to_string(),
    ]));
    flags.extend(args(extra));
    Server::start("gateway", &flags).await
}

/// Reads until the server closes the connection (0 bytes, or an error such
/// as a reset) and returns everything it sent; panics past `WAIT`.
async fn read_until_closed(conn: &mut TcpStream, what: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "{what}: the connection was still open after {WAIT:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

/// Reads one complete response (head and a Content-Length body) and returns
/// (status, body).
async fn read_response(conn: &mut TcpStream) -> (u16, String) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("a Content-Length");
            if body.len() >= length {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("a status line");
                return (status, body[..length].to_string());
            }
        }
        let n = tokio::time::timeout_at(deadline, conn.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before a whole response: {text:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.addr).await.expect("connect")
}

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off() {
    let gw = gateway(1000, 1000, 1500, &[]).await;
    let mut conn = connect(&gw).await;
    conn.write_all(b"GET /test HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // A header line that would take 10,000 x 200 ms to finish.
    let trickle = format!("X-Slow: {}\r\n\r\n", "a".repeat(10_000));
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            read = conn.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // an error response; the close follows
            },
            _ = pace.tick() => {
                if conn.write_all(&trickle.as_bytes()[sent..sent + 1]).await.is_err() {
                    break;
                }
                sent += 1;
            }
            () = tokio::time::sleep_until(deadline) => panic!("still open after {sent} bytes"),
        }
    }
    assert!(sent < trickle.len(), "the whole head went through");
}

#[tokio::test]
async fn a_body_that_stops_coming_gets_408_and_the_connection_closed() {
    let gw = gateway(1000, 1000, 1500, &[]).await;
    let mut conn = connect(&gw).await;
    // 9 of the 100 bytes promised, then nothing.
    conn.write_all(
        b"POST /items HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"name\":",
    )
    .await
    .unwrap();
    let (status, body) = read_response(&mut conn).await;
    assert_eq!(status, 408, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(body["error"]["code"], "DEADLINE_EXCEEDED", "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| m.contains("body")),
        "{body}"
    );
    read_until_closed(&mut conn, "after the 408").await;
}

#[tokio::test]
async fn a_body_trickling_in_does_not_extend_its_deadline() {
    let gw = gateway(1000, 1000, 1500, &[]).await;
    let mut conn = connect(&gw).await;
    conn.write_all(b"POST /items HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n")
        .await
        .unwrap();
    // One byte every 200 ms: each read waits far less than the deadline, the
    // whole body would take 20 s.
    let (mut read, mut write) = conn.into_split();
    let writer = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(200));
        for _ in 0..100 {
            pace.tick().await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer while the body trickled in"),
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let gw = gateway(1000, 1000, 1500, &[]).await;
    let mut conn = connect(&gw).await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_response(&mut conn).await;
    assert_eq!(status, 200, "{body}");
    let idle_since = Instant::now();
    let rest = read_until_closed(&mut conn, "an idle keep-alive connection").await;
    assert_eq!(rest, "", "nothing more was asked");
    // Timers do not fire early: it was kept for a while first.
    assert!(idle_since.elapsed() >= Duration::from_millis(500));

    // A new connection is served as usual.
    let mut fresh = connect(&gw).await;
    fresh
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut fresh).await.0, 200);
}

/// With a long head timeout, the idle timeout alone closes connections: one
/// idle after a request, and one that never sent a byte.
#[tokio::test]
async fn the_idle_timeout_closes_quiet_connections_on_its_own() {
    let gw = gateway(60_000, 60_000, 1000, &[]).await;
    let mut silent = connect(&gw).await;
    let mut used = connect(&gw).await;
    used.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut used).await.0, 200);
    let (a, b) = tokio::join!(
        read_until_closed(&mut silent, "a connection that never sent a byte"),
        read_until_closed(&mut used, "an idle keep-alive connection"),
    );
    assert_eq!((a.as_str(), b.as_str()), ("", ""));
}

/// Past --max-connections the gateway accepts no more until one closes; the
/// waiting client is then served.
#[tokio::test]
async fn past_the_connection_cap_new_clients_wait_for_a_slot() {
    let gw = gateway(60_000, 60_000, 60_000, &["--max-connections", "2"]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = connect(&gw).await;
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut conn).await.0, 200);
        held.push(conn); // kept alive, holding a slot
    }
    let mut waiting = connect(&gw).await; // the kernel's backlog takes it
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "served past the cap: {early:?}");
    drop(held.pop());
    assert_eq!(read_response(&mut waiting).await.0, 200);
}

/// A response in progress (here a 2.5 s blocking task) is in flight: the idle
/// timeout (1 s) does not cut it.
#[tokio::test]
async fn a_slow_response_outlives_the_idle_timeout() {
    let mesh = Mesh::start_with(MeshOptions {
        gateway_args: args(&["--idle-timeout-ms", "1000", "--header-read-timeout-ms", "1000"]),
        ..MeshOptions::default()
    })
    .await;
    let r = mesh
        .http
        .get(mesh.at("/run-blocking-task?ms=2500"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["result"], "Task complete!", "{body}");
}
