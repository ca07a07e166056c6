"""Plain HTTP to a started server, outside the measured loads: readiness,
single calls, exact-count bursts from a few keep-alive clients, and walking
paged lists (queued tasks, a deep ListItems page's token)."""

import concurrent.futures
import http.client
import json
import ssl
import time
import urllib.parse
from pathlib import Path

from . import START_TIMEOUT_S

# The CA that https:// servers of this run are checked against (see `trust`).
_TLS: ssl.SSLContext | None = None


def trust(ca: Path) -> None:
    """Checks https:// servers of this run against the CA in `ca` (the TLS group's)."""
    global _TLS
    _TLS = ssl.create_default_context(cafile=str(ca))
    _TLS.check_hostname = False  # addresses are 127.0.0.1:port; the chain is what is checked


def connect(base: str) -> http.client.HTTPConnection:
    """A connection to `base`: plain HTTP, or HTTPS checked against the run's CA."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.netloc, timeout=30, context=_TLS)
    return http.client.HTTPConnection(parts.netloc, timeout=30)


def http_call(base: str, method: str, path: str, body: dict | None = None,
              conn: http.client.HTTPConnection | None = None) -> tuple[int, object]:
    """(status, parsed JSON body or None); reuses `conn` when given."""
    own = conn is None
    if own:
        conn = connect(base)
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
        conn = connect(base)
        try:
            return sum(200 <= http_call(base, method, p, body, conn)[0] < 300 for p in chunk)
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(run, chunks))


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


def page_token(base: str, page: int, page_size: int) -> str:
    """The token of ListItems page `page` (1-based), following next_page_token."""
    token = ""
    conn = connect(base)
    try:
        for _ in range(page - 1):
            path = with_token(f"/items?page_size={page_size}", token)
            status, body = http_call(base, "GET", path, conn=conn)
            if status != 200 or not body["next_page_token"]:
                raise RuntimeError(f"ListItems ended before page {page}")
            token = body["next_page_token"]
    finally:
        conn.close()
    return token
