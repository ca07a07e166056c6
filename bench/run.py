#!/usr/bin/env python3
"""Benchmark the Rust mesh side by side with the seed article's FastAPI design.

One command (Python 3.11 standard library only):

    python3 bench/run.py [--quick] [--no-build] [--duration SECS] [--groups G,G...]
                         [--out-dir DIR] [--bin-dir DIR] [--work-dir DIR] [--timeout SECS]

What one run does, in order:

1. Builds the release binaries (`cargo build --release --bins`) unless
   --no-build, installs wrk, nginx and redis-cli (redis-tools) with apt-get
   when they are missing, and the reference app's pinned requirements into a
   virtualenv of its own (<work-dir>/venv). Redis must answer on
   127.0.0.1:6379. With --groups, only what the selected groups use (nginx,
   the virtualenv and Redis are the fastapi and replicas groups').
2. Prepares the data: the items-service SQLite file with 10,000 rows, and a
   big one with 1,000,000 rows (100,000 with --quick), each made by starting
   items-service once so it creates its schema, stopping it and bulk inserting
   with sqlite3; the reference app gets its own SQLite file with the same
   10,000 rows (bench/reference/seed_db.py). Again, only the data sets the
   selected groups read.
3. Runs the scenario groups (all, or those of --groups, in this order). Each
   group starts the processes it needs on 127.0.0.1 (Rust servers with
   `--listen 127.0.0.1:0`, reading the one stdout line
   `<name> listening on <ip:port>`), samples every process's idle RSS, runs
   its loads at 64 and 512 connections (wrk -t2, or grpc-load for gRPC), each
   between two samples of every process's CPU time (utime + stime, reported
   as CPU µs per request beside rps), samples every process's peak RSS
   (VmHWM), and stops them all:
     fastapi      the reference: two uvicorn instances behind nginx; /test,
                  /items/{id}, /increment, and the per-instance counters
     hello        bench-hello's GET /test (a minimal axum server)
     test         GET /test through the gateway
     items-warm   GET /items/{id} over 10,000 ids after a warm-up pass
     items-cold   GET /items/{id} on ids never read before (big data set)
     counters     POST /counters/{name}/increment, and an exact-count check
     tasks        POST /tasks (echo), then the workers' drain rate
     grpc         GetItem and Increment straight to the services (grpc-load)
     hop          the CPU floors, 64 connections, 3 alternating rounds on one
                  counter-service: GET /increment through the gateway vs
                  bench-hop (a bare axum -> tonic hop), and Increment
                  (grpc-load) to counter-service vs bench-counter (a bare
                  tonic server)
     replicas-N   items warm and counters with N = 1, 2, 3 replicas on Redis
     scale-N      GET /items/{id} and ListItems page 1 vs a deep page on the
                  10,000-row and the big data set, -c16
     queue        the tasks service on PostgreSQL beside graphile-worker 0.17.3
                  (npm ci from bench/queue/): submit one by one and in batches,
                  the drain of 20,000 tasks with 4 workers (rate, worker RSS,
                  PostgreSQL's CPU), submit-to-start latency at low load;
                  needs PostgreSQL (MESH_BENCH_POSTGRES_URL, default
                  postgres://postgres@127.0.0.1:5432/test), psql and npm
     tls          plaintext vs HTTPS vs HTTPS + mTLS meshes, alternating
     observability  the default mesh vs --metrics false vs traces of a 10 %
                  sample exported to bench-otlp-sink (an OTLP collector that
                  only counts), /test and warm items, alternating
   A group that fails is noted in the report and the next one still runs;
   a missing bench-hello, bench-hop, bench-counter or grpc-load skips its
   rows with a note. --groups names: fastapi, hello, test, items-warm,
   items-cold, counters, tasks, grpc, hop, replicas (all three), scale (both),
   queue, tls, observability.
4. Writes BENCHMARKS.md and bench/results.json under --out-dir (the queue
   group: BENCHMARKS-queue.md and bench/results-queue.json), with a
   Targets section where every target is PASS or MISS with its numbers
   (a target whose scenario could not be measured is a MISS).

Every process started is stopped at the end (SIGTERM, then SIGKILL after
10 s), every load is bounded in time (wrk -d, grpc-load --duration-secs) or in
count (warm-up, exact-count bursts, paging), and the whole run is under a
global timeout (--timeout). Loads target 127.0.0.1 only.

This file is the entry point: its flags and the order of a run. The parts are
in bench/meshbench/ (setup, fleet, calls, loads, scenarios, report; its
__init__ says what each owns).
"""

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree (set before the imports below)

from meshbench import HOST, REDIS_PORT, REPO, log  # noqa: E402  (bench/, this file's folder, is on sys.path)
from meshbench.fleet import MESH_BINARIES  # noqa: E402
from meshbench.report import machine_facts, write_report  # noqa: E402
from meshbench.scenarios import GROUPS, Bench, needs_of  # noqa: E402
from meshbench.setup import (cargo_build, ensure_apt_tools, ensure_venv, raise_fd_limit,  # noqa: E402
                             redis_delete_prefix, redis_ping)


class GlobalTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that no group's error handling swallows it."""


def on_alarm(_signum, _frame):
    raise GlobalTimeout("the run exceeded --timeout")


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 s loads, a 100,000-row big data set, smaller bursts")
    p.add_argument("--no-build", action="store_true", help="skip cargo build --release --bins")
    p.add_argument("--duration", type=int, help="seconds per load (default 10, 2 with --quick)")
    p.add_argument("--groups", default=",".join(GROUPS),
                   help=f"comma-separated scenario groups to run, in the usual order"
                        f" (default: all): {', '.join(GROUPS)}")
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
    chosen = {g.strip() for g in args.groups.split(",") if g.strip()}
    unknown = chosen - set(GROUPS)
    if unknown or not chosen:
        p.error(f"--groups: unknown {', '.join(sorted(unknown)) or '(none given)'};"
                f" choose from {', '.join(GROUPS)}")
    args.groups = [g for g in GROUPS if g in chosen]
    args.bin_dir = args.bin_dir.resolve()
    args.out_dir = args.out_dir.resolve()
    args.work_dir = args.work_dir.resolve()
    return args


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
    needs = needs_of(args.groups)
    tools = ensure_apt_tools(("wrk", *needs.tools))  # before the Redis check: it brings redis-cli
    if needs.redis:
        try:
            redis_ping()
        except OSError as e:
            sys.exit(f"Redis does not answer on {HOST}:{REDIS_PORT}: {e}")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    venv_python = ensure_venv(args.work_dir) if needs.venv else None
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
        if needs.redis:
            log(f"removed {redis_delete_prefix(bench.redis_prefix)} Redis keys"
                f" under {bench.redis_prefix}")
    write_report(bench, machine_facts(args, tools), args.out_dir)
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
