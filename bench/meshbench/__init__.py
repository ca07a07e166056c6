"""The benchmark's parts; `bench/run.py` is the entry point that runs them.

- fleet: the processes under test: start on port 0, read the announce line,
  sample RSS, stop (SIGTERM, then SIGKILL);
- setup: before any load: the release build, wrk/nginx/redis-cli, the
  reference app's virtualenv, Redis (checked and cleaned with redis-cli), and
  the seeded data files;
- calls: plain HTTP calls to a started server: readiness, single calls,
  paging, exact-count bursts;
- loads: the measured loads: wrk with its Lua scripts, and grpc-load;
- queue: the queue group, the tasks service on PostgreSQL beside
  graphile-worker (bench/queue/);
- scenarios: the scenario groups (which processes, which loads, what is
  recorded);
- report: BENCHMARKS.md, bench/results.json and the PASS/MISS lines.

Each module uses only the ones listed above it. This file holds what all of
them share: where the repository is, the loopback address, the Redis port,
and the log line.
"""

import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "bench" / "reference"

HOST = "127.0.0.1"
REDIS_PORT = 6379
START_TIMEOUT_S = 60


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)
