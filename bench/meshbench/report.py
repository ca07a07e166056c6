"""The report: BENCHMARKS.md and bench/results.json under --out-dir, the facts
about the machine they were measured on, and the Targets, each PASS or MISS
with its numbers (a target whose scenario was not measured is a MISS), which
are also logged one per line."""

import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path

from . import REPO, charts, log
from .fleet import LOG_VARS, NO_CACHE_GATEWAY_RUST_LOG
from .loads import GRPC_CONNECTIONS
from .queue import GRAPHILE
from .scenarios import (BENCH_COUNTER, BENCH_HOP, BURST_CLIENTS, CPU_SHOWN_SHARE, DEEP_PAGE,
                        DRAIN_TIMEOUT_S, FASTAPI, GROUPS, HELLO, HOP_CONNECTIONS, HOP_ROUNDS, MESH,
                        PAGE_SIZE, SCALE_CONNECTIONS, SERVICE_KINDS, TASK_WORKERS, TRACE_SAMPLE, Bench,
                        Row, cpu_text)

MIB = 1024  # KiB per MiB: RSS figures are kept in KiB
HOP_TARGET = 1.15  # the most CPU per request the gateway and counter-service may spend vs their floors


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
        "nginx": command_output([tools["nginx"], "-v"]) if "nginx" in tools else "not used",
        "commit": command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "duration_s": args.duration,
        "quick": args.quick,
        "groups": args.groups,
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

    # The groups that put 512 connections on their gateway (not scale's -c16, nor hop's
    # or tls's -c64).
    gw = {g: m for g, procs in memory.items() for n, m in procs.items()
          if service_kind(n) == "gateway" and not g.startswith("scale")
          and g not in ("hop", "tls", "observability")}
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

    tls = bench.facts.get("tls", {})
    for what, label, kinds in (("test", "GET /test", ("HTTPS",)),
                               ("items", "warm GET /items/{id}", ("HTTPS", "HTTPS + mTLS"))):
        for kind in kinds:
            name = f"{label} over {kind} at least {TLS_TARGET:.2f}x plaintext throughput"
            f = tls.get(what, {}).get(kind)
            if not f:
                found.append(check(name, False, "not measured"))
                continue
            found.append(check(name, f["ratio"] >= TLS_TARGET and not f["errors"],
                               f"{f['rps']:,.0f} vs {tls[what]['plaintext']['rps']:,.0f} rps ="
                               f" {f['ratio']:.2f}x (median of rounds), {f['errors']} errors"))

    obs = bench.facts.get("observability", {})
    for what, label in (("test", "GET /test"), ("items", "warm GET /items/{id}")):
        # Metrics cost: the default's throughput against the same mesh with them off.
        name = f"{label} with metrics (the default) at least {METRICS_TARGET:.2f}x with metrics off"
        on, off = obs.get(what, {}).get("default"), obs.get(what, {}).get("metrics off")
        if on and off:
            found.append(check(name, 1 / off["ratio"] >= METRICS_TARGET and not on["errors"] + off["errors"],
                               f"{on['rps']:,.0f} vs {off['rps']:,.0f} rps = {1 / off['ratio']:.2f}x"
                               f" (median of rounds), {on['errors'] + off['errors']} errors"))
        else:
            found.append(check(name, False, "not measured"))
        kind = f"traces {TRACE_SAMPLE:.0%}"
        name = f"{label} exporting {kind} at least {TRACES_TARGET:.2f}x the default"
        traced = obs.get(what, {}).get(kind)
        if traced and on:
            found.append(check(name, traced["ratio"] >= TRACES_TARGET and not traced["errors"],
                               f"{traced['rps']:,.0f} vs {on['rps']:,.0f} rps = {traced['ratio']:.2f}x"
                               f" (median of rounds), {traced['errors']} errors"))
        else:
            found.append(check(name, False, "not measured"))

    hop = bench.facts.get("hop", {})
    found.append(floor_check(f"Gateway CPU per proxied GET /increment <= {HOP_TARGET}x {BENCH_HOP}",
                             hop.get("gateway"), "req"))
    found.append(floor_check(f"counter-service CPU per Increment <= {HOP_TARGET}x {BENCH_COUNTER}",
                             hop.get("counter"), "call"))
    return found


