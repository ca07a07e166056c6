//! TLS to the backends (issue: security): managed PostgreSQL and Redis
//! usually require it. Each test starts a server of its own with a test
//! certificate, one that refuses plaintext, and shows a service working
//! through it:
//!
//! - the counter service on `rediss://` to a redis-server whose only port
//!   speaks TLS, trusting the test CA through `SSL_CERT_FILE`;
//! - the items service on PostgreSQL with `sslmode=verify-full` and
//!   `sslrootcert=`, to a server whose `pg_hba.conf` accepts only `hostssl`;
//!   a plaintext connection is refused, and every client backend shows SSL
//!   in `pg_stat_ssl`.
//!
//! Each needs its server's binaries (Debian's redis-server is built with
//! TLS; PostgreSQL's from the machine's installation, run as the `postgres`
//! user, so the test must run as root). Without them the test prints
//! `SKIPPED` and passes, except under `CI=true`, where it fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_tests::proto::counter::v1::IncrementRequest;
use mesh_tests::proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_tests::proto::items::v1::item_service_client::ItemServiceClient;
use mesh_tests::proto::items::v1::{CreateItemRequest, GetItemRequest};
use mesh_tests::{Server, WAIT, args, eventually, in_ci};
use tokio::process::{Child, Command};

/// A CA and a server certificate for localhost / 127.0.0.1.
fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    mesh_common::tls::write_dev_certs(dir.path(), &["backend"], &[], &[]).unwrap();
    dir
}

fn skip(test: &str, why: &str) {
    assert!(!in_ci(), "{test} cannot run under CI: {why}");
    eprintln!("SKIPPED {test}: {why}");
}

fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn accepts(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

#[tokio::test]
async fn the_counter_service_uses_redis_over_tls() {
    let test = "the_counter_service_uses_redis_over_tls";
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip(test, "no redis-server here");
    }
    let dir = certs();
    let d = dir.path();
    let port = spare_port();
    let p = |f: &str| d.join(f).display().to_string();
    // Its plain port off: TLS is the only way in.
    let _redis: Child = Command::new("redis-server")
        .args(["--port", "0", "--bind", "127.0.0.1", "--tls-port", &port.to_string()])
        .args([
            "--tls-cert-file",
            &p("backend.pem"),
            "--tls-key-file",
            &p("backend.key"),
        ])
        .args(["--tls-ca-cert-file", &p("ca.pem"), "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no", "--dir", &p("")])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    eventually("the TLS redis-server listens", WAIT, async || accepts(addr).await).await;

    let counter = Server::start_with_env(
        "counter-service",
        &args(&["--redis-url", &format!("rediss://localhost:{port}")]),
        "127.0.0.1:0",
        &[("SSL_CERT_FILE", Some(&p("ca.pem")))],
    )
    .await;
    counter.wait_serving().await;
    let mut client = CounterServiceClient::new(counter.channel());
    for expected in 1..=2 {
        let value = client
            .increment(IncrementRequest {
                name: "over-tls".into(),
                delta: None,
                idempotency_key: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", counter.logs()))
            .into_inner()
            .value;
        assert_eq!(value, expected);
    }
}

/// The `postgres` user's uid and gid, if there is one.
fn postgres_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()
            .ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// The newest PostgreSQL server binaries installed.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn chown_all(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_all(&entry.unwrap().path(), uid, gid);
        }
    }
}

