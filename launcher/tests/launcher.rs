//! The `mesh` launcher: refusals that protect users from wrong answers, and
//! a full start and stop of the mesh on spare ports.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn in_process_cache_or_counter_replicas_are_refused() {
    for service in ["cache", "counter"] {
        let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
            .args(["--replicas", &format!("{service}=2")])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--backend redis"), "{err}");
    }
}

#[test]
fn unknown_services_in_replicas_are_usage_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["--replicas", "billing=2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("billing"));
}

/// Starts the mesh with two items and two tasks replicas on free ports,
/// checks the summary, then stops it with SIGTERM.
#[test]
fn starts_everything_with_replicas_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args([
            "--replicas",
            "items=2,tasks=2",
            "--gateway-listen",
            "127.0.0.1:0",
            "--ephemeral-ports",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("MESH_LOG_ANSI", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let started = Instant::now();
    let mut summary = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        summary.push_str(&line);
        summary.push('\n');
        if line.starts_with("try:") || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    for name in [
        "items-1",
        "items-2",
        "tasks-1",
        "tasks-2",
        "cache-1",
        "counter-1",
        "gateway",
    ] {
        assert!(summary.contains(name), "{name} missing from:\n{summary}");
    }
    nix_kill(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "mesh exited {status}");
}

fn nix_kill(pid: u32) {
    let out = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(out.success());
}
