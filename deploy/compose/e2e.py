#!/usr/bin/env python3
"""The compose deployment, brought up for real and checked from outside:

    python3 deploy/compose/e2e.py [BIN_DIR]      (default target/release)

1. certificates from `BIN_DIR/mesh certs` (readable by the containers' user)
   and an API key; proxies to the machine's PostgreSQL and Redis on the
   network's gateway address (the machine's listen on 127.0.0.1 only);
2. every service's command line and environment in the compose file is
   accepted by its binary (`--check-config` in its container);
3. `podman-compose up` of deploy/compose/compose.yaml with the images
   deploy/images/build.sh made (tag 0.1.0), a schema prefix and a Redis
   prefix of this run, and a network on an explicit subnet;
4. every route answers through the gateway, over HTTPS with the key;
5. under a read load through the gateway (ListItems and GetItem, which
   reach the items replicas), `podman kill` of one items replica loses no
   read;
6. the images' HEALTHCHECK passes (`podman healthcheck run`);
7. `podman-compose down` leaves no container, pod, network or volume, and the
   run's schemas and keys are removed.

Exits non-zero on the first failed check; always takes everything down.
Needs root, podman, podman-compose, psql and redis-cli. Every wait is
bounded; every load is bounded in requests and time.
"""

import asyncio
import hashlib
import http.client
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose" / "compose.yaml"
PROJECT = "meshci"
SUBNET_PREFIX = "10.89.77"
BRIDGE = f"{SUBNET_PREFIX}.1"  # the network's gateway address: where the proxies listen
PG_PORT, REDIS_PORT = 15432, 16379
READY_TIMEOUT_S = 180
LOAD_SECONDS, LOAD_CLIENTS = 8, 8


TAG = "compose-test"  # what log lines start with (deploy/k8s/play.py sets its own)


