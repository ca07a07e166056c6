#!/usr/bin/env python3
"""The base manifests run for real with `podman kube play`, and used:

    python3 deploy/k8s/play.py [BIN_DIR]      (default target/release)

Each Deployment of `kubectl kustomize deploy/k8s/base` is played into a pod
on a network of its own (explicit subnet), joined under its Service's name
(podman has no Services: `--network NET:alias=NAME`), with the images
deploy/images/build.sh made. What podman cannot take as it is, and only
that, is adapted, each in `adapt` below:

- one replica each (podman plays a Deployment's replicas as pods, but the
  gateway's published port can be bound once);
- the Secrets (`mesh-certs`, `mesh-api-keys`) become hostPath directories
  made here by `mesh certs`, and `mesh-backends`' keys become URLs of
  proxies to the machine's PostgreSQL and Redis (which listen on
  127.0.0.1 only), with a schema and key prefix of this run;
- the gateway's HTTPS port is published on 127.0.0.1.

Then, through the gateway over HTTPS with an API key: readiness, an item
written and read back, a counter incremented, a task run. The pods' app
containers are stopped first (SIGTERM, so they drain), then the pods and the
network are removed, and the run's schemas and keys dropped.
"""

import hashlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "compose"))
import e2e as compose  # noqa: E402  (its proxies, HTTPS client and helpers)

NETWORK = "meshkube"
SUBNET_PREFIX = "10.89.79"
BRIDGE = f"{SUBNET_PREFIX}.1"
PG_PORT, REDIS_PORT = 15433, 16380
LABEL = "mesh-kube-play"


def adapt(deployment: dict, certs: Path, keys: Path, urls: dict, prefixes: dict, port: int) -> dict:
    """The podman-playable form of one Deployment (see the module's docs)."""
    deployment["spec"]["replicas"] = 1
    # On the pod template: podman labels the pod's containers with it.
    deployment["spec"]["template"]["metadata"].setdefault("labels", {})[LABEL] = "1"
    pod = deployment["spec"]["template"]["spec"]
    host_dirs = {"mesh-certs": certs, "mesh-api-keys": keys}
    pod["volumes"] = [
        {"name": v["name"], "hostPath": {"path": str(host_dirs[v["secret"]["secretName"]]), "type": "Directory"}}
        if "secret" in v else v
        for v in pod.get("volumes", [])
    ]
    for container in pod["containers"]:
        for var in container["env"]:
            if "valueFrom" in var:
                var["value"] = urls[var["valueFrom"]["secretKeyRef"]["key"]]
                del var["valueFrom"]
        container["env"] += [{"name": k, "value": v} for k, v in prefixes.items()]
        if deployment["metadata"]["name"] == "gateway":
            for p in container["ports"]:
                if p["name"] == "https":
                    p.update(hostPort=port, hostIP="127.0.0.1")
    return deployment


