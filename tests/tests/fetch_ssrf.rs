//! The `fetch` task kind is not an SSRF hole: with no `--fetch-allow` it is
//! off, and with one it reaches only what the list allows, whatever the
//! spelling of the address, after DNS, and on every redirect hop. Every
//! target here is a loopback test server of this test (nothing connects to a
//! non-loopback address; 169.254.169.254 is refused before any connect).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_tests::proto::json::{from_proto, to_proto};
use mesh_tests::proto::tasks::v1::task_service_client::TaskServiceClient;
use mesh_tests::proto::tasks::v1::*;
use mesh_tests::{Server, args, eventually};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

type Client = TaskServiceClient<Channel>;

const SECRET: &str = "s3cret-pw";
const LIMIT: Duration = Duration::from_secs(30);

/// A tiny HTTP/1.1 server on loopback that counts every connection and
/// records each request's path and `Host` header.
struct TestHttp {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<(String, String)>>>,
}

impl TestHttp {
    /// `name` goes into every JSON answer; `redirects` maps a path to the
    /// `Location` it answers 302 with.
    async fn start(
        bind: &str,
        name: &'static str,
        redirects: Vec<(&'static str, String)>,
    ) -> std::io::Result<TestHttp> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), requests.clone());
        let redirects = Arc::new(redirects);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (seen, redirects) = (seen.clone(), redirects.clone());
                tokio::spawn(async move {
                    let Some((path, host)) = read_head(&mut socket).await else {
                        return;
                    };
                    seen.lock().unwrap().push((path.clone(), host));
                    let answer = match redirects.iter().find(|(p, _)| *p == path) {
                        Some((_, location)) => format!(
                            "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        ),
                        None => {
                            let body = json!({"server": name, "path": path}).to_string();
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        }
                    };
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Ok(TestHttp {
            addr,
            connections,
            requests,
        })
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().unwrap().clone()
    }
}

/// The request line's path and the `Host` header of one request.
async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let host = lines
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("host").then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    Some((path, host))
}

async fn tasks_service(dir: &tempfile::TempDir, extra: &[&str]) -> (Server, Client) {
    let mut a = args(&["--data-dir", &dir.path().display().to_string()]);
    a.extend(args(extra));
    let server = Server::start("tasks-service", &a).await;
    server.wait_serving().await;
    let client = TaskServiceClient::new(server.channel());
    (server, client)
}

fn fetch(url: &str) -> SubmitTaskRequest {
    SubmitTaskRequest {
        kind: "fetch".into(),
        payload: Some(to_proto(json!({ "url": url }))),
        max_attempts: 1,
        ..Default::default()
    }
}

async fn ended(c: &mut Client, id: i64) -> Task {
    eventually(&format!("task {id} ends"), LIMIT, async || {
        let t = c.get_task(GetTaskRequest { id }).await.unwrap().into_inner();
        (t.status >= TaskStatus::Succeeded as i32).then_some(t)
    })
    .await
}

/// Runs a fetch to its end and returns its result body.
async fn fetched(c: &mut Client, url: &str) -> Value {
    let t = c.submit_task(fetch(url)).await.unwrap().into_inner();
    let done = ended(c, t.id).await;
    assert_eq!(done.status, TaskStatus::Succeeded as i32, "{url}: {done:?}");
    let result = from_proto(done.result.expect("a result"));
    assert_eq!(result["status"], 200, "{result}");
    result["body"].clone()
}

/// A fetch refused at submit (INVALID_ARGUMENT naming `payload`), or one that
/// ends FAILED with no result: the message either way.
async fn refused(c: &mut Client, url: &str) -> String {
    match c.submit_task(fetch(url)).await {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{url}: {status:?}");
            assert!(status.message().starts_with("payload"), "{url}: {status:?}");
            status.message().to_string()
        }
        Ok(t) => {
            let done = ended(c, t.into_inner().id).await;
            assert_eq!(done.status, TaskStatus::Failed as i32, "{url}: {done:?}");
            assert!(done.result.is_none(), "{url}: {done:?}");
            done.error
        }
    }
}

