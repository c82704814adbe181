"""Slow-path benchmark: brushtail against Kea, dnsmasq and ISC dhcpd, measured in one run.

For every run and every server, a fresh pair of network namespaces joined by one veth
(tests/e2e/netns.Link: server sub0 198.18.0.1/16, client cli0 198.18.0.2/16) and a fresh
state directory on disk; the server is pinned to CPU 0, perfdhcp (kea-admin) to CPU 1 and
acts as a relay from 198.18.0.2, so every server answers to giaddr:67. Per server and run:

1. probe: a few exchanges until the server answers (it is never loaded before that);
2. latency: new clients at a light rate (--light-rate, default 25/s) for --duration seconds,
   DISCOVER-OFFER and REQUEST-ACK delays from perfdhcp's per-packet timestamps (-x t);
3. with --capacity: the highest paced rate at which >= 97.5% of exchanges complete,
   bracketed in at most 5 steps of --capacity-step seconds;
4. overload: new clients offered at --rate (default 20000/s, more than any server here
   takes; 0 = no -r, as fast as perfdhcp can) for --duration seconds; DORA/s = ACKs
   received / duration.

Every exchange is a new client: perfdhcp numbers clients from a base MAC, and each call
gets its own base (-b), so no phase renews the clients of another. Runs are interleaved
(run 1 of every server, then run 2, ...) so load from other tenants of the machine hits
all servers alike. Figures are medians over --runs with the range. The server's and
perfdhcp's CPU time and time spent waiting for a CPU (/proc schedstat) are recorded, so a
run starved by other tenants shows as such.

For brushtail the Prometheus endpoint (127.0.0.1:9967 in the server namespace) is scraped
before and after the overload phase: durable commits vs lease writes (the group-commit
factor) and the slow-path latency histogram. The daemon is then SIGKILLed, not stopped, and
its SQLite file opened: BOUND rows must be >= the ACKs perfdhcp received over all phases.

Run as root from the checkout (peers that are not installed are skipped):

    /work/main/.venv/bin/python bench/slowpath.py [--runs 3] [--duration 10] \
        [--servers brushtail,kea,dnsmasq,dhcpd] [--capacity] [--profile]

--json PATH (bench/report.py's `dora` scenario, bench/scenario.py's shape) runs these phases
instead of 3 and 4: light-load latency as above, with p99; fixed offered rates (--sweep,
--sweep-duration s each), stopped once a server answers less than half of what is offered;
the paced capacity bisected (--capacity-bisect steps) from the rates that passed and failed;
DISCOVER-OFFER and REQUEST-ACK at half of that capacity; the highest rate, perfdhcp without
-r for --max-duration s, with CPU time per ACK. A server is started afresh (new namespaces
and state) before a phase whose clients could take the pool past 80%, and brushtail's store
is checked after each of its starts. --quick: one run, short phases. About 8 minutes for 3
runs of the four servers.

--profile adds one brushtail overload phase (not counted in the table) with py-spy
recording the daemon (pip install py-spy into the venv) and reports its hot spots.
The report goes to stdout and to bench/results/slowpath-<date>.md (plus .json raw data).
"""

import argparse
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
# Run as a plain script from a checkout: the netns harness and perfdhcp parser live in tests/.
sys.path.insert(0, str(REPO))

from bench.scenario import Better, Metric, Scenario, Series, cpu_model  # noqa: E402
from tests.e2e.clients import PerfdhcpResult, parse_perfdhcp  # noqa: E402
from tests.e2e.netns import CLIENT_IF, RELAY_IP, SERVER_IF, SERVER_IP, Link, available  # noqa: E402

SERVERS = ("brushtail", "kea", "dnsmasq", "dhcpd")
SERVER_CPU = "0"
CLIENT_CPU = "1"
# The pool spans most of 198.18.0.0/15 so Kea at full speed for 10 s cannot run out of it
# (a /16 has 65k addresses: less than Kea's 13k DORA/s for 10 s).
POOL_SUBNET = "198.18.0.0/15"
POOL_FIRST = "198.18.1.0"
POOL_LAST = "198.19.255.254"
POOL_SIZE = (2 << 16) - 256 - 1  # 198.18.1.0 .. 198.19.255.254
LEASE_TIME = 3600
# perfdhcp gives each exchange the next MAC after a base until -R clients are used, then
# starts over: the largest -R means no exchange of a call reuses a client.
CLIENTS = 4294967295
METRICS_URL = "http://127.0.0.1:9967/metrics"
EXIT_WAIT_US = 1_000_000  # perfdhcp -W: keep listening 1 s after the last send
DRAIN_TIMEOUT = 20.0
# Capacity search (--capacity): the highest paced offered rate at which at least 97.5% of
# the DISCOVERs sent end in an ACK, ISC's criterion for its Kea performance reports.
CAPACITY_OK = 0.975
CAPACITY_START = 400
CAPACITY_MAX = 40000
CAPACITY_STEPS = 5
# --json's fixed offered rates stop once a server answers less than this share of them: it
# is past its capacity, and higher rates only cost time.
SWEEP_STOP = 0.5
SWEEP_RATES = "500,2000,5000,10000,20000"

PEER_BINARIES = {
    "kea": "kea-dhcp4",
    "dnsmasq": "dnsmasq",
    "dhcpd": "dhcpd",
}
PACKAGES = (
    "kea-admin", "kea-dhcp4-server", "dnsmasq-base", "isc-dhcp-server", "python3",
    "libsqlite3-0", "python3-prometheus-client",
)  # fmt: skip


# Where the daemon under test is imported from: a snapshot taken when the run starts (see
# snapshot_brushtail), so edits to the working tree during a run cannot mix versions.
_brushtail_path: Path = REPO


class Skip(Exception):
    """A server cannot be benchmarked here (binary missing)."""


# --- results -------------------------------------------------------------------------------


@dataclass
class Throughput:
    offered_rate: int
    duration: float
    discovers_sent: int
    offers: int
    requests_sent: int
    acks: int  # ACKs matched to a REQUEST in time
    ack_orphans: int  # ACKs that came after perfdhcp had written their REQUEST off
    do_drops: int
    ra_drops: int
    perfdhcp_rate: float | None
    server_cpu_pct: float | None  # server's CPU time / wall time of the phase
    server_wait_pct: float | None  # time runnable but not running (CPU taken by others)
    socket_drops: int | None  # receive-queue overflows of the socket the server reads
    perfdhcp_cpu_pct: float | None  # the load generator's own CPU use and wait
    perfdhcp_wait_pct: float | None
    steal_pct: float | None  # of the server's CPU, taken by the hypervisor
    server_cpu_s: float | None = None  # the server's CPU time over the phase, all threads
    dora_per_s: float = 0.0

    def __post_init__(self) -> None:
        self.dora_per_s = self.acks / self.duration


@dataclass
class Latency:
    samples_do: int
    samples_ra: int
    do_median_ms: float | None
    do_avg_ms: float | None
    ra_median_ms: float | None
    ra_avg_ms: float | None
    drops: int
    rate: int = 0  # offered exchanges per second
    do_p99_ms: float | None = None
    ra_p99_ms: float | None = None


@dataclass
class BrushtailStats:
    commits: float = 0.0
    writes: float = 0.0
    commit_seconds: float = 0.0
    latency_count: float = 0.0
    latency_sum: float = 0.0
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    socket_drops: float = 0.0
    replies: dict[str, float] = field(default_factory=dict)
    durable_bound: int | None = None
    durable_other: int | None = None
    acks_received: int = 0
    durable_ok: bool | None = None

    @property
    def group_factor(self) -> float | None:
        return self.writes / self.commits if self.commits else None