def main() -> int:
    bin_dir = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "target" / "release").resolve()
    os.environ.setdefault("CONTAINERS_CONF", str(REPO / ".ci" / "containers.conf"))
    if os.geteuid() != 0:
        print("SKIPPED kube play: needs root")
        return 2 if os.environ.get("CI") == "true" else 0
    run_id = f"k{secrets.token_hex(4)}"
    work = Path(tempfile.mkdtemp(prefix="mesh-kube."))
    certs, keys = work / "certs", work / "keys"
    compose.run(str(bin_dir / "mesh"), "certs", str(certs))
    keys.mkdir()
    key = f"mesh_{secrets.token_urlsafe(24)}"
    (keys / "api-keys").write_text(f"kube {hashlib.sha256(key.encode()).hexdigest()} read,write,admin\n")
    compose.run("chown", "-R", "65532:65532", str(certs), str(keys))
    port = compose.free_port()
    urls = {"database-url": f"postgres://postgres@{BRIDGE}:{PG_PORT}/test",
            "redis-url": f"redis://{BRIDGE}:{REDIS_PORT}"}
    prefixes = {"MESH_DB_SCHEMA_PREFIX": f"{run_id}_", "CACHE_REDIS_PREFIX": f"{run_id}:cache:",
                "COUNTER_REDIS_PREFIX": f"{run_id}:counter:", "GATEWAY_REDIS_PREFIX": f"{run_id}:ratelimit:"}
    rendered = compose.run("kubectl", "kustomize", str(REPO / "deploy" / "k8s" / "base"))
    deployments = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    # Services before the gateway, which finds them by name.
    deployments.sort(key=lambda d: d["metadata"]["name"] == "gateway")
    compose.BRIDGE, compose.TAG = BRIDGE, "kube-play"
    compose.run("podman", "network", "create", "--subnet", f"{SUBNET_PREFIX}.0/24", NETWORK)
    proxies = compose.Proxies([(PG_PORT, 5432), (REDIS_PORT, 6379)])
    files = []
    rc = 1
    try:
        started = time.monotonic()
        for d in deployments:
            name = d["metadata"]["name"]
            path = work / f"{name}.yaml"
            path.write_text(yaml.safe_dump(adapt(d, certs, keys, urls, prefixes, port)))
            files.append(path)
            compose.run("podman", "kube", "play", "--network", f"{NETWORK}:alias={name}", str(path))
        compose.log(f"podman kube play of {len(files)} deployments: {time.monotonic() - started:.1f} s")
        gw = compose.Gateway(port, certs / "ca.pem", key)
        compose.wait_until("the gateway's /readyz", 180, lambda: gw.call("GET", "/readyz")[0] == 200)
        compose.wait_serving(gw)
        item = compose.expect("POST /items", gw.call("POST", "/items", {"name": "kube", "price_cents": 1}), 201)
        got = compose.expect("GET /items/{id}", gw.call("GET", f"/items/{item['id']}"))
        assert got["name"] == "kube", got
        compose.expect("POST /counters/{name}/increment", gw.call("POST", "/counters/kube/increment"))
        task = compose.expect("POST /tasks", gw.call("POST", "/tasks", {"kind": "echo", "payload": 1}), 202)
        compose.wait_until("the task succeeds", 60,
                           lambda: gw.call("GET", f"/tasks/{task['task_id']}")[1].get("status") == "succeeded")
        compose.log("the played deployments serve through the gateway")
        rc = 0
    except Exception as e:  # noqa: BLE001  (reported, then everything is taken down)
        compose.log(f"FAILED: {e}")
        for line in compose.run("podman", "ps", "-a", "--format", "{{.Names}} {{.Status}}", check=False).splitlines():
            compose.log(line)
    finally:
        # App containers first, with SIGTERM: stopping a pod stops its infra
        # container (and the pod's network) first, and the apps could not drain.
        apps = compose.run("podman", "ps", "--format", "{{.Names}} {{.IsInfra}}",
                           "--filter", f"label={LABEL}=1", check=False).splitlines()
        names = [line.split()[0] for line in apps if line.endswith("false")]
        if names:
            compose.run("podman", "stop", "-t", "20", *names, check=False)
        for path in files:
            compose.run("podman", "kube", "down", str(path), check=False)
        compose.run("podman", "network", "rm", NETWORK, check=False)
        proxies.stop()
        left = [f"container {n}" for n in compose.run(
            "podman", "ps", "-a", "--format", "{{.Names}}", "--filter", f"label={LABEL}=1", check=False).split()]
        left += [f"pod {n}" for n in compose.run("podman", "pod", "ps", "--format", "{{.Name}}", check=False).split()
                 if any(n.startswith(d["metadata"]["name"] + "-pod") for d in deployments)]
        left += [f"network {n}" for n in compose.run("podman", "network", "ls", "--format", "{{.Name}}",
                                                     check=False).split() if n == NETWORK]
        if left:
            compose.log(f"FAILED: left behind: {left}")
            rc = 1
        for schema in ("items", "tasks"):
            compose.run("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c",
                        f'DROP SCHEMA IF EXISTS "{run_id}_{schema}" CASCADE', check=False)
        found = compose.run("redis-cli", "-h", "127.0.0.1", "--scan", "--pattern", f"{run_id}:*", check=False).split()
        if found:
            compose.run("redis-cli", "-h", "127.0.0.1", "del", *found, check=False)
        compose.run("rm", "-rf", str(work), check=False)
    compose.log("passed" if rc == 0 else "failed")
    return rc


if __name__ == "__main__":
    # `timeout` (CI) stops a run with SIGTERM: exit through the clean-up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
