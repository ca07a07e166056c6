#!/usr/bin/env python3
"""Benchmark the Rust mesh side by side with the seed article's FastAPI design.

One command (Python 3.11 standard library only):

    python3 bench/run.py [--quick] [--no-build] [--duration SECS] [--out-dir DIR]
                         [--bin-dir DIR] [--work-dir DIR] [--timeout SECS]

What one run does, in order:

1. Builds the release binaries (`cargo build --release --bins`) unless
   --no-build, installs wrk and nginx with apt-get when they are missing, and
   the reference app's pinned requirements into a virtualenv of its own
   (<work-dir>/venv). Redis must answer on 127.0.0.1:6379.
2. Prepares the data: the items-service SQLite file with 10,000 rows, and a
   big one with 1,000,000 rows (100,000 with --quick), each made by starting
   items-service once so it creates its schema, stopping it and bulk inserting
   with sqlite3; the reference app gets its own SQLite file with the same
   10,000 rows (bench/reference/seed_db.py).
3. Runs the scenario groups. Each group starts the processes it needs on
   127.0.0.1 (Rust servers with `--listen 127.0.0.1:0`, reading the one stdout
   line `<name> listening on <ip:port>`), samples every process's idle RSS,
   runs its loads at 64 and 512 connections (wrk -t2, or grpc-load for gRPC),
   samples every process's peak RSS (VmHWM), and stops them all:
     fastapi      the reference: two uvicorn instances behind nginx; /test,
                  /items/{id}, /increment, and the per-instance counters
     hello        bench-hello's GET /test (a minimal axum server)
     test         GET /test through the gateway
     items-warm   GET /items/{id} over 10,000 ids after a warm-up pass
     items-cold   GET /items/{id} on ids never read before (big data set)
     counters     POST /counters/{name}/increment, and an exact-count check
     tasks        POST /tasks (echo), then the workers' drain rate
     grpc         GetItem and Increment straight to the services (grpc-load)
     replicas-N   items warm and counters with N = 1, 2, 3 replicas on Redis
     scale-N      GET /items/{id} and ListItems page 1 vs a deep page on the
                  10,000-row and the big data set, -c16
   A group that fails is noted in the report and the next one still runs;
   a missing bench-hello or grpc-load skips its rows with a note.
4. Writes BENCHMARKS.md and bench/results.json under --out-dir, with a
   Targets section where every target is PASS or MISS with its numbers
   (a target whose scenario could not be measured is a MISS).

Every process started is stopped at the end (SIGTERM, then SIGKILL after
10 s), every load is bounded in time (wrk -d, grpc-load --duration-secs) or in
count (warm-up, exact-count bursts, paging), and the whole run is under a
global timeout (--timeout). Loads target 127.0.0.1 only.
"""

import argparse
import concurrent.futures
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "bench" / "reference"
sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, str(REFERENCE))
import seed_db  # noqa: E402  (the reference's row generator, shared by both data sets)

HOST = "127.0.0.1"
CONNECTIONS = (64, 512)
WRK_THREADS = 2
WRK_TIMEOUT = "10s"
SEED_IDS = 10_000
BIG_IDS = 1_000_000
QUICK_BIG_IDS = 100_000
PAGE_SIZE = 50
DEEP_PAGE = 1000
SCALE_CONNECTIONS = 16
GRPC_CONNECTIONS = 4
TASK_WORKERS = 4
BURST_CLIENTS = 16
REPLICAS = (1, 2, 3)
REDIS_PORT = 6379
STOP_GRACE_S = 10
START_TIMEOUT_S = 60
DRAIN_TIMEOUT_S = 300
MIB = 1024  # KiB per MiB: RSS figures are kept in KiB

MESH_BINARIES = ("items-service", "cache-service", "tasks-service", "counter-service", "gateway")
# The mesh's logging settings. The Rust servers run with what a user gets when
# none is set (INFO, no per-request lines, WARN for failed and slow calls);
# one set in the environment of the run is passed on, and the report says so.
LOG_VARS = ("RUST_LOG", "MESH_ACCESS_LOG", "MESH_SLOW_MS", "MESH_LOG_ANSI")
NO_CACHE_GATEWAY_RUST_LOG = "error"
FASTAPI = "FastAPI (2 uvicorn + nginx)"
HELLO = "bench-hello"
MESH = "mesh"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class GlobalTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that no group's error handling swallows it."""


def on_alarm(_signum, _frame):
    raise GlobalTimeout("the run exceeded --timeout")


# --------------------------------------------------------------------------
# Setup: tools, the reference's virtualenv, the build, Redis
# --------------------------------------------------------------------------

