//! The `gateway` binary's command line. (Having an integration test also
//! makes `cargo test` build the binary the mesh-tests crate starts.)

use std::process::Command;

#[test]
fn help_lists_every_upstream_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for flag in [
        "--items",
        "--cache",
        "--tasks",
        "--counter",
        "--upstream",
        "GATEWAY_LISTEN",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn a_malformed_endpoint_names_its_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--listen", "127.0.0.1:0", "--items", "::not a url::"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--items"), "{err}");
}
