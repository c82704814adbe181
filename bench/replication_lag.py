"""Replication lag and bytes on the wire while one site makes new leases, with real daemons.

Two brushtaild sites, A and B, each in a Link of its own (tests/e2e/netns: server namespace
with sub0 198.18.0.1/16, client namespace for perfdhcp), their server namespaces joined by
one more veth, peer0, 198.19.255.1/24 and .2/24, over which they replicate in DTLS with
certificates of one CA (brushtaild/replication/pki.py, as `brushtail pki` makes them). Fast
path off; one pool, 198.18.1.0-198.19.254.255 (130,560 addresses in blocks of 256, about
half of them A's by the rendezvous hash, so room for ~65,000 new leases at A per run).

Per run (fresh namespaces, certificates and state): both daemons start, A pinned to CPU 0,
B and perfdhcp (kea-admin, relay mode from 198.18.0.2 as bench/slowpath.py runs it) to CPU
1; once each sees the other up and a probe lease made at A has reached B, A's and B's
metrics are scraped and perfdhcp offers new clients (DORA) to A at --rate for --duration
seconds. Then B's bound leases are counted every 0.25 s until they match A's (or
--catch-up-timeout), and both are scraped again. Reported per run:

- the ACK rate perfdhcp got from A (ACKs received / duration), and the CPU time of A, B and
  perfdhcp per wall second of the load (from /proc/PID/task/*/schedstat): the side near
  100% is the one that saturates;
- the lag at B, `dhcp_replication_lag_seconds` (time from a change's HLC wall time at A to
  its merge at B) over the load: p50 and p99 to bucket resolution, i.e. the bucket
  (lower, upper] the quantile falls in;
- leases bound at B at the end vs A's new leases and perfdhcp's ACKs, and the time from the
  end of the load until B had them all;
- bytes on the wire per lease update: A's `dhcp_replication_wire_bytes_total{direction=
  "sent"}` increase (DTLS record payloads as UDP payload, handshakes and anti-entropy
  included) and datagrams, divided by A's new leases; with one peer this is per peer. B's
  sent bytes (its answers and digests) likewise.

Run as root from the checkout (the daemons run this checkout's brushtaild/ directly):

    /work/main/.venv/bin/python bench/replication_lag.py [--runs 3] [--rate 5000] \
        [--duration 10] [--anti-entropy-interval 30]

The report goes to stdout and to bench/results/replication-lag-<date>.md (plus .json).
The machine may be shared: the load average when each run starts is recorded with it.
"""

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slowpath import (  # noqa: E402  (bench/ is this script's sys.path[0])
    CLIENT_CPU,
    SERVER_CPU,
    Started,
    acks_of,
    fmt,
    fmt_range,
    median,
    perfdhcp,
    schedstat,
    sh,
    wait_ready,
)

from bench.scenario import cpu_model  # noqa: E402
from brushtaild.replication import pki  # noqa: E402
from tests.e2e import netns  # noqa: E402
from tests.e2e.sites import PEER_IF, PORT, Shape, Site  # noqa: E402

POOL_SUBNET = "198.18.0.0/15"
POOL_FIRST, POOL_LAST = "198.18.1.0", "198.19.254.255"  # 198.19.255.0/24 is the peer link
LEASE_TIME = 3600
BLOCK_SIZE = 256
POLL = 0.25
LAG = "dhcp_replication_lag_seconds"
WIRE = "dhcp_replication_wire_bytes_total"
DATAGRAMS = "dhcp_replication_datagrams_total"

SHAPE = Shape(
    names=("a", "b"),
    peer_net="198.19.255",
    subnet=POOL_SUBNET,
    first=POOL_FIRST,
    last=POOL_LAST,
    lease_time=LEASE_TIME,
    block_size=BLOCK_SIZE,
    extension_bound=600,  # the config's default: nothing roams here
)
NAMES = SHAPE.names
peer_ip = SHAPE.peer_ip


