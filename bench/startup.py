"""Start-up benchmark: a server with --subscribers (1,000,000) known subscribers in its store,
from exec to serving them, and its resident memory.

Per server and run, a fresh pair of namespaces (bench/fastpath.new_link: btfp-<pid>-<n>-s/-c,
one veth, server sub0 198.18.0.1/16, client side cli0) and a fresh state directory under
/var/tmp holding the subscribers' leases, written before the clock starts (built once per
invocation, copied per run). One subscriber, 02:5b:00:00:00:01 at 198.18.1.2, is on the
link; the others are in 100.64.0.0/12, a pool served through relays, which exists only in
the store and the maps (no frame ever carries those addresses). The server runs on CPU 0.

brushtail: the real daemon (tests/e2e/daemon.Brushtaild, fast path on, native XDP, a
pass program on the client veth so XDP_TX is delivered), with NOTIFY_SOCKET pointed at a
socket of this script: `ready_s` is from exec to READY=1, and VmRSS/VmHWM are read then.
Then the subscriber on the link renews (DHCPREQUEST with ciaddr, unicast) until answered,
and the daemon's counters must show the kernel's ACK: READY means known subscribers are
answered in the kernel. The phases (store load, engine, compile, maps) come from the
daemon's own log lines; a revision that does not log one leaves it out.

Peers (Kea 2.2 memfile, dnsmasq, ISC dhcpd): the same leases in their own lease file (CSV,
dnsmasq.leases, dhcpd.leases); the subscriber renews every 50 ms from exec on, and
`ready_s` is the time to the first answer. A peer that does not answer within
--peer-limit (120 s) is in `skipped` with what it was doing. Peers run once (run 1) unless
--peer-runs says more: at 1M leases they take minutes, beyond the scenario's budget.

Run as root from the checkout:

    /work/main/.venv/bin/python bench/startup.py [--subscribers 1000000] [--runs 3] \
        [--quick] [--json PATH] [--rev COMMIT] [--servers brushtail,kea,dnsmasq,dhcpd] \
        [--peer-runs 1] [--peer-limit 120] [--cpus 0] [--profile PATH]

--quick: one run of each, 100,000 subscribers. --cpus 0,1 lets the server use both cores
(brushtaild compiles its program on a thread meanwhile; pinned to one core that overlap
buys nothing). --profile: py-spy (--rate 100, collapsed stacks) on the first brushtail
start, from exec to READY. On a shared machine compare `cpu_s` (the daemon's own CPU
time to READY, all threads) as well as the wall time: the time it waited for its CPU is
in `machine.wait_for_cpu_s`. Writes the `startup` Scenario
(bench/scenario.py) to --json (default bench/results/startup-<date>-<time>.json) and a
summary to stdout.
"""

import argparse
import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from types import FrameType
from typing import IO

import fastpath  # bench/ is this script's sys.path[0]; fastpath puts the checkout on it
from fastpath import loadavg, new_link, source_snapshot, sweep_stale
from flood import PRL, XID_OFFSET, daemon_pid, proc_status, reply_filter, request, scrape
from scenario import Metric, Scenario
from slowpath import schedstat

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType
from brushtaild.net.packet_io import attach_filter
from tests.bpf.frames import client_frame
from tests.e2e.daemon import PYTHON, Brushtaild
from tests.e2e.netns import CLIENT_IF, SERVER_IF, SERVER_IP, Link, in_netns
from tests.e2e.xdp_pass import attach_client_pass

SERVERS = ("brushtail", "kea", "dnsmasq", "dhcpd")
BINARIES = {"kea": "kea-dhcp4", "dnsmasq": "dnsmasq", "dhcpd": "dhcpd"}
SERVER_CPU = 0
OWN_CPU = 1
STATE_ROOT = Path("/var/tmp")
LEASE_TIME = 3600
PROBE_MAC = bytes.fromhex("025b00000001")
PROBE_ADDRESS = "198.18.1.2"
# name, subnet, first, last, netmask, router
LINK_POOL = ("link", "198.18.0.0/15", "198.18.1.0", "198.19.255.254", "255.254.0.0", SERVER_IP)
SCALE_POOL = ("scale", "100.64.0.0/12", "100.64.0.2", "100.79.255.254", "255.240.0.0", "100.64.0.1")
SCALE_FIRST = int(IPv4Address(SCALE_POOL[2]))
SCALE_ROOM = int(IPv4Address(SCALE_POOL[3])) - SCALE_FIRST + 1
FILLER_PREFIX = b"\x02\xb8"
PROBE_EVERY = 0.05
READY_LIMIT = 120.0
ANSWER_LIMIT = 10.0