@dataclass
class RunResult:
    server: str
    run: int
    throughput: Throughput | None = None
    latency: Latency | None = None
    brushtail: BrushtailStats | None = None  # overload phase
    brushtail_light: BrushtailStats | None = None  # light-load phase
    capacity: float | None = None  # highest paced rate with >= CAPACITY_OK answered
    capacity_steps: list[tuple[int, float]] = field(default_factory=list)
    loadavg: float | None = None  # 1-minute load average when the run started
    error: str | None = None
    # --json (the report's `dora` scenario): the phases below as well
    latency_half: Latency | None = None  # at half of this server's own capacity
    sweep: list[Throughput] = field(default_factory=list)  # fixed offered rates, ascending
    fsync_ms: float | None = None  # fsync probe p50 just before the run
    durable: list[tuple[int, int]] = field(default_factory=list)  # (BOUND rows, ACKs) per start
    restarts: int = 0  # fresh starts so that no phase runs out of the pool


# --- small helpers -------------------------------------------------------------------------


def sh(argv: Sequence[str], timeout: float = 10.0) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def package_versions() -> dict[str, str]:
    versions = {}
    for pkg in PACKAGES:
        out = sh(["dpkg-query", "-W", "-f", "${Version}", pkg])
        versions[pkg] = out if out and "no packages found" not in out else "not installed"
    return versions


def snapshot_brushtail(dest: Path, rev: str | None) -> str:
    """Copy the daemon's package to `dest` (the commit `rev` of it, or the working tree as
    it is now) and return a description of what was copied."""
    dest.mkdir(parents=True)
    if rev is not None:
        commit = sh(["git", "-C", str(REPO), "rev-parse", "--short", f"{rev}^{{commit}}"])
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", commit, "brushtaild"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return f"commit {commit}"
    shutil.copytree(
        REPO / "brushtaild", dest / "brushtaild", ignore=shutil.ignore_patterns("__pycache__")
    )
    head = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--", "brushtaild"])
    return f"working tree at {head}" + (" with uncommitted changes in brushtaild/" if dirty else "")


def schedstat(pid: int) -> tuple[float, float] | None:
    """(seconds on CPU, seconds runnable but waiting for a CPU), summed over all threads."""
    run = wait = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            fields = (task / "schedstat").read_text().split()
            run += int(fields[0])
            wait += int(fields[1])
    except (OSError, IndexError, ValueError):
        return None
    return run / 1e9, wait / 1e9


