"""The scenario groups: for each, which processes start (the reference FastAPI
stack, bench-hello, a mesh with its gateway, or the hop group's gateway and
counter-service beside their bare floors), which loads run against them, and
what is recorded (table rows with each process's CPU per request, memory,
counts and drain times).

A group samples every process's idle RSS, runs its loads (each between two
CPU samples of the group's processes), samples their peak RSS, and stops its
processes whatever happens; a failed group is noted and the next one still
runs. GROUPS names the groups a run can select, and what each needs first.
"""

import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import HOST, REDIS_PORT, REFERENCE, log
from .calls import count_queued, http_call, page_token, parallel_requests, trust, wait_http_ok, with_token
from .fleet import NO_CACHE_GATEWAY_RUST_LOG, Fleet, Proc, free_port, memory_kib
from .loads import Load, Wrk, grpc_load, hit_note, lua_post, lua_random_ids, lua_walk_ids
from .queue import QueueGroup
from .setup import prepare_items_db, seed_reference_db

CONNECTIONS = (64, 512)
SEED_IDS = 10_000
BIG_IDS = 1_000_000
QUICK_BIG_IDS = 100_000
PAGE_SIZE = 50
DEEP_PAGE = 1000
SCALE_CONNECTIONS = 16
TASK_WORKERS = 4
BURST_CLIENTS = 16
REPLICAS = (1, 2, 3)
DRAIN_TIMEOUT_S = 300
HOP_ROUNDS = 3
HOP_CONNECTIONS = 64
TRACE_SAMPLE = 0.1  # the observability group's sampled share of traces
FASTAPI = "FastAPI (2 uvicorn + nginx)"
HELLO = "bench-hello"
MESH = "mesh"
BENCH_HOP = "bench-hop"
BENCH_COUNTER = "bench-counter"
SERVICE_KINDS = ("items", "cache", "counter", "tasks", "gateway")
CPU_SHOWN_SHARE = 0.02  # a row lists the processes with at least this share of its CPU
SMALL, BIG = "small", "big"  # the seeded items data sets


@dataclass(frozen=True)
class Needs:
    """What a scenario group needs before it runs, besides wrk and the binaries."""
    tools: tuple[str, ...] = ()  # apt tools: nginx, redis-cli
    redis: bool = False
    venv: bool = False  # the reference app's virtualenv
    data: tuple[str, ...] = ()  # SMALL, BIG


# The selectable groups in run order (replicas: 1, 2 and 3 replicas; scale: both data sets).
GROUPS: dict[str, Needs] = {
    "fastapi": Needs(tools=("nginx", "redis-cli"), redis=True, venv=True),
    "hello": Needs(),
    "test": Needs(data=(SMALL,)),
    "items-warm": Needs(data=(SMALL,)),
    "items-cold": Needs(data=(BIG,)),
    "counters": Needs(data=(SMALL,)),
    "tasks": Needs(data=(SMALL,)),
    "grpc": Needs(data=(SMALL,)),
    "hop": Needs(),
    "replicas": Needs(tools=("redis-cli",), redis=True, data=(SMALL,)),
    "scale": Needs(data=(SMALL, BIG)),
    "queue": Needs(tools=("psql", "npm"), data=(SMALL,)),
    "tls": Needs(data=(SMALL,)),
    "observability": Needs(data=(SMALL,)),
}


def needs_of(groups: Iterable[str]) -> Needs:
    """Everything the given groups need, together."""
    needs = [GROUPS[g] for g in groups]
    return Needs(tools=tuple(dict.fromkeys(t for n in needs for t in n.tools)),
                 redis=any(n.redis for n in needs), venv=any(n.venv for n in needs),
                 data=tuple(dict.fromkeys(d for n in needs for d in n.data)))


@dataclass
class Row:
    """One line of a scenario table."""
    table: str
    label: str
    system: str  # MESH, FASTAPI or HELLO
    connections: int
    load: Load
    group: str
    compare: str | None = None  # which reference scenario it is comparable to
    note: str = ""


@dataclass
class Mesh:
    procs: dict[str, list[Proc]]  # by kind: items, cache, counter, tasks
    gateway: Proc
    tasks_dir: Path

    def all(self) -> list[Proc]:
        return [p for ps in self.procs.values() for p in ps] + [self.gateway]