# The daemon's own account of its start (info lines); absent in revisions that do not log it.
PHASES = {
    "store_s": re.compile(r"lease store: \d+ leases loaded in ([\d.]+)s"),
    "engine_s": re.compile(r"engine built from \d+ leases in ([\d.]+)s"),
    "compile_s": re.compile(r"compiled and loaded in ([\d.]+)s"),
    "maps_s": re.compile(r"maps loaded in ([\d.]+)s"),
}
PHASE_LABELS = {
    "store_s": "store load s",
    "engine_s": "engine built s",
    "compile_s": "program compiled s",
    "maps_s": "maps loaded s",
}


class BenchError(RuntimeError):
    """A run could not be measured; the message says why."""


class Skip(Exception):
    """A peer that cannot be measured here (missing, or too slow to start)."""


def filler(i: int) -> tuple[bytes, int]:
    """Subscriber i's MAC and address in the relayed pool (i from 0)."""
    return FILLER_PREFIX + (i + 1).to_bytes(4, "big"), SCALE_FIRST + i


def mac_text(mac: bytes) -> str:
    return mac.hex(":")


# --- the store and the peers' lease files, written before the clock starts ------------------

_STORE_SCRIPT = """
import sys, time
from pathlib import Path
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.store.lease_store import LeaseStore
state, count, expires = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
prl, first, prefix = bytes.fromhex(sys.argv[4]), int(sys.argv[5]), bytes.fromhex(sys.argv[6])
now = time.time()
probe = bytes.fromhex(sys.argv[7])
with LeaseStore.open(state) as store:
    store.apply([Lease(int(sys.argv[8]), b"\\x01" + probe, probe, "link", LeaseState.BOUND,
                       expires, now, prl)], [])
    chunk = []
    for i in range(count - 1):
        mac = prefix + (i + 1).to_bytes(4, "big")
        chunk.append(Lease(first + i, b"\\x01" + mac, mac, "scale", LeaseState.BOUND, expires,
                           now, prl))
        if len(chunk) == 100_000:
            store.apply(chunk, [])
            chunk = []
    store.apply(chunk, [])
"""


def build_store(snapshot: Path, state: Path, count: int, expires: float) -> float:
    """brushtail's lease store with `count` leases, written by the measured revision's own
    LeaseStore (its schema); returns the seconds it took."""
    started = time.monotonic()
    argv = [PYTHON, "-c", _STORE_SCRIPT, str(state), str(count), repr(expires), PRL.hex(),
            str(SCALE_FIRST), FILLER_PREFIX.hex(), PROBE_MAC.hex(),
            str(int(IPv4Address(PROBE_ADDRESS)))]  # fmt: skip
    subprocess.run(argv, env={"PYTHONPATH": str(snapshot)}, check=True, timeout=600,
                   capture_output=True)  # fmt: skip
    return time.monotonic() - started


def write_lines(path: Path, head: str, line: Callable[[bytes, int], str], count: int) -> None:
    with path.open("w") as out:
        out.write(head)
        out.write(line(PROBE_MAC, int(IPv4Address(PROBE_ADDRESS))))
        for i in range(count - 1):
            out.write(line(*filler(i)))


def kea_leases(path: Path, count: int, expires: int) -> None:
    head = (
        "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,"
        "hostname,state,user_context\n"
    )

    def line(mac: bytes, address: int) -> str:
        subnet = 1 if address == int(IPv4Address(PROBE_ADDRESS)) else 2
        return f"{IPv4Address(address)},{mac_text(mac)},,{LEASE_TIME},{expires},{subnet},0,0,,0,\n"

    write_lines(path, head, line, count)


def dnsmasq_leases(path: Path, count: int, expires: int) -> None:
    write_lines(path, "", lambda mac, a: f"{expires} {mac_text(mac)} {IPv4Address(a)} * *\n", count)


