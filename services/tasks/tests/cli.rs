//! The `tasks-service` binary's command line. (Having an integration test
//! also makes `cargo test` build the binary the mesh-tests crate starts.)

use std::process::Command;

#[test]
fn help_documents_workers_and_leases() {
    let out = Command::new(env!("CARGO_BIN_EXE_tasks-service"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for flag in ["--workers", "--lease-ms", "--data-dir", "TASKS_WORKERS"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn a_non_numeric_worker_count_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_tasks-service"))
        .args(["--workers", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--workers"));
}
