//! The `mesh` launcher: refusals that protect users from wrong answers, and
//! a full start and stop of the mesh on spare ports.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
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

/// Kills a whole process group with SIGKILL when dropped, also when the
/// test fails: the launcher runs in a group of its own with every child it
/// starts, so nothing is left running.
struct ProcessGroupGuard(i32);

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        // ESRCH (nobody left) is the expected case after a clean stop.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
    }
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
        .process_group(0)
        .spawn()
        .unwrap();
    let group = ProcessGroupGuard(i32::try_from(child.id()).unwrap());
    // Read the summary on a thread, so a launcher that hangs silently fails
    // the test at the deadline instead of blocking it.
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut summary = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                summary.push_str(&line);
                summary.push('\n');
                if line.starts_with("try:") {
                    break;
                }
            }
            Err(e) => panic!("no complete summary from mesh ({e}):\n{summary}"),
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
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(group.0), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "mesh did not exit within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "mesh exited {status}");
    // Stopped cleanly; the guard still makes sure no child outlives it.
    drop(group);
}