def ensure_apt_tools() -> dict[str, str]:
    """wrk and nginx, installed from Debian when missing; returns their paths."""
    wanted = {"wrk": "wrk", "nginx": "nginx"}
    found = {cmd: tool_path(cmd) for cmd in wanted}
    missing = [wanted[cmd] for cmd, path in found.items() if path is None]
    if missing:
        log(f"installing {', '.join(missing)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)
        found = {cmd: tool_path(cmd) for cmd in wanted}
    for cmd, path in found.items():
        if path is None:
            sys.exit(f"{cmd} is still missing after apt-get install")
    return found


def tool_path(cmd: str) -> str | None:
    # nginx lives in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin")


def ensure_venv(work_dir: Path) -> Path:
    """A virtualenv with bench/reference/requirements.txt; returns its python."""
    venv = work_dir / "venv"
    python = venv / "bin" / "python"
    requirements = REFERENCE / "requirements.txt"
    stamp = venv / "requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    log(f"installing the reference requirements into {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-r", str(requirements)],
        check=True,
    )
    stamp.write_text(digest)
    return python


def cargo_build() -> None:
    log("cargo build --release --bins")
    subprocess.run(["cargo", "build", "--release", "--bins"], cwd=REPO, check=True)


def redis_call(*args: str) -> object:
    """One Redis command over RESP; enough of the protocol for PING, SCAN, DEL."""
    with socket.create_connection((HOST, REDIS_PORT), timeout=5) as sock:
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        sock.sendall(payload.encode())
        return read_resp(sock.makefile("rb"))


def read_resp(stream) -> object:
    line = stream.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(f"redis: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode()
    if kind == b"*":
        return [read_resp(stream) for _ in range(int(rest))]
    raise RuntimeError(f"redis: unexpected reply {line!r}")


def redis_delete_prefix(prefix: str) -> int:
    deleted, cursor = 0, "0"
    while True:
        cursor, keys = redis_call("SCAN", cursor, "MATCH", prefix + "*", "COUNT", "1000")
        if keys:
            deleted += redis_call("DEL", *keys)
        if cursor == "0":
            return deleted


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    addr: str  # ip:port it serves on

    @property
    def url(self) -> str:
        return f"http://{self.addr}"


class Fleet:
    """Starts processes, remembers them, and stops them (all of them at the end)."""

    def __init__(self, run_dir: Path, bin_dir: Path):
        self.run_dir = run_dir
        self.bin_dir = bin_dir
        self.procs: list[Proc] = []
        self.crashed: list[str] = []

    def rust(self, name: str, binary: str, *args: str, rust_log: str | None = None) -> Proc:
        """A Rust server on an ephemeral port; its announce line gives the address.
        It logs with the defaults (see LOG_VARS) unless `rust_log` sets RUST_LOG."""
        log_path = self.run_dir / "logs" / f"{name}.log"
        env = dict(os.environ)
        if rust_log is not None:
            env["RUST_LOG"] = rust_log
        if binary in MESH_BINARIES:
            # Several replicas run side by side: each admin listener on a free port.
            args = ("--admin-listen", f"{HOST}:0", *args)
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(
                [str(self.bin_dir / binary), "--listen", f"{HOST}:0", *args],
                stdout=subprocess.PIPE, stderr=log_file, env=env,
            )
        proc = Proc(name, popen, log_path, "")
        self.procs.append(proc)
        proc.addr = read_announce(popen, log_path)
        popen.stdout.close()
        return proc

    def plain(self, name: str, argv: list[str], port: int, cwd: Path | None = None,
              env: dict | None = None) -> Proc:
        """Any other server, told its port; ready once the port accepts."""
        log_path = self.run_dir / "logs" / f"{name}.log"
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                     cwd=cwd, env=env)
        proc = Proc(name, popen, log_path, f"{HOST}:{port}")
        self.procs.append(proc)
        wait_for_port(port, popen, log_path)
        return proc

    def stop(self, procs: list[Proc]) -> None:
        """SIGTERM every one, then SIGKILL whatever is left after STOP_GRACE_S."""
        live = [p for p in procs if p.popen.poll() is None]
        for p in procs:
            if p not in live:
                self.crashed.append(f"{p.name} exited on its own with code {p.popen.returncode}"
                                    f" before it was stopped (log: {p.log_path})")
        for p in live:
            p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in live:
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{p.name} ignored SIGTERM for {STOP_GRACE_S} s; killing it")
                p.popen.kill()
                p.popen.wait()
        self.procs = [p for p in self.procs if p not in procs]

    def stop_all(self) -> None:
        self.stop(list(reversed(self.procs)))


def read_announce(popen: subprocess.Popen, log_path: Path) -> str:
    """The `<name> listening on <ip:port>` line; fails if it does not come."""
    with selectors.DefaultSelector() as sel:
        sel.register(popen.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=START_TIMEOUT_S):
            raise RuntimeError(f"no 'listening on' line within {START_TIMEOUT_S} s; see {log_path}")
    line = popen.stdout.readline().decode().strip()
    match = re.fullmatch(r"\S+ listening on (\S+:\d+)", line)
    if not match:
        raise RuntimeError(f"unexpected first stdout line {line!r}; see {log_path}")
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, popen: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"exited with {popen.returncode}; see {log_path}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not open within {START_TIMEOUT_S} s; see {log_path}")


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB, summed over the process and its descendants (nginx workers)."""
    rss = hwm = 0
    for p in [pid, *descendants(pid)]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
        rss += int(fields.get("VmRSS", 0))
        hwm += int(fields.get("VmHWM", 0))
    return rss, hwm


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


# --------------------------------------------------------------------------
# Plain HTTP: readiness, single calls, warm-up, exact-count bursts
# --------------------------------------------------------------------------

def http_call(base: str, method: str, path: str, body: dict | None = None,
              conn: http.client.HTTPConnection | None = None) -> tuple[int, object]:
    """(status, parsed JSON body or None); reuses `conn` when given."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=30)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, None
    finally:
        if own:
            conn.close()


