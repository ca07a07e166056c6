"""The queue group: the tasks service on PostgreSQL side by side with
graphile-worker (npm, 0.17.3, bench/queue/) on the same PostgreSQL, in one run,
both with QUEUE_WORKERS workers and no-op tasks:

- submit, one task per call: wrk -c1 and -c64 POST /tasks through the
  gateway, and 1 and 64 concurrent addJob loops (graphile-worker's own
  client, straight to PostgreSQL), each for the run's load duration;
- submit in batches of 1,000: wrk -c4 POST /tasks:batch, and 4 concurrent
  addJobs calls;
- drain: QUEUE_N tasks queued with no worker running, then a worker process
  is started and timed until the database holds nothing queued or running
  (the tasks service: QueueStats; graphile-worker: its jobs table empty),
  with that process's peak RSS and the CPU it and PostgreSQL spent;
  graphile-worker twice, as it comes and with its batching options (a local
  queue of 500, batched completions);
- latency at low load: LATENCY_N tasks one at a time, LATENCY_GAP_MS apart, to
  a worker process that is idle; the wait from just before the submit call to
  the task's start (milliseconds, one clock).

Every phase has its own schema; all are dropped at the end. PostgreSQL is
MESH_BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test).
"""

import json
import os
import shutil
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path

from . import REPO, log
from .calls import http_call, wait_http_ok
from .fleet import Proc, memory_kib, stat_ticks
from .loads import lua_post

QUEUE_N = 20_000
QUEUE_WORKERS = 4
SINGLE_CLIENTS = (1, 64)
BATCH_CLIENTS = 4
BATCH = 1000
LATENCY_N = 200
LATENCY_GAP_MS = 20
DRAIN_LIMIT_S = 300
GRAPHILE = "graphile-worker 0.17.3"
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def postgres_url() -> str:
    return os.environ.get("MESH_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")


class PgCpu:
    """CPU seconds PostgreSQL's processes spend while it is sampled: each
    process's ticks since the first sample (or since it started, for a
    backend that came later), kept up to its last sample."""

    def __init__(self):
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.sample(initial=True)

    @staticmethod
    def pids() -> list[int]:
        found = []
        for comm in Path("/proc").glob("[0-9]*/comm"):
            try:
                if comm.read_text().strip().startswith("postgres"):
                    found.append(int(comm.parent.name))
            except (OSError, ValueError):
                continue
        return found

    def sample(self, initial: bool = False) -> None:
        for pid in self.pids():
            ticks = stat_ticks(pid)
            if ticks is None:
                continue
            self.first.setdefault(pid, ticks if initial else 0)
            self.last[pid] = ticks

    def seconds(self) -> float:
        return sum(self.last[p] - self.first[p] for p in self.last) * TICK_S


def percentiles(waits: list[float]) -> dict:
    if not waits:
        return {"n": 0}
    q = statistics.quantiles(waits, n=100, method="inclusive")
    return {"n": len(waits), "p50_ms": statistics.median(waits), "p99_ms": q[98], "max_ms": max(waits)}


