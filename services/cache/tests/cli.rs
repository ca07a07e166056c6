//! The `cache-service` binary's command line. (Having an integration test
//! also makes `cargo test` build the binary the mesh-tests crate starts.)

use std::process::Command;

#[test]
fn help_offers_the_redis_backend() {
    let out = Command::new(env!("CARGO_BIN_EXE_cache-service"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for flag in ["--redis-url", "--max-bytes", "CACHE_REDIS_URL"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn a_malformed_redis_url_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_cache-service"))
        .args(["--listen", "127.0.0.1:0", "--redis-url", "not a url"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