class BenchSite(Site):
    """A site of the two, with the bench's pool and tuning in its config."""

    def __init__(
        self, name: str, link: netns.Link, workdir: Path, pki_dir: Path, anti_entropy: int
    ) -> None:
        shape = replace(SHAPE, anti_entropy_interval=anti_entropy)
        super().__init__(name, link, workdir, pki_dir, None, shape)

    def bound_count(self) -> int:
        return int(self.ask("leases", state="bound", limit=1)["matched"])


@contextlib.contextmanager
def two_sites(root: Path, anti_entropy: int) -> Iterator[dict[str, BenchSite]]:
    now = datetime.now(UTC).replace(tzinfo=None)
    ca = pki.create_ca(root / "ca", "cluster", 30, now)
    for name in NAMES:
        ca.issue(name, 5, root / "pki" / name, now)
    with contextlib.ExitStack() as stack:
        links = {name: stack.enter_context(netns.Link(client_ip=netns.RELAY_IP)) for name in NAMES}
        a, b = (links[name].server_ns for name in NAMES)
        netns.ip(
            "link", "add", "name", PEER_IF, "netns", a, "type", "veth",
            "peer", "name", PEER_IF, "netns", b,
        )  # fmt: skip
        sites = {}
        for name, link in links.items():
            netns.ip("-n", link.server_ns, "addr", "add", f"{peer_ip(name)}/24", "dev", PEER_IF)
            netns.ip("-n", link.server_ns, "link", "set", PEER_IF, "up")
            workdir = root / name
            workdir.mkdir()
            site = BenchSite(name, link, workdir, root / "pki" / name, anti_entropy)
            sites[name] = stack.enter_context(site)
        yield sites


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Polls `check` every POLL s; returns the seconds it took, raises after `timeout`."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"not within {timeout:.0f} s: {what}")
        time.sleep(POLL)
    return time.monotonic() - t0


def pin(pid: int, cpu: str) -> None:
    """Every thread of `pid` (and those it starts later) to `cpu`."""
    subprocess.run(["taskset", "-a", "-c", "-p", cpu, str(pid)], capture_output=True, check=True)