class Bench:
    def __init__(self, args, run_dir: Path, tools: dict[str, str], venv_python: Path | None):
        self.args = args
        self.run_dir = run_dir
        self.fleet = Fleet(run_dir, args.bin_dir)
        self.wrk = Wrk(tools["wrk"], run_dir, args.duration)
        self.watch: list[Proc] = []  # the running group's processes, whose CPU every load samples
        self.nginx = tools.get("nginx")
        self.venv_python = venv_python
        self.stamp = run_dir.name
        self.redis_prefix = f"mesh-bench:{self.stamp}:"
        self.big_ids = QUICK_BIG_IDS if args.quick else BIG_IDS
        self.burst_per_client = 50 if args.quick else 250
        self.rows: list[Row] = []
        self.memory: dict[str, dict[str, dict[str, int]]] = {}
        self.facts: dict[str, object] = {}  # scenario-specific findings for the report
        self.notes: list[str] = []
        self.items_small = run_dir / "data" / "items-10k"
        self.items_big = run_dir / "data" / f"items-{self.big_ids}"

    # ---- helpers -------------------------------------------------------

    def have(self, binary: str) -> bool:
        return (self.args.bin_dir / binary).exists()

    def record(self, table: str, label: str, system: str, connections: int, load: Load,
               group: str, compare: str | None = None, note: str = "") -> None:
        self.rows.append(Row(table, label, system, connections, load, group, compare, note))
        log(f"  {label} ({system}) c={connections}: {load.rps:,.0f} rps, p99 {load.p99_ms:.2f} ms,"
            f" errors {load.errors}, CPU µs/req {cpu_text(load, group)}")

    def group(self, name: str, procs: list[Proc], body) -> None:
        """Idle RSS, the group's loads (each sampling the CPU of `procs`), peak RSS;
        its processes stop either way."""
        log(f"group {name}")
        self.watch = self.wrk.watch = procs
        try:
            time.sleep(0.5)
            idle = {p.name: memory_kib(p.popen.pid)[0] for p in procs}
            body()
            peak = {p.name: memory_kib(p.popen.pid)[1] for p in procs}
            self.memory[name] = {n: {"idle_kib": idle[n], "peak_kib": peak[n]} for n in idle}
        finally:
            self.watch = self.wrk.watch = []
            self.fleet.stop(procs)

    def start_mesh(self, tag: str, items_dir: Path, replicas: int = 1, redis: bool = False,
                   tasks_workers: int = TASK_WORKERS, cache: bool = True,
                   certs: Path | None = None, inner_tls: bool = False,
                   extra: tuple[str, ...] = ()) -> Mesh:
        """items, cache, counter (x replicas), tasks and a gateway over them.
        Without `cache` the gateway's cache endpoint is a closed port (x-cache: bypass).
        With `certs` (a `mesh certs` directory) the gateway serves HTTPS; with `inner_tls`
        too, every service requires mutual TLS and the gateway calls them over it. `extra`
        goes to every process (flags they all take: --metrics, --otlp-endpoint, ...)."""
        procs: dict[str, list[Proc]] = {}

        def service_tls(kind: str) -> list[str]:
            if not (certs and inner_tls):
                return []
            return ["--tls-cert", str(certs / f"{kind}.pem"), "--tls-key", str(certs / f"{kind}.key"),
                    "--tls-client-ca", str(certs / "ca.pem")]

        def backend(kind: str) -> list[str]:
            if not redis:
                return []
            return ["--redis-url", f"redis://{HOST}:{REDIS_PORT}",
                    "--redis-prefix", f"{self.redis_prefix}{tag}:{kind}:"]

        for r in range(1, replicas + 1):
            suffix = f"{tag}-{r}" if replicas > 1 else tag
            procs.setdefault("items", []).append(self.fleet.rust(
                f"items-{suffix}", "items-service", "--data-dir", str(items_dir), *service_tls("items"),
                *extra))
            if cache:
                procs.setdefault("cache", []).append(self.fleet.rust(
                    f"cache-{suffix}", "cache-service", *backend("cache"), *service_tls("cache"), *extra))
            procs.setdefault("counter", []).append(self.fleet.rust(
                f"counter-{suffix}", "counter-service", *backend("counter"), *service_tls("counter"),
                *extra))
        tasks_dir = self.run_dir / "data" / f"tasks-{tag}"
        tasks_dir.mkdir(parents=True, exist_ok=True)
        procs["tasks"] = [self.fleet.rust(f"tasks-{tag}", "tasks-service", "--data-dir",
                                          str(tasks_dir), "--workers", str(tasks_workers),
                                          *service_tls("tasks"), *extra)]
        urls = {kind: ",".join(p.url for p in ps) for kind, ps in procs.items()}
        cache_urls = urls["cache"] if cache else f"http://{HOST}:{free_port()}"
        # A gateway without a cache logs a warning per request (the cache-outage
        # path, not what the scale group measures): that one gateway logs errors
        # only, and the report says so. Every other process logs as a user's does.
        tls_flags: list[str] = []
        if certs:
            tls_flags += ["--tls-cert", str(certs / "gateway.pem"), "--tls-key", str(certs / "gateway.key")]
        if certs and inner_tls:
            tls_flags += ["--services-tls-ca", str(certs / "ca.pem"),
                          "--services-tls-cert", str(certs / "gateway.pem"),
                          "--services-tls-key", str(certs / "gateway.key")]
        gateway = self.fleet.rust(
            f"gateway-{tag}", "gateway", "--items", urls["items"], "--cache", cache_urls,
            "--tasks", urls["tasks"], "--counter", urls["counter"], *tls_flags, *extra,
            rust_log=None if cache else NO_CACHE_GATEWAY_RUST_LOG)
        if certs:
            gateway.scheme = "https"
        wait_http_ok(gateway.url, "/healthz")
        return Mesh(procs, gateway, tasks_dir)

    def warm_items(self, gateway: Proc) -> None:
        paths = [f"/items/{i}" for i in range(1, SEED_IDS + 1)]
        ok = parallel_requests(gateway.url, "GET", paths, clients=8)
        if ok != SEED_IDS:
            raise RuntimeError(f"warm-up: only {ok} of {SEED_IDS} reads succeeded")

    def exact_increments(self, base: str, path: str, method: str = "POST") -> tuple[int, int]:
        """(requests sent, 2xx) of a bounded burst of increments from BURST_CLIENTS clients."""
        n = BURST_CLIENTS * self.burst_per_client
        ok = parallel_requests(base, method, [path] * n, clients=BURST_CLIENTS)
        return n, ok

    def read_counter(self, base: str, name: str) -> int:
        """GET /counters/{name}; a failed read is retried for up to 10 s and noted."""
        failures = []
        deadline = time.monotonic() + 10
        while True:
            status, body = http_call(base, "GET", f"/counters/{name}")
            if status == 200:
                break
            failures.append(f"{status} {json.dumps(body)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"GET /counters/{name} kept failing: {failures[-1]}")
            time.sleep(0.2)
        if failures:
            self.notes.append(f"GET /counters/{name} right after a load failed {len(failures)}"
                              f" time(s) before answering (first: {failures[0]}).")
        return body["value"]

    # ---- reference groups ----------------------------------------------

    def run_fastapi(self) -> None:
        db = self.run_dir / "data" / "reference.db"
        seed_reference_db(db, SEED_IDS)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", REF_DB_PATH=str(db),
                   REF_REDIS_URL=f"redis://{HOST}:{REDIS_PORT}/0",
                   REF_REDIS_PREFIX=f"{self.redis_prefix}ref:")
        instances = []
        for tag in ("a", "b"):
            port = free_port()
            instances.append(self.fleet.plain(
                f"uvicorn-{tag}",
                [str(self.venv_python), "-m", "uvicorn", "app:app", "--host", HOST, "--port",
                 str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"],
                port, cwd=REFERENCE, env=env))
        nginx = self.start_nginx(*(int(p.addr.rsplit(":", 1)[1]) for p in instances))
        procs = [*instances, nginx]
        self.group("fastapi", procs, lambda: self.fastapi_loads(nginx, instances))

    def start_nginx(self, port_a: int, port_b: int) -> Proc:
        port = free_port()
        ndir = self.run_dir / "nginx"
        (ndir / "nginx-tmp").mkdir(parents=True)  # nginx makes its temp dirs inside
        conf = (REFERENCE / "nginx.conf.template").read_text()
        for key, value in {"{RUN_DIR}": str(ndir), "{PORT_A}": str(port_a),
                           "{PORT_B}": str(port_b), "{PORT}": str(port)}.items():
            conf = conf.replace(key, value)
        (ndir / "nginx.conf").write_text(conf)
        argv = [self.nginx, "-p", str(ndir), "-e", str(ndir / "nginx-error.log"),
                "-c", str(ndir / "nginx.conf")]
        subprocess.run([*argv, "-t", "-q"], check=True)
        return self.fleet.plain("nginx", argv, port)

    def fastapi_loads(self, nginx: Proc, instances: list[Proc]) -> None:
        base = nginx.url
        self.check_reference_routes(base)
        # Per-process counters: N increments through nginx, then three straight to each instance.
        n, ok = self.exact_increments(base, "/increment", method="GET")
        views = {p.name: [http_call(p.url, "GET", "/increment")[1]["shared_resource"]
                          for _ in range(3)] for p in instances}
        self.facts["fastapi_counter"] = {"sent": n, "ok": ok, "instances": views}
        log(f"  /increment x{n} through nginx, then x3 on each instance: {views}")
        for c in CONNECTIONS:
            self.record("test", "GET /test", FASTAPI, c,
                        self.wrk.run(base + "/test", c), "fastapi", "test")
        for c in CONNECTIONS:
            self.record("items", "GET /items/{id}", FASTAPI, c,
                        self.wrk.run(base, c, lua_random_ids("/items/", SEED_IDS)),
                        "fastapi", "items")
        for c in CONNECTIONS:
            self.record("counters", "GET /increment", FASTAPI, c,
                        self.wrk.run(base + "/increment", c), "fastapi", "increment")

    def check_reference_routes(self, base: str) -> None:
        expected = {
            "/test": {"message": "Hello, load balanced world!"},
            "/cached-data?key=never-set": {"error": "Data not found in cache."},
            "/run-blocking-task?ms=1": {"result": "Task complete!"},
        }
        for path, body in expected.items():
            got = http_call(base, "GET", path)
            if got != (200, body):
                raise RuntimeError(f"reference {path} answered {got}")
        status, body = http_call(base, "GET", "/items/1")
        if status != 200 or body["item"]["id"] != 1:
            raise RuntimeError(f"reference /items/1 answered {status} {body}")

    def run_hello(self) -> None:
        if not self.have("bench-hello"):
            self.notes.append("bench-hello is missing from the binary directory: its rows are skipped.")
            return
        hello = self.fleet.rust("bench-hello", "bench-hello")
        got = http_call(hello.url, "GET", "/test")
        if got != (200, {"message": "Hello, load balanced world!"}):
            raise RuntimeError(f"bench-hello /test answered {got}")

        def loads():
            for c in CONNECTIONS:
                self.record("test", "GET /test", HELLO, c, self.wrk.run(hello.url + "/test", c),
                            "hello", "test")

        self.group("hello", [hello], loads)

    # ---- mesh groups ---------------------------------------------------

    def run_mesh_test(self) -> None:
        mesh = self.start_mesh("test", self.items_small)

        def loads():
            for c in CONNECTIONS:
                self.record("test", "GET /test (gateway)", MESH, c,
                            self.wrk.run(mesh.gateway.url + "/test", c), "test", "test")

        self.group("test", mesh.all(), loads)

    def run_items_warm(self) -> None:
        mesh = self.start_mesh("items-warm", self.items_small)

        def loads():
            self.warm_items(mesh.gateway)
            for c in CONNECTIONS:
                load = self.wrk.run(mesh.gateway.url, c, lua_random_ids("/items/", SEED_IDS))
                self.record("items", "GET /items/{id} warm", MESH, c, load, "items-warm", "items",
                            note=hit_note(load))

        self.group("items-warm", mesh.all(), loads)

    def run_items_cold(self) -> None:
        mesh = self.start_mesh("items-cold", self.items_big)

        def loads():
            start = 1
            for c in CONNECTIONS:
                load = self.wrk.run(mesh.gateway.url, c,
                                    lua_walk_ids("/items/", self.big_ids, start))
                start = load.detail["max_id"] + 1
                self.record("items", "GET /items/{id} cold", MESH, c, load, "items-cold",
                            "items", note=hit_note(load))

        self.group("items-cold", mesh.all(), loads)

    def run_counters(self) -> None:
        mesh = self.start_mesh("counters", self.items_small)
        self.group("counters", mesh.all(),
                   lambda: self.counter_loads(mesh, "counters", "counters", "POST /counters/{name}/increment"))

    def counter_loads(self, mesh: Mesh, group: str, table: str, label: str) -> None:
        base = mesh.gateway.url
        name = f"exact-{group}-{self.stamp}"
        n, ok = self.exact_increments(base, f"/counters/{name}/increment")
        final = self.read_counter(base, name)
        self.facts.setdefault("exact", {})[group] = {"sent": n, "ok": ok, "final": final}
        log(f"  exact check: {n} sent, {ok} 2xx, counter reads {final}")
        for c in CONNECTIONS:
            name = f"wrk-{group}-c{c}-{self.stamp}"
            load = self.wrk.run(f"{base}/counters/{name}/increment", c, lua_post({"by": 1}))
            final = self.read_counter(base, name)
            load.detail["final"] = final
            self.record(table, label, MESH, c, load, group, "increment",
                        note=wrk_count_note(final, load.ok, c))

    def run_tasks(self) -> None:
        # The API replica takes submissions with no workers; a worker replica on
        # the same queue is started after each load, so the drain is timed alone.
        mesh = self.start_mesh("tasks", self.items_small, tasks_workers=0)
        drains = self.facts.setdefault("drain", {})

        def loads():
            base = mesh.gateway.url
            body = {"kind": "echo", "payload": 1, "priority": 0}
            for c in CONNECTIONS:
                load = self.wrk.run(base + "/tasks", c, lua_post(body))
                drains[c] = self.drain(base, mesh.tasks_dir, f"tasks-workers-c{c}")
                drains[c]["submitted_2xx"] = load.ok
                d = drains[c]
                note = (f"drained {d['queued']} at {d['rate']:,.0f} tasks/s" if d["drained"]
                        else f"NOT drained within {DRAIN_TIMEOUT_S} s")
                self.record("tasks", "POST /tasks (echo)", MESH, c, load, "tasks", note=note)

        self.group("tasks", mesh.all(), loads)

    def drain(self, base: str, tasks_dir: Path, name: str) -> dict:
        queued = count_queued(base)
        t0 = time.monotonic()
        worker = self.fleet.rust(name, "tasks-service", "--data-dir", str(tasks_dir),
                                 "--workers", str(TASK_WORKERS))
        try:
            left = queued
            while left and time.monotonic() - t0 < DRAIN_TIMEOUT_S:
                time.sleep(0.05)
                # Queued and running: a worker replica claims tasks ahead of its workers.
                stats = http_call(base, "GET", "/tasks/stats")[1]
                left = stats["queued"] + stats["running"]
            seconds = time.monotonic() - t0
            peak = memory_kib(worker.popen.pid)[1]
        finally:
            self.fleet.stop([worker])
        drained = not left
        rate = queued / seconds if drained else 0.0
        log(f"  drain: {queued} queued, {'empty' if drained else 'NOT empty'} after {seconds:.1f} s")
        return {"queued": queued, "seconds": seconds, "rate": rate, "drained": drained,
                "workers": TASK_WORKERS, "worker_peak_kib": peak}

    def run_grpc(self) -> None:
        binary = self.args.bin_dir / "grpc-load"
        if not binary.exists():
            self.notes.append("grpc-load is missing from the binary directory: the direct gRPC "
                              "scenarios (GetItem, Increment) are skipped.")
            return
        items = self.fleet.rust("items-grpc", "items-service", "--data-dir", str(self.items_small))
        counter = self.fleet.rust("counter-grpc", "counter-service")

        def loads():
            d = self.args.duration
            for c in CONNECTIONS:
                self.record("grpc", "gRPC GetItem (direct)", MESH, c,
                            grpc_load(binary, items.url, "get-item", c, d, ids=SEED_IDS,
                                      watch=self.watch),
                            "grpc", "items")
            for c in CONNECTIONS:
                self.record("grpc", "gRPC Increment (direct)", MESH, c,
                            grpc_load(binary, counter.url, "increment", c, d, watch=self.watch),
                            "grpc", "increment")

        self.group("grpc", [items, counter], loads)

    def run_hop(self) -> None:
        """One counter-service behind both the gateway and bench-hop, and beside bench-counter."""
        missing = [b for b in (BENCH_HOP, BENCH_COUNTER, "grpc-load") if not self.have(b)]
        if missing:
            self.notes.append(f"{', '.join(missing)} missing from the binary directory: the hop"
                              " group (gateway vs bench-hop, counter-service vs bench-counter)"
                              " is skipped.")
            return
        counter = self.fleet.rust("counter-hop", "counter-service")
        # The gateway wants all four services: items, cache and tasks point at the same
        # counter-service and get no traffic (GET /increment calls the counter only).
        upstreams = [arg for flag in ("--items", "--cache", "--tasks", "--counter")
                     for arg in (flag, counter.url)]
        gateway = self.fleet.rust("gateway-hop", "gateway", *upstreams)
        wait_http_ok(gateway.url, "/healthz")
        hop = self.fleet.rust(BENCH_HOP, BENCH_HOP, "--counter", counter.url)
        floor = self.fleet.rust(BENCH_COUNTER, BENCH_COUNTER)
        self.group("hop", [gateway, counter, hop, floor],
                   lambda: self.hop_loads(gateway, hop, counter, floor))

    def hop_loads(self, gateway: Proc, hop: Proc, counter: Proc, floor: Proc) -> None:
        for front in (gateway, hop):
            status, body = http_call(front.url, "GET", "/increment")
            if status != 200 or "shared_resource" not in (body or {}):
                raise RuntimeError(f"{front.name} GET /increment answered {status} {body}")
        binary = self.args.bin_dir / "grpc-load"
        c, d = HOP_CONNECTIONS, self.args.duration
        fronts = self.alternate("hop", "GET /increment", [(gateway, MESH), (hop, BENCH_HOP)],
                                lambda p: self.wrk.run(p.url + "/increment", c))
        servers = self.alternate(
            "hop-floor", "gRPC Increment", [(counter, MESH), (floor, BENCH_COUNTER)],
            lambda p: grpc_load(binary, p.url, "increment", c, d, watch=self.watch))
        self.facts["hop"] = {
            "gateway": side_by_side(fronts, "gateway", gateway, BENCH_HOP, hop,
                                    ("counter-service", counter)),
            "counter": side_by_side(servers, "counter-service", counter, BENCH_COUNTER, floor),
        }

    def alternate(self, table: str, label: str, pair: list[tuple[Proc, str]],
                  run: Callable[[Proc], Load]) -> list[tuple[Load, Load]]:
        """HOP_ROUNDS rounds of one load on each process of `pair` in turn (the first,
        then the second), each recorded as a row; the loads of each round."""
        rounds = []
        for r in range(1, HOP_ROUNDS + 1):
            loads = []
            for proc, system in pair:
                loads.append(run(proc))
                self.record(table, f"{label}, round {r}", system, HOP_CONNECTIONS, loads[-1], "hop")
            rounds.append((loads[0], loads[1]))
        return rounds

    def run_tls(self) -> None:
        """Three meshes side by side on the same data: plaintext, HTTPS at the gateway, and
        HTTPS plus mutual TLS to every service; /test and warm item reads, alternating."""
        if not self.have("mesh"):
            self.notes.append("mesh missing from the binary directory: the tls group (it makes"
                              " its certificates with `mesh certs`) is skipped.")
            return
        certs = self.run_dir / "certs"
        subprocess.run([str(self.args.bin_dir / "mesh"), "certs", str(certs)], check=True,
                       stdout=subprocess.DEVNULL, timeout=60)
        trust(certs / "ca.pem")
        plain = self.start_mesh("tls-plain", self.items_small)
        edge = self.start_mesh("tls-edge", self.items_small, certs=certs)
        mtls = self.start_mesh("tls-mtls", self.items_small, certs=certs, inner_tls=True)
        meshes = {"plaintext": plain, "HTTPS": edge, "HTTPS + mTLS": mtls}

        def loads():
            self.facts["tls"] = self.mesh_rounds("tls", meshes, "plaintext", test_kinds=("plaintext", "HTTPS"))

        self.group("tls", plain.all() + edge.all() + mtls.all(), loads)

    def run_observability(self) -> None:
        """Three meshes on the same data: as users get them (metrics on, no traces), with
        metrics off, and exporting traces of a 10 % sample to bench-otlp-sink (an OTLP
        collector that only counts); /test and warm item reads, alternating."""
        if not self.have("bench-otlp-sink"):
            self.notes.append("bench-otlp-sink missing from the binary directory: the"
                              " observability group is skipped.")
            return
        sink = self.fleet.rust("otlp-sink", "bench-otlp-sink")
        meshes = {
            "default": self.start_mesh("obs-default", self.items_small),
            "metrics off": self.start_mesh("obs-nometrics", self.items_small,
                                           extra=("--metrics", "false")),
            f"traces {TRACE_SAMPLE:.0%}": self.start_mesh(
                "obs-traced", self.items_small,
                extra=("--otlp-endpoint", sink.url, "--trace-sample-ratio", str(TRACE_SAMPLE))),
        }

        def loads():
            # Each ratio against the mesh as users get it: what turning metrics off saves,
            # and what exporting traces costs.
            self.facts["observability"] = self.mesh_rounds("observability", meshes, "default", rotate=True)

        self.group("observability", [sink] + [p for m in meshes.values() for p in m.all()], loads)
        # Evidence that traces were exported: what the sink counted (it logs it at stop).
        found = re.search(r"spans received spans=(\d+)", sink.log_path.read_text(errors="replace"))
        if "observability" in self.facts:
            self.facts["observability"]["spans_received"] = int(found.group(1)) if found else None

    def mesh_rounds(self, table: str, meshes: dict[str, Mesh], base: str,
                    test_kinds: tuple[str, ...] | None = None, rotate: bool = False) -> dict:
        """HOP_ROUNDS rounds of wrk -cHOP_CONNECTIONS on each mesh in turn: GET /test (on
        `test_kinds`, default every mesh), then warm item reads; each load a row of `table`
        (also its group). With `rotate` each round starts with the next mesh, so none always
        runs first. Returns, per what and kind, the median rps, the errors, and the median of
        the rounds' throughput ratios to the `base` mesh."""
        c = HOP_CONNECTIONS

        def warm_then_read(m: Mesh) -> Load:
            # Right before each load: the cache keeps an item --item-ttl-secs (60 s), less
            # than a round lasts, and a read that misses is not the warm read measured here.
            self.warm_items(m.gateway)
            return self.wrk.run(m.gateway.url, c, lua_random_ids("/items/", SEED_IDS))

        kinds = list(meshes)
        rounds: dict[str, dict[str, list[Load]]] = {"test": {}, "items": {}}
        for r in range(1, HOP_ROUNDS + 1):
            shift = (r - 1) % len(kinds) if rotate else 0
            order = kinds[shift:] + kinds[:shift]
            for what, run, only in (("test", lambda m: self.wrk.run(m.gateway.url + "/test", c), test_kinds),
                                    ("items", warm_then_read, None)):
                for kind in order:
                    if only is not None and kind not in only:
                        continue
                    load = run(meshes[kind])
                    label = "GET /test" if what == "test" else "GET /items/{id} warm"
                    self.record(table, f"{label}, {kind}, round {r}", MESH, c, load, table,
                                note=hit_note(load) if what == "items" else "")
                    rounds[what].setdefault(kind, []).append(load)
        return {
            what: {kind: {"rps": statistics.median(l.rps for l in loads),
                          "errors": sum(l.errors for l in loads),
                          "ratio": statistics.median(
                              l.rps / b.rps for l, b in zip(loads, by_kind[base]))}
                   for kind, loads in by_kind.items()}
            for what, by_kind in rounds.items()}

    def run_replicas(self, n: int) -> None:
        group = f"replicas-{n}"
        mesh = self.start_mesh(group, self.items_small, replicas=n, redis=True)

        def loads():
            self.warm_items(mesh.gateway)
            for c in CONNECTIONS:
                load = self.wrk.run(mesh.gateway.url, c, lua_random_ids("/items/", SEED_IDS))
                self.record("replicas", f"GET /items/{{id}} warm, {n} items+cache", MESH, c,
                            load, group, "items", note=hit_note(load))
            self.counter_loads(mesh, group, "replicas", f"POST increment, {n} counter")

        self.group(group, mesh.all(), loads)

    def run_scale(self, items_dir: Path, rows: int) -> None:
        group = f"scale-{rows}"
        mesh = self.start_mesh(group, items_dir, cache=False)
        deep = min(DEEP_PAGE, rows // PAGE_SIZE)
        label = f"{rows:,} rows"

        def loads():
            base = mesh.gateway.url
            c = SCALE_CONNECTIONS
            load = self.wrk.run(base, c, lua_random_ids("/items/", rows))
            self.record("scale", f"GET /items/{{id}} random, {label} (no cache)", MESH, c, load,
                        group, note=hit_note(load))
            token = page_token(base, deep, PAGE_SIZE)
            page1 = f"{base}/items?page_size={PAGE_SIZE}"
            self.record("scale", f"ListItems page 1, {label}", MESH, c, self.wrk.run(page1, c),
                        group)
            self.record("scale", f"ListItems page {deep}, {label}", MESH, c,
                        self.wrk.run(with_token(page1, token), c), group)

        self.group(group, mesh.all(), loads)

    # ---- the whole run ---------------------------------------------------

    def run(self) -> None:
        """The selected groups (args.groups), after seeding the data sets they use."""
        data = needs_of(self.args.groups).data
        for name, path, rows in ((SMALL, self.items_small, SEED_IDS),
                                 (BIG, self.items_big, self.big_ids)):
            if name in data:
                log(f"seeding items: {rows:,} rows")
                prepare_items_db(self.fleet, path, rows)
        for name in self.args.groups:
            for run_group in self.runs_of(name):
                self.attempt(run_group)
        self.notes += self.fleet.crashed

    def runs_of(self, group: str) -> list[Callable[[], None]]:
        """What running a selectable group (a key of GROUPS) calls, in order."""
        if group == "replicas":
            return [lambda n=n: self.run_replicas(n) for n in REPLICAS]
        if group == "scale":
            return [lambda: self.run_scale(self.items_small, SEED_IDS),
                    lambda: self.run_scale(self.items_big, self.big_ids)]
        return [{"fastapi": self.run_fastapi, "hello": self.run_hello, "test": self.run_mesh_test,
                 "items-warm": self.run_items_warm, "items-cold": self.run_items_cold,
                 "counters": self.run_counters, "tasks": self.run_tasks, "grpc": self.run_grpc,
                 "hop": self.run_hop, "queue": lambda: QueueGroup(self).run(),
                 "tls": self.run_tls, "observability": self.run_observability}[group]]

    def attempt(self, run_group) -> None:
        """Runs one group; a failure is noted in the report and the next group still runs."""
        try:
            run_group()
        except Exception as e:  # noqa: BLE001  (any failure of one group is reported)
            self.notes.append(f"A scenario group failed: {type(e).__name__}: {e}")
            log(f"group failed: {e!r}")
            self.fleet.stop_all()


def wrk_count_note(final: int, ok: int, connections: int) -> str:
    """A counter after a wrk load: at least wrk's 2xx count, and at most one more per
    connection (the requests wrk had sent but not seen answered when it stopped)."""
    extra = final - ok
    verdict = "consistent" if 0 <= extra <= connections else "INCONSISTENT"
    return f"counter {final} = {ok} 2xx + {extra} (0..{connections} allowed): {verdict}"


def side_by_side(rounds: list[tuple[Load, Load]], subject: str, subject_proc: Proc, floor: str,
                 floor_proc: Proc, behind: tuple[str, Proc] | None = None) -> dict:
    """CPU µs per request of `subject` (in the first load of each round) and `floor` (in the
    second), their ratio per round, and the medians over the rounds; with `behind`, the
    CPU per request of the process both call, under each."""
    per_round = []
    for a, b in rounds:
        r = {"subject_us": a.cpu_us.get(subject_proc.name), "floor_us": b.cpu_us.get(floor_proc.name),
             "subject_rps": a.rps, "floor_rps": b.rps,
             "subject_p99_ms": a.p99_ms, "floor_p99_ms": b.p99_ms}
        r["ratio"] = r["subject_us"] / r["floor_us"] if r["subject_us"] and r["floor_us"] else None
        if behind:
            r["behind_subject_us"] = a.cpu_us.get(behind[1].name)
            r["behind_floor_us"] = b.cpu_us.get(behind[1].name)
        per_round.append(r)
    fact = {"subject": subject, "floor": floor, "behind": behind[0] if behind else None,
            "rounds": per_round, "errors": sum(a.errors + b.errors for a, b in rounds)}
    for key in per_round[0] if per_round else ():
        values = [r[key] for r in per_round]
        fact[key] = statistics.median(values) if None not in values else None
    return fact


def short_name(process: str, group: str) -> str:
    """A process's name without its group's tag: gateway-items-warm -> gateway,
    items-replicas-2-1 -> items-1; other names (bench-hop, uvicorn-a) as they are."""
    for kind in SERVICE_KINDS:
        if process == f"{kind}-{group}":
            return kind
        if process.startswith(f"{kind}-{group}-"):
            return kind + process[len(kind) + len(group) + 1:]
    return process


def cpu_text(load: Load, group: str) -> str:
    """'gateway 88, counter 41': CPU µs per request of the processes that spent at least
    CPU_SHOWN_SHARE of the load's CPU, most first."""
    total = sum(load.cpu_us.values())
    shown = sorted(((us, short_name(name, group)) for name, us in load.cpu_us.items()
                    if total and us >= CPU_SHOWN_SHARE * total), reverse=True)
    return ", ".join(f"{name} {us:.0f}" if us >= 100 else f"{name} {us:.1f}"
                     for us, name in shown) or "—"
