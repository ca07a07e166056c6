#!/usr/bin/env python3
"""The mesh across several hosts on a real network with real DNS:

    python3 deploy/netns/e2e.py [BIN_DIR]      (default target/release)

Every "host" is a network namespace of its own, joined to the others by a
bridge in a switch namespace (10.90.0.0/24). dnsmasq in the switch answers
`items.mesh.test` and `counter.mesh.test` with every replica's address (the
Kubernetes headless-Service pattern); the gateway's namespace uses it
(`/etc/netns/mesh-gw/resolv.conf`). Items replicas share one SQLite file
(the hosts share a filesystem); the counter replicas share a redis-server
started in the switch namespace. Nothing is reached but the namespaces'
own addresses and loopback.

It shows, through the gateway, with the release binaries:
1. reads and keyed increments spread over every replica (each replica's own
   `grpc_server_handled_total`);
2. a host cut off with `ip link set ... down` under a read load costs no
   failed read;
3. a host that goes silent (its packets dropped, so nothing is refused)
   costs latency, not errors: the per-try timeout retries elsewhere;
4. a replica added to DNS gets traffic within the resolve interval, and one
   removed leaves rotation;
5. after all of it, the counter holds exactly the number of distinct
   idempotency keys sent.

Root only: without the rights it prints SKIPPED (and fails under CI=true).
Every namespace, process, file and the /etc/netns entry is removed at the
end, also on failure.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NET = "10.90.0"
SWITCH = "mesh-sw"
GATEWAY_NS = "mesh-gw"
# host namespace -> (address, what runs there)
HOSTS = {
    "mesh-items-a": (f"{NET}.21", "items"),
    "mesh-items-b": (f"{NET}.22", "items"),
    "mesh-items-c": (f"{NET}.23", "items"),   # added to DNS part-way
    "mesh-counter-a": (f"{NET}.31", "counter"),
    "mesh-counter-b": (f"{NET}.32", "counter"),
    "mesh-counter-c": (f"{NET}.33", "counter"),
    "mesh-support": (f"{NET}.40", "cache+tasks"),
}
RESOLVE_MS = 500
PORTS = {"items": 50051, "cache": 50052, "tasks": 50053, "counter": 50054}
ADMIN = {"items": 9051, "cache": 9052, "tasks": 9053, "counter": 9054}


def log(message: str) -> None:
    print(f"[netns {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: int = 60) -> str:
    if ns:
        argv = ("ip", "netns", "exec", ns, *argv)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


class Net:
    """The namespaces, the bridge, dnsmasq and every process started in them."""

    def __init__(self, work: Path):
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        self.hosts_file = work / "hosts"

    def up(self) -> None:
        # What a run that was killed outright may have left: its processes and namespaces.
        for ns in [SWITCH, GATEWAY_NS, *HOSTS]:
            pids = sh("ip", "netns", "pids", ns, check=False).split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        for ns in [SWITCH, GATEWAY_NS, *HOSTS]:
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=SWITCH)
        sh("ip", "addr", "add", f"{NET}.1/24", "dev", "br0", ns=SWITCH)
        sh("ip", "link", "set", "br0", "up", ns=SWITCH)
        for i, (ns, addr) in enumerate([(GATEWAY_NS, f"{NET}.10"), *((n, a) for n, (a, _) in HOSTS.items())]):
            # One veth pair per host: "eth0" in the host, "vN" on the bridge.
            sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"v{i}", "netns", SWITCH)
            sh("ip", "link", "set", f"v{i}", "master", "br0", ns=SWITCH)
            sh("ip", "link", "set", f"v{i}", "up", ns=SWITCH)
            sh("ip", "addr", "add", f"{addr}/24", "dev", "eth0", ns=ns)
            sh("ip", "link", "set", "eth0", "up", ns=ns)
        # The gateway's resolver: dnsmasq on the switch.
        etc = Path("/etc/netns") / GATEWAY_NS
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {NET}.1\n")

    def dns(self, names: dict[str, list[str]]) -> None:
        """Sets the A records (dnsmasq re-reads its hosts file on SIGHUP)."""
        self.hosts_file.write_text("".join(f"{a} {n}\n" for n, addrs in names.items() for a in addrs))
        if hasattr(self, "dnsmasq"):
            self.dnsmasq.send_signal(signal.SIGHUP)

    def start(self, ns: str, argv: list[str], name: str, announces: bool = True) -> subprocess.Popen:
        """Runs `argv` in `ns`; a server that announces its address gets a stdout pipe."""
        log_file = open(self.work / f"{name}.log", "wb")
        stdout = subprocess.PIPE if announces else log_file
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=stdout, stderr=log_file,
                                env=dict(os.environ, MESH_LOG_ANSI="0", RUST_LOG="info"))
        self.procs.append(proc)
        return proc

    def down(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(Path("/etc/netns") / GATEWAY_NS, ignore_errors=True)


def announced(proc: subprocess.Popen, what: str, seconds: float = 60) -> str:
    """The address a server prints on its first stdout line, once it has also printed
    its admin line (its start-up, migrations included, is done)."""
    lines: list[str] = []

    def read() -> None:
        lines.append(proc.stdout.readline().decode())
        lines.append(proc.stdout.readline().decode())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    if len(lines) < 2 or " admin listening on " not in lines[1]:
        raise RuntimeError(f"{what} did not start: {lines}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
    return lines[0].rsplit(" ", 1)[-1].strip()


def http(method: str, path: str, headers: dict | None = None, timeout: float = 10) -> tuple[int, object, float]:
    """A call to the gateway (which the test reaches through a socket in its namespace: see main)."""
    request = urllib.request.Request(f"http://127.0.0.1:{GATEWAY_PORT}{path}", method=method,
                                     headers=headers or {})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    except OSError as e:
        return -1, repr(e), time.monotonic() - started
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = body.decode(errors="replace")
    return status, parsed, time.monotonic() - started


GATEWAY_PORT = 0
CLONE_NEWNET = 0x40000000


def enter_netns(fd: int) -> None:
    """Moves this thread (and the threads it starts later) into the network namespace
    `fd` refers to (setns(2); Python's os.setns needs 3.12)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def handled(ns: str, service: str) -> int:
    """How many of the service's own RPCs this replica handled (its /metrics)."""
    text = sh("curl", "-s", f"http://127.0.0.1:{ADMIN[service]}/metrics", ns=ns)
    pattern = rf'grpc_server_handled_total{{[^}}]*grpc_service="mesh\.{service}\.v1\.[A-Za-z]+Service"[^}}]*}} (\d+)'
    return sum(int(n) for n in re.findall(pattern, text))


def load(paths, seconds: float, clients: int = 6, headers=None) -> dict:
    """GETs (or POSTs, for paths given as (method, path)) from `clients` threads for `seconds`,
    at most 200,000 in all; the failures and the slowest answer."""
    stop_at = time.monotonic() + seconds
    out = {"ok": 0, "failed": [], "max_s": 0.0}
    lock = threading.Lock()

    def client(n: int) -> None:
        i = n
        while time.monotonic() < stop_at and i < 200_000:
            method, path = paths(i)
            status, body, took = http(method, path, headers)
            with lock:
                out["max_s"] = max(out["max_s"], took)
                if 200 <= status < 300:
                    out["ok"] += 1
                else:
                    out["failed"].append(f"{method} {path}: {status} {body}")
            i += clients

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return out


def main() -> int:
    global GATEWAY_PORT
    bin_dir = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "target" / "release").resolve()
    if os.geteuid() != 0 or not shutil.which("dnsmasq"):
        print("SKIPPED netns test: needs root and dnsmasq (dnsmasq-base)")
        return 2 if os.environ.get("CI") == "true" else 0
    work = Path(tempfile.mkdtemp(prefix="mesh-netns."))
    net = Net(work)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)  # to come back to
    rc = 1
    try:
        net.up()
        replicas = {"items": [HOSTS[h][0] for h in ("mesh-items-a", "mesh-items-b")],
                    "counter": [HOSTS[h][0] for h in ("mesh-counter-a", "mesh-counter-b", "mesh-counter-c")],
                    "cache": [f"{NET}.40"], "tasks": [f"{NET}.40"]}
        net.dns({f"{s}.mesh.test": a for s, a in replicas.items()})
        net.dnsmasq = net.start(SWITCH, ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                                         f"--addn-hosts={net.hosts_file}", f"--listen-address={NET}.1",
                                         "--bind-interfaces", "--local=/mesh.test/", "--local-ttl=0", "--user=root",
                                         f"--pid-file={work}/dnsmasq.pid"], "dnsmasq", announces=False)
        net.start(SWITCH, ["redis-server", "--bind", f"{NET}.1", "--port", "6379", "--save", "",
                           "--appendonly", "no", "--protected-mode", "no"], "redis", announces=False)
        data = work / "data"
        data.mkdir()

        def service(ns: str, kind: str, *extra: str) -> None:
            addr = HOSTS[ns][0]
            argv = [str(bin_dir / f"{kind}-service"), "--listen", f"{addr}:{PORTS[kind]}",
                    "--admin-listen", f"127.0.0.1:{ADMIN[kind]}", "--insecure", *extra]
            announced(net.start(ns, argv, f"{ns}-{kind}"), f"{kind} in {ns}")

        for ns in ("mesh-items-a", "mesh-items-b", "mesh-items-c"):
            service(ns, "items", "--data-dir", str(data))
        for ns in ("mesh-counter-a", "mesh-counter-b", "mesh-counter-c"):
            service(ns, "counter", "--redis-url", f"redis://{NET}.1:6379")
        service("mesh-support", "cache")
        service("mesh-support", "tasks", "--data-dir", str(data))
        gateway = net.start(GATEWAY_NS, [
            str(bin_dir / "gateway"), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--items", "http://items.mesh.test:50051", "--counter", "http://counter.mesh.test:50054",
            "--cache", "http://cache.mesh.test:50052", "--tasks", "http://tasks.mesh.test:50053",
            "--resolve-interval-ms", str(RESOLVE_MS), "--health-interval-ms", "200",
            "--per-try-timeout-ms", "300"], "gateway")
        gw_addr = announced(gateway, "the gateway")
        # The test reaches the gateway's loopback through a forwarder in its namespace.
        GATEWAY_PORT = int(gw_addr.rsplit(":", 1)[1])
        gateway_ns = os.open(f"/run/netns/{GATEWAY_NS}", os.O_RDONLY)
        enter_netns(gateway_ns)
        os.close(gateway_ns)
        deadline = time.monotonic() + 60
        while http("GET", "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway is not ready: {http('GET', '/readyz')}")
            time.sleep(0.2)
        log("up: 3 items hosts (2 in DNS), 3 counter hosts, cache and tasks, the gateway, dnsmasq, redis")

        # 1. Spread: reads (ListItems reaches items every time) and keyed increments.
        sent_keys: set[str] = set()

        def reads(i: int) -> tuple[str, str]:
            return "GET", "/items?page_size=5"

        before = {h: handled(h, kind) for h, (_, kind) in HOSTS.items() if kind in ("items", "counter")}
        result = load(reads, 3)
        assert not result["failed"], result["failed"][:3]
        inc = keyed_increments(6, sent_keys)
        assert not inc["failed"], inc["failed"][:3]
        after = {h: handled(h, kind) for h, (_, kind) in HOSTS.items() if kind in ("items", "counter")}
        got = {h: after[h] - before[h] for h in before}
        log(f"calls per replica: {got}")
        for h in ("mesh-items-a", "mesh-items-b", "mesh-counter-a", "mesh-counter-b", "mesh-counter-c"):
            assert got[h] > 0, f"{h} got no calls: {got}"
        assert got["mesh-items-c"] == 0, f"mesh-items-c is not in DNS yet but got calls: {got}"

        # 2. A host cut off under a read load: no failed read.
        cut = threading.Timer(1.0, lambda: sh("ip", "link", "set", "eth0", "down", ns="mesh-items-b"))
        cut.start()
        result = load(reads, 5)
        cut.join()
        log(f"items-b cut off under load: {result['ok']} reads ok, {len(result['failed'])} failed")
        assert not result["failed"], result["failed"][:3]
        sh("ip", "link", "set", "eth0", "up", ns="mesh-items-b")

        # 3. A host that goes silent: its packets dropped (nothing refused).
        sh("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "50054", "-j", "DROP", ns="mesh-counter-c")
        inc = keyed_increments(4, sent_keys)
        log(f"counter-c silent: {inc['ok']} keyed increments ok, {len(inc['failed'])} failed,"
            f" slowest {inc['max_s'] * 1000:.0f} ms")
        assert not inc["failed"], inc["failed"][:3]
        sh("iptables", "-F", ns="mesh-counter-c")

        # 4. DNS: items-c added gets calls within the resolve interval; items-a removed leaves rotation.
        replicas["items"] = [HOSTS["mesh-items-b"][0], HOSTS["mesh-items-c"][0]]
        net.dns({f"{s}.mesh.test": a for s, a in replicas.items()})
        start_c = handled("mesh-items-c", "items")
        wait_for(lambda: (load(reads, 0.5)["ok"], handled("mesh-items-c", "items") > start_c)[1],
                 "items-c, added to DNS, gets calls")
        time.sleep(RESOLVE_MS / 1000 * 4)  # the removal: four resolve intervals at most
        start_a = handled("mesh-items-a", "items")
        result = load(reads, 2)
        assert not result["failed"], result["failed"][:3]
        assert handled("mesh-items-a", "items") == start_a, "items-a, removed from DNS, still gets calls"
        log("DNS changes followed: items-c in rotation, items-a out")

        # 5. The exact total.
        status, counter, _ = http("GET", "/counters/netns")
        assert status == 200 and counter["value"] == len(sent_keys), (counter, len(sent_keys))
        log(f"counter total {counter['value']} = {len(sent_keys)} distinct keys")
        rc = 0
    except Exception as e:  # noqa: BLE001  (reported, then everything is taken down)
        log(f"FAILED: {type(e).__name__}: {e}")
        for name in ("gateway", "mesh-items-b-items", "mesh-counter-c-counter"):
            path = work / f"{name}.log"
            if path.exists():
                log(f"--- {name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
    finally:
        enter_netns(home)
        os.close(home)
        net.down()
        shutil.rmtree(work, ignore_errors=True)
    log("passed" if rc == 0 else "failed")
    return rc


def keyed_increments(seconds: float, sent_keys: set) -> dict:
    """Increments, each under an Idempotency-Key of its own, sent twice (a client's retry)."""
    counter = iter(range(len(sent_keys), 10_000_000))
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    out = {"ok": 0, "failed": [], "max_s": 0.0}

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                key = f"k{next(counter)}"
                sent_keys.add(key)
            for _ in range(2):
                status, body, took = http("POST", "/counters/netns/increment", {"Idempotency-Key": key})
                with lock:
                    out["max_s"] = max(out["max_s"], took)
                    if status == 200:
                        out["ok"] += 1
                    else:
                        out["failed"].append(f"{key}: {status} {body}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return out


def wait_for(probe, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if probe():
            return
    raise RuntimeError(f"{what}: not within {seconds} s")


if __name__ == "__main__":
    # `timeout` (CI) stops a run with SIGTERM: exit through the clean-up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