def dhcpd_leases(path: Path, count: int, expires: int) -> None:
    def stamp(t: int) -> str:
        when = dt.datetime.fromtimestamp(t, dt.UTC)
        return f"{(when.weekday() + 1) % 7} {when.strftime('%Y/%m/%d %H:%M:%S')}"

    starts, ends = stamp(expires - LEASE_TIME), stamp(expires)

    def line(mac: bytes, address: int) -> str:
        return (
            f"lease {IPv4Address(address)} {{\n  starts {starts};\n  ends {ends};\n"
            "  binding state active;\n  next binding state free;\n"
            f"  hardware ethernet {mac_text(mac)};\n}}\n"
        )

    write_lines(path, "", line, count)


# --- configs ---------------------------------------------------------------------------------


def brushtail_config(daemon: Brushtaild, pin_dir: Path) -> str:
    pools = "".join(
        f'  - name: {name}\n    subnet: {subnet}\n    ranges: ["{first}-{last}"]\n'
        f"    routers: [{router}]\n    dns_servers: [{SERVER_IP}]\n"
        f"    lease_time: {LEASE_TIME}\n"
        for name, subnet, first, last, _, router in (LINK_POOL, SCALE_POOL)
    )
    return (
        f"site: startup\ninterface: {SERVER_IF}\nserver_id: {SERVER_IP}\n"
        f"state_dir: {daemon.state_dir}\ncontrol_socket: {daemon.control_socket}\n"
        f"pools:\n{pools}fastpath:\n  enabled: true\n  xdp_mode: native\n  pin_dir: {pin_dir}\n"
    )


def kea_config(work: Path, leases: Path) -> Path:
    import json

    subnets = [
        {
            "id": n,
            "subnet": subnet,
            "pools": [{"pool": f"{first} - {last}"}],
            "option-data": [
                {"name": "routers", "data": router},
                {"name": "domain-name-servers", "data": SERVER_IP},
            ],
        }
        for n, (_, subnet, first, last, _, router) in enumerate((LINK_POOL, SCALE_POOL), 1)
    ]
    config = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": [SERVER_IF], "dhcp-socket-type": "raw"},
            "lease-database": {
                "type": "memfile", "persist": True, "name": str(leases), "lfc-interval": 0,
            },
            "multi-threading": {"enable-multi-threading": False},
            "valid-lifetime": LEASE_TIME,
            "subnet4": subnets,
            "loggers": [{"name": "kea-dhcp4", "severity": "INFO",
                         "output_options": [{"output": str(work / "kea.log")}]}],
        }
    }  # fmt: skip
    path = work / "kea-dhcp4.conf"
    path.write_text(json.dumps(config, indent=1))
    return path


def peer_argv(
    server: str, work: Path, count: int, expires: int
) -> tuple[list[str], dict[str, str]]:
    """Writes the peer's lease file and config; its command line and environment."""
    env = dict(os.environ)
    if server == "kea":
        leases = work / "kea-leases4.csv"
        kea_leases(leases, count, expires)
        env.update(KEA_PIDFILE_DIR=str(work), KEA_LOCKFILE_DIR=str(work))
        return ["kea-dhcp4", "-c", str(kea_config(work, leases))], env
    if server == "dnsmasq":
        leases = work / "dnsmasq.leases"
        dnsmasq_leases(leases, count, expires)
        ranges = [f"--dhcp-range={first},{last},{mask},{LEASE_TIME}"
                  for _, _, first, last, mask, _ in (LINK_POOL, SCALE_POOL)]  # fmt: skip
        return [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
            f"--interface={SERVER_IF}", "--bind-interfaces", "--no-ping", "--no-resolv",
            "--no-hosts", "--user=root", "--group=root", *ranges,
            f"--dhcp-lease-max={count + 1000}", f"--dhcp-leasefile={leases}",
            f"--pid-file={work / 'dnsmasq.pid'}", f"--log-facility={work / 'dnsmasq.log'}",
            f"--dhcp-option=option:router,{SERVER_IP}",
        ], env  # fmt: skip
    leases = work / "dhcpd.leases"
    dhcpd_leases(leases, count, expires)
    subnets = "".join(
        f"subnet {subnet.split('/')[0]} netmask {mask} {{\n  range {first} {last};\n"
        f"  option routers {router};\n  option domain-name-servers {SERVER_IP};\n}}\n"
        for _, subnet, first, last, mask, router in (LINK_POOL, SCALE_POOL)
    )
    config = work / "dhcpd.conf"
    config.write_text(
        f"authoritative;\nping-check false;\ndefault-lease-time {LEASE_TIME};\n"
        f"max-lease-time {LEASE_TIME};\n{subnets}"
    )
    return [
        "dhcpd", "-4", "-f", "-d", "-cf", str(config), "-lf", str(leases),
        "-pf", str(work / "dhcpd.pid"), SERVER_IF,
    ], env  # fmt: skip