def wait_http_ok(base: str, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if http_call(base, "GET", path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base}{path} did not answer 200 within {START_TIMEOUT_S} s")


def parallel_requests(base: str, method: str, paths: list[str], clients: int,
                      body: dict | None = None) -> int:
    """Sends every path once from `clients` keep-alive connections; returns the 2xx count."""
    chunks = [paths[i::clients] for i in range(clients)]

    def run(chunk: list[str]) -> int:
        conn = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=30)
        try:
            return sum(200 <= http_call(base, method, p, body, conn)[0] < 300 for p in chunk)
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(run, chunks))


# --------------------------------------------------------------------------
# wrk and grpc-load
# --------------------------------------------------------------------------

# Every wrk script starts with this: each thread learns its number, and done()
# prints one line of JSON with wrk's exact counters (latencies in µs) and the
# threads' x-cache tallies, so nothing is parsed from wrk's rounded text.
LUA_COMMON = r"""
local threads = {}
hits, misses, bypass, max_id = 0, 0, 0, 0
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
local function total(name, fold)
  local acc = 0
  for _, t in ipairs(threads) do acc = fold(acc, t:get(name) or 0) end
  return acc
end
local function add(a, b) return a + b end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "non_2xx": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "hits": %d, "misses": %d, "bypass": %d, "max_id": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    total("hits", add), total("misses", add), total("bypass", add), total("max_id", math.max)))
end
"""

LUA_TALLY = r"""
function response(status, headers, body)
  local how = headers["x-cache"] or headers["X-Cache"]
  if how == "hit" then hits = hits + 1
  elseif how == "miss" then misses = misses + 1
  elseif how == "bypass" then bypass = bypass + 1 end
end
"""


def lua_post(body: dict) -> str:
    return (f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
            'wrk.headers["Content-Type"] = "application/json"\n')


def lua_random_ids(prefix: str, n: int) -> str:
    """GET <prefix><random id in 1..n>, each thread with its own seed."""
    return (f"function init(args) math.randomseed(os.time() * 1000 + (tid or 1)) end\n"
            f'function request() return wrk.format(nil, "{prefix}" .. math.random(1, {n})) end\n'
            + LUA_TALLY)


def lua_walk_ids(prefix: str, n: int, start: int) -> str:
    """GET <prefix><id> walking start, start+1, ... split over the threads, never
    repeating an id until past n (then wrapping, which the tally shows as hits)."""
    return (f"next_raw = {start}\n"
            f"function init(args) next_raw = {start} + (tid or 1) - 1 end\n"
            "function request()\n"
            "  local raw = next_raw\n"
            f"  next_raw = next_raw + {WRK_THREADS}\n"
            "  if raw > max_id then max_id = raw end\n"
            f'  return wrk.format(nil, "{prefix}" .. ((raw - 1) % {n} + 1))\n'
            "end\n" + LUA_TALLY)


@dataclass
class Load:
    """The outcome of one measured load, in the units of the report."""
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    ok: int  # 2xx (wrk) or successful calls (grpc-load)
    detail: dict = field(default_factory=dict)


class Wrk:
    def __init__(self, binary: str, run_dir: Path, duration: int):
        self.binary = binary
        self.scripts = run_dir / "lua"
        self.duration = duration
        self.count = 0

    def run(self, url: str, connections: int, script: str = "") -> Load:
        """One wrk load of the run's duration; `script` is appended to LUA_COMMON."""
        self.count += 1
        path = self.scripts / f"{self.count:03d}.lua"
        path.write_text(LUA_COMMON + script)
        argv = [self.binary, f"-t{WRK_THREADS}", f"-c{connections}", f"-d{self.duration}s",
                "--latency", "--timeout", WRK_TIMEOUT, "-s", str(path), url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=self.duration + 60)
        (self.scripts / f"{self.count:03d}.out").write_text(" ".join(argv) + "\n" + out.stdout + out.stderr)
        match = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
        if out.returncode != 0 or not match:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[:500]}")
        raw = json.loads(match.group(1))
        errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors",
                                      "non_2xx", "timeouts"))
        return Load(
            requests=raw["requests"],
            rps=raw["requests"] / (raw["duration_us"] / 1e6),
            p50_ms=raw["p50_us"] / 1000, p90_ms=raw["p90_us"] / 1000,
            p99_ms=raw["p99_us"] / 1000, max_ms=raw["max_us"] / 1000,
            errors=errors, ok=raw["requests"] - raw["non_2xx"], detail=raw,
        )


