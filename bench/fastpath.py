"""Fast-path benchmark: brushtail's XDP program beside the least an XDP reply can cost and
beside ISC Kea, measured in one run. Everything is reported as ratios within the run.

Parts (--part, default all; each repeated --runs times, figures are medians with ranges):

ns     ns per OFFER and per ACK in BPF_PROG_TEST_RUN: one call per frame (repeat=1, so the
       kernel runs the program once on a fresh copy of the request; repeat > 1 would rerun
       it on the reply it wrote), the kernel-reported duration averaged over --calls calls
       without the slowest 1% (interrupts and the hypervisor, not the program).
       Frames: the captured dhclient and udhcpc requests (tests/vectors, 300-byte BOOTP,
       342-byte frames) wrapped by tests/bpf/frames.client_frame. Cases: 1 subscriber or
       --subscribers in the maps, rate limiter off or on (at a rate no call reaches, so the
       bucket is read and written but nothing is dropped), and at full size also 4096
       different clients in turn. The floor is bench/xdp_floor.c's xdp_floor (hash lookup
       of the source MAC, MAC swap, XDP_TX) timed the same way on the same frame, with 1 or
       --subscribers keys in its map; xdp_pass (the empty program: what the measurement
       itself costs) and xdp_clock (one clock read) are timed beside it.
live   renewals answered per second over one veth pair, on one core. Server veth in one
       namespace, client veth in another with xdp_count (counts frames by DHCP type, drops
       them); load from BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES running xdp_gen
       (which rewrites each frame, see bench/xdp_floor.c, and returns XDP_TX) in the client
       namespace: one client renewing (DHCPREQUEST with ciaddr,
       unicast to the server), made from the captured dhclient REQUEST. Servers: brushtail's
       program (its lease installed through the engine, rate limit off), the minimal
       responder xdp_floor (the ceiling of the harness), and Kea 2.2 (memfile, holding the
       client's lease in its CSV before it starts, pinned to the other core) under the same
       flood and under paced load from a raw socket. The generator and all XDP work share
       CPU 1; Kea runs on CPU 0. The program's renewal ring buffer is drained from CPU 0 by
       moving its consumer position (what brushtaild does per event is not measured here).
scale  --subscribers leases: time to build the engine from them, to compile and load the
       program and to bulk-load its maps (MapSync.reconcile), and the maps' kernel memory
       (memlock in /proc/self/fdinfo). The ns part reuses the last run's maps.

Namespaces are btfp-<pid>-<n>-s/-c, addresses only in 198.18.0.0/15; pin dirs are
/sys/fs/bpf/brushtail-bench-<pid>-*. Both are removed on exit, failure and Ctrl-C included,
and leftovers of dead runs are swept at start. Filler subscribers beyond what 198.18.0.0/15
holds get addresses in 100.64.0.0/10: they only ever exist in the maps, never on a link.

Run as root from the checkout (Debian's python3 has BCC; the venv sees it):

    /work/main/.venv/bin/python bench/fastpath.py [--part ns|live|scale|all|ns,live] \
        [--runs 3] [--calls 20000] [--seconds 3] [--subscribers 1000000] \
        [--kea-rates 10000,...] [--no-kea] [--rev COMMIT] [--quick] [--json PATH]

--json PATH also writes the `kernel` scenario of bench/report.py (bench/scenario.py's shape):
brushtail's ns per OFFER and ACK and their ratios to the floor (dhclient, one subscriber,
rate limiter off is the headline; the other cases are extra metrics), renewals per second
and per CPU-second against the minimal responder and Kea. The report runs `--part ns,live`
(about 3 minutes for 3 runs); the 1,000,000-subscriber start is its startup scenario.

bpf/ and brushtaild/ are copied when the run starts (or taken from --rev COMMIT) and the
whole run imports and compiles that copy. The report goes to stdout and
bench/results/fastpath-<date>-<time>.md, raw data to .json. docs/PERFORMANCE.md, "Fast
path", explains the method and what the figures mean.
"""

import argparse
import atexit
import contextlib
import ctypes
import datetime as dt
import json
import mmap
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def source_snapshot(argv: list[str]) -> tuple[Path, str]:
    """Copies bpf/ and brushtaild/ (the working tree as it is now, or `--rev COMMIT`) into a
    temporary directory that the whole run imports and compiles from: bpf/ changes while a
    run goes on must not mix versions. Returns the directory and what was copied."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--rev")
    rev = pre.parse_known_args(argv)[0].rev
    dest = Path(tempfile.mkdtemp(prefix=f"btfp-src-{os.getpid()}-"))
    git = ["git", "-C", str(REPO)]
    if rev is not None:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", f"{rev}^{{commit}}"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        archive = subprocess.run(
            [*git, "archive", "--format=tar", commit, "bpf", "brushtaild"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return dest, f"commit {commit}"
    for name in ("bpf", "brushtaild"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "bpf", "brushtaild"], capture_output=True, text=True
    )
    changed = " with uncommitted changes in bpf/ or brushtaild/" if dirty.stdout.strip() else ""
    return dest, f"working tree at {head.stdout.strip() or 'unknown'}{changed}"


# Run as a plain script from a checkout: the engine, the loader and the test helpers. The
# loader compiles the bpf/ beside the brushtaild/ it is imported from: the snapshot's.
SOURCE: tuple[Path, str] | None = None
if __name__ == "__main__":
    SOURCE = source_snapshot(sys.argv[1:])
    atexit.register(shutil.rmtree, SOURCE[0], ignore_errors=True)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if SOURCE is not None:
    sys.path.insert(0, str(SOURCE[0]))

from slowpath import write_kea_config  # noqa: E402  (bench/ is this script's sys.path[0])

from bench.scenario import Metric, Runs, Scenario, cpu_model  # noqa: E402
from brushtaild.config.model import Config, XdpMode  # noqa: E402
from brushtaild.dhcp.codec import parse  # noqa: E402
from brushtaild.dhcp.constants import MessageType, OptionCode  # noqa: E402
from brushtaild.engine.leases import Lease, LeaseState  # noqa: E402
from brushtaild.engine.server import Server, client_identity  # noqa: E402
from brushtaild.xdp import libbpf, maps  # noqa: E402
from brushtaild.xdp.loader import BPFFS, XDP_FLAGS_DRV_MODE, Limits, Program  # noqa: E402
from brushtaild.xdp.sync import MapSync  # noqa: E402
from tests.bpf.frames import client_frame, decode_reply  # noqa: E402
from tests.e2e import netns  # noqa: E402
from tests.e2e.netns import CLIENT_IF, SERVER_IF, SERVER_IP, Link, in_netns  # noqa: E402
from tests.engine_helpers import make_config, make_pool  # noqa: E402
from tests.vectors import load_vector  # noqa: E402

NS_PREFIX = "btfp-"
PIN_PREFIX = "brushtail-bench-"
FLOOR_C = Path(__file__).resolve().parent / "xdp_floor.c"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
GEN_CPU = 1  # this process: test runs, the live generator and all XDP work it causes
OTHER_CPU = 0  # Kea, and the ring-buffer drain thread
XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
LIMITS = Limits(max_subscribers=1_048_576, ratelimit_entries=65_536)  # the daemon's defaults
LEASE_TIME = 3600
BENCH_POOL = ("bench", "198.18.0.0/15", "198.18.1.0", "198.19.255.254")
FILL_POOL = ("scale", "100.64.0.0/10", "100.64.0.1", "100.127.255.254")
FILL_FIRST_BENCH = int(IPv4Address("198.18.1.16"))  # below: the measured clients
BENCH_LAST = int(IPv4Address(BENCH_POOL[3]))
FILL_FIRST_SCALE = int(IPv4Address(FILL_POOL[2]))
NS_SERVER_MAC = b"\x02\xb7\x00\x00\x00\x01"  # the ns part's replies come from this MAC
UDHCPC_MAC = b"\x02\x00\xc6\x12\x00\x03"  # both captures used ...:02; udhcpc's is moved
# Rate limiter "on" in the ns part: 1,000,000 requests/s per MAC (1 us of credit each),
# 1 ms of burst. Calls come every few microseconds, so no call is ever limited.
RL_RATE, RL_BURST = 1_000_000, 1000
ROTATING = 4096  # clients taken in turn for the cold-lookup case
DRAIN_EVERY = 1024  # ns part: calls between ring buffer drains
WARMUP_CALLS = 500
LIVE_CHUNK = 1 << 18  # frames per live-frames call
LIVE_BATCH = 64
SLOTS = 16  # xdp_count's counters; 1-8 replies by message type
SLOT_OTHER, SLOT_REQUEST, SLOT_UNTYPED = 0, 9, 10
KEA_PACED = (10_000, 20_000, 40_000, 60_000)
KEA_BINARY = "kea-dhcp4"
KEA_DIR = "/var/tmp"  # Kea's config, memfile and log: on disk, as in bench/slowpath.py
PACKAGES = ("kea-dhcp4-server", "python3-bpfcc", "libbpf1", "iproute2", "python3")


class BenchError(RuntimeError):
    """A measurement could not be taken; the message says why."""


# --- small helpers -------------------------------------------------------------------------


def sh(argv: Sequence[str], timeout: float = 10.0) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def schedstat(path: str) -> tuple[float, float] | None:
    """(seconds on CPU, seconds runnable but waiting) from a schedstat file."""
    try:
        fields = Path(path).read_text().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def steal(cpu: int) -> float | None:
    """Seconds of `cpu`'s time taken by the hypervisor since boot."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[8]) / os.sysconf("SC_CLK_TCK")
    return None