# TLS may cost at most 15 % of the throughput (issue: security).
TLS_TARGET = 0.85
METRICS_TARGET = 0.95  # metrics on may cost at most 5 % of the throughput with them off
TRACES_TARGET = 0.90  # traces of a 10 % sample may cost at most 10 % of the default


def floor_check(name: str, fact: dict | None, unit: str) -> dict:
    """PASS when the median per-round CPU ratio to the floor is within HOP_TARGET, with no errors."""
    if not fact or fact["ratio"] is None:
        return check(name, False, "not measured")
    return check(name, fact["ratio"] <= HOP_TARGET and not fact["errors"], side_by_side_text(fact, unit))


def side_by_side_text(fact: dict, unit: str) -> str:
    """'median of 3 rounds: gateway 31.0 vs bench-hop 27.1 CPU µs/req = 1.14x (rounds ...); ...'."""
    rounds = fact["rounds"]
    ratios = ", ".join(f"{r['ratio']:.2f}x" if r["ratio"] else "—" for r in rounds)
    text = (f"median of {len(rounds)} rounds: {fact['subject']} {fact['subject_us']:.1f} vs"
            f" {fact['floor']} {fact['floor_us']:.1f} CPU µs/{unit} = {fact['ratio']:.2f}x"
            f" (rounds {ratios});"
            f" rps {fact['subject_rps']:,.0f} vs {fact['floor_rps']:,.0f}")
    if fact["behind"] and fact["behind_subject_us"] is not None:
        text += (f"; {fact['behind']} behind them {fact['behind_subject_us']:.1f} vs"
                 f" {fact['behind_floor_us']:.1f} CPU µs/{unit}")
    if fact["errors"]:
        text += f"; {fact['errors']} errors"
    return text


def service_kind(process_name: str) -> str | None:
    for kind in SERVICE_KINDS:
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
     f" GET /tasks/stats shows nothing queued or running. The article's Celery has no reference here."),
    ("grpc", "Direct gRPC (no gateway)",
     f"grpc-load straight to items-service (GetItem over 10,000 ids) and counter-service"
     f" (Increment), {GRPC_CONNECTIONS} HTTP/2 connections; the ratio is to FastAPI's HTTP"
     f" equivalent."),
    ("hop", "Gateway vs bench-hop (CPU per proxied request)",
     f"GET /increment, wrk -c{HOP_CONNECTIONS}, on the gateway (default flags; its items, cache"
     f" and tasks upstreams point at the same counter-service and get no traffic) and on"
     f" bench-hop (an axum handler calling Increment over one tonic channel, no policies), both"
     f" in front of one counter-service, alternating for {HOP_ROUNDS} rounds. The CPU is each"
     f" front's and the counter-service's; the ratio is the median of the rounds' ratios."),
    ("hop-floor", "counter-service vs bench-counter (CPU per call)",
     f"grpc-load --call increment, {HOP_CONNECTIONS} calls in flight over {GRPC_CONNECTIONS}"
     f" HTTP/2 connections, to counter-service (the hop group's, default flags) and to"
     f" bench-counter (a bare tonic CounterService over a mutex-guarded map), alternating for"
     f" {HOP_ROUNDS} rounds; the ratio is the median of the rounds' ratios."),
    ("tls", "TLS at the edge and mutual TLS inside",
     f"Three meshes on the same data, started with `mesh certs` certificates: plaintext (the"
     f" default), HTTPS at the gateway (--tls-cert), and HTTPS plus mutual TLS between the gateway"
     f" and every service (--tls-client-ca, --services-tls-*). wrk -c{HOP_CONNECTIONS} keeps its"
     f" connections (TLS handshakes only at the start), alternating meshes for {HOP_ROUNDS} rounds;"
     f" each ratio is the median of the rounds' throughput ratios to plaintext."),
    ("observability", "What metrics and traces cost",
     f"Three meshes on the same data: as users get them (metrics on, no traces), with --metrics"
     f" false on every process, and with every process exporting traces of a"
     f" {TRACE_SAMPLE:.0%} sample (--otlp-endpoint, --trace-sample-ratio {TRACE_SAMPLE}) to"
     f" bench-otlp-sink, an OTLP collector that only counts spans. wrk -c{HOP_CONNECTIONS},"
     f" alternating meshes for {HOP_ROUNDS} rounds, each round starting with the next mesh;"
     f" each ratio is the median of the rounds' throughput ratios to the default."),
    ("replicas", "Replicas behind the gateway",
     "Cache and counter replicas share Redis (127.0.0.1:6379, a prefix of this run), items"
     " replicas share one SQLite file. The items rows are cache-warm reads."),
    ("scale", "Scale check",
     f"-c{SCALE_CONNECTIONS}. GET /items/{{id}}: random ids through a gateway with no cache"
     f" (x-cache: bypass), so every read reaches items-service. ListItems: page_size"
     f" {PAGE_SIZE}, the deep page's token found by following next_page_token."),
]