def steal() -> float | None:
    """Seconds of the server CPU's time stolen by the hypervisor since boot (/proc/stat)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{SERVER_CPU} "):
                return int(line.split()[8]) / os.sysconf("SC_CLK_TCK")
    return None


def fsync_probe(directory: Path, samples: int = 50) -> dict[str, float]:
    """Latency of a 4 KiB append + fdatasync in `directory`: what one durable commit costs."""
    times = []
    fd, name = tempfile.mkstemp(prefix="fsync-", dir=directory)
    try:
        for _ in range(samples):
            os.write(fd, b"\0" * 4096)
            start = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - start) * 1000.0)
    finally:
        os.close(fd)
        os.unlink(name)
    times.sort()
    return {"p50_ms": times[len(times) // 2], "p90_ms": times[int(len(times) * 0.9)]}


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile: the smallest value with at least q of them at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def span(values: Sequence[float | None]) -> tuple[float, float] | None:
    present = [v for v in values if v is not None]
    return (min(present), max(present)) if present else None


# --- perfdhcp ------------------------------------------------------------------------------

_TS_SECTION = re.compile(r"^\*\*\*Timestamps for packets: (\S+)\*\*\*$")
_TS_LINE = re.compile(r"^sent / received: ([\d.]+) / ([\d.]+)$")


def parse_timestamps(output: str) -> dict[str, list[float]]:
    """perfdhcp -x t: per exchange, 'sent / received: S / R' in seconds; returns ms delays."""
    delays: dict[str, list[float]] = defaultdict(list)
    section: str | None = None
    for raw in output.splitlines():
        line = raw.strip()
        if match := _TS_SECTION.match(line):
            section = match.group(1)
        elif (match := _TS_LINE.match(line)) and section is not None:
            delays[section].append((float(match.group(2)) - float(match.group(1))) * 1000.0)
    return delays


@dataclass
class LoadStats:
    """What perfdhcp itself used of its CPU: if it is saturated, it is the limit."""

    cpu_pct: float | None = None
    wait_pct: float | None = None


_mac_bases = itertools.count()


def perfdhcp(
    link: Link, *, rate: int, duration: int, extra: Sequence[str] = ()
) -> tuple[PerfdhcpResult, str, LoadStats]:
    """Run perfdhcp as a relay from the client namespace, pinned to CLIENT_CPU.

    perfdhcp numbers its clients from a base MAC (00:0c:01:02:03:04 unless -b), one new
    MAC per exchange, so every call would start over with the clients of the one before
    and a later phase would renew them instead of bringing new ones: each call gets its own
    base, 02:bd:NN:00:00:00 (locally administered), room for 2^24 clients.
    """
    base = f"mac=02:bd:{next(_mac_bases) % 256:02x}:00:00:00"
    argv = [
        "ip", "netns", "exec", link.client_ns,
        "taskset", "-c", CLIENT_CPU, "perfdhcp", "-4", "-l", CLIENT_IF,
        *(["-r", str(rate)] if rate else []),  # no -r: as fast as perfdhcp can send
        "-R", str(CLIENTS), "-b", base,
        "-p", str(duration), "-W", str(EXIT_WAIT_US), *extra, SERVER_IP,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as out:
        # ip netns exec and taskset exec in place: the child's pid is perfdhcp's.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        t0 = time.monotonic()
        first = last = schedstat(proc.pid)
        deadline = t0 + duration + 30
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"perfdhcp did not finish within {duration + 30} s")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
            if proc.returncode is None:
                last = schedstat(proc.pid) or last
        wall = time.monotonic() - t0
        out.seek(0)
        output = out.read().decode(errors="replace")
    load = LoadStats()
    if first is not None and last is not None and wall > 0:
        load = LoadStats(100 * (last[0] - first[0]) / wall, 100 * (last[1] - first[1]) / wall)
    if proc.returncode not in (0, 3):  # 3: some exchanges failed, which is a result
        raise RuntimeError(f"perfdhcp exited {proc.returncode}: {output[-2000:]}")
    return parse_perfdhcp(output, proc.returncode), output, load


def acks_of(result: PerfdhcpResult) -> int:
    """Every ACK perfdhcp received, late ones (orphans) included."""
    ra = result.exchanges.get("REQUEST-ACK")
    return ra.received + ra.orphans if ra else 0


# --- servers -------------------------------------------------------------------------------


@dataclass
class Started:
    proc: subprocess.Popen[bytes]
    log: Path
    state: Path | None = None  # brushtail's SQLite file


def start_brushtail(link: Link, work: Path, log: IO[bytes]) -> Started:
    state = work / "state"
    config = work / "brushtail.yaml"
    config.write_text(
        "site: bench\n"
        f"interface: {SERVER_IF}\n"
        f"server_id: {SERVER_IP}\n"
        f"state_dir: {state}\n"
        "pools:\n"
        "  - name: bench\n"
        f"    subnet: {POOL_SUBNET}\n"
        f'    ranges: ["{POOL_FIRST}-{POOL_LAST}"]\n'
        f"    routers: [{SERVER_IP}]\n"
        f"    dns_servers: [{SERVER_IP}]\n"
        f"    lease_time: {LEASE_TIME}\n"
        # perfdhcp is one relay for every client: a real relay's budget would be the limit.
        "fastpath:\n"
        "  relay_rate_limit: 0\n"
    )
    env = {**os.environ, "PYTHONPATH": str(_brushtail_path)}
    argv = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "brushtaild", "--config"]
    argv.append(str(config))
    proc = link.popen_in(link.server_ns, argv, stdout=log, stderr=log, env=env)
    return Started(proc, Path(log.name), state / "leases.sqlite3")


def write_kea_config(work: Path, subnet: str, first: str, last: str, leases: Path) -> Path:
    """Kea 2.2's config as both benchmarks run it: raw socket on the server veth, memfile
    that persists (like brushtail's store), single-threaded (Debian's default), INFO log."""
    config = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": [SERVER_IF], "dhcp-socket-type": "raw"},
            "lease-database": {
                "type": "memfile",
                "persist": True,
                "name": str(leases),
                "lfc-interval": 0,
            },
            "multi-threading": {"enable-multi-threading": False},
            "valid-lifetime": LEASE_TIME,
            "subnet4": [
                {
                    "id": 1,
                    "subnet": subnet,
                    "pools": [{"pool": f"{first} - {last}"}],
                    "option-data": [
                        {"name": "routers", "data": SERVER_IP},
                        {"name": "domain-name-servers", "data": SERVER_IP},
                    ],
                }
            ],
            # Debian's default severity: one INFO line per allocated lease, like brushtail.
            "loggers": [
                {
                    "name": "kea-dhcp4",
                    "output_options": [{"output": str(work / "kea.log")}],
                    "severity": "INFO",
                }
            ],
        }
    }
    path = work / "kea-dhcp4.conf"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_kea(link: Link, work: Path, log: IO[bytes]) -> Started:
    path = write_kea_config(work, POOL_SUBNET, POOL_FIRST, POOL_LAST, work / "kea-leases4.csv")
    # Own pid and lock files: another Kea on the machine (another benchmark) must not clash.
    env = {**os.environ, "KEA_PIDFILE_DIR": str(work), "KEA_LOCKFILE_DIR": str(work)}
    argv = ["taskset", "-c", SERVER_CPU, "kea-dhcp4", "-c", str(path)]
    proc = link.popen_in(link.server_ns, argv, stdout=log, stderr=log, env=env)
    return Started(proc, work / "kea.log")


def start_dnsmasq(link: Link, work: Path, log: IO[bytes]) -> Started:
    argv = [
        "taskset", "-c", SERVER_CPU, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
        "--port=0", f"--interface={SERVER_IF}", "--bind-interfaces", "--no-ping",
        "--no-resolv", "--no-hosts", "--user=root", "--group=root",
        f"--dhcp-range={POOL_FIRST},{POOL_LAST},255.254.0.0,{LEASE_TIME}",
        f"--dhcp-lease-max={POOL_SIZE}",  # default 1000 would cap the run
        f"--dhcp-leasefile={work / 'dnsmasq.leases'}",
        f"--pid-file={work / 'dnsmasq.pid'}",
        f"--log-facility={work / 'dnsmasq.log'}",
        f"--dhcp-option=option:router,{SERVER_IP}",
    ]  # fmt: skip
    proc = link.popen_in(link.server_ns, argv, stdout=log, stderr=log)
    return Started(proc, work / "dnsmasq.log")


def start_dhcpd(link: Link, work: Path, log: IO[bytes]) -> Started:
    config = work / "dhcpd.conf"
    leases = work / "dhcpd.leases"
    leases.touch()
    config.write_text(
        "authoritative;\n"
        "ping-check false;\n"
        f"default-lease-time {LEASE_TIME};\n"
        f"max-lease-time {LEASE_TIME};\n"
        "subnet 198.18.0.0 netmask 255.254.0.0 {\n"
        f"  range {POOL_FIRST} {POOL_LAST};\n"
        f"  option routers {SERVER_IP};\n"
        f"  option domain-name-servers {SERVER_IP};\n"
        "}\n"
    )
    # -d: log to stderr (the file below) instead of a syslog that may not be there.
    argv = [
        "taskset", "-c", SERVER_CPU, "dhcpd", "-4", "-f", "-d", "-cf", str(config),
        "-lf", str(leases), "-pf", str(work / "dhcpd.pid"), SERVER_IF,
    ]  # fmt: skip
    proc = link.popen_in(link.server_ns, argv, stdout=log, stderr=log)
    return Started(proc, Path(log.name))


STARTERS: dict[str, Callable[[Link, Path, IO[bytes]], Started]] = {
    "brushtail": start_brushtail,
    "kea": start_kea,
    "dnsmasq": start_dnsmasq,
    "dhcpd": start_dhcpd,
}


def check_installed(server: str) -> None:
    binary = PEER_BINARIES.get(server)
    if binary is not None and shutil.which(binary) is None:
        raise Skip(f"{server}: `{binary}` not found; install its Debian package to include it")
    if shutil.which("perfdhcp") is None:
        raise Skip("perfdhcp not found (Debian package kea-admin)")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(link: Link, started: Started, limit: float = 30.0) -> int:
    """Probe with a few exchanges until one completes; returns the ACKs received."""
    deadline = time.monotonic() + limit
    acks = 0
    while time.monotonic() < deadline:
        if started.proc.poll() is not None:
            raise RuntimeError(f"server exited {started.proc.returncode}:\n{tail(started.log)}")
        result, _, _ = perfdhcp(link, rate=10, duration=1, extra=["-n", "2"])
        acks += acks_of(result)
        if acks:
            return acks
        time.sleep(0.3)
    raise RuntimeError(f"server did not answer within {limit:.0f} s:\n{tail(started.log)}")


_SKMEM_DROPS = re.compile(r"skmem:\([^)]*\bd(\d+)\)")


def receive_drops(link: Link) -> int | None:
    """Drop counter of the socket the server reads requests from, in the server namespace:
    its AF_PACKET socket if it has one (brushtail, Kea raw, dhcpd LPF), else its UDP socket
    on port 67 (dnsmasq). The others' UDP sockets only hold the port; they count every
    request they are never asked to read as a drop, so they are not summed."""
    done = link.run_in(link.server_ns, ["ss", "-a", "-m", "-n", "-O"], check=False)
    raw = udp = 0
    seen_raw = False
    for line in done.stdout.splitlines():
        match = _SKMEM_DROPS.search(line)
        if not match:
            continue
        if line.startswith("p_raw"):
            raw += int(match.group(1))
            seen_raw = True
        elif line.startswith("udp") and re.search(r":67\s", line):
            udp += int(match.group(1))
    return raw if seen_raw else udp


_RECV_Q = re.compile(r"^(p_raw|udp)\s+\S+\s+(\d+)")


def wait_idle(link: Link, limit: float = DRAIN_TIMEOUT) -> None:
    """Wait until no request waits in any server socket (a backlog from an overloaded phase
    must not spill into the next one)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done = link.run_in(link.server_ns, ["ss", "-a", "-n", "-O", "-0", "-u"], check=False)
        queued = sum(
            int(m.group(2))
            for line in done.stdout.splitlines()
            if (m := _RECV_Q.match(line))
            if m.group(1) == "p_raw" or re.search(r":67\s", line)
        )
        if not queued:
            return
        time.sleep(0.25)