@dataclass
class Usage:
    """What a thread or process got of its CPU over a phase: seconds on the CPU, and % of
    wall time on it, runnable but waiting for it, and stolen by the hypervisor."""

    cpu_s: float | None = None
    cpu_pct: float | None = None
    wait_pct: float | None = None
    steal_pct: float | None = None


class UsageMeter:
    """Sums the schedstat files of `paths` (a thread, a process, ksoftirqd) over a phase."""

    def __init__(self, paths: Sequence[str], cpu: int) -> None:
        self.paths, self.cpu = paths, cpu
        self.t0 = time.monotonic()
        self.s0 = self._read()
        self.st0 = steal(cpu)

    def _read(self) -> tuple[float, float] | None:
        stats = [schedstat(p) for p in self.paths]
        if any(s is None for s in stats):
            return None
        return sum(s[0] for s in stats if s), sum(s[1] for s in stats if s)

    def stop(self) -> Usage:
        wall = time.monotonic() - self.t0
        s1, st1 = self._read(), steal(self.cpu)
        usage = Usage()
        if self.s0 and s1 and wall > 0:
            usage.cpu_s = s1[0] - self.s0[0]
            usage.cpu_pct = 100 * usage.cpu_s / wall
            usage.wait_pct = 100 * (s1[1] - self.s0[1]) / wall
        if self.st0 is not None and st1 is not None and wall > 0:
            usage.steal_pct = 100 * (st1 - self.st0) / wall
        return usage


def ksoftirqd(cpu: int) -> str | None:
    """schedstat of ksoftirqd/<cpu>: softirq work the kernel defers from a busy thread."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == f"ksoftirqd/{cpu}":
                return str(comm.with_name("schedstat"))
    return None


def gen_meter() -> UsageMeter:
    """This thread and ksoftirqd on GEN_CPU: all the CPU the one-core harness used."""
    paths = ["/proc/thread-self/schedstat"]
    soft = ksoftirqd(GEN_CPU)
    if soft:
        paths.append(soft)
    return UsageMeter(paths, GEN_CPU)


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_range(values: Sequence[float | None], digits: int = 0) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    mid = fmt(statistics.median(present), digits)
    if len(present) == 1:
        return mid
    return f"{mid} [{fmt(min(present), digits)}-{fmt(max(present), digits)}]"


def pin_thread(cpu: int) -> None:
    """Pins the calling thread (pid 0 = this thread on Linux); threads it starts inherit."""
    os.sched_setaffinity(0, {cpu})


# --- namespaces and pin dirs ---------------------------------------------------------------

_NS_NAME = re.compile(rf"^{re.escape(NS_PREFIX)}(\d+)-\d+-[sc]$")
_PIN_NAME = re.compile(rf"^{re.escape(PIN_PREFIX)}(\d+)-")
_links = iter(range(1_000_000))


def new_link() -> Link:
    base = f"{NS_PREFIX}{os.getpid()}-{next(_links)}"
    return Link(server_ns=f"{base}-s", client_ns=f"{base}-c")


def remove_pins(pin_dir: Path) -> None:
    """The pin dir and all below it: brushtaild pins its maps one level down (a directory
    per map layout), so unlinking the top level's entries alone left every daemon's dir."""
    shutil.rmtree(pin_dir, ignore_errors=True)


def sweep_stale() -> list[str]:
    """Namespaces and pin dirs left by runs of this benchmark whose process is gone."""
    swept = []
    for ns in netns.list_namespaces():
        match = _NS_NAME.match(ns)
        if match and not netns.pid_alive(int(match.group(1))):
            netns.delete_namespace(ns)
            swept.append(ns)
    if BPFFS.is_dir():
        for path in BPFFS.iterdir():
            match = _PIN_NAME.match(path.name)
            if match and path.is_dir() and not netns.pid_alive(int(match.group(1))):
                remove_pins(path)
                swept.append(str(path))
    # Source snapshots and Kea's work directories.
    for parent, prefix in ((tempfile.gettempdir(), "btfp-src-"), (KEA_DIR, f"{NS_PREFIX}kea-")):
        for path in Path(parent).glob(f"{prefix}*"):
            match = re.match(rf"{re.escape(prefix)}(\d+)-", path.name)
            if match and path.is_dir() and not netns.pid_alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)
                swept.append(str(path))
    return swept


# --- clients and frames --------------------------------------------------------------------

OPTIONS_AT = 240  # BOOTP fixed header + magic cookie


def option_spans(payload: bytes) -> Iterator[tuple[int, int, int]]:
    """(code, value offset, value length) of each option in the options field."""
    pos = OPTIONS_AT
    while pos < len(payload):
        code = payload[pos]
        if code == 255:
            return
        if code == 0:
            pos += 1
            continue
        length = payload[pos + 1]
        yield code, pos + 2, length
        pos += 2 + length


def with_option(payload: bytes, code: int, value: bytes) -> bytes:
    """`payload` with option `code`'s value overwritten in place (same length)."""
    for got, at, length in option_spans(payload):
        if got == code:
            if length != len(value):
                raise ValueError(f"option {code} is {length} bytes, not {len(value)}")
            return payload[:at] + value + payload[at + length :]
    raise ValueError(f"no option {code}")


def with_mac(payload: bytes, mac: bytes) -> bytes:
    """`payload` from a client with hardware address `mac`: chaddr, and option 61 if it is
    the hardware identity (01 + chaddr), as udhcpc sends it."""
    old = payload[28:34]
    out = payload[:28] + mac + payload[34:]
    for code, at, length in option_spans(out):
        if code == OptionCode.CLIENT_ID and out[at : at + length] == b"\x01" + old:
            out = out[:at] + b"\x01" + mac + out[at + length :]
    return out


def renewal(payload: bytes, ciaddr: int) -> bytes:
    """A RENEWING DHCPREQUEST (RFC 2131 4.3.2) from a SELECTING one: ciaddr set, options 50
    and 54 left out, the other options in their order, padded to the original length."""
    kept = b"".join(
        payload[at - 2 : at + length]
        for code, at, length in option_spans(payload)
        if code not in (OptionCode.REQUESTED_ADDRESS, OptionCode.SERVER_ID)
    )
    head = payload[:12] + ciaddr.to_bytes(4, "big") + payload[16:OPTIONS_AT]
    return (head + kept + b"\xff").ljust(len(payload), b"\0")


@dataclass(frozen=True)
class Client:
    name: str
    mac: bytes
    address: int  # its lease, host order
    discover: bytes  # BOOTP payloads as captured (MAC moved for udhcpc)
    request: bytes  # SELECTING: options 50 and 54 as captured, set by request_frame

    @property
    def client_id(self) -> bytes:
        return client_identity(parse(self.discover))

    @property
    def prl(self) -> bytes | None:
        return parse(self.discover).options.get(OptionCode.PARAMETER_REQUEST_LIST)

    def lease(self, now: float) -> Lease:
        return make_lease(self.client_id, self.mac, self.address, BENCH_POOL[0], self.prl, now)

    def discover_frame(self) -> bytes:
        return client_frame(self.discover, src_mac=self.mac)

    def request_frame(self, server_id: int) -> bytes:
        payload = with_option(self.request, OptionCode.REQUESTED_ADDRESS, ip4(self.address))
        payload = with_option(payload, OptionCode.SERVER_ID, ip4(server_id))
        return client_frame(payload, src_mac=self.mac)

    def renewal_frame(self, server_mac: bytes) -> bytes:
        return client_frame(
            renewal(self.request, self.address),
            src_mac=self.mac,
            dst_mac=server_mac,
            src_ip=str(IPv4Address(self.address)),
            dst_ip=SERVER_IP,
        )

    def moved(self, name: str, mac: bytes, address: int) -> "Client":
        return Client(name, mac, address, with_mac(self.discover, mac), with_mac(self.request, mac))