def log(message: str) -> None:
    print(f"[{TAG} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(*argv: str, check: bool = True, timeout: int = 300, env: dict | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


# ---- proxies to the machine's backends ---------------------------------------

class Proxies:
    """TCP forwarders from BRIDGE:port to 127.0.0.1:port, in a thread of their own.
    IP_FREEBIND lets them bind the bridge's address before podman creates the bridge."""

    def __init__(self, routes: list[tuple[int, int]]):
        self.routes = routes
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the proxies did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.servers = [self.loop.run_until_complete(self._serve(listen, target))
                        for listen, target in self.routes]
        self.ready.set()
        self.loop.run_forever()
        # Stopped: end the connections still open, then close the loop.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    async def _serve(self, listen: int, target: int):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND
        sock.bind((BRIDGE, listen))

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def handle(client_reader, client_writer):
            # Only the test's own network may use the forwarder.
            peer = client_writer.get_extra_info("peername") or ("",)
            if not str(peer[0]).startswith(BRIDGE.rsplit(".", 1)[0] + "."):
                client_writer.close()
                return
            try:
                server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                client_writer.close()
                return
            try:
                await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
            except asyncio.CancelledError:
                pass

        return await asyncio.start_server(handle, sock=sock)

    def stop(self) -> None:
        def close():
            for server in self.servers:
                server.close()
            self.loop.stop()
        self.loop.call_soon_threadsafe(close)
        self.thread.join(10)


# ---- HTTPS to the gateway ----------------------------------------------------

class Gateway:
    def __init__(self, port: int, ca: Path, key: str):
        self.port, self.key = port, key
        self.tls = ssl.create_default_context(cafile=str(ca))

    def conn(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("localhost", self.port, timeout=15, context=self.tls)

    def call(self, method: str, path: str, body: dict | None = None, conn=None) -> tuple[int, object]:
        own = conn is None
        conn = conn or self.conn()
        try:
            headers = {"authorization": f"Bearer {self.key}"}
            if body is not None:
                headers["content-type"] = "application/json"
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, raw.decode(errors="replace")
        finally:
            if own:
                conn.close()


def wait_until(what: str, seconds: float, probe) -> object:
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (OSError, http.client.HTTPException) as e:
            last = e
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not within {seconds} s (last error: {last})")


def wait_serving(gw: "Gateway", seconds: float = 180, rounds: int = 6) -> None:
    """Until /readyz is 200 and every service answers through the gateway,
    `rounds` polls in a row (half a second apart): /readyz can say ready while
    a service's replicas are still being health-checked into rotation, and a
    container's first seconds on a fresh bridge can lose packets (seen here:
    a replica whose first backend connections hang until TCP retries, which
    health then takes out of rotation and back). Readiness that holds is
    what a rollout waits for too."""
    probes = ("/readyz", "/items?page_size=1", "/tasks?page_size=1", "/counters/ready-probe", "/cache/ready-probe")
    streak = [0]

    def steady() -> bool:
        try:
            answers = [gw.call("GET", path)[0] for path in probes]
        except (OSError, http.client.HTTPException):
            streak[0] = 0
            raise
        ok = answers[0] == 200 and all(status in (200, 404) for status in answers[1:])
        streak[0] = streak[0] + 1 if ok else 0
        return streak[0] >= rounds

    wait_until(f"every service answers through the gateway {rounds} times in a row", seconds, steady)


def expect(what: str, got: tuple[int, object], status: int = 200) -> object:
    if got[0] != status:
        raise RuntimeError(f"{what}: {got[0]} {got[1]}, expected {status}")
    return got[1]


# ---- the checks ----------------------------------------------------------------

def every_route(gw: Gateway) -> None:
    item = expect("POST /items", gw.call("POST", "/items", {"name": "pen", "price_cents": 150}), 201)
    iid = item["id"]
    expect("GET /items/{id}", gw.call("GET", f"/items/{iid}"))
    expect("GET /items", gw.call("GET", "/items?page_size=5"))
    expect("PATCH /items/{id}", gw.call("PATCH", f"/items/{iid}", {"price_cents": 175, "version": 1}))
    expect("PUT /cache/{key}", gw.call("PUT", "/cache/greeting", {"value": "hello", "ttl_seconds": 60}))
    expect("GET /cache/{key}", gw.call("GET", "/cache/greeting"))
    expect("GET /cached-data", gw.call("GET", "/cached-data?key=greeting"))
    expect("DELETE /cache/{key}", gw.call("DELETE", "/cache/greeting"), 204)
    expect("POST /counters/{name}/increment", gw.call("POST", "/counters/compose/increment"))
    expect("GET /counters/{name}", gw.call("GET", "/counters/compose"))
    expect("POST /counters/{name}/reset", gw.call("POST", "/counters/compose/reset"))
    expect("GET /increment", gw.call("GET", "/increment"))
    task = expect("POST /tasks", gw.call("POST", "/tasks", {"kind": "echo", "payload": "hi"}), 202)
    tid = task["task_id"]
    wait_until("the echo task succeeds", 60,
               lambda: gw.call("GET", f"/tasks/{tid}")[1].get("status") == "succeeded")
    expect("GET /tasks", gw.call("GET", "/tasks?page_size=5"))
    expect("GET /tasks/stats", gw.call("GET", "/tasks/stats"))
    expect("POST /tasks:batch", gw.call("POST", "/tasks:batch", {"tasks": [{"kind": "echo", "payload": 1}]}), 202)
    expect("GET /start-task", gw.call("GET", "/start-task"))
    expect("GET /run-blocking-task", gw.call("GET", "/run-blocking-task?ms=10"))
    expect("DELETE /items/{id}", gw.call("DELETE", f"/items/{iid}"), 204)
    for path in ("/test", "/healthz", "/readyz", "/openapi.json", "/overview"):
        expect(f"GET {path}", gw.call("GET", path))
    log("every route answered")


def kill_under_load(gw: Gateway) -> None:
    ids = [expect("POST /items", gw.call("POST", "/items", {"name": f"n{i}", "price_cents": i}), 201)["id"]
           for i in range(20)]
    counts = {"ok": 0, "failed": 0}
    failures: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + LOAD_SECONDS

    def reader(n: int) -> None:
        conn = gw.conn()
        i = n
        while time.monotonic() < stop_at and i < n + 100_000:
            # ListItems always reaches an items replica (GetItem may be a cache hit).
            path = "/items?page_size=5" if i % 2 else f"/items/{ids[i % len(ids)]}"
            try:
                status, body = gw.call("GET", path, conn=conn)
            except (OSError, http.client.HTTPException) as e:
                status, body = -1, repr(e)
                conn.close()
                conn = gw.conn()
            with lock:
                if status == 200:
                    counts["ok"] += 1
                else:
                    counts["failed"] += 1
                    failures.append(f"{path}: {status} {body}")
            i += LOAD_CLIENTS
        conn.close()

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(LOAD_CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(LOAD_SECONDS / 3)
    victim = container("items-2")
    log(f"podman kill {victim} under load")
    run("podman", "kill", victim)
    for t in threads:
        t.join(LOAD_SECONDS + 60)
    log(f"reads: {counts['ok']} ok, {counts['failed']} failed")
    if counts["failed"] or not counts["ok"]:
        raise RuntimeError(f"reads failed while a replica was killed: {failures[:5]}")


def container(service: str) -> str:
    names = run("podman", "ps", "-a", "--format", "{{.Names}}",
                "--filter", f"label=io.podman.compose.project={PROJECT}",
                "--filter", f"label=io.podman.compose.service={service}").split()
    if len(names) != 1:
        raise RuntimeError(f"expected one container for {service}, found {names}")
    return names[0]


def healthchecks() -> None:
    for service in ("items-1", "cache-1", "counter-1", "tasks-1", "gateway"):
        name = container(service)
        wait_until(f"{name}'s HEALTHCHECK", 60,
                   lambda: subprocess.run(["podman", "healthcheck", "run", name],
                                          capture_output=True, timeout=30).returncode == 0)
    log("every image's HEALTHCHECK passed")


def check_configs(compose: list[str], env: dict, bin_dir: Path) -> None:
    """Each service's configuration, as the compose file gives it, through its binary,
    and every variable it sets is one its binary reads (a misspelt one would be ignored)."""
    import re
    import yaml  # podman-compose's own dependency
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    common = {"RUST_LOG", "MESH_ACCESS_LOG", "MESH_SLOW_MS", "MESH_LOG_ANSI", "SSL_CERT_FILE"}
    for service, spec in services.items():
        binary = spec["image"].split("/")[-1].split(":")[0]
        known = set(re.findall(r"\[env: ([A-Z0-9_]+)", run(str(bin_dir / binary), "--help"))) | common
        unknown = sorted(set(spec.get("environment", {})) - known)
        if unknown:
            raise RuntimeError(f"{service}: {binary} reads no variable named {', '.join(unknown)}")
    for service in services:
        out = run(*compose, "run", "--rm", "--no-deps", service, "--check-config", env=env, timeout=120)
        if "configuration OK" not in out:
            raise RuntimeError(f"{service} --check-config said: {out}")
    log(f"--check-config accepted all {len(services)} services' configuration")


def leftovers() -> list[str]:
    found = []
    for what, argv in (("container", ["podman", "ps", "-a", "--format", "{{.Names}}",
                                      "--filter", f"label=io.podman.compose.project={PROJECT}"]),
                       ("pod", ["podman", "pod", "ps", "--format", "{{.Name}}", "--filter", f"name={PROJECT}"]),
                       ("network", ["podman", "network", "ls", "--format", "{{.Name}}"]),
                       ("volume", ["podman", "volume", "ls", "--format", "{{.Name}}"])):
        for name in run(*argv, check=False).split():
            if PROJECT in name:
                found.append(f"{what} {name}")
    return found


def main() -> int:
    bin_dir = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "target" / "release").resolve()
    os.environ.setdefault("CONTAINERS_CONF", str(REPO / ".ci" / "containers.conf"))
    if os.geteuid() != 0:
        print("SKIPPED compose test: needs root (podman networks, the containers' user)")
        return 2 if os.environ.get("CI") == "true" else 0
    run_id = f"c{secrets.token_hex(4)}"
    schema_prefix, redis_prefix = f"{run_id}_", f"{run_id}:"
    work = Path(tempfile.mkdtemp(prefix="mesh-compose."))
    certs = work / "certs"
    run(str(bin_dir / "mesh"), "certs", str(certs))
    key = f"mesh_{secrets.token_urlsafe(24)}"
    (certs / "api-keys").write_text(f"compose {hashlib.sha256(key.encode()).hexdigest()} read,write,admin\n")
    # The containers run as 65532: their certificates and keys must be theirs to read.
    run("chown", "-R", "65532:65532", str(certs))
    port = free_port()
    env = dict(os.environ, CERTS_DIR=str(certs), MESH_SUBNET=f"{SUBNET_PREFIX}.0/24",
               DATABASE_URL=f"postgres://postgres@{BRIDGE}:{PG_PORT}/test",
               REDIS_URL=f"redis://{BRIDGE}:{REDIS_PORT}", DB_SCHEMA_PREFIX=schema_prefix,
               REDIS_PREFIX=redis_prefix, GATEWAY_PORT=str(port))
    compose = ["podman-compose", "-p", PROJECT, "-f", str(COMPOSE)]
    proxies = Proxies([(PG_PORT, 5432), (REDIS_PORT, 6379)])
    rc = 1
    try:
        check_configs(compose, env, bin_dir)
        started = time.monotonic()
        run(*compose, "up", "-d", env=env, timeout=300)
        log(f"podman-compose up: {time.monotonic() - started:.1f} s")
        gw = Gateway(port, certs / "ca.pem", key)
        wait_until("the gateway's /readyz", READY_TIMEOUT_S, lambda: gw.call("GET", "/readyz")[0] == 200)
        wait_serving(gw)
        log(f"ready {time.monotonic() - started:.1f} s after up")
        every_route(gw)
        healthchecks()
        kill_under_load(gw)
        rc = 0
    except Exception as e:  # noqa: BLE001  (reported, then everything is taken down)
        log(f"FAILED: {e}")
        log("--- containers ---\n" + run("podman", "ps", "-a", "--format", "{{.Names}} {{.Status}}", check=False))
        for service in ("gateway", "items-1", "items-2", "cache-1", "counter-1", "tasks-1", "tasks-2"):
            try:
                # The logs are on the containers' stderr; the addresses on stdout.
                logs = subprocess.run(["podman", "logs", "--tail", "40", container(service)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
                log(f"--- last lines of {service} ---\n{logs.stdout}")
            except Exception:  # noqa: BLE001
                pass
    finally:
        started = time.monotonic()
        run(*compose, "down", "-v", "-t", "20", env=env, check=False, timeout=300)
        log(f"podman-compose down: {time.monotonic() - started:.1f} s")
        proxies.stop()
        left = leftovers()
        if left:
            log(f"FAILED: left behind: {left}")
            rc = 1
        for schema in ("items", "tasks"):
            run("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c",
                f'DROP SCHEMA IF EXISTS "{schema_prefix}{schema}" CASCADE', check=False)
        keys = run("redis-cli", "-h", "127.0.0.1", "--scan", "--pattern", f"{redis_prefix}*", check=False).split()
        for i in range(0, len(keys), 500):
            run("redis-cli", "-h", "127.0.0.1", "del", *keys[i:i + 500], check=False)
        run("rm", "-rf", str(work), check=False)
    log("passed" if rc == 0 else "failed")
    return rc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    # `timeout` (CI) stops a run with SIGTERM: exit through the clean-up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