def grpc_load(binary: Path, target: str, call: str, concurrency: int, duration: int,
              ids: int | None = None) -> Load:
    argv = [str(binary), "--target", target, "--call", call, "--concurrency", str(concurrency),
            "--connections", str(GRPC_CONNECTIONS), "--duration-secs", str(duration), "--json"]
    if ids is not None:
        argv += ["--ids", str(ids)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"grpc-load failed ({out.returncode}): {out.stderr.strip()[:500]}")
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    return Load(requests=raw["requests"], rps=raw["rps"], p50_ms=raw["p50_ms"],
                p90_ms=raw["p90_ms"], p99_ms=raw["p99_ms"], max_ms=raw["max_ms"],
                errors=raw["errors"], ok=raw["requests"] - raw["errors"], detail=raw)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def prepare_items_db(fleet: Fleet, data_dir: Path, rows: int) -> None:
    """items-service creates its schema; then `rows` rows go in with sqlite3."""
    data_dir.mkdir(parents=True)
    proc = fleet.rust(f"items-schema-{data_dir.name}", "items-service", "--data-dir", str(data_dir))
    fleet.stop([proc])
    now_ms = int(time.time() * 1000)
    conn = sqlite3.connect(data_dir / "items.db")
    try:
        conn.execute("PRAGMA synchronous = OFF")
        with conn:
            conn.executemany(
                "INSERT INTO items (id, name, description, price_cents, tags, created_ms,"
                " updated_ms, version) VALUES (?, ?, ?, ?, '[]', ?, ?, 1)",
                ((i, name, desc, price, now_ms, now_ms)
                 for i, name, desc, price in seed_db.rows(rows)),
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------

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
    def __init__(self, args, run_dir: Path, tools: dict[str, str], venv_python: Path):
        self.args = args
        self.run_dir = run_dir
        self.fleet = Fleet(run_dir, args.bin_dir)
        self.wrk = Wrk(tools["wrk"], run_dir, args.duration)
        self.nginx = tools["nginx"]
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
        log(f"  {label} c={connections}: {load.rps:,.0f} rps, p99 {load.p99_ms:.2f} ms,"
            f" errors {load.errors}")

    def group(self, name: str, procs: list[Proc], body) -> None:
        """Idle RSS, the group's loads, peak RSS; its processes stop either way."""
        log(f"group {name}")
        try:
            time.sleep(0.5)
            idle = {p.name: memory_kib(p.popen.pid)[0] for p in procs}
            body()
            peak = {p.name: memory_kib(p.popen.pid)[1] for p in procs}
            self.memory[name] = {n: {"idle_kib": idle[n], "peak_kib": peak[n]} for n in idle}
        finally:
            self.fleet.stop(procs)

    def start_mesh(self, tag: str, items_dir: Path, replicas: int = 1, redis: bool = False,
                   tasks_workers: int = TASK_WORKERS, cache: bool = True) -> Mesh:
        """items, cache, counter (x replicas), tasks and a gateway over them.
        Without `cache` the gateway's cache endpoint is a closed port (x-cache: bypass)."""
        procs: dict[str, list[Proc]] = {}

        def backend(kind: str) -> list[str]:
            if not redis:
                return []
            return ["--redis-url", f"redis://{HOST}:{REDIS_PORT}",
                    "--redis-prefix", f"{self.redis_prefix}{tag}:{kind}:"]

        for r in range(1, replicas + 1):
            suffix = f"{tag}-{r}" if replicas > 1 else tag
            procs.setdefault("items", []).append(self.fleet.rust(
                f"items-{suffix}", "items-service", "--data-dir", str(items_dir)))
            if cache:
                procs.setdefault("cache", []).append(self.fleet.rust(
                    f"cache-{suffix}", "cache-service", *backend("cache")))
            procs.setdefault("counter", []).append(self.fleet.rust(
                f"counter-{suffix}", "counter-service", *backend("counter")))
        tasks_dir = self.run_dir / "data" / f"tasks-{tag}"
        tasks_dir.mkdir(parents=True, exist_ok=True)
        procs["tasks"] = [self.fleet.rust(f"tasks-{tag}", "tasks-service", "--data-dir",
                                          str(tasks_dir), "--workers", str(tasks_workers))]
        urls = {kind: ",".join(p.url for p in ps) for kind, ps in procs.items()}
        cache_urls = urls["cache"] if cache else f"http://{HOST}:{free_port()}"
        # A gateway without a cache logs a warning per request (the cache-outage
        # path, not what the scale group measures): that one gateway logs errors
        # only, and the report says so. Every other process logs as a user's does.
        gateway = self.fleet.rust(
            f"gateway-{tag}", "gateway", "--items", urls["items"], "--cache", cache_urls,
            "--tasks", urls["tasks"], "--counter", urls["counter"],
            rust_log=None if cache else NO_CACHE_GATEWAY_RUST_LOG)
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
        seed_db.seed(str(db), SEED_IDS)
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
                left = len(http_call(base, "GET", "/tasks?status=queued&page_size=1")[1]["tasks"])
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
                            grpc_load(binary, items.url, "get-item", c, d, ids=SEED_IDS),
                            "grpc", "items")
            for c in CONNECTIONS:
                self.record("grpc", "gRPC Increment (direct)", MESH, c,
                            grpc_load(binary, counter.url, "increment", c, d),
                            "grpc", "increment")

        self.group("grpc", [items, counter], loads)

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
            token = page_token(base, deep)
            page1 = f"{base}/items?page_size={PAGE_SIZE}"
            self.record("scale", f"ListItems page 1, {label}", MESH, c, self.wrk.run(page1, c),
                        group)
            self.record("scale", f"ListItems page {deep}, {label}", MESH, c,
                        self.wrk.run(with_token(page1, token), c), group)

        self.group(group, mesh.all(), loads)

    # ---- the whole run ---------------------------------------------------

    def run(self) -> None:
        log(f"seeding items: {SEED_IDS:,} and {self.big_ids:,} rows")
        prepare_items_db(self.fleet, self.items_small, SEED_IDS)
        prepare_items_db(self.fleet, self.items_big, self.big_ids)
        groups = [self.run_fastapi, self.run_hello, self.run_mesh_test, self.run_items_warm,
                  self.run_items_cold, self.run_counters, self.run_tasks, self.run_grpc,
                  *(lambda n=n: self.run_replicas(n) for n in REPLICAS),
                  lambda: self.run_scale(self.items_small, SEED_IDS),
                  lambda: self.run_scale(self.items_big, self.big_ids)]
        for run_group in groups:
            self.attempt(run_group)
        self.notes += self.fleet.crashed

    def attempt(self, run_group) -> None:
        """Runs one group; a failure is noted in the report and the next group still runs."""
        try:
            run_group()
        except Exception as e:  # noqa: BLE001  (any failure of one group is reported)
            self.notes.append(f"A scenario group failed: {type(e).__name__}: {e}")
            log(f"group failed: {e!r}")
            self.fleet.stop_all()