def ip4(value: int) -> bytes:
    return value.to_bytes(4, "big")


def measured_clients() -> list[Client]:
    first = int(IPv4Address("198.18.1.2"))
    dhclient = Client(
        "dhclient",
        load_vector("dhclient_discover")[28:34],
        first,
        load_vector("dhclient_discover"),
        load_vector("dhclient_request"),
    )
    udhcpc = Client(
        "udhcpc",
        load_vector("udhcpc_discover")[28:34],
        first + 1,
        load_vector("udhcpc_discover"),
        load_vector("udhcpc_request"),
    ).moved("udhcpc", UDHCPC_MAC, first + 1)
    for client in (dhclient, udhcpc):
        if len(client.discover_frame()) != 342:
            raise BenchError(f"{client.name}: frame is {len(client.discover_frame())} bytes")
    return [dhclient, udhcpc]


def filler_mac(i: int) -> bytes:
    return b"\x02\xb7" + (i + 2).to_bytes(4, "big")  # ...:00:01 is NS_SERVER_MAC


def filler_address(i: int) -> int:
    """Subscriber i's address: 198.18.0.0/15 first, then 100.64.0.0/10 (maps only)."""
    in_bench = BENCH_LAST - FILL_FIRST_BENCH + 1
    return FILL_FIRST_BENCH + i if i < in_bench else FILL_FIRST_SCALE + (i - in_bench)


def filler_pool(i: int) -> str:
    # By index: 100.64.0.0/10 is numerically below 198.18.0.0/15.
    return BENCH_POOL[0] if i <= BENCH_LAST - FILL_FIRST_BENCH else FILL_POOL[0]


def make_lease(
    client_id: bytes, mac: bytes, address: int, pool: str, prl: bytes | None, now: float
) -> Lease:
    return Lease(address, client_id, mac, pool, LeaseState.BOUND, now + LEASE_TIME, now, prl)


def build_leases(clients: Sequence[Client], total: int, now: float) -> list[Lease]:
    """The measured clients' leases and fillers up to `total`, with dhclient's request list
    (the engine records each client's option 55 with its lease)."""
    leases = [c.lease(now) for c in clients]
    prl = clients[0].prl
    for i in range(total - len(leases)):
        mac = filler_mac(i)
        leases.append(make_lease(b"\x01" + mac, mac, filler_address(i), filler_pool(i), prl, now))
    return leases


def rotating_clients(template: Client, fillers: int, count: int) -> list[Client]:
    """`count` filler subscribers in 198.18.0.0/15, spread over the map, as clients sending
    `template`'s requests."""
    in_bench = min(fillers, BENCH_LAST - FILL_FIRST_BENCH + 1)
    picks = sorted(random.Random(1).sample(range(in_bench), min(count, in_bench)))
    return [template.moved(f"filler{i}", filler_mac(i), filler_address(i)) for i in picks]


def bench_config() -> Config:
    return make_config(
        make_pool(*BENCH_POOL, lease_time=LEASE_TIME), make_pool(*FILL_POOL, lease_time=LEASE_TIME)
    )


# --- brushtail's program under a bench pin dir ---------------------------------------------


class RingDrain:
    """Empties the program's renewal ring buffer by moving its consumer position up to the
    producer's, without reading the records: the kernel side costs what it costs with
    brushtaild reading, and the ring never fills (a full ring turns ACKs into passes).

    Both positions are read and written as one aligned 8-byte access through ctypes
    (struct.pack_into on an mmap may store byte by byte: the kernel reading a torn
    consumer position would see a full ring)."""

    def __init__(self, pin: Path) -> None:
        self._page = mmap.PAGESIZE
        fd = libbpf.obj_get(str(pin))
        try:
            cons = _libc.mmap(None, self._page, mmap.PROT_READ | mmap.PROT_WRITE,
                              mmap.MAP_SHARED, fd, 0)  # fmt: skip
            prod = _libc.mmap(None, self._page, mmap.PROT_READ, mmap.MAP_SHARED, fd, self._page)
        finally:
            os.close(fd)
        if cons in (None, _MAP_FAILED) or prod in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap of {pin} failed")
        self._maps: tuple[int, ...] = (cons, prod)
        self._consumer = ctypes.c_uint64.from_address(cons)
        self._producer = ctypes.c_uint64.from_address(prod)
        self.bytes = 0

    def drain(self) -> None:
        produced = self._producer.value
        consumed = self._consumer.value
        self._consumer.value = produced
        self.bytes += produced - consumed

    def close(self) -> None:
        for address in self._maps:
            _libc.munmap(address, self._page)
        self._maps = ()


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
)  # fmt: skip
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = (1 << 64) - 1


# One record: 8-byte header + struct bt_renewal, 8-byte aligned.
RENEWAL_RECORD = (8 + ctypes.sizeof(maps.Renewal) + 7) & ~7