def lag_buckets(delta: dict[str, float]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the lag histogram's increase, in bound order."""
    buckets = []
    for key, value in delta.items():
        if key.startswith(LAG + "_bucket{"):
            le = re.search(r'le="([^"]+)"', key)
            if le:
                buckets.append((math.inf if le.group(1) == "+Inf" else float(le.group(1)), value))
    return sorted(buckets)


def bucket_of(buckets: Sequence[tuple[float, float]], q: float) -> tuple[float, float] | None:
    """The bucket (lower, upper] holding the q-quantile: what the histogram can tell."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    lower = 0.0
    for upper, count in buckets:
        if count >= target:
            return lower, upper
        lower = upper
    return None


@dataclass
class Run:
    run: int
    loadavg: float
    offered_rate: int
    duration: int
    discovers_sent: int = 0
    acks: int = 0  # every ACK perfdhcp received, late ones included
    ack_rate: float = 0.0
    a_new_leases: int = 0
    b_new_leases: int = 0
    catch_up_s: float | None = None  # end of load until B listed all of A's leases
    all_replicated: bool = False
    lag_count: float = 0.0
    lag_sum: float = 0.0
    lag_p50: tuple[float, float] | None = None
    lag_p99: tuple[float, float] | None = None
    lag_buckets: list[tuple[float, float]] | None = None
    a_bytes_sent: float = 0.0
    a_datagrams_sent: float = 0.0
    b_bytes_sent: float = 0.0
    b_datagrams_sent: float = 0.0
    a_cpu_pct: float | None = None
    b_cpu_pct: float | None = None
    a_wait_pct: float | None = None
    b_wait_pct: float | None = None
    perfdhcp_cpu_pct: float | None = None
    cpu_busy_pct: dict[str, float] = field(default_factory=dict)  # each CPU, all tenants
    # Where deltas were lost, if some were (anti-entropy repairs them a round later).
    a_payloads_dropped: float = 0.0  # A's queue to B full, before encryption
    a_send_errors: float = 0.0
    b_datagrams_received: float = 0.0
    b_socket_drops: int | None = None  # receive-queue overflows of B's replication socket
    a_repaired_entries: float = 0.0  # bindings A sent B by anti-entropy
    error: str | None = None

    @property
    def bytes_per_lease(self) -> float | None:
        return self.a_bytes_sent / self.a_new_leases if self.a_new_leases else None

    @property
    def datagrams_per_lease(self) -> float | None:
        return self.a_datagrams_sent / self.a_new_leases if self.a_new_leases else None

    @property
    def b_bytes_per_lease(self) -> float | None:
        return self.b_bytes_sent / self.a_new_leases if self.a_new_leases else None


_SKMEM_DROPS = re.compile(r"skmem:\([^)]*\bd(\d+)\)")


def socket_drops(link: netns.Link) -> int | None:
    """Receive-queue overflows of the replication socket (UDP port PORT) in the server
    namespace."""
    done = link.run_in(link.server_ns, ["ss", "-u", "-a", "-m", "-n", "-O"], check=False)
    for line in done.stdout.splitlines():
        if f":{PORT} " in line and (match := _SKMEM_DROPS.search(line)):
            return int(match.group(1))
    return None


def cpu_times() -> dict[str, tuple[int, int]]:
    """(idle + iowait, total) clock ticks of each CPU since boot, from /proc/stat."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(f) for f in fields[:8]]
            times[name] = (ticks[3] + ticks[4], sum(ticks))
    return times


def cpu_pct(
    before: tuple[float, float] | None, after: tuple[float, float] | None, wall: float, i: int
) -> float | None:
    return 100 * (after[i] - before[i]) / wall if before and after and wall > 0 else None


def run_one(n: int, args: argparse.Namespace, root: Path) -> Run:
    r = Run(n, os.getloadavg()[0], args.rate, args.duration)
    work = Path(tempfile.mkdtemp(prefix=f"run{n}-", dir=root))
    try:
        with two_sites(work, args.anti_entropy_interval) as sites:
            a, b = sites["a"], sites["b"]
            for site in (a, b):
                site.spawn()
            assert a.proc is not None and b.proc is not None
            pin(a.proc.pid, SERVER_CPU)
            pin(b.proc.pid, CLIENT_CPU)
            for site in (a, b):
                site.wait_started(60)

            def up(site: BenchSite, peer: str) -> bool:
                return site.samples().get(f'dhcp_replication_peer_up{{peer="{peer}"}}') == 1

            wait_for(lambda: up(a, "b") and up(b, "a"), 60, "the sites see each other up")
            wait_ready(a.link, Started(a.proc, a.log_file))
            a0 = a.bound_count()
            wait_for(lambda: b.bound_count() >= a0, 60, "the probe leases at B")
            b0 = b.bound_count()
            before_a, before_b = a.samples(), b.samples()
            drops0 = socket_drops(b.link)
            sa0, sb0, t0 = schedstat(a.proc.pid), schedstat(b.proc.pid), time.monotonic()
            cpus0 = cpu_times()
            result, _, load = perfdhcp(a.link, rate=args.rate, duration=args.duration)
            sa1, sb1, wall = schedstat(a.proc.pid), schedstat(b.proc.pid), time.monotonic() - t0
            r.cpu_busy_pct = {
                cpu: 100 * (1 - (idle1 - cpus0[cpu][0]) / (total1 - cpus0[cpu][1]))
                for cpu, (idle1, total1) in cpu_times().items()
                if cpu in cpus0 and total1 > cpus0[cpu][1]
            }
            end = time.monotonic()
            do = result.exchanges.get("DISCOVER-OFFER")
            r.discovers_sent = do.sent if do else 0
            r.acks = acks_of(result)
            r.ack_rate = r.acks / args.duration
            r.a_cpu_pct, r.a_wait_pct = cpu_pct(sa0, sa1, wall, 0), cpu_pct(sa0, sa1, wall, 1)
            r.b_cpu_pct, r.b_wait_pct = cpu_pct(sb0, sb1, wall, 0), cpu_pct(sb0, sb1, wall, 1)
            r.perfdhcp_cpu_pct = load.cpu_pct
            # A may still be working off the requests queued when perfdhcp stopped.
            counts = [a.bound_count()]
            while len(counts) < 2 or counts[-1] != counts[-2]:
                time.sleep(0.5)
                counts.append(a.bound_count())
            a1 = counts[-1]
            r.a_new_leases = a1 - a0
            with contextlib.suppress(RuntimeError):
                wait_for(lambda: b.bound_count() >= a1, args.catch_up_timeout, "B caught up")
                r.catch_up_s = time.monotonic() - end
            r.all_replicated = r.catch_up_s is not None
            after_a, after_b = a.samples(), b.samples()
            drops1 = socket_drops(b.link)
            if drops0 is not None and drops1 is not None:
                r.b_socket_drops = drops1 - drops0
            r.b_new_leases = b.bound_count() - b0
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        r.error = f"{type(exc).__name__}: {exc}"
        return r
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lag = {k: v - before_b.get(k, 0.0) for k, v in after_b.items() if k.startswith(LAG)}
    r.lag_buckets = lag_buckets(lag)
    r.lag_count = lag.get(LAG + "_count", 0.0)
    r.lag_sum = lag.get(LAG + "_sum", 0.0)
    r.lag_p50, r.lag_p99 = bucket_of(r.lag_buckets, 0.5), bucket_of(r.lag_buckets, 0.99)

    def sent(before: dict[str, float], after: dict[str, float], name: str) -> float:
        key = f'{name}{{direction="sent"}}'
        return after.get(key, 0.0) - before.get(key, 0.0)

    r.a_bytes_sent = sent(before_a, after_a, WIRE)
    r.a_datagrams_sent = sent(before_a, after_a, DATAGRAMS)
    r.b_bytes_sent = sent(before_b, after_b, WIRE)
    r.b_datagrams_sent = sent(before_b, after_b, DATAGRAMS)

    def grew(before: dict[str, float], after: dict[str, float], key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    r.b_datagrams_received = grew(before_b, after_b, DATAGRAMS + '{direction="received"}')
    r.a_payloads_dropped = grew(before_a, after_a, "dhcp_replication_payloads_dropped_total")
    r.a_send_errors = grew(before_a, after_a, "dhcp_replication_send_errors_total")
    r.a_repaired_entries = grew(before_a, after_a, "dhcp_replication_repaired_entries_total")
    return r


def ms_bucket(bucket: tuple[float, float] | None) -> str:
    if bucket is None:
        return "n/a"
    lower, upper = bucket
    return f"{lower * 1000:g}-{upper * 1000:g}"


def report(runs: list[Run], args: argparse.Namespace, env: dict[str, Any]) -> str:
    ok = [r for r in runs if r.error is None]

    def cell(get: Callable[[Run], float | None], digits: int = 0) -> str:
        values = [get(r) for r in ok]
        return f"{fmt(median(values), digits)} [{fmt_range(values, digits)}]"

    def upper(get: Callable[[Run], tuple[float, float] | None]) -> Callable[[Run], float | None]:
        return lambda r: got[1] * 1000 if (got := get(r)) is not None else None

    lines = [
        f"# brushtail replication lag under new leases, {env['date']}",
        "",
        f"Command (as root, from the repository root): `{env['command']}`",
        "",
        f"- Host: `nproc` {env['nproc']}, {env['cpu']}, kernel {env['kernel']}; brushtaild "
        f"from the checkout at {env['revision']}; perfdhcp {env['perfdhcp']}.",
        f"- Load average (1/5/15 min) at the start: {env['loadavg']}; 1-min at the start of "
        f"each run: {', '.join(f'{r.loadavg:.2f}' for r in runs)}. The machine is shared "
        "(other engineers' test runs may hold CPUs), so the figures are lower bounds.",
        f"- Two sites, A and B, replicating over DTLS on a veth between their namespaces; "
        f"fast path off; pool {POOL_FIRST}-{POOL_LAST}, blocks of {BLOCK_SIZE}, "
        f"anti_entropy_interval {args.anti_entropy_interval} s, lease time {LEASE_TIME} s. "
        f"A pinned to CPU {SERVER_CPU}; B and perfdhcp to CPU {CLIENT_CPU}.",
        f"- Load: new clients (DORA, relay mode) offered to A at {args.rate:,}/s for "
        f"{args.duration} s; ACK rate = ACKs perfdhcp received / {args.duration} s. CPU = "
        "on-CPU time per wall second of the load, summed over a process's threads, from "
        "/proc schedstat (waiting = runnable but not running: CPU held by another task, "
        "another thread of the same daemon included); CPU N busy = 100% - idle of that CPU "
        "over the load (/proc/stat: every task, other tenants and softirq included).",
        "- Catch-up: from the end of perfdhcp's run until B listed as many bound leases as "
        "A; A's count is taken once it stops growing (two equal reads 0.5 s apart), then "
        "B's every 0.25 s, so ~0.5 s means B had them by the time A was done.",
        "- Lag: B's `dhcp_replication_lag_seconds` increase over the load and catch-up, "
        "HLC wall time of the change at A to its merge at B; p50/p99 are given to bucket "
        "resolution, as the histogram bucket (lower-upper ms] the quantile falls in; the "
        "table's median is of the buckets' upper bounds.",
        '- Wire: A\'s `dhcp_replication_wire_bytes_total{direction="sent"}` and '
        '`dhcp_replication_datagrams_total{direction="sent"}` increase over the same span '
        "(UDP payloads: DTLS records, anti-entropy digests included) / A's new bound leases; "
        "A has one peer, so this is per peer. B's sent bytes (its replies) likewise.",
        "",
        f"Medians of {len(ok)} runs, [min-max]:",
        "",
        "| figure | value |",
        "|---|---|",
        f"| ACK rate at A, /s | {cell(lambda r: r.ack_rate)} |",
        f"| A's new leases | {cell(lambda r: r.a_new_leases)} |",
        f"| B's new leases | {cell(lambda r: r.b_new_leases)} |",
        f"| runs with every lease at B | {sum(r.all_replicated for r in ok)} of {len(ok)} |",
        f"| B had them all, s after the load | {cell(lambda r: r.catch_up_s, 2)} |",
        f"| lag p50 upper bound, ms | {cell(upper(lambda r: r.lag_p50), 1)} |",
        f"| lag p99 upper bound, ms | {cell(upper(lambda r: r.lag_p99), 1)} |",
        "| lag mean, ms | "
        + cell(lambda r: 1000 * r.lag_sum / r.lag_count if r.lag_count else None, 1)
        + " |",
        f"| A bytes sent per lease (per peer) | {cell(lambda r: r.bytes_per_lease, 1)} |",
        f"| A datagrams sent per lease | {cell(lambda r: r.datagrams_per_lease, 3)} |",
        f"| B bytes sent per lease | {cell(lambda r: r.b_bytes_per_lease, 1)} |",
        f"| A CPU %, waiting % | {cell(lambda r: r.a_cpu_pct)}, {cell(lambda r: r.a_wait_pct)} |",
        f"| B CPU %, waiting % | {cell(lambda r: r.b_cpu_pct)}, {cell(lambda r: r.b_wait_pct)} |",
        f"| perfdhcp CPU % | {cell(lambda r: r.perfdhcp_cpu_pct)} |",
        f"| A: payloads dropped (queue full) | {cell(lambda r: r.a_payloads_dropped)} |",
        f"| A: send errors | {cell(lambda r: r.a_send_errors)} |",
        f"| B: datagrams received | {cell(lambda r: r.b_datagrams_received)} |",
        f"| B: replication socket drops | {cell(lambda r: r.b_socket_drops)} |",
        f"| A: bindings repaired by anti-entropy | {cell(lambda r: r.a_repaired_entries)} |",
        f"| CPU 0 busy %, all tasks | {cell(lambda r: r.cpu_busy_pct.get('cpu0'))} |",
        f"| CPU 1 busy %, all tasks | {cell(lambda r: r.cpu_busy_pct.get('cpu1'))} |",
        "",
        "Per run:",
        "",
        "| run | load avg | DISCOVERs | ACKs | ACK/s | A new | B new | catch-up s "
        "| lag p50 ms | lag p99 ms | lag obs | A B/lease | A dgram/lease "
        "| A / B / perfdhcp CPU % | deltas lost (A queue / B socket) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r.error:
            lines.append(f"| {r.run} | {r.loadavg:.2f} | failed: {r.error:.200} |")
            continue
        lines.append(
            f"| {r.run} | {r.loadavg:.2f} | {r.discovers_sent:,} | {r.acks:,} "
            f"| {r.ack_rate:,.0f} | {r.a_new_leases:,} | {r.b_new_leases:,} "
            f"| {fmt(r.catch_up_s, 2)} | {ms_bucket(r.lag_p50)} | {ms_bucket(r.lag_p99)} "
            f"| {r.lag_count:,.0f} | {fmt(r.bytes_per_lease, 1)} "
            f"| {fmt(r.datagrams_per_lease, 3)} | {fmt(r.a_cpu_pct)} / {fmt(r.b_cpu_pct)} / "
            f"{fmt(r.perfdhcp_cpu_pct)} | {fmt(r.a_payloads_dropped)} / {fmt(r.b_socket_drops)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=5000, help="new clients offered per s")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load")
    parser.add_argument("--anti-entropy-interval", type=int, default=30)
    parser.add_argument("--catch-up-timeout", type=float, default=240.0)
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.duration < 1 or args.rate < 1:
        parser.error("--runs, --duration and --rate must be at least 1")
    why = netns.available()
    if why or shutil.which("perfdhcp") is None:
        print(f"replication_lag.py: {why or 'perfdhcp not found (kea-admin)'}", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    now = dt.datetime.now()
    head = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--", "brushtaild"])
    env: dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([sys.executable, "bench/replication_lag.py", *(argv or sys.argv[1:])]),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "revision": head + (" (brushtaild/ modified)" if dirty else ""),
        "perfdhcp": sh(["dpkg-query", "-W", "-f", "${Version}", "kea-admin"]),
    }
    root = Path(tempfile.mkdtemp(prefix="bt-repllag-", dir="/var/tmp"))
    runs = []
    started = time.monotonic()
    try:
        for n in range(1, args.runs + 1):
            t0 = time.monotonic()
            r = run_one(n, args, root)
            runs.append(r)
            print(
                f"run {n}: "
                + (
                    f"ERROR {r.error}"
                    if r.error
                    else f"ACK/s {r.ack_rate:,.0f} A new {r.a_new_leases} B new "
                    f"{r.b_new_leases} catch-up {fmt(r.catch_up_s, 2)} s lag p50 "
                    f"{ms_bucket(r.lag_p50)} ms p99 {ms_bucket(r.lag_p99)} ms, "
                    f"{fmt(r.bytes_per_lease, 1)} B/lease, CPU A {fmt(r.a_cpu_pct)}% "
                    f"B {fmt(r.b_cpu_pct)}% perfdhcp {fmt(r.perfdhcp_cpu_pct)}%"
                )
                + f" [{time.monotonic() - t0:.0f} s]",
                file=sys.stderr,
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    env["wall_seconds"] = round(time.monotonic() - started)
    text = report(runs, args, env) + f"\nWall time: {env['wall_seconds']} s.\n"
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"replication-lag-{now.strftime('%Y-%m-%d-%H%M%S')}.md"
    out.write_text(text)
    raw = {
        "env": env,
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": [
            {
                **asdict(r),
                "bytes_per_lease": r.bytes_per_lease,
                "datagrams_per_lease": r.datagrams_per_lease,
            }
            for r in runs
        ],
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 0 if all(r.error is None for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