# --- the renewing subscriber ---------------------------------------------------------------


class Prober:
    """The subscriber on the link renewing (RENEWING: ciaddr, unicast to the server) from
    raw sockets on cli0; the first ACK's time is kept."""

    def __init__(self, link: Link, server_mac: bytes) -> None:
        with in_netns(link.client_ns):
            self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.tx.bind((CLIENT_IF, 0))
            self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            self.rx.setsockopt(263, 23, 1)  # SOL_PACKET, PACKET_IGNORE_OUTGOING
            attach_filter(self.rx, reply_filter())
            self.rx.bind((CLIENT_IF, 0))
        self.rx.settimeout(0.05)
        self.xid = int.from_bytes(os.urandom(4), "big")
        msg = request(MessageType.REQUEST, self.xid, PROBE_MAC, ciaddr=opt.parse_ip(PROBE_ADDRESS))
        self.frame = client_frame(encode(msg), src_mac=PROBE_MAC, dst_mac=server_mac,
                                  src_ip=PROBE_ADDRESS, dst_ip=SERVER_IP)  # fmt: skip
        self.answered: float | None = None
        self.nak = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="probe-rx", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.rx.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            if (
                len(frame) < XID_OFFSET + 4
                or struct.unpack_from("!I", frame, XID_OFFSET)[0] != self.xid
            ):
                continue
            options = frame[42 + 240 :]
            if options.find(bytes((53, 1, MessageType.ACK))) >= 0 and self.answered is None:
                self.answered = now
            elif options.find(bytes((53, 1, MessageType.NAK))) >= 0:
                self.nak = True

    def send(self) -> None:
        with contextlib.suppress(OSError):
            self.tx.send(self.frame)

    def until_answered(self, limit: float, alive: Callable[[], bool]) -> float | None:
        deadline = time.monotonic() + limit
        while self.answered is None and time.monotonic() < deadline and alive():
            self.send()
            time.sleep(PROBE_EVERY)
        return self.answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.tx.close()
        self.rx.close()


def neighbour(link: Link) -> None:
    """The server answers the unicast renewal at ciaddr: it knows the subscriber's MAC."""
    argv = ["ip", "neigh", "replace", PROBE_ADDRESS, "lladdr", mac_text(PROBE_MAC)]
    link.run_in(link.server_ns, [*argv, "dev", SERVER_IF, "nud", "permanent"])


def spawned(daemon: Brushtaild) -> subprocess.Popen[bytes]:
    proc = daemon.spawn().proc
    assert proc is not None
    return proc


SERVER_CPUS = {SERVER_CPU}  # --cpus