def hit_note(load: Load) -> str:
    d = load.detail
    seen = d["hits"] + d["misses"] + d["bypass"]
    if not seen:
        return ""
    return ("x-cache: " + ", ".join(f"{d[k] / seen:.0%} {k}" for k in ("hits", "misses", "bypass")))


def wrk_count_note(final: int, ok: int, connections: int) -> str:
    """A counter after a wrk load: at least wrk's 2xx count, and at most one more per
    connection (the requests wrk had sent but not seen answered when it stopped)."""
    extra = final - ok
    verdict = "consistent" if 0 <= extra <= connections else "INCONSISTENT"
    return f"counter {final} = {ok} 2xx + {extra} (0..{connections} allowed): {verdict}"


def with_token(path: str, token: str) -> str:
    return path + (f"&page_token={urllib.parse.quote(token)}" if token else "")


def count_queued(base: str) -> int:
    """Queued tasks, counted by paging GET /tasks?status=queued (at most 10,000 pages)."""
    total, token = 0, ""
    for _ in range(10_000):
        body = http_call(base, "GET", with_token("/tasks?status=queued&page_size=1000", token))[1]
        total += len(body["tasks"])
        token = body["next_page_token"]
        if not token:
            return total
    raise RuntimeError("more than 10,000 pages of queued tasks")


def page_token(base: str, page: int) -> str:
    """The token of ListItems page `page` (1-based), following next_page_token."""
    token = ""
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=30)
    try:
        for _ in range(page - 1):
            path = with_token(f"/items?page_size={PAGE_SIZE}", token)
            status, body = http_call(base, "GET", path, conn=conn)
            if status != 200 or not body["next_page_token"]:
                raise RuntimeError(f"ListItems ended before page {page}")
            token = body["next_page_token"]
    finally:
        conn.close()
    return token


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def machine_facts(args, tools: dict[str, str]) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model.group(1).strip() if model else "unknown",
        "memory_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(),
        "rustc": command_output(["rustc", "--version"]),
        "python": platform.python_version(),
        "wrk": command_output([tools["wrk"], "-v"]).splitlines()[0],
        "nginx": command_output([tools["nginx"], "-v"]),
        "commit": command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "duration_s": args.duration,
        "quick": args.quick,
        "bin_dir": str(args.bin_dir),
        "logging": logging_fact(),
    }


def logging_fact() -> str:
    """The mesh's logging settings in force, for the report."""
    set_here = [f"{k}={os.environ[k]}" for k in LOG_VARS if k in os.environ]
    where = (f"set in this run's environment: {', '.join(set_here)} (NOT the defaults)"
             if set_here else "the defaults (INFO level, access log off, slow-call WARN at 1000 ms)")
    return (f"{where}; the scale group's cache-less gateway runs with"
            f" RUST_LOG={NO_CACHE_GATEWAY_RUST_LOG}, since every read it serves logs a"
            f" cache-unavailable warning")