# --- brushtail metrics ---------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(link: Link) -> dict[str, float]:
    code = (
        "import sys, urllib.request; "
        f"sys.stdout.write(urllib.request.urlopen({METRICS_URL!r}, timeout=5).read().decode())"
    )
    done = link.run_in(link.server_ns, [sys.executable, "-c", code], timeout=20)
    samples = {}
    for line in done.stdout.splitlines():
        if match := _SAMPLE.match(line):
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def histogram_quantile(delta: dict[str, float], name: str, q: float) -> float | None:
    """Prometheus-style quantile (linear within a bucket) of a histogram's increase."""
    buckets = []
    for key, value in delta.items():
        if key.startswith(name + "_bucket{"):
            le = re.search(r'le="([^"]+)"', key)
            if le:
                buckets.append((math.inf if le.group(1) == "+Inf" else float(le.group(1)), value))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (target - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return None


def brushtail_stats(before: dict[str, float], after: dict[str, float]) -> BrushtailStats:
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}

    def ms(value: float | None) -> float | None:
        return value * 1000.0 if value is not None else None

    lat = "dhcp_slowpath_latency_seconds"
    return BrushtailStats(
        commits=delta.get("dhcp_lease_commit_seconds_count", 0.0),
        writes=delta.get("dhcp_lease_writes_total", 0.0),
        commit_seconds=delta.get("dhcp_lease_commit_seconds_sum", 0.0),
        latency_count=delta.get(f"{lat}_count", 0.0),
        latency_sum=delta.get(f"{lat}_sum", 0.0),
        latency_p50_ms=ms(histogram_quantile(delta, lat, 0.5)),
        latency_p90_ms=ms(histogram_quantile(delta, lat, 0.9)),
        latency_p99_ms=ms(histogram_quantile(delta, lat, 0.99)),
        socket_drops=delta.get("dhcp_socket_drops_total", 0.0),
        replies={
            m.group(1): v
            for k, v in delta.items()
            if (m := re.match(r'dhcp_slowpath_requests_total\{result="([^"]+)"\}', k)) and v
        },
    )