def pinned_spawn(spawn: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """`spawn` with this process on the server's CPUs, so the child starts there (it
    inherits the affinity: pinned from its first instruction, no taskset in the exec chain)."""
    os.sched_setaffinity(0, SERVER_CPUS)
    try:
        return spawn()
    finally:
        os.sched_setaffinity(0, {OWN_CPU})


# --- one run of one server -----------------------------------------------------------------


@dataclass
class Result:
    ready_s: float | None = None
    answer_s: float | None = None
    rss_mib: float | None = None
    hwm_mib: float | None = None
    cpu_s: float | None = None
    wait_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    note: str = ""


def mib(status: dict[str, int], key: str) -> float | None:
    return status[key] / 1024 if key in status else None


def run_brushtail(run: int, args: argparse.Namespace, store: Path, snapshot: Path) -> Result:
    work = Path(tempfile.mkdtemp(prefix=f"btstartup-{os.getpid()}-bt{run}-", dir=STATE_ROOT))
    pin_dir = fastpath.BPFFS / f"{fastpath.PIN_PREFIX}{os.getpid()}-startup-{run}"
    link = new_link()
    result = Result()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        stack.enter_context(link)
        # Versioned pins live in a subdirectory: remove the whole tree.
        stack.callback(shutil.rmtree, pin_dir, ignore_errors=True)
        attach_client_pass(link)
        neighbour(link)
        notify_path = work / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stack.callback(notify.close)
        notify.bind(str(notify_path))
        daemon = Brushtaild(link, work, fastpath=True, env={
            "PYTHONPATH": str(snapshot), "NOTIFY_SOCKET": str(notify_path)})  # fmt: skip
        daemon.config_file.write_text(brushtail_config(daemon, pin_dir))
        daemon.state_dir.mkdir(mode=0o750)
        shutil.copyfile(store, daemon.state_dir / "leases.sqlite3")
        stack.enter_context(daemon)
        prober = Prober(link, link.server_mac)
        stack.callback(prober.close)

        started = time.monotonic()
        proc = pinned_spawn(lambda: spawned(daemon))
        spy = profiler(args, proc.pid, run)
        ready = wait_ready(notify, daemon, READY_LIMIT)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        pid = daemon_pid(daemon)  # `ip netns exec` and `nsenter` have exec'd it by now
        status = proc_status(pid)
        sched = schedstat(pid)
        result.note = " ".join(f"{k}={status.get(k, 0) // 1024}" for k in ("RssAnon", "RssFile"))
        result.ready_s = ready - started
        result.rss_mib, result.hwm_mib = mib(status, "VmRSS"), mib(status, "VmHWM")
        if sched is not None:
            result.cpu_s, result.wait_s = sched
        answered = prober.until_answered(ANSWER_LIMIT, lambda: proc.poll() is None)
        if answered is None:
            raise BenchError(f"no answer to the renewal {ANSWER_LIMIT:.0f} s after READY "
                             f"(NAK: {prober.nak}):\n{tail(daemon.log())}")  # fmt: skip
        result.answer_s = answered - started
        kernel = sum(v for k, v in scrape(daemon).items()
                     if k.startswith("dhcp_fastpath_requests_total") and '"ack"' in k)  # fmt: skip
        if kernel < 1:
            raise BenchError("the renewal was answered, but not by the kernel (no fast-path ACK)")
        log = daemon.log()
        for name, pattern in PHASES.items():
            match = pattern.search(log)
            if match:
                result.phases[name] = float(match.group(1))
        leases = re.search(r" leases=(\d+) ", log)
        if leases is None or int(leases.group(1)) != args.subscribers:
            raise BenchError(f"the daemon started with {leases and leases.group(1)} leases, "
                             f"not {args.subscribers}")  # fmt: skip
        daemon.stop(timeout=60)
    return result


def profiler(args: argparse.Namespace, pid: int, run: int) -> subprocess.Popen[bytes] | None:
    """py-spy on the daemon from its exec to READY (--profile, first run only): its samples
    as collapsed stacks (py-spy raw) beside the scenario's."""
    if args.profile is None or run != 0:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--threads",
            "--format", "raw", "-o", str(args.profile)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.2)  # attached before the daemon's imports are done
    return proc


def wait_ready(notify: socket.socket, daemon: Brushtaild, limit: float) -> float:
    """The monotonic time READY=1 arrived."""
    deadline = time.monotonic() + limit
    notify.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            datagram = notify.recv(4096)
        except TimeoutError:
            assert daemon.proc is not None
            if daemon.proc.poll() is not None:
                raise BenchError(f"brushtaild exited {daemon.proc.returncode}:\n"
                                 f"{tail(daemon.log())}") from None  # fmt: skip
            continue
        if b"READY=1" in datagram.split(b"\n"):
            return time.monotonic()
    raise BenchError(f"no READY=1 within {limit:.0f} s:\n{tail(daemon.log())}")


def tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_peer(server: str, run: int, args: argparse.Namespace) -> Result:
    work = Path(tempfile.mkdtemp(prefix=f"btstartup-{os.getpid()}-{server}{run}-", dir=STATE_ROOT))
    link = new_link()
    result = Result()
    expires = int(time.time()) + LEASE_TIME
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        stack.enter_context(link)
        neighbour(link)
        argv, env = peer_argv(server, work, args.subscribers, expires)
        prober = Prober(link, link.server_mac)
        stack.callback(prober.close)
        log: IO[bytes] = stack.enter_context((work / "stdout.log").open("wb"))
        started = time.monotonic()
        proc = pinned_spawn(lambda: link.popen_in(link.server_ns, argv, stdout=log, stderr=log,
                                                  env=env))  # fmt: skip
        answered = prober.until_answered(args.peer_limit, lambda: proc.poll() is None)
        status = proc_status(proc.pid)
        sched = schedstat(proc.pid)
        if answered is None:
            what = "exited" if proc.poll() is not None else "still starting"
            logs = "".join((work / name).read_text(errors="replace")
                           for name in ("stdout.log", "kea.log", "dnsmasq.log")
                           if (work / name).exists())  # fmt: skip
            raise Skip(f"no answer to the renewal within {args.peer_limit:.0f} s ({what}, "
                       f"NAK seen: {prober.nak}); last log lines: {tail(logs, 3)!r}")  # fmt: skip
        result.ready_s = result.answer_s = answered - started
        result.rss_mib, result.hwm_mib = mib(status, "VmRSS"), mib(status, "VmHWM")
        if sched is not None:
            result.cpu_s, result.wait_s = sched
    return result


# --- main ----------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--subscribers", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--peer-runs", type=int, default=1, help="runs of each peer (the first ones)")
    p.add_argument("--peer-limit", type=float, default=120.0, help="seconds a peer may take")
    p.add_argument("--quick", action="store_true", help="1 run, 100,000 subscribers")
    p.add_argument("--json", type=Path)
    p.add_argument("--rev", help="benchmark this commit's bpf/ and brushtaild/")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--cpus", default=str(SERVER_CPU), help="the server's CPUs, e.g. 0,1")
    p.add_argument("--profile", type=Path, help="py-spy the first brushtail start into PATH")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.subscribers = 1, min(args.subscribers, 100_000)
    args.servers = [s for s in args.servers.split(",") if s]
    SERVER_CPUS.clear()
    SERVER_CPUS.update(int(cpu) for cpu in args.cpus.split(","))
    unknown = set(args.servers) - set(SERVERS)
    if unknown or not 2 <= args.subscribers <= SCALE_ROOM + 1:
        p.error(f"servers are {', '.join(SERVERS)}; 2 <= --subscribers <= {SCALE_ROOM + 1}")
    return args


