"""The processes under test: start them, learn where they listen, sample their
memory and the CPU time they have spent, stop them.

A Rust server is started with `--listen 127.0.0.1:0` (and, for the mesh's own
binaries, `--admin-listen 127.0.0.1:0`) and prints one stdout line,
`<name> listening on <ip:port>`, which is read with a time limit. Any other
server (uvicorn, nginx) is told a free port and is ready once it accepts.
Everything a Fleet started is stopped with SIGTERM, then SIGKILL after
STOP_GRACE_S.
"""

import os
import re
import selectors
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import HOST, START_TIMEOUT_S, log

STOP_GRACE_S = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of /proc/PID/stat's utime and stime
MESH_BINARIES = ("items-service", "cache-service", "tasks-service", "counter-service", "gateway")

# The mesh's logging settings. The Rust servers run with what a user gets when
# none is set (INFO, no per-request lines, WARN for failed and slow calls);
# one set in the environment of the run is passed on, and the report says so.
LOG_VARS = ("RUST_LOG", "MESH_ACCESS_LOG", "MESH_SLOW_MS", "MESH_LOG_ANSI")
NO_CACHE_GATEWAY_RUST_LOG = "error"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    addr: str  # ip:port it serves on
    scheme: str = "http"  # https for a gateway serving TLS

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.addr}"


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


def cpu_seconds(procs: list[Proc]) -> dict[str, float]:
    """CPU seconds (utime + stime) each process has spent so far, by name, counting its
    descendants (nginx workers); a process that is gone is left out."""
    children = child_pids()
    spent = {}
    for p in procs:
        ticks = [stat_ticks(pid) for pid in [p.popen.pid, *descendants(p.popen.pid, children)]]
        if ticks[0] is not None:
            spent[p.name] = sum(t for t in ticks if t is not None) / CLK_TCK
    return spent


def stat_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads), fields 14 and 15 of /proc/PID/stat,
    in clock ticks; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state): past the name
    return int(fields[11]) + int(fields[12])


def child_pids() -> dict[int, list[int]]:
    """Every process's children, by parent pid."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    children = child_pids() if children is None else children
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found