def drain(link: Link) -> dict[str, float]:
    """Wait until the daemon has worked off its receive queue; return the final scrape."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    last = scrape(link)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = scrape(link)
        key = "dhcp_lease_writes_total"
        if now.get(key) == last.get(key):
            return now
        last = now
    return last


def count_durable(db: Path) -> tuple[int, int]:
    """(BOUND rows, other rows) in the lease store, opened after the daemon was killed."""
    conn = sqlite3.connect(db)
    try:
        bound = conn.execute("SELECT count(*) FROM lease WHERE state = 1").fetchone()[0]
        other = conn.execute("SELECT count(*) FROM lease WHERE state != 1").fetchone()[0]
    finally:
        conn.close()
    return int(bound), int(other)


# --- one run of one server -----------------------------------------------------------------


@contextlib.contextmanager
def workdir(root: Path, name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def throughput_phase(
    link: Link, started: Started, rate: int, duration: int
) -> tuple[Throughput, PerfdhcpResult]:
    pid = started.proc.pid
    drops0, sched0, steal0, t0 = receive_drops(link), schedstat(pid), steal(), time.monotonic()
    result, _, load = perfdhcp(link, rate=rate, duration=duration)
    sched1, steal1, wall = schedstat(pid), steal(), time.monotonic() - t0
    drops1 = receive_drops(link)
    do = result.exchanges.get("DISCOVER-OFFER")
    ra = result.exchanges.get("REQUEST-ACK")
    if do is None or ra is None:
        raise RuntimeError(f"perfdhcp printed no statistics:\n{result.output[-2000:]}")
    return (
        Throughput(
            offered_rate=rate,
            duration=float(duration),
            discovers_sent=do.sent,
            offers=do.received,
            requests_sent=ra.sent,
            acks=ra.received,
            ack_orphans=ra.orphans,
            do_drops=do.drops,
            ra_drops=ra.drops,
            perfdhcp_rate=result.rate,
            server_cpu_pct=100 * (sched1[0] - sched0[0]) / wall if sched0 and sched1 else None,
            server_wait_pct=100 * (sched1[1] - sched0[1]) / wall if sched0 and sched1 else None,
            server_cpu_s=sched1[0] - sched0[0] if sched0 and sched1 else None,
            socket_drops=drops1 - drops0 if drops0 is not None and drops1 is not None else None,
            perfdhcp_cpu_pct=load.cpu_pct,
            perfdhcp_wait_pct=load.wait_pct,
            steal_pct=100 * (steal1 - steal0) / wall
            if steal0 is not None and steal1 is not None
            else None,
        ),
        result,
    )


def latency_phase(link: Link, rate: int, duration: int) -> tuple[Latency, int]:
    result, output, _ = perfdhcp(link, rate=rate, duration=duration, extra=["-x", "t"])
    delays = parse_timestamps(output)
    do, ra = result.exchanges.get("DISCOVER-OFFER"), result.exchanges.get("REQUEST-ACK")
    do_d, ra_d = delays.get("DISCOVER-OFFER", []), delays.get("REQUEST-ACK", [])
    return (
        Latency(
            samples_do=len(do_d),
            samples_ra=len(ra_d),
            do_median_ms=statistics.median(do_d) if do_d else None,
            do_avg_ms=do.avg_delay_ms if do else None,
            ra_median_ms=statistics.median(ra_d) if ra_d else None,
            ra_avg_ms=ra.avg_delay_ms if ra else None,
            drops=(do.drops if do else 0) + (ra.drops if ra else 0),
            rate=rate,
            do_p99_ms=quantile(do_d, 0.99),
            ra_p99_ms=quantile(ra_d, 0.99),
        ),
        acks_of(result),
    )


def capacity_phase(
    link: Link, step: int, good: int = 0, bad: int = 0, max_steps: int = CAPACITY_STEPS
) -> tuple[float | None, list[tuple[int, float]], int]:
    """Bracket the highest paced rate with >= CAPACITY_OK of DISCOVERs ACKed, in at most
    `max_steps` steps of `step` seconds, moving by 4x until bracketed, then bisecting
    in log space; `good` and `bad` are rates already known to pass and fail (0: none).
    Returns (capacity or None if even the lowest rate tried failed, the (rate, fraction
    answered) steps, ACKs received)."""
    steps: list[tuple[int, float]] = []
    acks = 0
    if good and bad:
        rate = round(math.sqrt(good * bad))
    elif bad:
        rate = max(bad // 4, 1)
    else:
        rate = min(good * 4, CAPACITY_MAX) if good else CAPACITY_START
    for _ in range(max_steps):
        if (good and bad and bad / good <= 1.3) or (good and rate == good):
            break
        result, _, _ = perfdhcp(link, rate=rate, duration=step)
        acks += acks_of(result)
        do = result.exchanges.get("DISCOVER-OFFER")
        ra = result.exchanges.get("REQUEST-ACK")
        answered = ra.received / do.sent if do and ra and do.sent else 0.0
        steps.append((rate, answered))
        wait_idle(link)
        if answered >= CAPACITY_OK:
            good = rate
        else:
            bad = rate
        if not bad:
            rate = min(rate * 4, CAPACITY_MAX)
        elif not good:
            rate = max(bad // 4, 1)
        else:
            rate = round(math.sqrt(good * bad))
    return (float(good) if good else None), steps, acks


def run_one(server: str, run: int, args: argparse.Namespace, root: Path) -> RunResult:
    result = RunResult(server, run)
    with (
        workdir(root, server) as work,
        Link(client_ip=RELAY_IP) as link,
        open(work / "server.out", "wb") as log,
    ):
        started = STARTERS[server](link, work, log)
        acks = wait_ready(link, started)
        light0 = scrape(link) if server == "brushtail" else {}
        result.latency, light_acks = latency_phase(link, args.light_rate, args.duration)
        acks += light_acks
        if server == "brushtail":
            result.brushtail_light = brushtail_stats(light0, scrape(link))
        if args.capacity:
            result.capacity, result.capacity_steps, cap_acks = capacity_phase(
                link, args.capacity_step
            )
            acks += cap_acks
        wait_idle(link)
        before = scrape(link) if server == "brushtail" else {}
        result.throughput, heavy = throughput_phase(link, started, args.rate, args.duration)
        acks += acks_of(heavy)
        if started.proc.poll() is not None:
            raise RuntimeError(f"server exited during the run:\n{tail(started.log)}")
        if server == "brushtail" and started.state is not None:
            after = drain(link)
            stats = brushtail_stats(before, after)
            # SIGKILL, not SIGTERM: what is on disk must not depend on a clean shutdown.
            started.proc.kill()
            started.proc.wait(timeout=10)
            stats.durable_bound, stats.durable_other = count_durable(started.state)
            stats.acks_received = acks
            stats.durable_ok = stats.durable_bound >= acks
            result.brushtail = stats
    return result


class Session:
    """One server in a fresh namespace pair and state directory, started anew (new pair, new
    state) before a phase whose clients could exhaust the pool: every exchange is a new
    client, and the /15 holds fewer than a whole run's clients at Kea's or brushtail's rate.
    brushtail is SIGKILLed at each retirement and its store checked (see `retire`)."""

    # Start afresh when a phase could take the pool past this share: a server short of
    # free addresses answers slower (or not at all), which is not what a phase measures.
    ROOM = 0.8

    def __init__(self, server: str, root: Path, result: RunResult) -> None:
        self.server, self.root, self.result = server, root, result
        self.stack: contextlib.ExitStack | None = None
        self.link: Link | None = None
        self.started: Started | None = None
        self.acks = 0  # ACKs received from this start of the server, all phases

    def ready(self, expected_acks: float) -> tuple[Link, Started]:
        if self.stack is not None and self.acks + expected_acks > self.ROOM * POOL_SIZE:
            self.retire()
            self.result.restarts += 1
        if self.stack is None:
            self.stack = contextlib.ExitStack()
            work = self.stack.enter_context(workdir(self.root, self.server))
            self.link = self.stack.enter_context(Link(client_ip=RELAY_IP))
            log = self.stack.enter_context(open(work / "server.out", "wb"))  # noqa: SIM115
            self.started = STARTERS[self.server](self.link, work, log)
            self.acks = wait_ready(self.link, self.started)
        assert self.link is not None and self.started is not None
        if self.started.proc.poll() is not None:
            raise RuntimeError(f"server exited during the run:\n{tail(self.started.log)}")
        wait_idle(self.link)
        return self.link, self.started

    def retire(self) -> None:
        """brushtail: wait until it has worked off its queue, SIGKILL it (what is on disk
        must not depend on a clean shutdown) and count BOUND rows against ACKs received."""
        if self.stack is None:
            return
        try:
            started, link = self.started, self.link
            if self.server == "brushtail" and started is not None and started.state is not None:
                assert link is not None
                drain(link)
                started.proc.kill()
                started.proc.wait(timeout=10)
                bound, _ = count_durable(started.state)
                self.result.durable.append((bound, self.acks))
        finally:
            self.stack.close()
            self.stack = self.link = self.started = None


def run_full(server: str, run: int, args: argparse.Namespace, root: Path) -> RunResult:
    """The report's `dora` scenario for one server and run: light-load latency, the fixed
    offered rates of --sweep (stopped once the server answers less than half of what is
    offered), paced capacity bisected from the sweep's bracket, latency at half of that
    capacity, and the highest rate (no -r), the brushtail metrics scraped around it."""
    result = RunResult(server, run)
    if server == "brushtail":
        result.fsync_ms = fsync_probe(args.workdir, samples=20)["p50_ms"]
    session = Session(server, root, result)
    try:
        link, _ = session.ready(args.light_rate * args.duration)
        light0 = scrape(link) if server == "brushtail" else {}
        result.latency, got = latency_phase(link, args.light_rate, args.duration)
        session.acks += got
        if server == "brushtail":
            result.brushtail_light = brushtail_stats(light0, scrape(link))
        good = bad = 0
        for rate in args.sweep:
            link, started = session.ready(rate * args.sweep_duration)
            tput, heavy = throughput_phase(link, started, rate, args.sweep_duration)
            session.acks += acks_of(heavy)
            result.sweep.append(tput)
            if tput.discovers_sent and tput.acks / tput.discovers_sent >= CAPACITY_OK:
                good = rate
            elif not bad:
                bad = rate
            if tput.dora_per_s < SWEEP_STOP * rate:
                break
        link, _ = session.ready(max(good, bad, CAPACITY_START) * args.capacity_step * 3)
        result.capacity, result.capacity_steps, got = capacity_phase(
            link, args.capacity_step, good, bad, max_steps=args.capacity_bisect
        )
        session.acks += got
        half = round(result.capacity / 2) if result.capacity else 0
        if half:
            link, _ = session.ready(half * args.duration)
            result.latency_half, got = latency_phase(link, half, args.duration)
            session.acks += got
        # The highest rate perfdhcp reaches: room for 20,000/s, more than any server takes.
        link, started = session.ready(20_000 * args.max_duration)
        before = scrape(link) if server == "brushtail" else {}
        result.throughput, heavy = throughput_phase(link, started, 0, args.max_duration)
        session.acks += acks_of(heavy)
        if server == "brushtail":
            result.brushtail = brushtail_stats(before, drain(link))
        session.retire()
    finally:
        session.retire()
    if result.brushtail is not None and result.durable:
        result.brushtail.durable_bound = sum(bound for bound, _ in result.durable)
        result.brushtail.acks_received = sum(acks for _, acks in result.durable)
        result.brushtail.durable_ok = all(bound >= acks for bound, acks in result.durable)
    return result


def scenario(
    results: list[RunResult], skipped: dict[str, str], args: argparse.Namespace,
    env: dict[str, Any],
) -> Scenario:  # fmt: skip
    """The report's `dora` scenario from run_full's results (values aligned by run)."""
    servers = [s for s in args.servers if s not in skipped]
    by = {(r.server, r.run): r for r in results}
    runs = range(1, args.runs + 1)

    def metric(
        label: str, unit: str, better: Better, get: Callable[[RunResult], float | None],
        only: Sequence[str] | None = None,
    ) -> Metric:  # fmt: skip
        values: dict[str, list[float | None]] = {}
        for server in only or servers:
            if server in servers:
                got = [by.get((server, run)) for run in runs]
                values[server] = [get(r) if r and r.error is None else None for r in got]
        return Metric(label, unit, better, values)

    def tput(attr: str) -> Callable[[RunResult], float | None]:
        return lambda r: getattr(r.throughput, attr) if r.throughput else None

    def lat(phase: str, attr: str) -> Callable[[RunResult], float | None]:
        return lambda r: getattr(getattr(r, phase), attr) if getattr(r, phase) else None

    def cpu_per_answer(r: RunResult) -> float | None:
        t = r.throughput
        if t is None or t.server_cpu_s is None or not t.acks:
            return None
        return 1e6 * t.server_cpu_s / t.acks

    def answered(r: RunResult) -> float | None:
        t = r.throughput
        return 100.0 * t.acks / t.discovers_sent if t and t.discovers_sent else None

    def durable(r: RunResult) -> float | None:
        return float(all(b >= a for b, a in r.durable)) if r.durable else None

    def group(r: RunResult) -> float | None:
        return r.brushtail.group_factor if r.brushtail else None

    metrics = {
        "dora_max": metric("DORA/s, highest rate", "/s", "higher", tput("dora_per_s")),
        "answered_max_pct": metric("answered at the highest rate", "%", "higher", answered),
        "dora_capacity": metric("paced capacity DORA/s", "/s", "higher", lambda r: r.capacity),
        "cpu_us_per_answer": metric("CPU us per DORA", "us", "lower", cpu_per_answer),
        "cpu_wait_pct": metric(
            "waiting for its CPU, highest rate", "%", "lower", tput("server_wait_pct")
        ),
    }
    for phase, tag in (("latency", "light"), ("latency_half", "half")):
        for attr, name, what in (
            ("do_median_ms", f"discover_offer_{tag}_ms", "DISCOVER-OFFER"),
            ("do_p99_ms", f"discover_offer_{tag}_p99_ms", "DISCOVER-OFFER p99"),
            ("ra_median_ms", f"request_ack_{tag}_ms", "REQUEST-ACK"),
            ("ra_p99_ms", f"request_ack_{tag}_p99_ms", "REQUEST-ACK p99"),
        ):
            where = f"at {args.light_rate}/s" if tag == "light" else "at half capacity"
            metrics[name] = metric(f"{what} {where}", "ms", "lower", lat(phase, attr))
    metrics["fsync_ms"] = metric(
        "4 KiB write + fdatasync p50", "ms", "lower", lambda r: r.fsync_ms, only=["brushtail"]
    )
    metrics["durable"] = metric(
        "BOUND rows >= ACKs after SIGKILL (1 = yes)", "", "higher", durable, only=["brushtail"]
    )
    metrics["writes_per_commit"] = metric(
        "lease writes per fsync, highest rate", "", "higher", group, only=["brushtail"]
    )
    points: dict[str, list[tuple[float, list[float | None]]]] = {}
    for server in servers:
        curve = []
        for rate in args.sweep:
            ys: list[float | None] = []
            for run in runs:
                r = by.get((server, run))
                got = [t.dora_per_s for t in (r.sweep if r else []) if t.offered_rate == rate]
                ys.append(got[0] if got else None)
            if any(y is not None for y in ys):
                curve.append((float(rate), ys))
        points[server] = curve
    wait = {
        server: [
            (lambda r: r.throughput.server_wait_pct if r and r.throughput else None)(
                by.get((server, run))
            )
            for run in runs
        ]
        for server in servers
    }
    notes = [f"{r.server} run {r.run} failed: {r.error}" for r in results if r.error is not None]
    notes += [
        f"{r.server} run {r.run}: started afresh {r.restarts} time(s) so no phase ran out of "
        "the pool" for r in results if r.restarts
    ]  # fmt: skip
    return Scenario(
        scenario="dora",
        title="New subscribers (DORA, slow path)",
        command=env["command"],
        started=env["started"],
        seconds=float(env["wall_seconds"]),
        revision=env["revision"],
        runs=args.runs,
        metrics=metrics,
        series={
            "answered_vs_offered": Series(
                "offered new clients/s (paced)", "DORA/s answered", points
            )
        },
        skipped=skipped,
        notes=notes,
        machine={
            "cpu": env["cpu"],
            "nproc": env["nproc"],
            "kernel": env["kernel"],
            "packages": env["packages"],
            "loadavg_before": env["loadavg"],
            "loadavg_after": env.get("loadavg_after"),
            "server_cpu_wait_pct_highest_rate": wait,
            "fsync_before": env["fsync_before"],
            "fsync_after": env.get("fsync_after"),
            "phases": {
                "light_rate": args.light_rate,
                "duration_s": args.duration,
                "sweep": args.sweep,
                "sweep_duration_s": args.sweep_duration,
                "capacity_step_s": args.capacity_step,
                "max_duration_s": args.max_duration,
            },
        },
    )


# --- profiling -----------------------------------------------------------------------------


def profile_brushtail(args: argparse.Namespace, root: Path, out: Path) -> dict[str, Any]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"error": "py-spy not found: /work/main/.venv/bin/python -m pip install py-spy"}
    raw = out.with_suffix(".pyspy.txt")
    with (
        workdir(root, "profile") as work,
        Link(client_ip=RELAY_IP) as link,
        open(work / "server.out", "wb") as log,
    ):
        started = start_brushtail(link, work, log)
        wait_ready(link, started)
        # --idle: time blocked in fdatasync or sendto is what we want to see, not hide.
        spy = subprocess.Popen(
            [
                pyspy, "record", "--pid", str(started.proc.pid), "--duration",
                str(args.duration), "--rate", "200", "--idle", "--threads", "--format", "raw",
                "--output", str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            time.sleep(0.5)
            tput, _ = throughput_phase(link, started, args.rate, args.duration)
            spy.wait(timeout=args.duration + 30)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if not raw.exists():
            err = spy.stderr.read().decode(errors="replace") if spy.stderr else ""
            return {"error": f"py-spy wrote nothing: {err[-1000:]}"}
    return {"dora_per_s_under_profiler": tput.dora_per_s, **summarize_profile(raw)}


_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def summarize_profile(raw: Path, top: int = 20) -> dict[str, Any]:
    """Self and inclusive sample shares per function of the daemon's main thread.

    py-spy's raw format is one line per distinct stack: `thread (TID): NAME;frame;...;frame
    COUNT`, each frame `function (file:line)`; line numbers are dropped here so a function
    is counted once however many of its lines were sampled.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if not count_text.isdigit() or not frames[0].endswith("MainThread"):
            continue
        count = int(count_text)
        names = []
        for frame in frames[1:]:
            match = _FRAME.match(frame)
            names.append(f"{match.group(1)} ({match.group(2)})" if match else frame)
        if not names:
            continue
        total += count
        own[names[-1]] += count
        if names[-1].startswith("EpollSelector.select "):
            idle += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        return {"error": "no samples of the main thread"}
    return {
        "samples": total,
        "idle_in_select_pct": 100.0 * idle / total,
        "self": [(n, 100.0 * c / total) for n, c in own.most_common(top)],
        "inclusive": [(n, 100.0 * c / total) for n, c in inclusive.most_common(top + 10)],
    }


# --- report --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def fmt_range(values: Sequence[float | None], digits: int = 0) -> str:
    bounds = span(values)
    if bounds is None:
        return "n/a"
    return f"{bounds[0]:,.{digits}f}-{bounds[1]:,.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "n/a"
    return f"{value / base:.2f}x"


def report(
    results: list[RunResult],
    skipped: dict[str, str],
    args: argparse.Namespace,
    env: dict[str, Any],
    profile: dict[str, Any] | None,
) -> str:
    by_server: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        by_server[r.server].append(r)
    servers = [s for s in args.servers if s in by_server]

    def ok(server: str) -> list[RunResult]:
        return [r for r in by_server[server] if r.error is None]

    def med(server: str, get: Callable[[RunResult], float | None]) -> float | None:
        return median([get(r) for r in ok(server)])

    def cell(server: str, get: Callable[[RunResult], float | None], digits: int = 0) -> str:
        """Median and [range] over the server's runs."""
        values = [get(r) for r in ok(server)]
        if len([v for v in values if v is not None]) < 2:
            return fmt(median(values), digits)
        return f"{fmt(median(values), digits)} [{fmt_range(values, digits)}]"

    def versus(server: str, get: Callable[[RunResult], float | None]) -> str:
        return ratio(med(server, get), med("kea", get)) if "kea" in servers else "n/a"

    def tput(attr: str) -> Callable[[RunResult], float | None]:
        return lambda r: getattr(r.throughput, attr) if r.throughput else None

    def answered(r: RunResult) -> float | None:
        t = r.throughput
        return 100.0 * t.acks / t.discovers_sent if t and t.discovers_sent else None

    def lat(attr: str) -> Callable[[RunResult], float | None]:
        return lambda r: getattr(r.latency, attr) if r.latency else None

    def capacity(r: RunResult) -> float | None:
        return r.capacity

    dora = tput("dora_per_s")
    offered = f"{args.rate:,}/s" if args.rate else "unlimited (no -r)"
    fsync0, fsync1 = env["fsync_before"], env.get("fsync_after", {})
    lines = [
        f"# brushtail slow path vs peers, {env['date']}",
        "",
        f"Command (as root, from the repository root): `{env['command']}`",
        "",
        f"- Host: `nproc` {env['nproc']}, {env['cpu']}, kernel {env['kernel']}; brushtaild "
        f"from {env['revision']}.",
        f"- Load average (1 min) when the run started: {env['loadavg']}; at the start of each "
        "server's runs: "
        + ", ".join(f"{s} {fmt_range([r.loadavg for r in by_server[s]], 1)}" for s in servers)
        + ".",
        f"- 4 KiB write + fdatasync in {args.workdir}: p50 {fsync0['p50_ms']:.2f} ms, "
        f"p90 {fsync0['p90_ms']:.2f} ms before the run"
        + (
            f"; p50 {fsync1['p50_ms']:.2f} ms, p90 {fsync1['p90_ms']:.2f} ms after."
            if fsync1
            else "."
        ),
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()) + ".",
        f"- Server pinned to CPU {SERVER_CPU}, perfdhcp (relay 198.18.0.2, giaddr) to CPU "
        f"{CLIENT_CPU}; a fresh namespace pair and state directory per server and run; "
        f"pool {POOL_FIRST}-{POOL_LAST} ({POOL_SIZE:,} addresses); every exchange a new client.",
        "",
        f"Medians of {args.runs} runs, [min-max] over the runs. **Overload**: new clients "
        f"offered at {offered} for {args.duration} s; DORA/s = ACKs received / {args.duration} "
        "s; answered = ACKs / DISCOVERs sent; server CPU = its on-CPU time, and waiting = "
        "time it was runnable while other processes held its CPU, steal = time the "
        "hypervisor took from its CPU, all per wall second of the phase (the same for "
        "perfdhcp, the load generator, whose two threads share one CPU); socket drops = "
        "receive-queue overflows of the socket it reads. "
        f"**Light load**: new clients at {args.light_rate}/s for {args.duration} s, median "
        "(perfdhcp's avg) of the per-exchange delays printed by `perfdhcp -x t`, in ms.",
        "",
    ]
    header = (
        "| server | overload DORA/s | vs Kea | answered | server CPU / waiting / steal "
        "| perfdhcp CPU / waiting | socket drops "
    )
    rule = "|---|---|---|---|---|---|---|"
    if args.capacity:
        header += "| capacity DORA/s | vs Kea "
        rule += "---|---|"
    header += "| DISCOVER-OFFER ms | vs Kea | REQUEST-ACK ms | vs Kea |"
    rule += "---|---|---|---|"
    lines += [header, rule]
    for s in servers:
        if not ok(s):
            lines.append(f"| {s} | failed: {by_server[s][0].error!s:.100} |")
            continue
        row = (
            f"| {s} | {cell(s, dora)} | {versus(s, dora)} | {cell(s, answered, 1)}% "
            f"| {fmt(med(s, tput('server_cpu_pct')), 0, '%')} / "
            f"{fmt(med(s, tput('server_wait_pct')), 0, '%')} / "
            f"{fmt(med(s, tput('steal_pct')), 0, '%')} "
            f"| {fmt(med(s, tput('perfdhcp_cpu_pct')), 0, '%')} / "
            f"{fmt(med(s, tput('perfdhcp_wait_pct')), 0, '%')} "
            f"| {cell(s, tput('socket_drops'))} "
        )
        if args.capacity:
            row += f"| {cell(s, capacity)} | {versus(s, capacity)} "
        row += (
            f"| {fmt(med(s, lat('do_median_ms')), 2)} ({fmt(med(s, lat('do_avg_ms')), 2)}) "
            f"[{fmt_range([lat('do_median_ms')(r) for r in ok(s)], 2)}] "
            f"| {versus(s, lat('do_median_ms'))} "
            f"| {fmt(med(s, lat('ra_median_ms')), 2)} ({fmt(med(s, lat('ra_avg_ms')), 2)}) "
            f"[{fmt_range([lat('ra_median_ms')(r) for r in ok(s)], 2)}] "
            f"| {versus(s, lat('ra_median_ms'))} |"
        )
        lines.append(row)
    for s, why in skipped.items():
        lines.append(f"| {s} | skipped: {why} |")
    if args.capacity:
        lines += [
            "",
            f"Capacity: highest paced rate at which >= {CAPACITY_OK:.1%} of DISCOVERs got an "
            f"ACK, searched in steps of {args.capacity_step} s (rate: answered fraction):",
            "",
        ]
        for s in servers:
            for r in ok(s):
                steps = ", ".join(f"{rate}: {frac:.1%}" for rate, frac in r.capacity_steps)
                lines.append(f"- {s} run {r.run}: {steps}")

    bt = [r for r in ok("brushtail") if r.brushtail]
    if bt:
        lines += [
            "",
            "## brushtail internals in the overload phase (from its metrics endpoint)",
            "",
            "Commits are `dhcp_lease_commit_seconds_count` (one SQLite transaction and WAL "
            "fdatasync each), lease writes `dhcp_lease_writes_total`; the latency histogram is "
            "`dhcp_slowpath_latency_seconds` (receive of a batch to its last reply, one "
            "observation per reply; quantiles interpolated within buckets). After the run the "
            "daemon is SIGKILLed and its SQLite file opened: BOUND rows must be >= every ACK "
            "perfdhcp received from it (probe, light load and overload phases).",
            "",
            "| run | DORA/s | lease writes | commits | writes per commit | commit ms avg "
            "| latency p50 / p90 / p99 / avg ms | BOUND rows after SIGKILL | ACKs received "
            "| durable >= ACKed |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in bt:
            b = r.brushtail
            assert b is not None
            commit_ms = 1000 * b.commit_seconds / b.commits if b.commits else None
            lat_avg = 1000 * b.latency_sum / b.latency_count if b.latency_count else None
            lines.append(
                f"| {r.run} | {fmt(dora(r))} | {fmt(b.writes)} | {fmt(b.commits)} "
                f"| {fmt(b.group_factor, 1)} | {fmt(commit_ms, 2)} "
                f"| {fmt(b.latency_p50_ms, 1)} / {fmt(b.latency_p90_ms, 1)} / "
                f"{fmt(b.latency_p99_ms, 1)} / {fmt(lat_avg, 1)} "
                f"| {fmt(b.durable_bound)} | {fmt(b.acks_received)} "
                f"| {'yes' if b.durable_ok else 'NO'} |"
            )
        light = [r.brushtail_light for r in bt if r.brushtail_light]
        if light:

            def commit_avg_ms(b: BrushtailStats) -> float | None:
                return 1000 * b.commit_seconds / b.commits if b.commits else None

            def latency_avg_ms(b: BrushtailStats) -> float | None:
                return 1000 * b.latency_sum / b.latency_count if b.latency_count else None

            def per(get: Callable[[BrushtailStats], float | None], digits: int) -> str:
                values = [get(b) for b in light]
                return f"{fmt(median(values), digits)} [{fmt_range(values, digits)}]"

            lines += [
                "",
                f"Light-load phase ({args.light_rate}/s), medians [range] of runs: "
                f"{per(lambda b: b.writes, 0)} lease writes in {per(lambda b: b.commits, 0)} "
                f"commits, commit avg "
                f"{per(commit_avg_ms, 2)} ms, slow-path latency avg {per(latency_avg_ms, 2)}"
                " ms (every ACK waits for its own commit at this rate).",
            ]
        factors = [r.brushtail.group_factor for r in bt if r.brushtail]
        lines += [
            "",
            f"Group-commit factor (lease writes per fsync), median of runs: "
            f"{fmt(median(factors), 1)} [{fmt_range(factors, 1)}].",
        ]
    failures = [r for r in results if r.error]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r.server} run {r.run}: {r.error}" for r in failures]
    if profile:
        lines += [
            "",
            "## brushtail profile (py-spy on one extra overload phase, not in the table)",
            "",
        ]
        if "error" in profile:
            lines.append(f"Profile failed: {profile['error']}")
        else:
            lines += [
                f"{profile['samples']} samples of the daemon's main thread at 200 Hz, "
                "time blocked in system calls included (`--idle`). DORA/s under the "
                f"profiler: {fmt(profile['dora_per_s_under_profiler'])}. In select(): "
                f"{profile['idle_in_select_pct']:.1f}%.",
                "",
                "| self % | function (file) |",
                "|---|---|",
                *(f"| {pct:.1f} | `{name}` |" for name, pct in profile["self"]),
                "",
                "| inclusive % | function (file) |",
                "|---|---|",
                *(f"| {pct:.1f} | `{name}` |" for name, pct in profile["inclusive"]),
            ]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per load phase")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--rate", type=int, default=20000, help="offered DORA/s, throughput")
    parser.add_argument("--light-rate", type=int, default=25, help="offered DORA/s, latency")
    parser.add_argument(
        "--capacity",
        action="store_true",
        help="also search each server's paced capacity (adds ~20 s per server and run)",
    )
    parser.add_argument("--capacity-step", type=int, default=2, help="seconds per step")
    parser.add_argument("--profile", action="store_true", help="py-spy one extra brushtail run")
    parser.add_argument(
        "--rev",
        help="benchmark this commit's brushtaild/ (default: the working tree, copied at start)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help="also write the report's `dora` scenario (bench/scenario.py) here; runs its "
        "phases: light load, --sweep, capacity, half-capacity latency, highest rate (no -r)",
    )
    parser.add_argument("--sweep", default=SWEEP_RATES, help="--json: offered rates, ascending")
    parser.add_argument("--sweep-duration", type=int, default=3, help="--json: s per rate")
    parser.add_argument("--max-duration", type=int, default=5, help="--json: s at highest rate")
    parser.add_argument(
        "--capacity-bisect", type=int, default=2, help="--json: capacity steps after the sweep"
    )
    parser.add_argument(
        "--quick", action="store_true", help="--json smoke run: 1 run, 2 s phases, short sweep"
    )
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                        help="parent of the state dirs; on disk, not tmpfs")  # fmt: skip
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.quick:
        args.runs, args.duration, args.sweep_duration, args.max_duration = 1, 2, 1, 2
        args.sweep, args.capacity_bisect, args.capacity_step = "2000,10000", 1, 1
    args.sweep = sorted(int(x) for x in args.sweep.split(",") if x.strip())
    if args.json is not None:
        args.capacity, args.rate = True, 0  # the markdown report's columns for these phases
    unknown = sorted(set(args.servers) - set(SERVERS))
    if unknown:
        parser.error(f"unknown servers {unknown}; choose from {', '.join(SERVERS)}")
    if args.runs < 1 or args.duration < 1:
        parser.error("--runs and --duration must be at least 1")
    why = available()
    if why:
        print(f"slowpath.py: {why}", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("slowpath.py: needs 2 CPUs (server and perfdhcp pinned apart)", file=sys.stderr)
        return 2

    # SIGTERM/SIGHUP unwind like Ctrl-C, so every Link's finally kills and deletes.
    def stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)

    now = dt.datetime.now()
    env: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "date": now.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([sys.executable, "bench/slowpath.py", *(argv or sys.argv[1:])]),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "packages": package_versions(),
    }
    skipped: dict[str, str] = {}
    servers = []
    for server in args.servers:
        try:
            check_installed(server)
            servers.append(server)
        except Skip as exc:
            skipped[server] = str(exc)
            print(f"skipping {exc}", file=sys.stderr)
    args.workdir.mkdir(parents=True, exist_ok=True)
    env["fsync_before"] = fsync_probe(args.workdir)
    root = Path(tempfile.mkdtemp(prefix="bt-slowpath-", dir=args.workdir))
    global _brushtail_path
    _brushtail_path = root / "src"
    try:
        env["revision"] = snapshot_brushtail(_brushtail_path, args.rev)
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        print(f"slowpath.py: cannot snapshot brushtaild: {exc}", file=sys.stderr)
        return 2
    results: list[RunResult] = []
    profile = None
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"slowpath-{now.strftime('%Y-%m-%d-%H%M%S')}.md"
    started_at = time.monotonic()
    try:
        for run in range(1, args.runs + 1):
            for server in servers:
                t0, load = time.monotonic(), os.getloadavg()[0]
                try:
                    r = (run_full if args.json else run_one)(server, run, args, root)
                except (RuntimeError, OSError, subprocess.SubprocessError, sqlite3.Error) as exc:
                    r = RunResult(server, run, error=f"{type(exc).__name__}: {exc}")
                r.loadavg = load
                results.append(r)
                t = r.throughput
                print(
                    f"run {run} {server:9s} "
                    + (f"ERROR {r.error}" if r.error else
                       f"DORA/s {t.dora_per_s:,.0f} CPU {fmt(t.server_cpu_pct)}% waiting "
                       f"{fmt(t.server_wait_pct)}% capacity {fmt(r.capacity)} "
                       f"D-O {fmt(r.latency.do_median_ms, 2)} ms R-A "
                       f"{fmt(r.latency.ra_median_ms, 2)} ms"
                       if t and r.latency else "")
                    + f" [{time.monotonic() - t0:.0f} s]",
                    file=sys.stderr,
                    flush=True,
                )  # fmt: skip
        if args.profile and "brushtail" in servers:
            profile = profile_brushtail(args, root, out)
        env["fsync_after"] = fsync_probe(args.workdir)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    env["wall_seconds"] = round(time.monotonic() - started_at)
    env["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json is not None:
        scenario(results, skipped, args, env).write(args.json)
        print(f"scenario written to {args.json}", file=sys.stderr)
    text = report(results, skipped, args, env, profile)
    text += f"\nWall time: {env['wall_seconds']} s.\n"
    out.write_text(text)
    raw = {
        "env": env,
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": [asdict(r) for r in results],
        "skipped": skipped,
        "profile": profile,
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