class DrainThread(threading.Thread):
    def __init__(self, ring: RingDrain, cpu: int, every: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.ring, self.cpu, self.every = ring, cpu, every
        self.stop = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(OSError):
            pin_thread(self.cpu)
        while not self.stop.is_set():
            self.ring.drain()
            time.sleep(self.every)
        self.ring.drain()


MAP_NAMES = ("leases", "templates", "config", "ratelimit", "results", "latency", "renewals",
             "scratch")  # fmt: skip


class Brushtail:
    """brushtail's program, compiled into a pin dir of its own, with its maps kept equal to
    an engine's leases by MapSync."""

    def __init__(self, tag: str, config: Config, server: Server) -> None:
        self.pin_dir = BPFFS / f"{PIN_PREFIX}{os.getpid()}-{tag}"
        self.config = config
        try:
            self.program = Program(self.pin_dir, LIMITS)
            self.sync = MapSync(self.program, server)
            self.ring = RingDrain(self.pin_dir / "renewals")
        except BaseException:
            remove_pins(self.pin_dir)
            raise
        self.reconcile_s = 0.0

    def configure(self, server_mac: bytes, rate: int = 0, burst: int = 0) -> None:
        self.sync.configure(self.config, server_mac, rate, burst)

    def load(self, server: Server, now: float) -> int:
        """Makes the maps hold `server`'s bound leases; returns the entries written."""
        self.sync.server = server
        started = time.perf_counter()
        written, _ = self.sync.reconcile(now)
        self.reconcile_s = time.perf_counter() - started
        return written

    @property
    def fd(self) -> int:
        return self.program.fd

    def results(self) -> dict[str, int]:
        table = self.program.table("results")
        return {maps.Result(i).label: sum(table[ctypes.c_int(i)]) for i in range(maps.RESULTS)}

    def memlock(self) -> dict[str, int]:
        """Kernel memory charged to each map (fdinfo memlock; hash maps count what they
        hold since Linux 6.4)."""
        from bcc import lib

        module = self.program._bpf.module  # BCC gives no Table for scratch (odd leaf size)
        return {name: fdinfo_memlock(lib.bpf_table_fd(module, name.encode())) for name in MAP_NAMES}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ring.close()
        with contextlib.suppress(Exception):
            self.program.close()
        remove_pins(self.pin_dir)


def fdinfo_memlock(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


# --- the reference programs (bench/xdp_floor.c) --------------------------------------------


class Refs:
    """xdp_floor, xdp_gen, xdp_count and xdp_pass from one BCC object."""

    def __init__(self) -> None:
        from bcc import BPF

        self._bpf = BPF(src_file=str(FLOOR_C).encode(), cflags=["-Wno-unused-function"])
        self.fns = {n: self._bpf.load_func(n.encode(), BPF.XDP) for n in _REF_FNS}
        self.clients = self._bpf[b"floor_clients"]
        self.counts = self._bpf[b"counts"]
        self._gen_frames = self._bpf[b"gen_frames"]

    def fd(self, name: str) -> int:
        return int(self.fns[name].fd)

    def set_clients(self, macs: Sequence[bytes]) -> None:
        """The floor's map holds exactly these MACs (bulk-loaded like the leases)."""
        self.clients.clear()
        keys = (maps.ClientKey * len(macs))()
        values = (ctypes.c_uint64 * len(macs))()
        for i, mac in enumerate(macs):
            ctypes.memmove(keys[i].mac, mac, 6)
        self.clients.items_update_batch(keys, values)

    def set_frame(self, frame: bytes) -> None:
        """The frame xdp_gen sends."""
        value = _GenFrame(len(frame))
        ctypes.memmove(value.data, frame, len(frame))
        self._gen_frames[ctypes.c_int(0)] = value

    def attach(self, name: str, ifname: str) -> None:
        """Attaches in native mode in the calling thread's namespace."""
        from bcc import BPF

        BPF.attach_xdp(ifname.encode(), self.fns[name], XDP_FLAGS_DRV_MODE)

    def read_counts(self) -> list[int]:
        return [sum(self.counts[ctypes.c_int(i)]) for i in range(SLOTS)]

    def close(self) -> None:
        self._bpf.cleanup()


_REF_FNS = ("xdp_floor", "xdp_gen", "xdp_count", "xdp_pass", "xdp_clock")
GEN_MAX = 1024
GEN_SLACK = 16  # the test run's frame is this much longer than the one xdp_gen writes


class _GenFrame(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint32), ("data", ctypes.c_uint8 * GEN_MAX))


# --- part ns -------------------------------------------------------------------------------


TRIM = 0.01  # the slowest 1% of calls: interrupts and the hypervisor, not the program


@dataclass
class Timing:
    calls: int
    mean_ns: float  # of the calls without the slowest TRIM of them
    median_ns: float
    raw_mean_ns: float  # of all calls
    p99_ns: float
    not_tx: int  # calls that did not return what was expected (XDP_TX): must be 0

    @classmethod
    def of(cls, durations: list[int], not_tx: int) -> "Timing":
        ordered = sorted(durations)
        kept = ordered[: max(1, int(len(ordered) * (1 - TRIM)))]
        return cls(
            calls=len(ordered),
            mean_ns=statistics.fmean(kept),
            median_ns=statistics.median(ordered),
            raw_mean_ns=statistics.fmean(ordered),
            p99_ns=ordered[int(len(ordered) * 0.99)],
            not_tx=not_tx,
        )


def time_calls(
    fd: int,
    frames: Sequence[bytes],
    calls: int,
    ring: RingDrain | None = None,
    drain_every: int = DRAIN_EVERY,
    want: int = XDP_TX,
) -> Timing:
    """Kernel-reported duration of `calls` single runs, frames taken in turn."""
    for i in range(WARMUP_CALLS):
        libbpf.prog_test_run(fd, frames[i % len(frames)])
    durations = []
    not_tx = 0
    for i in range(calls):
        if ring is not None and i % drain_every == 0:
            ring.drain()
        run = libbpf.prog_test_run(fd, frames[i % len(frames)])
        durations.append(run.duration_ns)
        not_tx += run.retval != want
    if ring is not None:
        ring.drain()
    return Timing.of(durations, not_tx)


def check_reply(fd: int, frame: bytes, mtype: MessageType, address: int, what: str) -> None:
    """One run must return XDP_TX with a well-formed reply of `mtype` for `address`."""
    run = libbpf.prog_test_run(fd, frame)
    if run.retval != XDP_TX:
        raise BenchError(f"{what}: the program returned {run.retval}, not XDP_TX")
    reply = parse(decode_reply(run.data).payload)
    if reply.message_type != mtype or reply.yiaddr != address:
        raise BenchError(f"{what}: got {reply.message_type!r} for {IPv4Address(reply.yiaddr)}")


def mean_timing(timings: Sequence[Timing]) -> Timing:
    return Timing(
        calls=sum(t.calls for t in timings),
        mean_ns=statistics.fmean(t.mean_ns for t in timings),
        median_ns=statistics.fmean(t.median_ns for t in timings),
        raw_mean_ns=statistics.fmean(t.raw_mean_ns for t in timings),
        p99_ns=max(t.p99_ns for t in timings),
        not_tx=sum(t.not_tx for t in timings),
    )


def ns_cases(
    out: dict[str, Any],
    base: str,
    prog: Brushtail,
    floor: Refs,
    discovers: Sequence[bytes],
    requests: Sequence[bytes],
    calls: int,
    check: Client | None,
) -> None:
    """OFFER and ACK with the rate limiter off and on, between two timings of the floor
    and of the empty program on the same frames (averaged)."""
    before = prog.results()
    refs: dict[str, list[Timing]] = {"floor": [], "empty": []}

    def references() -> None:
        refs["floor"].append(time_calls(floor.fd("xdp_floor"), discovers, calls))
        refs["empty"].append(time_calls(floor.fd("xdp_pass"), discovers, calls, want=XDP_PASS))

    references()
    for rl in (False, True):
        prog.configure(NS_SERVER_MAC, *((RL_RATE, RL_BURST) if rl else (0, 0)))
        tag = f"{base}/{'on' if rl else 'off'}"
        if check is not None:
            check_reply(prog.fd, discovers[0], MessageType.OFFER, check.address, tag)
            check_reply(prog.fd, requests[0], MessageType.ACK, check.address, tag)
        out[f"{tag}/offer"] = time_calls(prog.fd, discovers, calls, prog.ring)
        out[f"{tag}/ack"] = time_calls(prog.fd, requests, calls, prog.ring)
    prog.configure(NS_SERVER_MAC)
    references()
    out[f"{base}/floor"] = mean_timing(refs["floor"])
    out[f"{base}/empty"] = mean_timing(refs["empty"])
    out[f"{base}/results"] = diff(prog.results(), before)


def ns_run(
    small: Brushtail,
    large: Brushtail | None,
    floor_small: Refs,
    floor_large: Refs | None,
    clients: Sequence[Client],
    rotating: Sequence[Client],
    calls: int,
    now: float,
) -> dict[str, Any]:
    """One run of the ns part: per client and map size, OFFER and ACK with the rate limiter
    off and on between timings of the floor; then the clients in turn at full size."""
    out: dict[str, Any] = {"loadavg": loadavg()}
    server_id = int(small.config.server_id)
    meter = gen_meter()
    for client in clients:
        discover, request = [client.discover_frame()], [client.request_frame(server_id)]
        small.load(Server(small.config, [client.lease(now)], now), now)
        ns_cases(out, f"{client.name}/1", small, floor_small, discover, request, calls, client)
        if client is clients[0]:
            out["clock"] = time_calls(floor_small.fd("xdp_clock"), discover, calls, want=XDP_PASS)
        if large is not None and floor_large is not None:
            ns_cases(out, f"{client.name}/N", large, floor_large, discover, request, calls, client)
    if large is not None and floor_large is not None and rotating:
        discovers = [c.discover_frame() for c in rotating]
        requests = [c.request_frame(server_id) for c in rotating]
        ns_cases(out, "rotating/N", large, floor_large, discovers, requests, calls, rotating[0])
    out["usage"] = meter.stop()
    out["loadavg_end"] = loadavg()
    return out


# --- part live -----------------------------------------------------------------------------


@dataclass
class LiveResult:
    server: str
    run: int
    offered: int  # frames the generator sent (or the paced sender)
    offered_rate: float | None  # paced: the target rate
    seconds: float
    replies: dict[str, int]  # counted on the client veth, by DHCP type
    answered: int
    answered_per_s: float
    load: Usage  # CPU 1: the generator thread and ksoftirqd/1
    kea: Usage | None = None  # Kea's process, CPU 0
    extra: dict[str, Any] = field(default_factory=dict)
    loadavg: list[float] = field(default_factory=list)

    @property
    def per_cpu_s(self) -> float | None:
        """Answers per second of CPU the server side used: CPU 1 for the XDP servers
        (generator included), Kea's own CPU for Kea. Less sensitive to other tenants."""
        usage = self.kea if self.kea is not None else self.load
        return self.answered / usage.cpu_s if usage.cpu_s else None


_SLOT_NAMES = {
    SLOT_OTHER: "not-dhcp",
    SLOT_REQUEST: "request",
    SLOT_UNTYPED: "untyped",
    **{t.value: t.name.lower() for t in MessageType},
}


def named_counts(before: list[int], after: list[int]) -> dict[str, int]:
    return {
        _SLOT_NAMES.get(i, str(i)): a - b
        for i, (a, b) in enumerate(zip(after, before, strict=True))
        if a - b
    }


def generate(link: Link, refs: Refs, frame: bytes, seconds: float) -> tuple[int, float, Usage]:
    """Sends `frame` out of the client veth for `seconds` from xdp_gen with live frames;
    everything it causes (the server's XDP, the reply, the counter) runs on this CPU."""
    sent = 0
    refs.set_frame(frame)
    padded = frame + bytes(GEN_SLACK)
    with in_netns(link.client_ns):
        # The kernel wants data_end = the frame's length in a context it is given.
        ifindex = socket.if_nametoindex(CLIENT_IF)
        ctx = libbpf.XdpMd(data_end=len(padded), ingress_ifindex=ifindex)
        meter = gen_meter()
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            libbpf.prog_test_run(
                refs.fd("xdp_gen"),
                padded,
                ctx=ctx,
                repeat=LIVE_CHUNK,
                flags=libbpf.TEST_XDP_LIVE_FRAMES,
                batch_size=LIVE_BATCH,
            )
            sent += LIVE_CHUNK
        elapsed = time.perf_counter() - started
        usage = meter.stop()
    return sent, elapsed, usage


def attach_counter(link: Link, refs: Refs) -> None:
    with in_netns(link.client_ns):
        refs.attach("xdp_count", CLIENT_IF)


def flood(
    name: str,
    run: int,
    link: Link,
    refs: Refs,
    frame: bytes,
    seconds: float,
    answer: str,
    prog: Brushtail | None = None,
) -> LiveResult:
    """`frame` from the live generator for `seconds`; answers are the replies of type
    `answer` ("*": every frame) counted on the client veth. With `prog`, its own counters
    and renewal events over the same span go into `extra`."""
    # A short warm-up, not counted: the first call builds the generator's page pool.
    generate(link, refs, frame, 0.05)
    time.sleep(0.2)
    before = refs.read_counts()
    program = prog.results() if prog is not None else {}
    ring = prog.ring.bytes if prog is not None else 0
    sent, elapsed, usage = generate(link, refs, frame, seconds)
    time.sleep(0.2)
    replies = named_counts(before, refs.read_counts())
    answered = sum(replies.values()) if answer == "*" else replies.get(answer, 0)
    extra = {}
    if prog is not None:
        extra = {
            "program_results": diff(prog.results(), program),
            "renewal_events": (prog.ring.bytes - ring) // RENEWAL_RECORD,
        }
    return LiveResult(
        server=name,
        run=run,
        offered=sent,
        offered_rate=None,
        seconds=elapsed,
        replies=replies,
        answered=answered,
        answered_per_s=answered / elapsed,
        load=usage,
        extra=extra,
        loadavg=loadavg(),
    )


def live_brushtail(
    run: int, prog: Brushtail, refs: Refs, client: Client, seconds: float
) -> LiveResult:
    with new_link() as link:
        server_mac = link.server_mac
        prog.configure(server_mac)  # rate limit off: one client renews as fast as it can
        with in_netns(link.server_ns):
            mode = prog.program.attach(SERVER_IF, XdpMode.NATIVE)
        attach_counter(link, refs)
        frame = client.renewal_frame(server_mac)
        # brushtaild would read the ring; here it is only emptied, from the other CPU.
        drain = DrainThread(prog.ring, OTHER_CPU)
        drain.start()
        try:
            result = flood("brushtail", run, link, refs, frame, seconds, "ack", prog)
        finally:
            drain.stop.set()
            drain.join()
        result.extra["mode"] = mode
        return result


def live_responder(run: int, refs: Refs, client: Client, seconds: float) -> LiveResult:
    with new_link() as link:
        server_mac = link.server_mac
        refs.set_clients([client.mac])
        with in_netns(link.server_ns):
            refs.attach("xdp_floor", SERVER_IF)
        attach_counter(link, refs)
        return flood("responder", run, link, refs, client.renewal_frame(server_mac), seconds, "*")


def kea_files(work: Path, client: Client, now: float) -> Path:
    """Kea's config, and its memfile already holding the client's lease."""
    leases = work / "kea-leases4.csv"
    client_id = ":".join(f"{b:02x}" for b in client.client_id) if _has_option_61(client) else ""
    leases.write_text(
        "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,"
        "hostname,state,user_context\n"
        f"{IPv4Address(client.address)},{':'.join(f'{b:02x}' for b in client.mac)},"
        f"{client_id},{LEASE_TIME},{int(now) + LEASE_TIME},1,0,0,,0,\n"
    )
    # The same Kea as the slow-path benchmark's (both have a 3600 s lease time).
    return write_kea_config(work, BENCH_POOL[1], BENCH_POOL[2], BENCH_POOL[3], leases)


def _has_option_61(client: Client) -> bool:
    return any(code == OptionCode.CLIENT_ID for code, _, _ in option_spans(client.request))


class PacedSender:
    """A raw socket in the client namespace sending one frame at a steady rate (a tick
    every millisecond, catching up on the time actually elapsed)."""

    def __init__(self, link: Link) -> None:
        with in_netns(link.client_ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.sock.bind((CLIENT_IF, 0))

    def send(self, frame: bytes, rate: int, seconds: float) -> tuple[int, float]:
        sent = 0
        started = time.perf_counter()
        end = started + seconds
        while (now := time.perf_counter()) < end:
            due = int((now - started) * rate)
            while sent < due:
                with contextlib.suppress(BlockingIOError):
                    self.sock.send(frame)
                sent += 1
            time.sleep(max(0.0, 0.001 - (time.perf_counter() - now)))
        return sent, time.perf_counter() - started

    def close(self) -> None:
        self.sock.close()


def wait_kea(refs: Refs, sender: PacedSender, frame: bytes, proc: Any, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"kea-dhcp4 exited {proc.returncode}: {tail(log)}")
        before = refs.read_counts()
        sender.send(frame, 50, 0.1)
        time.sleep(0.2)
        got = named_counts(before, refs.read_counts())
        if got.get("ack"):
            return
        if got.get("nak"):
            raise BenchError(f"Kea NAKs the renewal (its lease was not loaded?): {tail(log)}")
    raise BenchError(f"Kea did not ACK the renewal within 30 s: {tail(log)}")


def tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def live_kea(
    run: int, refs: Refs, client: Client, seconds: float, rates: Sequence[int]
) -> list[LiveResult]:
    now = time.time()
    work = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}kea-{os.getpid()}-", dir=KEA_DIR))
    results = []
    try:
        with new_link() as link, open(work / "stdout.log", "wb") as log:
            config = kea_files(work, client, now)
            env = {**os.environ, "KEA_PIDFILE_DIR": str(work), "KEA_LOCKFILE_DIR": str(work)}
            argv = ["taskset", "-c", str(OTHER_CPU), KEA_BINARY, "-c", str(config)]
            proc = link.popen_in(link.server_ns, argv, stdout=log, stderr=log, env=env)
            with in_netns(link.server_ns):
                refs.attach("xdp_pass", SERVER_IF)
            attach_counter(link, refs)
            frame = client.renewal_frame(link.server_mac)
            sender = PacedSender(link)
            try:
                wait_kea(refs, sender, frame, proc, work / "kea.log")
                kea_stat = f"/proc/{proc.pid}/schedstat"
                meter = UsageMeter([kea_stat], OTHER_CPU)
                result = flood("kea-flood", run, link, refs, frame, seconds, "ack")
                result.kea = meter.stop()
                results.append(result)
                time.sleep(1.0)  # Kea works off what its socket still holds
                for rate in rates:
                    before = refs.read_counts()
                    meter = UsageMeter([kea_stat], OTHER_CPU)
                    gen = gen_meter()
                    sent, elapsed = sender.send(frame, rate, seconds)
                    time.sleep(0.3)  # answers still on their way count
                    kea_usage, gen_usage = meter.stop(), gen.stop()
                    replies = named_counts(before, refs.read_counts())
                    acks = replies.get("ack", 0)
                    results.append(
                        LiveResult(
                            server=f"kea-paced-{rate}",
                            run=run,
                            offered=sent,
                            offered_rate=rate,
                            seconds=elapsed,
                            replies=replies,
                            answered=acks,
                            answered_per_s=acks / elapsed,
                            load=gen_usage,
                            kea=kea_usage,
                            extra={"answered_pct": 100 * acks / sent if sent else None},
                            loadavg=loadavg(),
                        )
                    )
                    time.sleep(0.5)
            finally:
                sender.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


# --- part scale ----------------------------------------------------------------------------


@dataclass
class ScaleResult:
    run: int
    subscribers: int
    leases_s: float  # building the Lease objects (what the store's load hands the engine)
    engine_s: float  # Server(config, leases, now)
    compile_s: float  # BCC compile + load of bpf/brushtail.c
    reconcile_s: float  # MapSync.reconcile: entries built, bulk-loaded, stale ones looked for
    key_walk_s: float  # iterating the loaded map's keys once, as reconcile does for stale ones
    written: int
    memlock: dict[str, int]
    small_memlock: dict[str, int] | None
    rss_mib: float  # the process after the run
    rss_growth_mib: float  # during the run: Lease objects, engine, program (Python keeps
    # freed memory, so only the first run's growth is the cost of the engine alone)
    loadavg: list[float]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scale_run(
    run: int, clients: Sequence[Client], subscribers: int, small: Brushtail | None
) -> tuple[ScaleResult, Brushtail, Server]:
    config = bench_config()
    now = time.time()
    load = loadavg()
    rss_before = rss_mib()
    started = time.perf_counter()
    leases = build_leases(clients, subscribers, now)
    leases_s = time.perf_counter() - started
    started = time.perf_counter()
    server = Server(config, leases, now)
    engine_s = time.perf_counter() - started
    del leases
    prog = Brushtail(f"scale{run}", config, server)
    try:
        prog.configure(NS_SERVER_MAC)
        written = prog.load(server, now)
        if written != subscribers:
            raise BenchError(f"reconcile wrote {written} entries for {subscribers} leases")
        started = time.perf_counter()
        walked = sum(1 for _ in prog.program.table("leases"))
        key_walk_s = time.perf_counter() - started
        if walked != subscribers:
            raise BenchError(f"the leases map holds {walked} entries, not {subscribers}")
        result = ScaleResult(
            run=run,
            subscribers=subscribers,
            leases_s=leases_s,
            engine_s=engine_s,
            compile_s=prog.program.load_seconds,
            reconcile_s=prog.reconcile_s,
            key_walk_s=key_walk_s,
            written=written,
            memlock=prog.memlock(),
            small_memlock=small.memlock() if small is not None else None,
            rss_mib=rss_mib(),
            rss_growth_mib=rss_mib() - rss_before,
            loadavg=load,
        )
    except BaseException:
        prog.close()
        raise
    return result, prog, server


# --- report --------------------------------------------------------------------------------


def ratios(nums: Sequence[float | None], bases: Sequence[float | None]) -> list[float | None]:
    return [n / b if n is not None and b else None for n, b in zip(nums, bases, strict=True)]


def ns_table(runs: list[dict[str, Any]], subscribers: int) -> list[str]:
    def means(key: str) -> list[float | None]:
        return [r[key].mean_ns if key in r else None for r in runs]

    def net(value: list[float | None], empty: list[float | None]) -> list[float | None]:
        return [
            v - e if v is not None and e is not None else None
            for v, e in zip(value, empty, strict=True)
        ]

    size = {"1": "1", "N": f"{subscribers:,}"}
    lines = [
        "| client | subscribers | rate limit | OFFER ns | ACK ns | floor ns | empty program ns "
        "| OFFER / floor | ACK / floor | net of the empty program: OFFER / floor, ACK / floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for client in ("dhclient", "udhcpc", "rotating"):
        for sz in ("1", "N"):
            floor, empty = means(f"{client}/{sz}/floor"), means(f"{client}/{sz}/empty")
            if not any(floor):
                continue
            for rl in ("off", "on"):
                offer, ack = means(f"{client}/{sz}/{rl}/offer"), means(f"{client}/{sz}/{rl}/ack")
                name = client if client != "rotating" else f"{ROTATING:,} dhclients in turn"
                net_floor = net(floor, empty)
                lines.append(
                    f"| {name} | {size[sz]} | {rl} | {fmt_range(offer)} | {fmt_range(ack)} | "
                    f"{fmt_range(floor)} | {fmt_range(empty)} | "
                    f"{fmt_range(ratios(offer, floor), 2)} | {fmt_range(ratios(ack, floor), 2)} | "
                    f"{fmt_range(ratios(net(offer, empty), net_floor), 1)}, "
                    f"{fmt_range(ratios(net(ack, empty), net_floor), 1)} |"
                )
    bad = sum(t.not_tx for r in runs for t in r.values() if isinstance(t, Timing))
    lines.append("")
    clock, empty = means("clock"), means("dhclient/1/empty")
    if any(clock):
        lines.append(
            f"One clock read (xdp_clock: the empty program plus bpf_ktime_get_boot_ns): "
            f"{fmt_range(clock)} ns against the empty program's {fmt_range(empty)} ns."
        )
        lines.append("")
    lines.append(
        f"Calls that did not return what was expected: {bad}. Cells: the kernel-reported "
        f"duration (timer included) averaged over the calls without the slowest "
        f"{TRIM:.0%} (interrupts, the hypervisor); median of the runs [min-max]; ratios are "
        "taken within each run. Empty program: xdp_pass (returns XDP_PASS), what the "
        "measurement itself costs."
    )
    return lines


def live_table(results: list[LiveResult]) -> list[str]:
    by: dict[str, list[LiveResult]] = {}
    for r in results:
        by.setdefault(r.server, []).append(r)
    runs = sorted({r.run for r in results})

    def per_run(name: str, get: Callable[[LiveResult], float | None]) -> list[float | None]:
        got = {r.run: get(r) for r in by.get(name, [])}
        return [got.get(run) for run in runs]

    def rate(r: LiveResult) -> float | None:
        return r.answered_per_s

    def cpu(r: LiveResult) -> float | None:
        return r.per_cpu_s

    paced = sorted(
        (n for n in by if n.startswith("kea-paced-")), key=lambda n: int(n.rsplit("-", 1)[1])
    )

    def best(get: Callable[[LiveResult], float | None]) -> list[float | None]:
        """Kea's best paced figure in each run."""
        columns = [per_run(n, get) for n in paced]
        out: list[float | None] = []
        for i in range(len(runs)):
            present = [v for c in columns if (v := c[i]) is not None]
            out.append(max(present) if present else None)
        return out

    lines = [
        "| server, load | answered/s | / responder | answered per CPU-second | / responder "
        "| offered/s | CPU / waiting | replies seen on the client veth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    resp_rate, resp_cpu = per_run("responder", rate), per_run("responder", cpu)

    def row(name: str, label: str) -> None:
        rs = by.get(name, [])
        if not rs:
            return
        usage = [r.kea if r.kea is not None else r.load for r in rs]
        replies: dict[str, int] = {}
        for r in rs:
            for k, v in r.replies.items():
                replies[k] = replies.get(k, 0) + v
        seen = ", ".join(f"{k} {v:,}" for k, v in sorted(replies.items()))
        who = "Kea, CPU 0" if rs[0].kea is not None else "CPU 1"
        mine_rate, mine_cpu = per_run(name, rate), per_run(name, cpu)
        lines.append(
            f"| {label} | {fmt_range(mine_rate)} | {fmt_range(ratios(mine_rate, resp_rate), 3)} "
            f"| {fmt_range(mine_cpu)} | {fmt_range(ratios(mine_cpu, resp_cpu), 3)} "
            f"| {fmt_range([r.offered / r.seconds for r in rs])} "
            f"| {fmt(median([u.cpu_pct for u in usage]))}% / "
            f"{fmt(median([u.wait_pct for u in usage]))}% ({who}) | {seen} |"
        )

    row("responder", "minimal responder (xdp_floor), flood")
    row("brushtail", "brushtail XDP, renewals, flood")
    row("kea-flood", "Kea 2.2, renewals, flood")
    for name in paced:
        row(name, f"Kea 2.2, renewals paced at {int(name.rsplit('-', 1)[1]):,}/s")
    bt_rate, bt_cpu = per_run("brushtail", rate), per_run("brushtail", cpu)
    program: dict[str, int] = {}
    events = 0
    for r in by.get("brushtail", []):
        events += r.extra.get("renewal_events", 0)
        for k, v in r.extra.get("program_results", {}).items():
            program[k] = program.get(k, 0) + v
    lines.append("")
    if program:
        counted = ", ".join(f"{k} {v:,}" for k, v in sorted(program.items()))
        lines.append(
            f"brushtail's own counters over the measured floods: {counted}; renewal events "
            f"written to its ring buffer: {events:,}."
        )
    lines.append(
        f"brushtail / minimal responder: {fmt_range(ratios(bt_rate, resp_rate), 2)} "
        f"(per CPU-second {fmt_range(ratios(bt_cpu, resp_cpu), 2)})."
    )
    if "kea-flood" in by:
        kea_rate = per_run("kea-flood", rate)
        lines.append(
            f"brushtail / Kea under the same flood: {fmt_range(ratios(bt_rate, kea_rate))}; "
            f"/ Kea's best paced rate ({fmt_range(best(rate))}/s): "
            f"{fmt_range(ratios(bt_rate, best(rate)))}. Per CPU-second: / Kea flood "
            f"{fmt_range(ratios(bt_cpu, per_run('kea-flood', cpu)))}, / Kea paced "
            f"{fmt_range(ratios(bt_cpu, best(cpu)))}."
        )
    return lines


def scale_table(results: list[ScaleResult]) -> list[str]:
    def col(get: Callable[[ScaleResult], float | None], digits: int = 1) -> str:
        return fmt_range([get(r) for r in results], digits)

    mib = 1 << 20
    n = results[0].subscribers
    small = results[0].small_memlock
    lines = [
        "| subscribers | Lease objects s | engine built s | program compiled s | "
        "maps bulk-loaded (reconcile) s | of which: key walk s | leases map MiB | "
        "all maps MiB | bytes per subscriber (leases map) | process memory growth MiB "
        "(first run) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if small is not None:
        lines.append(
            f"| 1 | - | - | - | - | - | {small['leases'] / mib:,.1f} | "
            f"{sum(small.values()) / mib:,.1f} | - | - |"
        )
    lines.append(
        f"| {n:,} | {col(lambda r: r.leases_s)} | {col(lambda r: r.engine_s)} | "
        f"{col(lambda r: r.compile_s)} | {col(lambda r: r.reconcile_s)} | "
        f"{col(lambda r: r.key_walk_s)} | {col(lambda r: r.memlock['leases'] / mib)} | "
        f"{col(lambda r: sum(r.memlock.values()) / mib)} | "
        f"{col(lambda r: r.memlock['leases'] / r.subscribers, 0)} | "
        f"{fmt(results[0].rss_growth_mib)} |"
    )
    return lines


def machine() -> dict[str, Any]:
    versions = {}
    for pkg in PACKAGES:
        out = sh(["dpkg-query", "-W", "-f", "${Version}", pkg])
        versions[pkg] = out if out and "no packages found" not in out else "not installed"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "revision": SOURCE[1] if SOURCE else "the checkout, imported as it is",
        "imported_from": str(Path(sys.modules["brushtaild"].__file__ or "?").parents[1]),
    }


def to_json(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


# --- main ----------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--part", default="all", help="ns, live, scale, all, or a comma-separated list")
    ap.add_argument("--json", type=Path, help="write the report's `kernel` scenario here")
    ap.add_argument("--runs", type=int, default=None, help="runs per part (default 3)")
    ap.add_argument("--calls", type=int, default=None, help="test runs per ns figure (20000)")
    ap.add_argument("--seconds", type=float, default=None, help="per live phase (3)")
    ap.add_argument("--subscribers", type=int, default=None, help="scale size (1000000)")
    ap.add_argument("--kea-rates", default=None, help="paced rates for Kea, comma-separated")
    ap.add_argument("--no-kea", action="store_true", help="leave Kea out of the live part")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="1 run, 5000 calls, 1 s phases, 100000 subscribers, two paced rates",
    )
    ap.add_argument("--max-minutes", type=float, default=30.0, help="abort after this long")
    ap.add_argument("--rev", help="benchmark this commit's bpf/ and brushtaild/ (default: the "
                    "working tree, copied at start)")  # fmt: skip
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.part.split(",") if p.strip()}
    if "all" in parts:
        parts = {"scale", "ns", "live"}
    if not parts or parts - {"ns", "live", "scale"}:
        ap.error("--part: ns, live, scale or all, or a comma-separated list of them")
    args.parts = tuple(p for p in ("scale", "ns", "live") if p in parts)
    quick = args.quick
    args.runs = args.runs or (1 if quick else 3)
    args.calls = args.calls or (5000 if quick else 20_000)
    args.seconds = args.seconds or (1.0 if quick else 3.0)
    args.subscribers = args.subscribers or (100_000 if quick else 1_000_000)
    if args.kea_rates:
        args.kea_rates = [int(x) for x in args.kea_rates.split(",")]
    else:
        args.kea_rates = [20_000, 40_000] if quick else list(KEA_PACED)
    if args.subscribers > LIMITS.max_subscribers:
        ap.error(f"--subscribers is at most {LIMITS.max_subscribers} (the map's size)")
    return args


def preflight(args: argparse.Namespace) -> None:
    why = netns.available()
    if why:
        raise SystemExit(f"cannot run: {why}")
    if os.cpu_count() is None or (os.cpu_count() or 0) < 2:
        raise SystemExit("cannot run: needs 2 CPUs (generator and Kea on separate cores)")
    if "live" in args.parts and not args.no_kea and shutil.which(KEA_BINARY) is None:
        print(f"note: {KEA_BINARY} not found (Debian kea-dhcp4-server): Kea is left out")
        args.no_kea = True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preflight(args)
    parts = args.parts
    swept = sweep_stale()
    if swept:
        print(f"swept leftovers of earlier runs: {', '.join(swept)}")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGALRM, _on_signal)
    signal.alarm(int(args.max_minutes * 60))
    pin_thread(GEN_CPU)
    started = dt.datetime.now()
    started_mono = time.monotonic()
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
        "args": {k: v for k, v in vars(args).items()},
        "machine": machine(),
        "loadavg_start": loadavg(),
    }
    clients = measured_clients()
    config = bench_config()
    lines: list[str] = []
    with contextlib.ExitStack() as stack:
        now = time.time()
        floor_small = stack.enter_context(closing(Refs()))
        small: Brushtail | None = None
        large: Brushtail | None = None
        if "ns" in parts or "scale" in parts:
            small = stack.enter_context(
                closing(Brushtail("small", config, Server(config, [clients[0].lease(now)], now)))
            )
            small.configure(NS_SERVER_MAC)
            small.load(small.sync.server, now)
        if "scale" in parts:
            scale: list[ScaleResult] = []
            for run in range(1, args.runs + 1):
                if large is not None:
                    large.close()
                    large = None
                print(f"scale run {run}/{args.runs}: {args.subscribers:,} subscribers ...")
                result, large, _ = scale_run(run, clients, args.subscribers, small)
                stack.callback(large.close)
                scale.append(result)
                print(
                    f"  engine {result.engine_s:.1f} s, reconcile {result.reconcile_s:.1f} s, "
                    f"leases map {result.memlock['leases'] / (1 << 20):.0f} MiB"
                )
            report["scale"] = scale
            lines += ["## Scale", "", *scale_table(scale), ""]
        if "ns" in parts:
            assert small is not None
            if large is None:
                print(f"building {args.subscribers:,} subscribers for the ns part ...")
                _, large, _ = scale_run(0, clients, args.subscribers, None)
                stack.callback(large.close)
            floor_large = stack.enter_context(closing(Refs()))
            fillers = args.subscribers - len(clients)
            floor_large.set_clients(
                [c.mac for c in clients] + [filler_mac(i) for i in range(fillers)]
            )
            floor_small.set_clients([c.mac for c in clients])
            rotating = rotating_clients(clients[0], fillers, ROTATING)
            ns: list[dict[str, Any]] = []
            for run in range(1, args.runs + 1):
                print(f"ns run {run}/{args.runs} ...")
                ns.append(
                    ns_run(small, large, floor_small, floor_large, clients, rotating,
                           args.calls, time.time())
                )  # fmt: skip
                d = ns[-1]
                print(
                    f"  dhclient OFFER {d['dhclient/1/off/offer'].mean_ns:.0f} ns, ACK "
                    f"{d['dhclient/1/off/ack'].mean_ns:.0f} ns, floor "
                    f"{d['dhclient/1/floor'].mean_ns:.0f} ns"
                )
            report["ns"] = ns
            lines += ["## ns per reply (BPF_PROG_TEST_RUN, repeat=1)", ""]
            lines += [*ns_table(ns, args.subscribers), ""]
        if "live" in parts:
            live_prog = stack.enter_context(
                closing(Brushtail("live", config, Server(config, [clients[0].lease(now)], now)))
            )
            live_prog.configure(NS_SERVER_MAC)
            live_prog.load(live_prog.sync.server, now)
            live: list[LiveResult] = []
            for run in range(1, args.runs + 1):
                print(f"live run {run}/{args.runs} ...")
                live.append(live_responder(run, floor_small, clients[0], args.seconds))
                live.append(live_brushtail(run, live_prog, floor_small, clients[0], args.seconds))
                if not args.no_kea:
                    live += live_kea(run, floor_small, clients[0], args.seconds, args.kea_rates)
                for r in live[-(2 + (0 if args.no_kea else 1 + len(args.kea_rates))) :]:
                    offered = r.offered / r.seconds
                    print(f"  {r.server}: {r.answered_per_s:,.0f}/s ({offered:,.0f} offered/s)")
            report["live"] = live
            lines += ["## Renewals per second over a veth pair (one core)", ""]
            lines += [*live_table(live), ""]
    signal.alarm(0)
    report["loadavg_end"] = loadavg()
    report["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    box = report["machine"]
    head = [
        f"# Fast path benchmark {started:%Y-%m-%d %H:%M}",
        "",
        f"Command: `{report['command']}`",
        f"bpf/ and brushtaild/: {box['revision']}. Kernel {box['kernel']}, {box['cpus']} CPUs "
        f"({box['cpu_model']}), load average {report['loadavg_start']} at start, "
        f"{report['loadavg_end']} at end.",
        "",
    ]
    text = "\n".join(head + lines)
    print()
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    stem = RESULTS_DIR / f"fastpath-{started:%Y-%m-%d-%H%M%S}"
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=to_json))
    print(f"\nwritten: {stem}.md, {stem}.json")
    if args.json is not None:
        kernel_scenario(report, args, time.monotonic() - started_mono).write(args.json)
        print(f"scenario written to {args.json}")
    return 0