#[tokio::test]
async fn the_items_service_uses_postgres_over_tls() {
    let test = "the_items_service_uses_postgres_over_tls";
    let Some(bin) = postgres_bin() else {
        return skip(test, "no PostgreSQL server binaries under /usr/lib/postgresql");
    };
    let Some((uid, gid)) = postgres_ids() else {
        return skip(test, "no postgres user");
    };
    if !running_as_root() {
        return skip(test, "starting PostgreSQL as the postgres user needs root");
    }
    let dir = certs();
    let d = dir.path();
    let data = d.join("data");
    std::fs::create_dir(&data).unwrap();
    chown_all(d, uid, gid);
    let as_postgres = |program: PathBuf| {
        let mut cmd = Command::new(program);
        cmd.uid(uid).gid(gid).current_dir(d).env_clear().env("LANG", "C");
        cmd
    };
    let initdb = as_postgres(bin.join("initdb"))
        .args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ])
        .output();
    let initdb = tokio::time::timeout(Duration::from_secs(120), initdb)
        .await
        .expect("initdb in time")
        .unwrap();
    assert!(
        initdb.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    // TLS only: no `host` line, so a plaintext connection is refused.
    std::fs::write(data.join("pg_hba.conf"), "hostssl all all 127.0.0.1/32 trust\n").unwrap();
    for (from, to) in [("backend.pem", "server.crt"), ("backend.key", "server.key")] {
        std::fs::copy(d.join(from), data.join(to)).unwrap();
        std::os::unix::fs::chown(data.join(to), Some(uid), Some(gid)).unwrap();
    }
    std::fs::set_permissions(
        data.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let port = spare_port();
    let mut postgres = as_postgres(bin.join("postgres"));
    postgres
        .args(["-D", data.to_str().unwrap(), "-p", &port.to_string()])
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("unix_socket_directories={}", d.display()),
        ])
        .args(["-c", "ssl=on", "-c", "fsync=off", "-c", "max_connections=40"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let _postgres: Child = postgres.spawn().expect("start postgres");
    // Dropped first (declared last): a fast shutdown, so the server removes
    // its shared memory and files before the directory goes.
    let _stop = PgStop {
        pg_ctl: bin.join("pg_ctl"),
        data: data.clone(),
        uid,
        gid,
    };

    let ca = d.join("ca.pem").display().to_string();
    let tls_url = format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}");
    let plain_url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
    use sqlx::Connection;
    eventually("PostgreSQL accepts TLS connections", WAIT, async || {
        sqlx::PgConnection::connect(&tls_url).await.ok().map(|_| ())
    })
    .await;
    let refused = sqlx::PgConnection::connect(&plain_url)
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("no pg_hba.conf entry") || refused.contains("SSL off"),
        "{refused}"
    );

    let data_dir = tempfile::tempdir().unwrap();
    let items = Server::start(
        "items-service",
        &args(&[
            "--database-url",
            &tls_url,
            "--data-dir",
            data_dir.path().to_str().unwrap(),
        ]),
    )
    .await;
    items.wait_serving().await;
    let mut client = ItemServiceClient::new(items.channel());
    let created = client
        .create_item(CreateItemRequest {
            name: "sealed".into(),
            description: String::new(),
            price_cents: 1,
            tags: vec![],
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", items.logs()))
        .into_inner();
    let got = client
        .get_item(GetItemRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.name, "sealed");
    let mut check = sqlx::PgConnection::connect(&tls_url).await.unwrap();
    let (backends, all_ssl): (i64, bool) = sqlx::query_as(
        "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.backend_type = 'client backend'",
    )
    .fetch_one(&mut check)
    .await
    .unwrap();
    assert!(
        backends >= 2,
        "the items service's connections and this one: {backends}"
    );
    assert!(all_ssl, "every client connection uses TLS");
}

/// Stops a PostgreSQL server with `pg_ctl stop -m fast` when dropped (also
/// when the test fails).
struct PgStop {
    pg_ctl: PathBuf,
    data: PathBuf,
    uid: u32,
    gid: u32,
}

impl Drop for PgStop {
    fn drop(&mut self) {
        use std::os::unix::process::CommandExt;
        let _ = std::process::Command::new(&self.pg_ctl)
            .args([
                "-D",
                &self.data.display().to_string(),
                "stop",
                "-m",
                "fast",
                "-w",
                "-t",
                "30",
            ])
            .uid(self.uid)
            .gid(self.gid)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}