#[tokio::test]
async fn without_fetch_allow_every_fetch_is_refused_at_submit() {
    let target = TestHttp::start("127.0.0.1:0", "target", vec![]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = tasks_service(&dir, &[]).await;
    for url in [
        format!("http://127.0.0.1:{}/", target.port()),
        "http://example.com/".to_string(),
        "http://10.0.0.1:8080/".to_string(),
    ] {
        let status = c.submit_task(fetch(&url)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("fetch is disabled"), "{status:?}");
        assert!(status.message().contains("--fetch-allow"), "{status:?}");
    }
    // Other kinds are unaffected.
    let t = c
        .submit_task(SubmitTaskRequest {
            kind: "echo".into(),
            payload: Some(to_proto(json!(1))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended(&mut c, t.id).await.status, TaskStatus::Succeeded as i32);
    assert_eq!(target.connections(), 0);
    assert!(server.logs().contains("fetch tasks are disabled"), "{}", server.logs());
}

#[tokio::test]
async fn an_allow_list_admits_its_destination_and_nothing_else() {
    let other = TestHttp::start("127.0.0.1:0", "other", vec![]).await.unwrap();
    let o = other.port();
    let allowed = TestHttp::start(
        "127.0.0.1:0",
        "allowed",
        vec![
            ("/to-other", format!("http://127.0.0.1:{o}/")),
            ("/to-other-by-name", format!("http://localhost:{o}/")),
            ("/to-metadata", "http://169.254.169.254/latest/meta-data/".to_string()),
            ("/with-credentials", format!("http://user:{SECRET}@127.0.0.1:{o}/")),
            ("/hop", "/landed?x=1".to_string()),
            ("/loop", "/loop".to_string()),
        ],
    )
    .await
    .unwrap();
    let a = allowed.port();
    let dir = tempfile::tempdir().unwrap();
    let allow = format!("127.0.0.1:{a}");
    let (server, mut c) = tasks_service(&dir, &["--fetch-allow", &allow]).await;

    // The allowed destination works, and gets the Host header of the URL.
    let body = fetched(&mut c, &format!("http://127.0.0.1:{a}/data")).await;
    assert_eq!(body, json!({"server": "allowed", "path": "/data"}));
    // A name that resolves to it works too (checked after resolution).
    let body = fetched(&mut c, &format!("http://localhost:{a}/by-name")).await;
    assert_eq!(body["path"], "/by-name");
    // A redirect within the allowed destination is followed.
    let body = fetched(&mut c, &format!("http://127.0.0.1:{a}/hop")).await;
    assert_eq!(body["path"], "/landed?x=1");
    let requests = allowed.requests();
    assert!(
        requests.contains(&("/data".into(), format!("127.0.0.1:{a}"))),
        "{requests:?}"
    );
    assert!(
        requests.contains(&("/by-name".into(), format!("localhost:{a}"))),
        "{requests:?}"
    );

    // Every other spelling of a local address is refused.
    for url in [
        format!("http://localhost:{o}/"),
        format!("http://127.0.0.1:{o}/"),
        format!("http://0.0.0.0:{o}/"),
        format!("http://2130706433:{o}/"),
        format!("http://0x7f.1:{o}/"),
        format!("http://[::1]:{o}/"),
        format!("http://[::ffff:127.0.0.1]:{o}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://[fe80::1]:{o}/"),
    ] {
        let err = refused(&mut c, &url).await;
        assert!(err.contains("not allowed"), "{url}: {err}");
        assert!(err.contains("--fetch-allow"), "{url}: {err}");
    }
    // Credentials are refused, even to the allowed destination, and never repeated.
    for url in [
        format!("http://user:{SECRET}@127.0.0.1:{a}/"),
        format!("http://{SECRET}@127.0.0.1:{a}/"),
    ] {
        let err = refused(&mut c, &url).await;
        assert!(err.contains("credentials"), "{err}");
        assert!(!err.contains(SECRET), "{err}");
    }

    // Redirects out of the list fail the task at the hop that leaves it.
    let before = allowed.connections();
    for path in ["/to-other", "/to-other-by-name", "/to-metadata"] {
        let err = refused(&mut c, &format!("http://127.0.0.1:{a}{path}")).await;
        assert!(
            err.contains("after 1 redirect(s)") && err.contains("not allowed"),
            "{path}: {err}"
        );
    }
    let err = refused(&mut c, &format!("http://127.0.0.1:{a}/with-credentials")).await;
    assert!(err.contains("credentials") && !err.contains(SECRET), "{err}");
    let err = refused(&mut c, &format!("http://127.0.0.1:{a}/loop")).await;
    assert!(err.contains("too many redirects"), "{err}");
    assert!(allowed.connections() > before, "the redirecting server was asked");

    assert_eq!(other.connections(), 0, "the server not allowed was reached");
    let logs = server.logs();
    assert!(!logs.contains(SECRET), "{logs}");
    // Nothing the service keeps repeats the secret either.
    let all = c.list_tasks(ListTasksRequest::default()).await.unwrap().into_inner();
    assert!(!format!("{all:?}").contains(SECRET), "{all:?}");
}

#[tokio::test]
async fn a_name_is_checked_against_the_addresses_it_resolves_to() {
    // Port O is allowed for ::1 only; `localhost` passes the submit check
    // (loopback is allowed on O) but resolves (at least) to 127.0.0.1,
    // which is not allowed on O: nothing may reach 127.0.0.1:O.
    let other = TestHttp::start("127.0.0.1:0", "other", vec![]).await.unwrap();
    let o = other.port();
    // Our own server on [::1]:O where IPv6 loopback exists, so whatever
    // answers there is ours.
    let v6 = TestHttp::start(&format!("[::1]:{o}"), "v6", vec![]).await.ok();
    let dir = tempfile::tempdir().unwrap();
    let allow = format!("[::1]:{o}");
    let (_server, mut c) = tasks_service(&dir, &["--fetch-allow", &allow]).await;
    let t = c
        .submit_task(fetch(&format!("http://localhost:{o}/")))
        .await
        .unwrap()
        .into_inner();
    let done = ended(&mut c, t.id).await;
    if done.status == TaskStatus::Succeeded as i32 {
        // The resolver gave ::1 too: the request went there, and only there.
        let result = from_proto(done.result.unwrap());
        assert_eq!(result["body"]["server"], "v6", "{result}");
        assert!(v6.is_some());
    } else {
        assert_eq!(done.status, TaskStatus::Failed as i32, "{done:?}");
        if v6.is_none() || v6.as_ref().is_some_and(|s| s.connections() == 0) {
            assert!(
                done.error.contains(&format!("destination not allowed: localhost:{o}")),
                "{}",
                done.error
            );
        }
    }
    assert_eq!(other.connections(), 0, "127.0.0.1:{o} was reached");

    // A name refused outright: loopback is not allowed on this port at all.
    let err = refused(&mut c, &format!("http://localhost:{}/", o.wrapping_add(1).max(1))).await;
    assert!(err.contains("not allowed"), "{err}");
}

#[tokio::test]
async fn bad_fetch_allow_entries_fail_start_up_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(mesh_tests::bin("tasks-service"))
        .args(["--data-dir", &dir.path().display().to_string()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--fetch-allow",
            "127.0.0.1:80,10.0.0.0/33:80",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--fetch-allow"), "{stderr}");
    assert!(stderr.contains("10.0.0.0/33"), "{stderr}");
}
