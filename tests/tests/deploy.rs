//! The deployment artifacts, exercised for real, one step after another in
//! this one test (cargo runs test targets one at a time, so nothing else of
//! the suite runs beside it either):
//!
//! 1. `hadolint` on the Containerfile, then an image per binary built FROM
//!    scratch from the release binaries (`deploy/images/build.sh`);
//! 2. compose: the mesh brought up with podman-compose, every route used, a
//!    replica killed under a read load, taken down (`deploy/compose/e2e.py`);
//! 3. the Kubernetes manifests: `yamllint`, each overlay rendered and
//!    validated strictly, every command line and environment variable
//!    checked by the binaries' `--check-config` (`deploy/k8s/check.py`),
//!    then the base played with `podman kube play` (`deploy/k8s/play.py`);
//! 4. several hosts in network namespaces with real DNS (`deploy/netns/e2e.py`).
//!
//! It needs root, podman, the tools `.ci/run` installs and the release
//! binaries (`cargo build --release --bins`, or `MESH_RELEASE_DIR`). Without
//! them it prints `SKIPPED` and passes, except under CI, where it fails.
//! Each step runs in a process group of its own with a time limit, prints
//! its seconds, and cleans up after itself (also when stopped: the scripts
//! clean up on SIGTERM).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use mesh_tests::in_ci;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

const BINARIES: &[&str] = &[
    "items-service",
    "cache-service",
    "tasks-service",
    "counter-service",
    "gateway",
    "mesh",
];

/// What every step needs on `PATH`.
const TOOLS: &[&str] = &[
    "podman",
    "buildah",
    "runc",
    "podman-compose",
    "hadolint",
    "yamllint",
    "kubectl",
    "kubernetes-validate",
    "dnsmasq",
    "ip",
    "strip",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Why this machine cannot run the steps, if it cannot.
fn missing(release: &Path) -> Option<String> {
    // /proc/self belongs to the process's effective user.
    let euid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if euid.ok() != Some(0) {
        return Some("needs root (podman networks, network namespaces)".into());
    }
    let tools: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    if !tools.is_empty() {
        return Some(format!("not on PATH: {} (.ci/run installs them)", tools.join(", ")));
    }
    let bins: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !release.join(b).is_file())
        .collect();
    if !bins.is_empty() {
        return Some(format!(
            "no release binaries {} in {} (cargo build --release --bins)",
            bins.join(", "),
            release.display()
        ));
    }
    None
}

/// Runs one step in a process group of its own; past `limit` the group gets
/// SIGTERM (the scripts clean up on it), then SIGKILL.
/// A line on the real stderr: libtest captures `println!` and `eprintln!`,
/// and the steps' progress and seconds belong in CI's log as they happen.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn step(name: &str, argv: &[&str], limit: Duration) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    say(&format!("=== deploy step: {name}: {}", argv.join(" ")));
    let started = Instant::now();
    let mut command = Command::new(argv[0]);
    command.args(&argv[1..]).current_dir(root()).process_group(0);
    // Containers run only with runc and these ulimits on this kind of VM
    // (the file says why); an operator's own setting wins.
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        command.env("CONTAINERS_CONF", root().join(".ci/containers.conf"));
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("{name}: cannot start {}: {e}", argv[0]))?;
    let group = Pid::from_raw(child.id() as i32);
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = killpg(group, Signal::SIGTERM);
            let stopping = Instant::now();
            while child.try_wait().ok().flatten().is_none() && stopping.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = killpg(group, Signal::SIGKILL);
            let _ = child.wait();
            return Err(format!("{name}: stopped after its limit of {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    say(&format!(
        "=== deploy step: {name}: {status} in {} s",
        started.elapsed().as_secs()
    ));
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name}: {status}"))
    }
}

#[test]
fn the_deployment_builds_runs_and_survives_on_podman_compose_kube_play_and_network_namespaces() {
    let release = std::env::var_os("MESH_RELEASE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release"));
    if let Some(why) = missing(&release) {
        assert!(!in_ci(), "the deployment test cannot run: {why}; CI must run it");
        say(&format!("SKIPPED deployment: {why}"));
        return;
    }
    let bins = release.display().to_string();
    let minutes = |m: u64| Duration::from_secs(60 * m);
    let mut failed = Vec::new();
    let mut run = |name: &str, argv: &[&str], limit: Duration| match step(name, argv, limit) {
        Ok(()) => true,
        Err(e) => {
            failed.push(e);
            false
        }
    };
    run("hadolint", &["hadolint", "deploy/images/Containerfile"], minutes(1));
    let images = run(
        "images",
        &["bash", "deploy/images/build.sh", &bins, "0.1.0"],
        minutes(10),
    );
    if images {
        run("compose", &["python3", "deploy/compose/e2e.py", &bins], minutes(15));
    }
    run("yamllint", &["yamllint", "-c", ".yamllint.yaml", "deploy/"], minutes(1));
    run("manifests", &["python3", "deploy/k8s/check.py", &bins], minutes(10));
    if images {
        run("kube play", &["python3", "deploy/k8s/play.py", &bins], minutes(10));
    }
    run("netns", &["python3", "deploy/netns/e2e.py", &bins], minutes(10));
    assert!(failed.is_empty(), "deployment steps failed: {failed:#?}");
}
