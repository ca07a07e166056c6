//! What a container runtime or an operator asks a binary without starting
//! a server:
//!
//! - `BINARY healthcheck [ADDR]`: `GET /readyz` on the admin listener (ADDR,
//!   else the one the binary's own environment names, else its default),
//!   exit 0 when it answers 200. A `FROM scratch` image has no curl or
//!   grpc_health_probe, so its HEALTHCHECK runs the binary itself.
//! - `--check-config`: parse and validate the whole configuration (flags,
//!   environment, the files they name), print `configuration OK`, exit;
//!   never binds a port or connects anywhere.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context;

/// How long the health check waits for the admin listener.
const TIMEOUT: Duration = Duration::from_secs(3);

/// If the command line is `BINARY healthcheck [ADDR]`, runs the check and
/// returns its result (`Some`); otherwise `None` and the binary starts as
/// usual. `admin_env` is the variable the binary reads its admin address
/// from; `default_admin` its default.
pub fn healthcheck_if_asked(admin_env: &str, default_admin: SocketAddr) -> Option<anyhow::Result<()>> {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_none_or(|a| a != "healthcheck") {
        return None;
    }
    let addr = match args.next() {
        Some(addr) => addr.to_string_lossy().into_owned(),
        None => std::env::var(admin_env).unwrap_or_else(|_| default_admin.to_string()),
    };
    Some(healthcheck(&addr))
}

/// `GET /readyz` on `addr` (an unspecified address means this host).
pub fn healthcheck(addr: &str) -> anyhow::Result<()> {
    let target = addr
        .to_socket_addrs()
        .with_context(|| format!("healthcheck: {addr:?} is not an address"))?
        .next()
        .with_context(|| format!("healthcheck: {addr:?} resolves to nothing"))?;
    let target = reachable(target);
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)
        .with_context(|| format!("healthcheck: cannot connect to {target}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    // One deadline for the whole answer, however slowly its bytes come.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "healthcheck: {target} did not answer within {TIMEOUT:?}"
        );
        stream.set_read_timeout(Some(left))?;
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("healthcheck: no answer from {target}"))?;
        response.extend_from_slice(&buf[..n]);
        // The status line and a short body are all that is read.
        if n == 0 || response.len() >= 64 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    if status.split(' ').nth(1) == Some("200") {
        println!("ready: {body}");
        Ok(())
    } else {
        anyhow::bail!("not ready ({status}): {body}")
    }
}

/// 0.0.0.0 and :: mean "every interface": check through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

/// `--check-config`: runs `checks` (everything but binding and connecting)
/// and reports.
pub fn check_config(name: &str, checks: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    checks().with_context(|| format!("{name}: invalid configuration"))?;
    println!("{name}: configuration OK");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_reads_the_status_line_of_readyz() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut conn, _) = listener.accept().unwrap();
                let mut request = [0u8; 1024];
                let n = conn.read(&mut request).unwrap();
                assert!(String::from_utf8_lossy(&request[..n]).starts_with("GET /readyz HTTP/1.0\r\n"));
                let body = if status.starts_with("200") {
                    "{\"status\":\"SERVING\"}"
                } else {
                    "{\"status\":\"NOT_SERVING\"}"
                };
                write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        healthcheck(&addr.to_string()).unwrap();
        let err = healthcheck(&addr.to_string()).unwrap_err().to_string();
        assert!(err.contains("503") && err.contains("NOT_SERVING"), "{err}");
        server.join().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(
            healthcheck(&closed.to_string())
                .unwrap_err()
                .to_string()
                .contains("cannot connect")
        );
        assert_eq!(
            reachable("0.0.0.0:9054".parse().unwrap()),
            "127.0.0.1:9054".parse::<SocketAddr>().unwrap()
        );
    }
}
