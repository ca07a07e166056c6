"""Everything before the first load: the tools (wrk, nginx, redis-cli), the
release build, the reference app's virtualenv, Redis (checked, and cleaned of
a run's keys), the process's file limit, and the seeded data files.

Redis is reached through `redis-cli` (Debian's redis-tools, installed like wrk
and nginx when missing) rather than the PyPI `redis` package: the runner stays
on the system Python's standard library (Debian's Python refuses a plain
`pip install`), and the one virtualenv belongs to the reference app under test.
"""

import hashlib
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from . import HOST, REDIS_PORT, REFERENCE, REPO, log
from .fleet import Fleet

sys.path.insert(0, str(REFERENCE))
import seed_db  # noqa: E402  (the reference's row generator, shared by both data sets)


APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx", "redis-cli": "redis-tools",  # command -> package
                "psql": "postgresql-client", "npm": "npm"}


def ensure_apt_tools(commands: Iterable[str]) -> dict[str, str]:
    """The given tools (keys of APT_PACKAGES), installed from Debian when missing;
    returns their paths."""
    wanted = {cmd: APT_PACKAGES[cmd] for cmd in commands}
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


def redis_cli(*args: str) -> str:
    """One Redis command through redis-cli; its reply as text. redis-cli exits
    non-zero when it cannot connect (an OSError here, as a socket's would be)."""
    cli = tool_path("redis-cli") or "redis-cli"
    out = subprocess.run([cli, "-h", HOST, "-p", str(REDIS_PORT), *args],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise OSError((out.stderr or out.stdout).strip() or f"redis-cli exited with {out.returncode}")
    return out.stdout


def redis_ping() -> None:
    reply = redis_cli("PING").strip()
    if reply != "PONG":
        raise OSError(f"PING answered {reply!r}")


# SCAN and DEL run inside Redis, in one script: the keys never pass through
# redis-cli's text output, which cuts a key at a NUL byte (the mesh's cache
# keys hold one between namespace and key).
DELETE_PREFIX_LUA = """
local deleted, cursor = 0, "0"
repeat
  local page = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do deleted = deleted + redis.call("DEL", key) end
until cursor == "0"
return deleted
"""


def redis_delete_prefix(prefix: str) -> int:
    """Deletes every key under `prefix`; returns how many went."""
    reply = redis_cli("EVAL", DELETE_PREFIX_LUA, "0", prefix + "*").strip()
    if not reply.isdigit():
        raise RuntimeError(f"redis: {reply}")
    return int(reply)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536) if hard > 0 else soft, hard))


def prepare_items_db(fleet: Fleet, data_dir: Path, rows: int) -> None:
    """items-service creates its schema; then `rows` rows go in with sqlite3.

    This bypasses the API on purpose: the big data set is a million rows, which
    one bulk transaction writes in seconds, where a million CreateItem calls
    would add minutes to every run and measure nothing the report shows. The
    schema is items-service's own (it ran its migrations first), so the rows
    are what the API would have stored.
    """
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


def seed_reference_db(db: Path, rows: int) -> None:
    """The reference app's SQLite file, with the same rows as the mesh's."""
    seed_db.seed(str(db), rows)
