"""The measured loads: wrk (two threads, a Lua script per load that reports
wrk's exact counters as one JSON line) and grpc-load (the gRPC calls straight to
a service), each bounded in time and turned into one Load, with the CPU time
each watched process spent during it (sampled from /proc right before and right
after the load) per request completed."""

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .fleet import Proc, cpu_seconds

WRK_THREADS = 2
WRK_TIMEOUT = "10s"
GRPC_CONNECTIONS = 4


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
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds spent, by process name
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU µs per request, by process name


def with_cpu(watch: list[Proc], run: Callable[[], Load]) -> Load:
    """Runs one load between two CPU samples of the watched processes and adds what
    each spent to it: seconds, and µs per request completed."""
    before = cpu_seconds(watch)
    load = run()
    after = cpu_seconds(watch)
    load.cpu_s = {name: after[name] - before[name] for name in before if name in after}
    load.cpu_us = {name: s * 1e6 / load.requests if load.requests else 0.0
                   for name, s in load.cpu_s.items()}
    return load


class Wrk:
    def __init__(self, binary: str, run_dir: Path, duration: int):
        self.binary = binary
        self.scripts = run_dir / "lua"
        self.duration = duration
        self.count = 0
        self.watch: list[Proc] = []  # whose CPU each load samples (the running group's processes)

    def run(self, url: str, connections: int, script: str = "") -> Load:
        """One wrk load of the run's duration, with the watched processes' CPU;
        `script` is appended to LUA_COMMON."""
        return with_cpu(self.watch, lambda: self.wrk_once(url, connections, script))

    def wrk_once(self, url: str, connections: int, script: str) -> Load:
        self.count += 1
        path = self.scripts / f"{self.count:03d}.lua"
        path.write_text(LUA_COMMON + script)
        argv = [self.binary, f"-t{min(WRK_THREADS, connections)}", f"-c{connections}", f"-d{self.duration}s",
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
              ids: int | None = None, watch: list[Proc] | None = None) -> Load:
    """One grpc-load run, with the CPU of the `watch` processes."""
    return with_cpu(watch or [], lambda: grpc_load_once(binary, target, call, concurrency,
                                                        duration, ids))


def grpc_load_once(binary: Path, target: str, call: str, concurrency: int, duration: int,
                   ids: int | None) -> Load:
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


def hit_note(load: Load) -> str:
    d = load.detail
    seen = d["hits"] + d["misses"] + d["bypass"]
    if not seen:
        return ""
    return ("x-cache: " + ", ".join(f"{d[k] / seen:.0%} {k}" for k in ("hits", "misses", "bypass")))
