//! The `items-service` binary's command line. (Having an integration test
//! also makes `cargo test` build the binary the mesh-tests crate starts.)

use std::process::Command;

#[test]
fn help_lists_flags_and_their_env_variables() {
    let out = Command::new(env!("CARGO_BIN_EXE_items-service"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for flag in [
        "--listen",
        "--data-dir",
        "--database-url",
        "ITEMS_LISTEN",
        "MESH_DATABASE_URL",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn an_unsupported_database_url_is_refused_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_items-service"))
        .args(["--listen", "127.0.0.1:0", "--database-url", "mysql://localhost/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported database URL"), "{err}");
}