class QueueGroup:
    def __init__(self, bench):
        self.bench = bench
        self.url = postgres_url()
        self.stamp = f"q{os.getpid()}_{int(time.time()) % 100000}"
        self.schemas: list[str] = []
        self.result: dict = {"n": QUEUE_N, "workers": QUEUE_WORKERS, "single_clients": SINGLE_CLIENTS,
                             "batch_clients": BATCH_CLIENTS, "batch": BATCH,
                             "latency_n": LATENCY_N, "latency_gap_ms": LATENCY_GAP_MS}
        self.node_dir = bench.run_dir / "graphile"

    # ---- plumbing -------------------------------------------------------

    def psql(self, sql: str) -> str:
        out = subprocess.run(["psql", self.url, "-qAtc", sql], capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"psql: {out.stderr.strip()}")
        return out.stdout.strip()

    def drop_schemas(self) -> None:
        for s in self.schemas:
            try:
                self.psql(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')
            except Exception as e:  # noqa: BLE001 - report and go on cleaning
                self.bench.notes.append(f"queue: could not drop schema {s}: {e}")

    def install_graphile(self) -> None:
        self.node_dir.mkdir(parents=True, exist_ok=True)
        for f in ("package.json", "package-lock.json", "graphile.mjs"):
            shutil.copy(REPO / "bench" / "queue" / f, self.node_dir / f)
        started = time.monotonic()
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=self.node_dir,
                       check=True, timeout=300)
        log(f"  npm ci ({GRAPHILE}): {time.monotonic() - started:.0f} s")

    def node(self, *args: str, timeout: int = DRAIN_LIMIT_S + 60, sample: PgCpu | None = None,
             schema: str) -> tuple[dict, int]:
        """Runs one graphile.mjs command to the end; (its JSON line, its pid)."""
        argv = ["node", "graphile.mjs", *args, "--url", self.url, "--schema", schema]
        log_path = self.bench.run_dir / "logs" / f"graphile-{args[0]}.log"
        with open(log_path, "a") as err:
            popen = subprocess.Popen(argv, cwd=self.node_dir, stdout=subprocess.PIPE, stderr=err, text=True)
            deadline = time.monotonic() + timeout
            while popen.poll() is None:
                if sample:
                    sample.sample()
                if time.monotonic() > deadline:
                    popen.kill()
                    raise RuntimeError(f"graphile.mjs {args[0]} took over {timeout} s")
                time.sleep(0.05)
            out = popen.stdout.read()
        if popen.returncode:
            raise RuntimeError(f"graphile.mjs {args[0]} exited {popen.returncode} (log: {log_path})")
        return json.loads(out.strip().splitlines()[-1]), popen.pid

    def schema(self, tag: str) -> str:
        name = f"{self.stamp}_{tag}"
        self.schemas.append(name)
        return name

    def tasks(self, name: str, prefix: str, *flags: str) -> Proc:
        """A tasks-service on PostgreSQL (schema `<prefix>tasks`)."""
        self.schemas.append(f"{prefix}tasks")
        return self.bench.fleet.rust(name, "tasks-service", "--database-url", self.url,
                                     "--db-schema-prefix", prefix, *flags)

    def gateway(self, name: str, tasks: Proc, others: dict[str, Proc]) -> Proc:
        gw = self.bench.fleet.rust(name, "gateway", "--items", others["items"].url,
                                   "--cache", others["cache"].url, "--tasks", tasks.url,
                                   "--counter", others["counter"].url)
        wait_http_ok(gw.url, "/healthz")
        return gw

    # ---- the phases -----------------------------------------------------

    def run(self) -> None:
        bench = self.bench
        self.install_graphile()
        others = {
            "items": bench.fleet.rust("items-queue", "items-service", "--data-dir", str(bench.items_small)),
            "cache": bench.fleet.rust("cache-queue", "cache-service"),
            "counter": bench.fleet.rust("counter-queue", "counter-service"),
        }
        procs = list(others.values())
        try:
            self.submit(others, procs)
            self.drain(others, procs)
            self.latency(others, procs)
        finally:
            bench.fleet.stop(procs)
            self.drop_schemas()
        bench.facts["queue"] = self.result

    def submit(self, others: dict[str, Proc], procs: list[Proc]) -> None:
        bench = self.bench
        d = bench.args.duration
        front = self.tasks("tasks-submit", f"{self.stamp}_submit_", "--workers", "0")
        gw = self.gateway("gateway-submit", front, others)
        procs += [front, gw]
        single = {c: bench.wrk.run(gw.url + "/tasks", c, lua_post({"kind": "echo", "payload": 1}))
                  for c in SINGLE_CLIENTS}
        batch_body = {"tasks": [{"kind": "echo", "payload": n} for n in range(BATCH)]}
        batch = bench.wrk.run(gw.url + "/tasks:batch", BATCH_CLIENTS, lua_post(batch_body))
        mesh = {
            "single": {c: {"rate": lo.rps, "errors": lo.errors, "p99_ms": lo.p99_ms} for c, lo in single.items()},
            "batch": {"rate": batch.rps * BATCH, "errors": batch.errors, "p99_ms": batch.p99_ms},
        }
        rates = ", ".join(f"{lo.rps:,.0f}/s with {c}" for c, lo in single.items())
        log(f"  mesh submit: {rates} single,"
            f" {batch.rps * BATCH:,.0f} tasks/s in batches")
        bench.fleet.stop([gw, front])
        s = self.schema("gw_submit")
        g_single = {c: self.node("submit-single", "--seconds", str(d), "--clients", str(c), schema=s)[0]
                    for c in SINGLE_CLIENTS}
        g_batch, _ = self.node("submit-batch", "--seconds", str(d), "--clients", str(BATCH_CLIENTS),
                               "--batch", str(BATCH), schema=s)
        rates = ", ".join(f"{r['rate']:,.0f}/s with {c}" for c, r in g_single.items())
        log(f"  graphile submit: {rates}"
            f" single, {g_batch['rate']:,.0f} in batches")
        self.result["submit"] = {"mesh": mesh, "graphile": {"single": g_single, "batch": g_batch}}

    def drain(self, others: dict[str, Proc], procs: list[Proc]) -> None:
        bench = self.bench
        prefix = f"{self.stamp}_drain_"
        front = self.tasks("tasks-drain-front", prefix, "--workers", "0")
        gw = self.gateway("gateway-drain", front, others)
        procs += [front, gw]
        for start in range(0, QUEUE_N, BATCH):
            body = {"tasks": [{"kind": "echo", "payload": n} for n in range(start, min(QUEUE_N, start + BATCH))]}
            status, answer = http_call(gw.url, "POST", "/tasks:batch", body)
            if not 200 <= status < 300:
                raise RuntimeError(f"POST /tasks:batch: {status} {str(answer)[:300]}")
        pg = PgCpu()
        t0 = time.monotonic()
        worker = self.tasks("tasks-drain-workers", prefix, "--workers", str(QUEUE_WORKERS))
        try:
            stats: dict = {}
            while time.monotonic() - t0 < DRAIN_LIMIT_S:
                pg.sample()
                status, stats = http_call(gw.url, "GET", "/tasks/stats")
                if status == 200 and stats["queued"] == 0 and stats["running"] == 0:
                    break
                time.sleep(0.02)
            seconds = time.monotonic() - t0
            pg.sample()
            peak = memory_kib(worker.popen.pid)[1]
            cpu = (stat_ticks(worker.popen.pid) or 0) * TICK_S
        finally:
            bench.fleet.stop([worker])
        drained = stats.get("queued") == 0 and stats.get("running") == 0 and stats.get("succeeded") == QUEUE_N
        mesh = {"drained": drained, "seconds": seconds, "rate": QUEUE_N / seconds if drained else 0.0,
                "peak_rss_kib": peak, "worker_cpu_s": cpu, "postgres_cpu_s": pg.seconds(), "stats": stats}
        log(f"  mesh drain: {QUEUE_N} in {seconds:.2f} s = {mesh['rate']:,.0f}/s, "
            f"worker CPU {cpu:.1f} s, PostgreSQL CPU {pg.seconds():.1f} s")
        bench.fleet.stop([gw, front])
        graphile = {}
        for mode in ("default", "batching"):
            s = self.schema(f"gw_drain_{mode}")
            self.node("enqueue", "--n", str(QUEUE_N), "--batch", str(BATCH), schema=s)
            pg = PgCpu()
            extra = ["--batching"] if mode == "batching" else []
            result, _ = self.node("drain", "--n", str(QUEUE_N), "--concurrency", str(QUEUE_WORKERS),
                                  "--limit-s", str(DRAIN_LIMIT_S), *extra, sample=pg, schema=s)
            result["postgres_cpu_s"] = pg.seconds()
            graphile[mode] = result
            log(f"  graphile drain ({mode}): {result['rate']:,.0f}/s, PostgreSQL CPU {pg.seconds():.1f} s")
        self.result["drain"] = {"mesh": mesh, "graphile": graphile}

    def latency(self, others: dict[str, Proc], procs: list[Proc]) -> None:
        worker = self.tasks("tasks-latency", f"{self.stamp}_latency_", "--workers", str(QUEUE_WORKERS))
        gw = self.gateway("gateway-latency", worker, others)
        procs += [worker, gw]
        sent: dict[int, float] = {}
        for n in range(LATENCY_N):
            at = time.time() * 1000
            status, task = http_call(gw.url, "POST", "/tasks", {"kind": "echo", "payload": n})
            if not 200 <= status < 300:
                raise RuntimeError(f"POST /tasks: {status} {str(task)[:300]}")
            sent[task["task_id"]] = at
            time.sleep(LATENCY_GAP_MS / 1000)
        waits = []
        deadline = time.monotonic() + 30
        for tid, at in sent.items():
            while True:
                status, task = http_call(gw.url, "GET", f"/tasks/{tid}")
                if status == 200 and task.get("started_at"):
                    started = datetime.fromisoformat(task["started_at"]).timestamp() * 1000
                    waits.append(started - at)
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        self.bench.fleet.stop([gw, worker])
        graphile = {}
        for mode in ("default", "batching"):
            s = self.schema(f"gw_latency_{mode}")
            extra = ["--batching"] if mode == "batching" else []
            result, _ = self.node("latency", "--n", str(LATENCY_N), "--gap-ms", str(LATENCY_GAP_MS),
                                  "--concurrency", str(QUEUE_WORKERS), *extra, schema=s)
            graphile[mode] = percentiles(result["waits_ms"])
        self.result["latency"] = {"mesh": percentiles(waits), "graphile": graphile}
        log(f"  latency: mesh {self.result['latency']['mesh']}, graphile {graphile}")