def command_output(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError:
        return "unknown"
    return (out.stdout + out.stderr).strip() or "unknown"


def reference(rows: list[Row], system: str, compare: str | None, connections: int) -> Row | None:
    for r in rows:
        if compare and r.system == system and r.compare == compare and r.connections == connections:
            return r
    return None


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:.1f}x" if b else "—"


def mib(kib: int) -> str:
    return f"{kib / MIB:.1f}"


def check(name: str, ok: bool, numbers: str) -> dict:
    return {"target": name, "status": "PASS" if ok else "MISS", "numbers": numbers}


def targets(bench: Bench) -> list[dict]:
    rows, memory = bench.rows, bench.memory
    found = []

    def by(label: str) -> list[Row]:
        return [r for r in rows if r.label == label and r.system == MESH]

    def per_conn(name, mesh_rows, ref_system, ref_compare, want):
        if not mesh_rows:
            found.append(check(name, False, "not measured"))
            return
        parts, ok = [], True
        for r in mesh_rows:
            ref = reference(rows, ref_system, ref_compare, r.connections)
            good, text = want(r, ref)
            ok &= good
            parts.append(f"c{r.connections}: {text}")
        found.append(check(name, ok, "; ".join(parts)))

    def rps_at_least(factor):
        def want(r, ref):
            if ref is None:
                return False, "no reference measured"
            return (r.load.rps >= factor * ref.load.rps,
                    f"{r.load.rps:,.0f} vs {ref.load.rps:,.0f} rps = {r.load.rps / ref.load.rps:.2f}x")
        return want

    test = by("GET /test (gateway)")
    per_conn("GET /test through the gateway >= 0.7x bench-hello rps", test, HELLO, "test", rps_at_least(0.7))
    per_conn("GET /test through the gateway >= 10x FastAPI rps", test, FASTAPI, "test", rps_at_least(10))

    def items_want(r, ref):
        if ref is None:
            return False, "no reference measured"
        good = r.load.rps >= 10 * ref.load.rps and r.load.p99_ms <= ref.load.p99_ms
        return good, (f"{r.load.rps / ref.load.rps:.1f}x rps ({r.load.rps:,.0f} vs {ref.load.rps:,.0f}),"
                      f" p99 {r.load.p99_ms:.2f} vs {ref.load.p99_ms:.2f} ms")

    per_conn("GET /items/{id} warm >= 10x FastAPI rps, p99 no worse",
             by("GET /items/{id} warm"), FASTAPI, "items", items_want)
    per_conn("Counter increments >= 10x FastAPI /increment rps",
             by("POST /counters/{name}/increment"), FASTAPI, "increment", rps_at_least(10))

    exact = bench.facts.get("exact", {})
    if exact:
        # The bursts must count exactly; every wrk load must fit its in-flight bound.
        wrk_rows = [r for r in rows if "final" in r.load.detail]
        ok = all(e["final"] == e["sent"] == e["ok"] for e in exact.values()) and all(
            0 <= r.load.detail["final"] - r.load.ok <= r.connections for r in wrk_rows)
        text = "; ".join(f"{g}: {e['sent']} sent, {e['ok']} 2xx, counter {e['final']}"
                         for g, e in exact.items())
        bad = [f"{r.group} c{r.connections}" for r in wrk_rows if "INCONSISTENT" in r.note]
        text += f"; wrk loads {'inconsistent: ' + ', '.join(bad) if bad else 'all consistent'}"
        found.append(check("Counter final count exact (every replica count)", ok, text))
    else:
        found.append(check("Counter final count exact", False, "not measured"))

    idle = {}
    for procs in memory.values():
        for name, m in procs.items():
            kind = service_kind(name)
            if kind:
                idle[kind] = max(idle.get(kind, 0), m["idle_kib"])
    if idle:
        found.append(check("Each mesh process idle RSS < 30 MiB (worst across groups)",
                           all(v < 30 * MIB for v in idle.values()),
                           ", ".join(f"{k} {mib(v)} MiB" for k, v in sorted(idle.items()))))
    else:
        found.append(check("Each mesh process idle RSS < 30 MiB", False, "not measured"))

    gw = {g: m for g, procs in memory.items() for n, m in procs.items()
          if service_kind(n) == "gateway" and not g.startswith("scale")}
    if gw:
        worst = max(m["peak_kib"] for m in gw.values())
        found.append(check("Gateway peak RSS < 64 MiB with 512 connections", worst < 64 * MIB,
                           ", ".join(f"{g} {mib(m['peak_kib'])} MiB" for g, m in gw.items())))
    else:
        found.append(check("Gateway peak RSS < 64 MiB with 512 connections", False, "not measured"))

    big = f"{bench.big_ids:,} rows"
    deep = min(DEEP_PAGE, bench.big_ids // PAGE_SIZE)
    p1 = by(f"ListItems page 1, {big}")
    pd = by(f"ListItems page {deep}, {big}")
    if p1 and pd:
        a, b = p1[0].load, pd[0].load
        found.append(check(f"ListItems page {deep} p50 within 1.5x of page 1 ({big})",
                           b.p50_ms <= 1.5 * a.p50_ms,
                           f"p50 {b.p50_ms:.2f} vs {a.p50_ms:.2f} ms = {b.p50_ms / a.p50_ms:.2f}x;"
                           f" rps {b.rps:,.0f} vs {a.rps:,.0f}"))
    else:
        found.append(check("ListItems page 1000 within 1.5x of page 1", False, "not measured"))
    return found


def service_kind(process_name: str) -> str | None:
    for kind in ("items", "cache", "counter", "tasks", "gateway"):
        if process_name.startswith(kind + "-"):
            return kind
    return None


TABLES = [
    ("test", "GET /test", "The article's load-balanced hello world. Mesh: through the gateway."),
    ("items", "GET /items/{id}",
     "Random ids over 10,000 rows. Warm: the gateway's cache was filled by one pass over every id"
     " first. Cold: a fresh cache and ids never read before, walked through the big data set, so"
     " every read goes cache miss -> items-service -> cache fill (the x-cache tally shows it)."),
    ("counters", "Counter increments",
     "Mesh: POST /counters/{name}/increment (one counter per run, in-process counter service)."
     " FastAPI: the article's GET /increment, whose lock-guarded counter lives in each instance."),
    ("tasks", "Task submission and drain",
     f"POST /tasks with echo tasks to a tasks-service with no workers; after each load a worker"
     f" replica ({TASK_WORKERS} workers) on the same queue is started and timed until"
     f" GET /tasks?status=queued is empty. The article's Celery has no reference here."),
    ("grpc", "Direct gRPC (no gateway)",
     f"grpc-load straight to items-service (GetItem over 10,000 ids) and counter-service"
     f" (Increment), {GRPC_CONNECTIONS} HTTP/2 connections; the ratio is to FastAPI's HTTP"
     f" equivalent."),
    ("replicas", "Replicas behind the gateway",
     "Cache and counter replicas share Redis (127.0.0.1:6379, a prefix of this run), items"
     " replicas share one SQLite file. The items rows are cache-warm reads."),
    ("scale", "Scale check",
     f"-c{SCALE_CONNECTIONS}. GET /items/{{id}}: random ids through a gateway with no cache"
     f" (x-cache: bypass), so every read reaches items-service. ListItems: page_size"
     f" {PAGE_SIZE}, the deep page's token found by following next_page_token."),
]


def render_markdown(bench: Bench, facts: dict, found: list[dict]) -> str:
    out = ["# Benchmarks", "",
           "Generated by `python3 bench/run.py`"
           + (" --quick" if facts["quick"] else "") + f" ({facts['duration_s']} s per load)."
           " Every load runs on the same machine as the servers (wrk -t2 shares the cores),"
           " against 127.0.0.1.", "",
           "## Machine", ""]
    for key in ("date", "nproc", "cpu", "memory_gib", "kernel", "rustc", "python", "wrk",
                "nginx", "commit", "bin_dir", "logging"):
        out.append(f"- {key}: {facts[key]}")
    out += ["", "## Targets", ""]
    out += [f"- **{t['status']}** {t['target']}: {t['numbers']}" for t in found]
    for table, title, text in TABLES:
        rows = [r for r in bench.rows if r.table == table]
        if not rows:
            continue
        out += ["", f"## {title}", "", text, "",
                "| what | system | conns | rps | p50 ms | p90 ms | p99 ms | max ms | errors"
                " | x FastAPI | x hello | note |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            fa = reference(bench.rows, FASTAPI, r.compare, r.connections) if r.system == MESH else None
            he = reference(bench.rows, HELLO, r.compare, r.connections) if r.system == MESH else None
            lo = r.load
            out.append(
                f"| {r.label} | {r.system} | {r.connections} | {lo.rps:,.0f} | {lo.p50_ms:.2f}"
                f" | {lo.p90_ms:.2f} | {lo.p99_ms:.2f} | {lo.max_ms:.2f} | {lo.errors}"
                f" | {ratio(lo.rps, fa.load.rps if fa else None)}"
                f" | {ratio(lo.rps, he.load.rps if he else None)} | {r.note} |")
        out += ["", "Peak RSS (MiB): " + "; ".join(
            f"{g}: " + ", ".join(f"{n} {mib(m['peak_kib'])}" for n, m in bench.memory.get(g, {}).items())
            for g in dict.fromkeys(r.group for r in rows))]
        out += table_facts(bench, table)
    out += ["", "## Memory", "", "Idle: VmRSS half a second after start. Peak: VmHWM after the"
            " group's loads (nginx: master plus workers).", "",
            "| group | process | idle MiB | peak MiB |", "|---|---|---:|---:|"]
    for g, procs in bench.memory.items():
        out += [f"| {g} | {n} | {mib(m['idle_kib'])} | {mib(m['peak_kib'])} |" for n, m in procs.items()]
    if bench.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in bench.notes]
    return "\n".join(out) + "\n"


def table_facts(bench: Bench, table: str) -> list[str]:
    lines = []
    if table == "counters":
        fc = bench.facts.get("fastapi_counter")
        if fc:
            lines.append(
                f"FastAPI: {fc['sent']} GET /increment through nginx ({fc['ok']} 2xx), then three"
                f" straight to each instance, which answered "
                + "; ".join(f"{n} {', '.join(map(str, v))}" for n, v in fc["instances"].items())
                + f" (a shared counter would answer {fc['sent'] + 1}..): the asyncio lock and"
                f" the counter live in one process each.")
        for g, e in bench.facts.get("exact", {}).items():
            lines.append(f"Mesh exact check ({g}): {e['sent']} increments from {BURST_CLIENTS}"
                         f" clients, {e['ok']} 2xx, GET /counters reads {e['final']}.")
        lines.append("wrk stops mid-flight, so increments it sent but never saw answered make the"
                     " final count exceed its 2xx count by at most the connection count.")
    if table == "tasks":
        for c, d in bench.facts.get("drain", {}).items():
            state = "drained" if d["drained"] else f"NOT drained within {DRAIN_TIMEOUT_S} s"
            lines.append(f"c{c}: {d['submitted_2xx']} accepted, {d['queued']} queued, {state} in"
                         f" {d['seconds']:.1f} s = {d['rate']:,.0f} tasks/s with {d['workers']}"
                         f" workers (worker replica peak RSS {mib(d['worker_peak_kib'])} MiB).")
    return [""] + [f"- {line}" for line in lines] if lines else []


def results_json(bench: Bench, facts: dict, found: list[dict]) -> dict:
    return {
        "machine": facts,
        "rows": [{"table": r.table, "label": r.label, "system": r.system,
                  "connections": r.connections, "group": r.group, "compare": r.compare,
                  "note": r.note, **{k: v for k, v in vars(r.load).items()}} for r in bench.rows],
        "memory_kib": bench.memory,
        "facts": bench.facts,
        "targets": found,
        "notes": bench.notes,
    }


def write_report(bench: Bench, facts: dict, out_dir: Path) -> None:
    found = targets(bench)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "BENCHMARKS.md").write_text(render_markdown(bench, facts, found))
    (out_dir / "bench").mkdir(parents=True, exist_ok=True)
    (out_dir / "bench" / "results.json").write_text(
        json.dumps(results_json(bench, facts, found), indent=2, default=str) + "\n")
    for t in found:
        log(f"{t['status']}: {t['target']}: {t['numbers']}")
    log(f"wrote {out_dir / 'BENCHMARKS.md'} and {out_dir / 'bench' / 'results.json'}")


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 s loads, a 100,000-row big data set, smaller bursts")
    p.add_argument("--no-build", action="store_true", help="skip cargo build --release --bins")
    p.add_argument("--duration", type=int, help="seconds per load (default 10, 2 with --quick)")
    p.add_argument("--out-dir", type=Path, default=REPO,
                   help="where BENCHMARKS.md and bench/results.json go (default: the repo root)")
    p.add_argument("--bin-dir", type=Path, default=REPO / "target" / "release",
                   help="where the Rust binaries are (default target/release)")
    p.add_argument("--work-dir", type=Path, default=REPO / "target" / "bench",
                   help="the reference venv and each run's data and logs (default target/bench)")
    p.add_argument("--timeout", type=int, default=3600,
                   help="global time limit of the run in seconds (default 3600)")
    args = p.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 10)
    args.bin_dir = args.bin_dir.resolve()
    args.out_dir = args.out_dir.resolve()
    args.work_dir = args.work_dir.resolve()
    return args


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536) if hard > 0 else soft, hard))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.timeout)
    raise_fd_limit()
    if not args.no_build:
        cargo_build()
    missing = [b for b in MESH_BINARIES if not (args.bin_dir / b).exists()]
    if missing:
        sys.exit(f"missing binaries in {args.bin_dir}: {', '.join(missing)}")
    try:
        redis_call("PING")
    except OSError as e:
        sys.exit(f"Redis does not answer on {HOST}:{REDIS_PORT}: {e}")
    tools = ensure_apt_tools()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    venv_python = ensure_venv(args.work_dir)
    run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=args.work_dir))
    for sub in ("logs", "lua", "data"):
        (run_dir / sub).mkdir()
    log(f"run directory {run_dir}")
    bench = Bench(args, run_dir, tools, venv_python)
    failure = None
    try:
        bench.run()
    except (Exception, GlobalTimeout) as e:  # report what was measured, then fail
        failure = e
        bench.notes.append(f"The run stopped early: {type(e).__name__}: {e}")
        log(f"stopped early: {e!r}")
    finally:
        signal.alarm(0)
        bench.fleet.stop_all()
        log(f"removed {redis_delete_prefix(bench.redis_prefix)} Redis keys under {bench.redis_prefix}")
    write_report(bench, machine_facts(args, tools), args.out_dir)
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
