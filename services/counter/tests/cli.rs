//! The `counter-service` binary's command line. (Having an integration test
//! also makes `cargo test` build the binary the mesh-tests crate starts.)

use std::process::Command;

#[test]
fn help_documents_the_idempotency_window() {
    let out = Command::new(env!("CARGO_BIN_EXE_counter-service"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for flag in ["--idempotency-window-secs", "--redis-url", "COUNTER_LISTEN"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn a_bad_listen_address_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_counter-service"))
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}