CHARTS = ["## Charts", "",
          "Drawn from bench/results.json by bench/meshbench/charts.py (also after every run):"
          " the scenarios the seed's FastAPI app also serves, the mesh beside both references.", "",
          "![Throughput per scenario: the mesh, FastAPI behind nginx, and bench-hello](bench/charts/throughput.svg)",
          "",
          "![Latency percentiles per scenario, log scale](bench/charts/latency.svg)"]

def render_markdown(bench: Bench, facts: dict, found: list[dict]) -> str:
    subset = facts["groups"] != list(GROUPS)
    out = ["# Benchmarks", "",
           "Generated by `python3 bench/run.py`"
           + (" --quick" if facts["quick"] else "")
           + (f" --groups {','.join(facts['groups'])}" if subset else "")
           + f" ({facts['duration_s']} s per load)."
           + (" Only these groups ran: the targets of the others read \"not measured\"."
              if subset else "")
           + " Every load runs on the same machine as the servers (wrk -t2 shares the cores),"
           " against 127.0.0.1.", "",
           "CPU µs/req: the user + system CPU time (utime + stime of /proc/PID/stat) each"
           " process of the group spent from right before to right after the load, divided by"
           " the requests the load completed; a row lists the processes that spent at least"
           f" {CPU_SHOWN_SHARE:.0%} of its CPU, most first (results.json has every process's).", "",
           "## Machine", ""]
    for key in ("date", "nproc", "cpu", "memory_gib", "kernel", "rustc", "python", "wrk",
                "nginx", "commit", "bin_dir", "groups", "logging"):
        value = facts[key]
        out.append(f"- {key}: {', '.join(value) if isinstance(value, list) else value}")
    out += ["", "## Targets", ""]
    out += [f"- **{t['status']}** {t['target']}: {t['numbers']}" for t in found]
    out += [""] + CHARTS
    for table, title, text in TABLES:
        rows = [r for r in bench.rows if r.table == table]
        if not rows:
            continue
        out += ["", f"## {title}", "", text, "",
                "| what | system | conns | rps | CPU µs/req | p50 ms | p90 ms | p99 ms | max ms"
                " | errors | x FastAPI | x hello | note |",
                "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            fa = reference(bench.rows, FASTAPI, r.compare, r.connections) if r.system == MESH else None
            he = reference(bench.rows, HELLO, r.compare, r.connections) if r.system == MESH else None
            lo = r.load
            out.append(
                f"| {r.label} | {r.system} | {r.connections} | {lo.rps:,.0f}"
                f" | {cpu_text(lo, r.group)} | {lo.p50_ms:.2f}"
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
    if table == "tls":
        for what, label in (("test", "GET /test"), ("items", "GET /items/{id} warm")):
            for kind, f in bench.facts.get("tls", {}).get(what, {}).items():
                if kind != "plaintext":
                    lines.append(f"{label}, {kind}: {f['rps']:,.0f} rps, {f['ratio']:.2f}x plaintext"
                                 f" (median of rounds), {f['errors']} errors.")
    if table == "observability":
        for what, label in (("test", "GET /test"), ("items", "GET /items/{id} warm")):
            for kind, f in bench.facts.get("observability", {}).get(what, {}).items():
                if kind != "default":
                    lines.append(f"{label}, {kind}: {f['rps']:,.0f} rps, {f['ratio']:.2f}x the default"
                                 f" (median of rounds), {f['errors']} errors.")
        spans = bench.facts.get("observability", {}).get("spans_received")
        if "observability" in bench.facts:
            lines.append(f"bench-otlp-sink received {spans:,} spans from the traced mesh." if spans is not None
                         else "bench-otlp-sink's span count was not found in its log.")
    if table in ("hop", "hop-floor"):
        fact = bench.facts.get("hop", {}).get("gateway" if table == "hop" else "counter")
        if fact and fact["ratio"] is not None:
            lines.append(side_by_side_text(fact, "req" if table == "hop" else "call") + ".")
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


def render_queue(q: dict, facts: dict) -> str:
    """The queue group's report: the tasks service beside graphile-worker."""
    sub, drain, lat = q["submit"], q["drain"], q["latency"]
    md, gd = drain["mesh"], drain["graphile"]
    rate = lambda x: f"{x:,.0f}"  # noqa: E731
    ms = lambda p: f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f}" if p.get("n") else "not measured"  # noqa: E731
    aims = [
        check("drain at least 10,000 tasks/s (graphile-worker's batching class)", md["rate"] >= 10_000,
              f"{rate(md['rate'])}/s; graphile-worker {rate(gd['batching']['rate'])}/s with batching,"
              f" {rate(gd['default']['rate'])}/s without"),
        check("batch submit at least 30,000 tasks/s", sub["mesh"]["batch"]["rate"] >= 30_000,
              f"{rate(sub['mesh']['batch']['rate'])}/s; graphile-worker"
              f" {rate(sub['graphile']['batch']['rate'])}/s"),
        check("submit-to-start p50 under 5 ms at low load", lat["mesh"].get("p50_ms", 1e9) < 5,
              f"{ms(lat['mesh'])} ms (p50 / p99); graphile-worker {ms(lat['graphile']['default'])} ms"),
    ]
    n, w = q["n"], q["workers"]
    out = ["# Task queue benchmark", "",
           f"Generated by `python3 bench/run.py --groups queue` ({facts['duration_s']} s per submit load),"
           f" commit {facts['commit']}, {facts['date']}, {facts['nproc']} cores ({facts['cpu']})."
           f" The tasks service (release build, default flags but `--workers {w}`) and {GRAPHILE}"
           f" (npm, bench/queue/) on the same PostgreSQL, no-op tasks, one after the other in one run;"
           " every client runs on the same machine.", "",
           "## Aims", ""]
    out += [f"- **{t['status']}** {t['target']}: {t['numbers']}" for t in aims]
    out += ["", "## Results", "",
            "| | tasks service | graphile-worker | graphile-worker, batching |",
            "|---|---:|---:|---:|",
            *[f"| submit, one per call, {c} client{'s' if int(c) > 1 else ''}, tasks/s"
              f" | {rate(sub['mesh']['single'][c]['rate'])} | {rate(sub['graphile']['single'][c]['rate'])} | |"
              for c in sub['mesh']['single']],
            f"| submit, {q['batch']} per call ({q['batch_clients']} clients), tasks/s"
            f" | {rate(sub['mesh']['batch']['rate'])} | {rate(sub['graphile']['batch']['rate'])} | |",
            f"| drain of {n:,} with {w} workers, tasks/s | {rate(md['rate'])} | {rate(gd['default']['rate'])}"
            f" | {rate(gd['batching']['rate'])} |",
            f"| drain: seconds | {md['seconds']:.2f} | {gd['default']['seconds']:.2f} | {gd['batching']['seconds']:.2f} |",
            f"| drain: worker process CPU, s | {md['worker_cpu_s']:.1f} | {gd['default'].get('worker_cpu_s', 0):.1f}"
            f" | {gd['batching'].get('worker_cpu_s', 0):.1f} |",
            f"| drain: PostgreSQL CPU, s (share of {facts['nproc']} cores) | {pg_share(md, facts)}"
            f" | {pg_share(gd['default'], facts)} | {pg_share(gd['batching'], facts)} |",
            f"| drain: worker peak RSS, MiB | {mib(md['peak_rss_kib'])} | {mib(gd['default']['peak_rss_kib'])}"
            f" | {mib(gd['batching']['peak_rss_kib'])} |",
            f"| submit-to-start at low load, p50 / p99 ms ({q['latency_n']} tasks, {q['latency_gap_ms']} ms apart)"
            f" | {ms(lat['mesh'])} | {ms(lat['graphile']['default'])} | {ms(lat['graphile']['batching'])} |",
            "",
            "How each was measured:", "",
            f"- Submit: the tasks service through the gateway (wrk POST /tasks with 1 and 64 connections;"
            f" wrk -c{q['batch_clients']} POST /tasks:batch with {q['batch']} echo tasks), no workers;"
            f" graphile-worker with its own client straight to PostgreSQL (1 and 64 concurrent addJob"
            f" loops; {q['batch_clients']} concurrent addJobs of {q['batch']}).",
            f"- Drain: {n:,} tasks queued with no worker running, then one worker process with {w}"
            " workers is started and timed until the database shows nothing queued or running"
            " (tasks service: GET /tasks/stats every 20 ms; graphile-worker: its jobs table empty,"
            " polled every 20 ms); the time includes the process's start. PostgreSQL CPU: utime + stime"
            " of its processes over the drain. graphile-worker's batching: `localQueue.size` 500,"
            " `completeJobBatchDelay` and `failJobBatchDelay` 0.",
            "- Latency: each task is submitted once the previous has had time to run; the wait is from"
            " just before the submit call to the task's recorded start (tasks service: through the"
            " gateway to one replica with the workers; graphile-worker: addJob and the worker in one"
            " process), in milliseconds on one clock.",
            ]
    return "\n".join(out) + "\n"


def pg_share(d: dict, facts: dict) -> str:
    share = d["postgres_cpu_s"] / (d["seconds"] * int(facts["nproc"])) if d.get("seconds") else 0
    return f"{d['postgres_cpu_s']:.1f} ({share:.0%})"


def write_report(bench: Bench, facts: dict, out_dir: Path) -> None:
    """BENCHMARKS.md and bench/results.json for every group but the queue
    group, which writes BENCHMARKS-queue.md and bench/results-queue.json (so a
    run of that group alone leaves the others' report as it was)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench").mkdir(parents=True, exist_ok=True)
    if "queue" in facts["groups"] and "queue" in bench.facts:
        (out_dir / "BENCHMARKS-queue.md").write_text(render_queue(bench.facts["queue"], facts))
        (out_dir / "bench" / "results-queue.json").write_text(
            json.dumps({"machine": facts, "queue": bench.facts["queue"], "notes": bench.notes},
                       indent=2, default=str) + "\n")
        log(f"wrote {out_dir / 'BENCHMARKS-queue.md'}")
    if [g for g in facts["groups"] if g != "queue"]:
        found = targets(bench)
        (out_dir / "BENCHMARKS.md").write_text(render_markdown(bench, facts, found))
        results = results_json(bench, facts, found)
        (out_dir / "bench" / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        # Through JSON, as a saved run would be read.
        for path in charts.write(json.loads(json.dumps(results, default=str)), out_dir / "bench" / "charts"):
            log(f"wrote {path}")
        for t in found:
            log(f"{t['status']}: {t['target']}: {t['numbers']}")
        log(f"wrote {out_dir / 'BENCHMARKS.md'} and {out_dir / 'bench' / 'results.json'}")