# The ns cases the scenario reports: (client, map size, rate limiter), the first the headline
# (dhclient's 342-byte frame, the most common client, one subscriber, no rate limiter).
KERNEL_CASES = (
    ("dhclient", "1", "off", "dhclient, 1 subscriber"),
    ("dhclient", "1", "on", "dhclient, 1 subscriber, rate limiter on"),
    ("dhclient", "N", "off", "dhclient, --subscribers in the map"),
    ("udhcpc", "1", "off", "udhcpc, 1 subscriber"),
    ("rotating", "N", "off", f"{ROTATING:,} dhclients in turn, --subscribers in the map"),
)


def kernel_scenario(report: dict[str, Any], args: argparse.Namespace, seconds: float) -> Scenario:
    """The report's `kernel` scenario: brushtail's ns per reply against the floor program,
    renewals per second against the minimal responder and Kea (values aligned by run)."""
    metrics: dict[str, Metric] = {}
    ns: list[dict[str, Any]] = report.get("ns", [])

    def mean_ns(key: str) -> list[float | None]:
        return [r[key].mean_ns if key in r else None for r in ns]

    if ns:
        base = "dhclient/1"
        metrics["offer_ns"] = Metric("OFFER ns (dhclient)", "ns", "lower",
                                     {"brushtail": mean_ns(f"{base}/off/offer")})  # fmt: skip
        metrics["ack_ns"] = Metric("ACK ns (dhclient)", "ns", "lower",
                                   {"brushtail": mean_ns(f"{base}/off/ack")})  # fmt: skip
        metrics["floor_ns"] = Metric("floor program ns (same frame)", "ns", "lower",
                                     {"brushtail": mean_ns(f"{base}/floor")})  # fmt: skip
        for client, size, rl, label in KERNEL_CASES:
            floor = mean_ns(f"{client}/{size}/floor")
            if not any(floor):
                continue
            tag = "" if (client, size, rl) == KERNEL_CASES[0][:3] else f"_{client}_{size}_{rl}"
            for kind in ("offer", "ack"):
                got = ratios(mean_ns(f"{client}/{size}/{rl}/{kind}"), floor)
                metrics[f"{kind}_vs_floor{tag.lower()}"] = Metric(
                    f"{kind.upper()} / floor, {label}", "x", "lower", {"brushtail": got}
                )
        metrics["clock_ns"] = Metric("one clock read program ns (xdp_clock)", "ns", "lower",
                                     {"brushtail": mean_ns("clock")})  # fmt: skip
    live: list[LiveResult] = report.get("live", [])
    skipped = {
        "dnsmasq": "no kernel fast path; renewals of every server are the renewals scenario",
        "dhcpd": "no kernel fast path; renewals of every server are the renewals scenario",
    }
    notes: list[str] = []
    if live:
        runs = sorted({r.run for r in live})

        def per_run(pick: Callable[[LiveResult], bool], get: Callable[[LiveResult], float | None],
                    best: bool = False) -> list[float | None]:  # fmt: skip
            out: list[float | None] = []
            for run in runs:
                got = [v for r in live if r.run == run and pick(r) if (v := get(r)) is not None]
                out.append((max(got) if best else got[0]) if got else None)
            return out

        def rate(r: LiveResult) -> float | None:
            return r.answered_per_s

        def per_cpu(r: LiveResult) -> float | None:
            return r.per_cpu_s

        def us(r: LiveResult) -> float | None:
            return 1e6 / r.per_cpu_s if r.per_cpu_s else None

        def is_bt(r: LiveResult) -> bool:
            return r.server == "brushtail"

        def is_kea(r: LiveResult) -> bool:
            return r.server.startswith("kea-")

        def is_resp(r: LiveResult) -> bool:
            return r.server == "responder"

        def both(get: Callable[[LiveResult], float | None], kea_best: bool) -> dict[str, Runs]:
            values = {"brushtail": per_run(is_bt, get)}
            if any(is_kea(r) for r in live):
                values["kea"] = per_run(is_kea, get, best=kea_best)
            return values

        metrics["renewals_per_s"] = Metric(
            "renewals/s, one core (Kea: its best, flood or paced)", "/s", "higher",
            both(rate, True),
        )  # fmt: skip
        metrics["renewals_per_cpu_s"] = Metric(
            "renewals per CPU-second (Kea: best)", "/s", "higher", both(per_cpu, True)
        )
        metrics["cpu_us_per_answer"] = Metric(
            "CPU us per renewal (XDP: generator's CPU included)", "us", "lower",
            {"brushtail": per_run(is_bt, us), **(
                {"kea": [1e6 / v if v else None for v in both(per_cpu, True)["kea"]]}
                if any(is_kea(r) for r in live) else {}
            )},
        )  # fmt: skip
        resp_rate, resp_cpu = per_run(is_resp, rate), per_run(is_resp, per_cpu)
        metrics["renewals_vs_responder"] = Metric(
            "renewals/s / minimal responder", "x", "higher",
            {"brushtail": ratios(per_run(is_bt, rate), resp_rate)},
        )  # fmt: skip
        metrics["renewals_per_cpu_vs_responder"] = Metric(
            "per CPU-second / minimal responder", "x", "higher",
            {"brushtail": ratios(per_run(is_bt, per_cpu), resp_cpu)},
        )  # fmt: skip
        notes.append(
            "Minimal responder (xdp_floor: MAC swap and XDP_TX) under the same flood, frames/s "
            "per run: " + ", ".join(fmt(v) for v in resp_rate) + "."
        )
        if any(is_kea(r) for r in live):
            flood_kea = per_run(lambda r: r.server == "kea-flood", rate)
            notes.append(
                "Kea under the flood itself answered " + ", ".join(fmt(v) for v in flood_kea)
                + " renewals/s per run; its figure in the table is its best of the flood and "
                f"the paced rates {', '.join(f'{r:,}' for r in args.kea_rates)}/s."
            )  # fmt: skip
    else:
        skipped["kea"] = "live part not run"
    box = report["machine"]
    return Scenario(
        scenario="kernel",
        title="Kernel fast path: cost per reply and renewals per core",
        command=report["command"],
        started=report["started"],
        seconds=round(seconds, 1),
        revision=box["revision"],
        runs=args.runs,
        metrics=metrics,
        skipped=skipped,
        notes=notes,
        machine={
            **box,
            "loadavg_before": report["loadavg_start"],
            "loadavg_after": report["loadavg_end"],
            "parts": list(args.parts),
            "calls": args.calls,
            "seconds_per_live_phase": args.seconds,
            "subscribers": args.subscribers,
        },
    )


@contextlib.contextmanager
def closing(thing: Any) -> Iterator[Any]:
    try:
        yield thing
    finally:
        thing.close()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Interrupted as exc:
        print(f"interrupted ({exc}); namespaces and pin dirs removed", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted; namespaces and pin dirs removed", file=sys.stderr)
        sys.exit(130)