def scenario(args: argparse.Namespace, command: str, source: str) -> Scenario:
    metrics = {
        "ready_s": Metric("start to READY s (peers: to the first answer)", "s", "lower"),
        "answer_s": Metric("start to the renewal answered s", "s", "lower"),
        "rss_mib": Metric("resident at READY MiB", "MiB", "lower"),
        "hwm_mib": Metric("peak resident (VmHWM) MiB", "MiB", "lower"),
        "cpu_s": Metric("CPU time to READY s", "s", "lower"),
        **{name: Metric(label, "s", "lower") for name, label in PHASE_LABELS.items()},
    }
    return Scenario(
        scenario="startup",
        title=f"{args.subscribers:,} known subscribers: start to READY, resident memory",
        command=command,
        started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        seconds=0.0,
        revision=source,
        runs=args.runs,
        metrics=metrics,
    )


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    if os.geteuid() != 0:
        print("run as root (namespaces, XDP)", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    swept = sweep_stale()
    for path in STATE_ROOT.glob("btstartup-*"):
        match = re.match(r"btstartup-(\d+)-", path.name)
        if match and not fastpath.netns.pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            swept.append(str(path))
    if swept:
        print(f"swept leftovers of dead runs: {', '.join(swept)}", file=sys.stderr)
    os.sched_setaffinity(0, {OWN_CPU})
    snapshot, source = source_snapshot(raw)
    began = time.monotonic()
    out = scenario(args, "bench/startup.py " + " ".join(raw), source)
    out.machine = {"cpus": os.cpu_count(), "kernel": os.uname().release,
                   "loadavg_start": loadavg()}  # fmt: skip
    cache = Path(tempfile.mkdtemp(prefix=f"btstartup-{os.getpid()}-cache-", dir=STATE_ROOT))
    try:
        servers = []
        for server in args.servers:
            binary = BINARIES.get(server)
            if binary is not None and shutil.which(binary) is None:
                out.skipped[server] = f"`{binary}` not found"
            else:
                servers.append(server)
        for metric in out.metrics.values():
            for server in servers:
                metric.values[server] = [None] * args.runs
        if "brushtail" in servers:
            # Long enough for every run of the invocation: the leases must still be bound.
            took = build_store(
                snapshot, cache / "state", args.subscribers, time.time() + 4 * LEASE_TIME
            )
            out.notes.append(
                f"brushtail's store ({args.subscribers:,} leases) written in {took:.1f} s by "
                "its own LeaseStore, copied to a fresh state dir per run"
            )
        store = cache / "state" / "leases.sqlite3"
        for run in range(args.runs):
            for server in servers:
                if server != "brushtail" and (run >= args.peer_runs or server in out.skipped):
                    continue
                t0 = time.monotonic()
                try:
                    if server == "brushtail":
                        result = run_brushtail(run, args, store, snapshot)
                    else:
                        result = run_peer(server, run, args)
                except Skip as exc:
                    out.skipped[server] = str(exc)
                    for metric in out.metrics.values():
                        metric.values.pop(server, None)
                    print(f"run {run + 1} {server}: skipped: {exc}", file=sys.stderr, flush=True)
                    continue
                except (BenchError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    out.notes.append(f"run {run + 1} {server}: ERROR {type(exc).__name__}: {exc}")
                    print(f"run {run + 1} {server}: ERROR {exc}", file=sys.stderr, flush=True)
                    continue
                values = {"ready_s": result.ready_s, "answer_s": result.answer_s,
                          "rss_mib": result.rss_mib, "hwm_mib": result.hwm_mib,
                          "cpu_s": result.cpu_s, **result.phases}  # fmt: skip
                for name, value in values.items():
                    out.metrics[name].values[server][run] = value
                if result.wait_s is not None:
                    out.machine.setdefault("wait_for_cpu_s", {}).setdefault(server, []).append(
                        round(result.wait_s, 2)
                    )
                phases = " ".join(f"{k}={v:.2f}" for k, v in result.phases.items())
                took = time.monotonic() - t0
                print(f"run {run + 1} {server}: ready {result.ready_s:.2f} s, answered "
                      f"{result.answer_s:.2f} s, RSS {result.rss_mib:.0f} MiB, HWM "
                      f"{result.hwm_mib:.0f} MiB {phases} {result.note} [{took:.0f} s]",
                      file=sys.stderr, flush=True)  # fmt: skip
        for name in ("ready_s", "answer_s", "rss_mib", "hwm_mib", "cpu_s", *PHASES):
            metric = out.metrics[name]
            if name in PHASES and not any(
                v is not None for vs in metric.values.values() for v in vs
            ):
                del out.metrics[name]
            elif name in PHASES:
                metric.values = {"brushtail": metric.values.get("brushtail", [])}
    except Interrupted as exc:
        print(f"interrupted ({exc}); cleaning up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(snapshot, ignore_errors=True)
    if any(s != "brushtail" for s in servers):
        out.notes.append(
            "peers: time to the first ACK of the renewal; a peer may ACK a renewal it has no "
            "lease for (the address is free to it), but none answers before it has read its "
            "lease file"
        )
    if args.runs > args.peer_runs and any(s != "brushtail" for s in servers):
        out.notes.append(f"peers ran {args.peer_runs} time(s) only: at this size each takes "
                         "minutes; their other runs are None")  # fmt: skip
    out.notes.append(
        f"server on CPU {args.cpus} from exec (affinity inherited); store and lease files in "
        "the page cache (written just before), as at a restart"
    )
    out.machine["loadavg_end"] = loadavg()
    out.seconds = round(time.monotonic() - began, 1)
    path = args.json or fastpath.RESULTS_DIR / f"startup-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write(path)
    print(summary(out))
    print(f"written to {path}", file=sys.stderr)
    return 0


def summary(out: Scenario) -> str:
    lines = [f"{out.title} ({out.revision}), {out.seconds:.0f} s"]
    for name, metric in out.metrics.items():
        for server, values in metric.values.items():
            shown = ", ".join("-" if v is None else f"{v:.2f}" for v in values)
            lines.append(f"  {name:10} {server:10} {shown}")
    lines += [f"  skipped {k}: {v}" for k, v in out.skipped.items()]
    lines += [f"  note: {n}" for n in out.notes]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
