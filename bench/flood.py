"""Flood benchmark: brushtaild (the real daemon, fast path on) under a DISCOVER flood from
random MACs, while known subscribers renew and new subscribers try to get a lease.

Per run, a fresh pair of namespaces (bench/fastpath.new_link: btfp-<pid>-<n>-s/-c, one
veth, server sub0 198.18.0.1/16, client side cli0 198.18.0.2/16) and a fresh daemon pinned
to CPU 0, started from a snapshot of bpf/ and brushtaild/ (the working tree, or --rev),
with three pools:

  link     198.18.0.0/20,   clients on the veth itself (no relay)
  relay-a  198.19.0.0/20,   behind relay A (giaddr 198.19.0.1): the flooded relay
  relay-b  198.19.128.0/20, behind relay B (giaddr 198.19.128.1): a relay nobody floods

Both relay addresses live on cli0 and the server routes 198.19.0.0/16 to 198.18.0.2, so
relayed replies come back to the client namespace. Relay B sends from a MAC of its own
(a real relay is another box); relay A sends from cli0's MAC.

1. bind: --subscribers known subscribers (MACs 02:5b:...) get a lease on the link by DORA
   through the slow path, before any flood; the run waits until the kernel map holds them
   all. Static neighbour entries for them on the server side, so that a renewal the slow
   path answers (unicast to ciaddr) reaches them as it would reach a real client.
2. renewals: from then until the end, the subscribers renew in turn at --renew-rate per
   second (DHCPREQUEST with ciaddr, unicast to the server: RENEWING, what the fast path
   answers in the kernel). A renewal counts as answered if its ACK comes within 2 s.
   --baseline seconds of renewals alone first, during which one new subscriber through
   relay B and one on the link get a lease as a control (the probes of step 3, no flood).
3. flood: bench/floodgen.c (compiled with gcc at start, pinned to CPU 1) sends DISCOVERs
   from random MACs (first octet 0x0a) for --flood-seconds at --rate frames
   per second (0: as fast as it can), --relay-share of them through relay A (giaddr), the
   rest directly on the link. The offered rate is what it actually sent per second.
   --probe-after seconds into the flood, two new subscribers start at once, each retrying
   its DISCOVER (and then REQUEST) every second for up to 10 s: one through relay B, one
   directly on the flooded link. The daemon's VmRSS is sampled every 0.25 s.
4. recovery: when the flood stops, new clients on the flooded link try, one after another,
   each given 1 s (DISCOVER resent after 0.5 s); recovery time is from the flood's end
   until the first of them holds a lease in under 1 s (at most --recover-limit s).

Reported, as medians over --runs with min-max: the share of renewals answered before and
during the flood, whether (and after how long) each probe got a lease, the recovery time,
the daemon's VmHWM (peak RSS) and its growth over the flood, the daemon's CPU time, and the
deltas over the flood and recovery of the kernel's counters (dhcp_fastpath_requests_total by
result, rate_limit included) and of the daemon's (dhcp_packets_dropped_total by reason,
dhcp_socket_drops_total, dhcp_slowpath_requests_total by result), and the pools' assigned
addresses when the flood ended. Traffic stays in the two namespaces; addresses are in
198.18.0.0/15. Namespaces, pin dirs (/sys/fs/bpf/brushtail-bench-<pid>-*) and the snapshot
are removed on exit, failure and Ctrl-C included, and leftovers of dead runs (this bench's
or bench/fastpath.py's) are swept at start.

Run as root from the checkout:

    /work/main/.venv/bin/python bench/flood.py [--runs 3] [--quick] [--rev COMMIT] \
        [--subscribers 1000] [--rate 50000] [--flood-seconds 20] [--relay-share 0.5]

--quick: one run, 300 subscribers, a 10 s flood, recovery watched for at most 30 s (about a
minute in all). The report goes to stdout and bench/results/flood-<date>-<time>.md, raw data
to .json; --json PATH also writes the `flood` scenario of bench/report.py (bench/scenario.py's
shape, brushtail only). docs/PERFORMANCE.md, "Flood", explains the figures.
"""

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import queue
import random
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import fastpath  # bench/ is this script's sys.path[0]
from fastpath import median, new_link, remove_pins, source_snapshot, sweep_stale
from slowpath import schedstat

from bench.scenario import Metric, Scenario
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode, parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.net.packet_io import Insn, attach_filter, load_byte, load_half, ret
from tests.bpf.frames import client_frame
from tests.e2e.daemon import Brushtaild, sum_samples
from tests.e2e.netns import CLIENT_IF, SERVER_IF, SERVER_IP, Link, in_netns
from tests.e2e.xdp_pass import attach_client_pass

GEN_C = Path(__file__).resolve().parent / "floodgen.c"
RESULTS_DIR = fastpath.RESULTS_DIR
DAEMON_CPU, GEN_CPU = 0, 1
CLIENT_SIDE_IP = "198.18.0.2"
RELAY_A, RELAY_B = "198.19.0.1", "198.19.128.1"
RELAY_B_MAC = bytes.fromhex("025d00000001")
POOLS = (  # name, subnet, first, last, router
    ("link", "198.18.0.0/20", "198.18.1.0", "198.18.15.254", SERVER_IP),
    ("relay-a", "198.19.0.0/20", "198.19.1.0", "198.19.15.254", RELAY_A),
    ("relay-b", "198.19.128.0/20", "198.19.129.0", "198.19.143.254", RELAY_B),
)
PRL = bytes((1, 3, 6, 51))  # the same list in binding and renewals: the kernel entry's
SUBSCRIBER_PREFIX = b"\x02\x5b"
PROBE_PREFIX = b"\x02\x5c"
FLOOD_FIRST_OCTET = 0x0A  # floodgen.c's random MACs
RENEW_ANSWER_WINDOW = 2.0  # a renewal answered later than this counts as unanswered
PROBE_LIMIT = 10.0
PROBE_RETRY = 1.0
RECOVERY_CLIENT_LIMIT = 1.0
RECOVERY_RETRY = 0.5
BROADCAST_FLAG = 0x8000
XID_OFFSET = 14 + 20 + 8 + 4  # in a client_frame without VLAN tags or IP options


class BenchError(RuntimeError):
    """A run could not be measured; the message says why."""


# --- the client side: one raw socket to send, one to receive --------------------------------


def reply_filter() -> tuple[Insn, ...]:
    """IPv4 UDP to port 68 (replies to clients, a 20-byte IP header as every reply here
    has), except those to the flood's MACs: the flood's OFFERs never wake this process."""
    jeq = 0x05 | 0x10  # BPF_JMP | BPF_JEQ | BPF_K (linux/filter.h)
    return (
        load_byte(0),
        Insn(jeq, FLOOD_FIRST_OCTET, true="drop"),
        load_half(12),
        Insn(jeq, 0x0800, false="drop"),
        load_byte(14 + 9),
        Insn(jeq, 17, false="drop"),
        load_half(14 + 20 + 2),
        Insn(jeq, 68, false="drop"),
        ret(0xFFFF, label="accept"),
        ret(0, label="drop"),
    )


class Wire:
    """Raw frames out of cli0, replies to clients in; replies are handed to whoever waits
    for their xid, and renewal ACKs are timestamped by xid."""

    def __init__(self, link: Link) -> None:
        with in_netns(link.client_ns):
            self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.tx.bind((CLIENT_IF, 0))
            self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            self.rx.setsockopt(263, 23, 1)  # SOL_PACKET, PACKET_IGNORE_OUTGOING
            self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            attach_filter(self.rx, reply_filter())
            self.rx.bind((CLIENT_IF, 0))
            # Relay B's replies come to giaddr:67; relay A's are taken and never read, so
            # the client namespace does not answer each with ICMP port-unreachable.
            self.relay_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.relay_b.bind((RELAY_B, 67))
            self.relay_a_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.relay_a_sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.relay_a_sink.bind((RELAY_A, 67))
        self.rx.settimeout(0.2)
        self.waiters: dict[int, queue.SimpleQueue[Message]] = {}
        self.renewal_acks: dict[int, float] = {}
        self.renewal_xids: set[int] = set()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._receive, name="wire-rx", daemon=True)
        self.thread.start()

    def send(self, frame: bytes) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self.tx.send(frame)

    def expect(self, xid: int) -> "queue.SimpleQueue[Message]":
        q: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.waiters[xid] = q
        return q

    def forget(self, xid: int) -> None:
        self.waiters.pop(xid, None)

    def _receive(self) -> None:
        while not self.stopping.is_set():
            try:
                frame = self.rx.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            if len(frame) < XID_OFFSET + 4:
                continue
            (xid,) = struct.unpack_from("!I", frame, XID_OFFSET)
            if xid in self.renewal_xids:
                if frame[42 + 240 :].find(bytes((53, 1, MessageType.ACK))) >= 0:
                    self.renewal_acks.setdefault(xid, now)
                continue
            waiter = self.waiters.get(xid)
            if waiter is not None:
                with contextlib.suppress(Exception):
                    waiter.put(parse(frame[42:]))

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)
        for sock in (self.tx, self.rx, self.relay_b, self.relay_a_sink):
            sock.close()


_xids = itertools.count(random.randrange(1 << 30))


def next_xid() -> int:
    return next(_xids) & 0xFFFFFFFF


def request(mtype: MessageType, xid: int, mac: bytes, **fields: Any) -> Message:
    options = {OptionCode.MESSAGE_TYPE: bytes((mtype,)), OptionCode.PARAMETER_REQUEST_LIST: PRL}
    options.update(fields.pop("options", {}))
    return Message(op=1, xid=xid, chaddr=mac + bytes(10), options=options, **fields)


@dataclass
class Client:
    """How one client's messages travel: directly on the link, or through relay B."""

    wire: Wire
    server_mac: bytes
    mac: bytes
    relayed: bool

    def send(self, msg: Message) -> None:
        if self.relayed:
            msg.giaddr, msg.hops = opt.parse_ip(RELAY_B), 1
            frame = client_frame(encode(msg), src_mac=RELAY_B_MAC, dst_mac=self.server_mac,
                                 src_ip=RELAY_B, dst_ip=SERVER_IP, sport=67)  # fmt: skip
        else:
            msg.flags = BROADCAST_FLAG
            frame = client_frame(encode(msg), src_mac=self.mac)
        self.wire.send(frame)

    def receive(
        self, xid: int, waiter: "queue.SimpleQueue[Message]", until: float
    ) -> Message | None:
        while (left := until - time.monotonic()) > 0:
            if self.relayed:
                self.wire.relay_b.settimeout(left)
                try:
                    msg = parse(self.wire.relay_b.recv(2048))
                except Exception:  # a timeout, or a datagram that is not DHCP
                    continue
                if msg.xid == xid:
                    return msg
            else:
                try:
                    return waiter.get(timeout=left)
                except queue.Empty:
                    return None
        return None

    def exchange(
        self, msg: Message, want: MessageType, until: float, retry: float
    ) -> Message | None:
        """Sends `msg` every `retry` seconds until a reply of type `want` or `until`."""
        waiter = self.wire.expect(msg.xid)
        try:
            while time.monotonic() < until:
                self.send(msg)
                reply = self.receive(msg.xid, waiter, min(until, time.monotonic() + retry))
                if reply is not None and reply.message_type == want:
                    return reply
        finally:
            self.wire.forget(msg.xid)
        return None

    def lease(self, limit: float, retry: float) -> tuple[str | None, float]:
        """DISCOVER, OFFER, REQUEST, ACK within `limit` seconds: (address or None, time)."""
        t0 = time.monotonic()
        until = t0 + limit
        xid = next_xid()
        offer = self.exchange(request(MessageType.DISCOVER, xid, self.mac), MessageType.OFFER,
                              until, retry)  # fmt: skip
        if offer is None:
            return None, time.monotonic() - t0
        chosen = {
            OptionCode.REQUESTED_ADDRESS: opt.ip(offer.yiaddr),
            OptionCode.SERVER_ID: offer.options[OptionCode.SERVER_ID],
        }
        ack = self.exchange(request(MessageType.REQUEST, xid, self.mac, options=chosen),
                            MessageType.ACK, until, retry)  # fmt: skip
        if ack is None:
            return None, time.monotonic() - t0
        return opt.format_ip(ack.yiaddr), time.monotonic() - t0


_probe_macs = itertools.count(1)


def probe_mac() -> bytes:
    return PROBE_PREFIX + next(_probe_macs).to_bytes(4, "big")


def subscriber_mac(i: int) -> bytes:
    return SUBSCRIBER_PREFIX + i.to_bytes(4, "big")


# --- binding and renewing the known subscribers --------------------------------------------


def bind_subscribers(
    wire: Wire, server_mac: bytes, count: int, limit: float = 60.0
) -> list[tuple[bytes, str]]:
    """DORA for `count` subscribers, 64 at a time; returns (MAC, address) for each."""
    bound: list[tuple[bytes, str]] = []
    lock = threading.Lock()
    todo = iter(range(count))
    deadline = time.monotonic() + limit

    def worker() -> None:
        for i in todo:
            while time.monotonic() < deadline:
                mac = subscriber_mac(i)
                address, _ = Client(wire, server_mac, mac, relayed=False).lease(3.0, 1.0)
                if address is not None:
                    with lock:
                        bound.append((mac, address))
                    break

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(bound) < count:
        raise BenchError(f"only {len(bound)} of {count} subscribers bound within {limit:.0f} s")
    return sorted(bound)


class Renewals(threading.Thread):
    """The known subscribers renew in turn, `rate` per second in all, until stopped."""

    def __init__(
        self, wire: Wire, server_mac: bytes, bound: list[tuple[bytes, str]], rate: float
    ) -> None:
        super().__init__(name="renewals", daemon=True)
        self.wire, self.rate = wire, rate
        self.frames = [
            bytearray(client_frame(
                encode(request(MessageType.REQUEST, 0, mac, ciaddr=opt.parse_ip(address))),
                src_mac=mac, dst_mac=server_mac, src_ip=address, dst_ip=SERVER_IP,
            ))
            for mac, address in bound
        ]  # fmt: skip
        self.sent: list[tuple[float, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        for n in itertools.count():
            if self.stopping.is_set():
                return
            frame = self.frames[n % len(self.frames)]
            xid = next_xid()
            struct.pack_into("!I", frame, XID_OFFSET, xid)
            self.wire.renewal_xids.add(xid)
            self.sent.append((time.monotonic(), xid))
            self.wire.send(bytes(frame))
            delay = start + (n + 1) / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def answered(self, t0: float, t1: float) -> tuple[int, int]:
        """(renewals sent in [t0, t1), of them answered within the window)."""
        sent = [(t, x) for t, x in self.sent if t0 <= t < t1]
        acks = self.wire.renewal_acks
        ok = sum(1 for t, x in sent if x in acks and acks[x] - t <= RENEW_ANSWER_WINDOW)
        return len(sent), ok


# --- the daemon ----------------------------------------------------------------------------


def daemon_config(daemon: Brushtaild, pin_dir: Path) -> str:
    pools = "".join(
        f'  - name: {name}\n    subnet: {subnet}\n    ranges: ["{first}-{last}"]\n'
        f"    routers: [{router}]\n    dns_servers: [{SERVER_IP}]\n    lease_time: 3600\n"
        for name, subnet, first, last, router in POOLS
    )
    return (
        f"site: flood\ninterface: {SERVER_IF}\nserver_id: {SERVER_IP}\n"
        f"state_dir: {daemon.state_dir}\npools:\n{pools}"
        f"fastpath:\n  enabled: true\n  pin_dir: {pin_dir}\n"
    )


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... in KiB."""
    values = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[key] = int(rest.split()[0])
    return values


def daemon_pid(daemon: Brushtaild) -> int:
    """`ip netns exec` and `nsenter` exec in place: the Popen's pid is the daemon's."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if b"brushtaild" not in cmdline:
        raise BenchError(f"pid {pid} is not brushtaild: {cmdline!r}")
    return pid


def scrape(daemon: Brushtaild) -> dict[str, float]:
    try:
        return daemon.samples()
    except (RuntimeError, subprocess.SubprocessError) as exc:
        status = daemon.proc.poll() if daemon.proc is not None else None
        state = "running" if status is None else f"exited {status}"
        log = "\n".join(daemon.log().splitlines()[-10:])
        raise BenchError(f"metrics scrape failed ({exc}); brushtaild {state}:\n{log}") from exc


def labelled(delta: dict[str, float], name: str) -> dict[str, float]:
    """{label value: count} of the samples of one single-label metric, zeros left out."""
    out = {}
    for key, value in delta.items():
        if key.startswith(name + "{") and value:
            out[key.split('"')[1]] = value
    return out


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(name="rss", daemon=True)
        self.pid, self.peak_kib = pid, 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            self.peak_kib = max(self.peak_kib, proc_status(self.pid).get("VmRSS", 0))


# --- one run -------------------------------------------------------------------------------


@dataclass
class RunResult:
    run: int
    offered_rate: float | None = None  # frames per second the generator sent
    flood_sent: dict[str, int] = field(default_factory=dict)
    renew_before: float | None = None  # share answered, baseline
    renew_flood: float | None = None  # share answered, during the flood
    renew_counts: dict[str, list[int]] = field(default_factory=dict)
    probe_relay_b: float | None = None  # seconds to a lease, None: none within 10 s
    probe_link: float | None = None
    quiet_relay_b: float | None = None  # the same before the flood
    quiet_link: float | None = None
    recovery: float | None = None  # seconds after the flood, None: not within the limit
    hwm_before_mib: float | None = None
    hwm_after_mib: float | None = None
    rss_before_mib: float | None = None
    rss_peak_mib: float | None = None
    daemon_cpu_s: float | None = None  # over the flood, all threads
    daemon_wait_s: float | None = None  # runnable but waiting for a CPU, over the flood
    log_bytes: int | None = None  # what the daemon logged during the flood
    daemon_alive: bool = True
    fastpath: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)
    slowpath: dict[str, float] = field(default_factory=dict)
    socket_drops: float | None = None
    pools_at_flood_end: dict[str, float] = field(default_factory=dict)
    load: float | None = None
    error: str | None = None


def setup_routes(link: Link) -> None:
    link.run_in(link.client_ns, ["ip", "addr", "add", f"{CLIENT_SIDE_IP}/16", "dev", CLIENT_IF])
    for relay in (RELAY_A, RELAY_B):
        link.run_in(link.client_ns, ["ip", "addr", "add", f"{relay}/32", "dev", CLIENT_IF])
    link.run_in(link.server_ns, ["ip", "route", "add", "198.19.0.0/16", "via", CLIENT_SIDE_IP])


def add_neighbours(link: Link, bound: Sequence[tuple[bytes, str]], work: Path) -> None:
    batch = work / "neigh.batch"
    batch.write_text("".join(
        f"neigh replace {address} lladdr {mac.hex(':')} dev {SERVER_IF} nud permanent\n"
        for mac, address in bound
    ))  # fmt: skip
    link.run_in(link.server_ns, ["ip", "-batch", str(batch)])


def wait_for(what: str, check: Callable[[], bool], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"no {what} within {limit:.0f} s")
        time.sleep(0.2)


def run_generator(
    link: Link, gen: Path, server_mac: bytes, args: argparse.Namespace, run: int, out: Path
) -> subprocess.Popen[bytes]:
    argv = [
        "taskset", "-c", str(GEN_CPU), str(gen), CLIENT_IF, server_mac.hex(":"), SERVER_IP,
        RELAY_A, str(args.rate), str(args.flood_seconds),
        str(round(args.relay_share * 1000)), str(run + 1),
    ]  # fmt: skip
    with out.open("wb") as log:
        return link.popen_in(link.client_ns, argv, stdout=log, stderr=log)


_GEN_LINE = re.compile(r"sent=(\d+) direct=(\d+) relayed=(\d+) errors=(\d+) seconds=([\d.]+)")


def one_run(run: int, args: argparse.Namespace, root: Path, gen: Path, snapshot: Path) -> RunResult:
    result = RunResult(run, load=os.getloadavg()[0])
    work = Path(tempfile.mkdtemp(prefix=f"run{run}-", dir=root))
    pin_dir = fastpath.BPFFS / f"{fastpath.PIN_PREFIX}{os.getpid()}-flood-{run}"
    link = new_link()
    with contextlib.ExitStack() as stack:
        stack.enter_context(link)
        stack.callback(remove_pins, pin_dir)
        setup_routes(link)
        attach_client_pass(link)
        daemon = Brushtaild(link, work, fastpath=True, env={"PYTHONPATH": str(snapshot)})
        daemon.config_file.write_text(daemon_config(daemon, pin_dir))
        stack.enter_context(daemon)
        daemon.start(timeout=120)
        pid = daemon_pid(daemon)
        subprocess.run(["taskset", "-a", "-cp", str(DAEMON_CPU), str(pid)],
                       capture_output=True, check=True)  # fmt: skip
        server_mac = link.server_mac
        wire = Wire(link)
        stack.callback(wire.close)

        bound = bind_subscribers(wire, server_mac, args.subscribers)
        wait_for("kernel entry for every subscriber",
                 lambda: sum_samples(scrape(daemon), "dhcp_cache_entries") >= len(bound),
                 30)  # fmt: skip
        add_neighbours(link, bound, work)
        renewals = Renewals(wire, server_mac, bound, args.renew_rate)
        renewals.start()
        stack.callback(renewals.stopping.set)
        t_base = time.monotonic()
        # Control: the same new-subscriber probes with no flood.
        for attr, relayed in (("quiet_relay_b", True), ("quiet_link", False)):
            address, took = Client(wire, server_mac, probe_mac(), relayed).lease(
                PROBE_LIMIT, PROBE_RETRY
            )
            setattr(result, attr, took if address is not None else None)
        time.sleep(max(0.0, t_base + args.baseline - time.monotonic()))

        t_before = time.monotonic()
        before = scrape(daemon)
        status0 = proc_status(pid)
        sched0 = schedstat(pid)
        log0 = daemon.log_file.stat().st_size
        sampler = RssSampler(pid)
        sampler.start()
        stack.callback(sampler.stopping.set)
        gen_out = work / "floodgen.out"
        t_flood = time.monotonic()
        generator = run_generator(link, gen, server_mac, args, run, gen_out)
        probes: dict[str, float | None] = {}

        def probe(name: str, relayed: bool) -> None:
            address, took = Client(wire, server_mac, probe_mac(), relayed).lease(
                PROBE_LIMIT, PROBE_RETRY
            )
            probes[name] = took if address is not None else None

        time.sleep(args.probe_after)
        threads = [threading.Thread(target=probe, args=(name, relayed), daemon=True)
                   for name, relayed in (("relay_b", True), ("link", False))]  # fmt: skip
        for t in threads:
            t.start()
        try:
            generator.wait(timeout=args.flood_seconds + 30)
        except subprocess.TimeoutExpired as exc:
            raise BenchError("the generator did not stop") from exc
        t_end = time.monotonic()
        sched1 = schedstat(pid)
        result.log_bytes = daemon.log_file.stat().st_size - log0
        for t in threads:
            t.join(timeout=PROBE_LIMIT + 5)
        at_end = scrape(daemon)

        # Recovery: new clients on the flooded link, 1 s each, until one gets its lease.
        while (since := time.monotonic() - t_end) < args.recover_limit:
            client = Client(wire, server_mac, probe_mac(), relayed=False)
            address, took = client.lease(RECOVERY_CLIENT_LIMIT, RECOVERY_RETRY)
            if address is not None:
                result.recovery = since + took
                break
        time.sleep(RENEW_ANSWER_WINDOW)
        renewals.stopping.set()
        sampler.stopping.set()
        after = scrape(daemon)
        status1 = proc_status(pid)
        result.daemon_alive = daemon.proc is not None and daemon.proc.poll() is None

        match = _GEN_LINE.search(gen_out.read_text(errors="replace"))
        if match is None:
            raise BenchError(f"generator output: {gen_out.read_text(errors='replace')[-500:]}")
        sent, direct, relayed, errors, seconds = match.groups()
        result.flood_sent = {"sent": int(sent), "direct": int(direct), "relayed": int(relayed),
                             "errors": int(errors)}  # fmt: skip
        result.offered_rate = int(sent) / float(seconds)
        n0, ok0 = renewals.answered(t_base, t_flood)
        n1, ok1 = renewals.answered(t_flood, t_end)
        n2, ok2 = renewals.answered(t_before, time.monotonic())
        result.renew_counts = {"before": [n0, ok0], "flood": [n1, ok1], "counters": [n2, ok2]}
        result.renew_before = ok0 / n0 if n0 else None
        result.renew_flood = ok1 / n1 if n1 else None
        result.probe_relay_b, result.probe_link = probes.get("relay_b"), probes.get("link")
        mib = 1024.0
        result.hwm_before_mib = status0.get("VmHWM", 0) / mib
        result.hwm_after_mib = status1.get("VmHWM", 0) / mib
        result.rss_before_mib = status0.get("VmRSS", 0) / mib
        result.rss_peak_mib = sampler.peak_kib / mib
        if sched0 and sched1:
            result.daemon_cpu_s = sched1[0] - sched0[0]
            result.daemon_wait_s = sched1[1] - sched0[1]
        delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
        result.fastpath = labelled(delta, "dhcp_fastpath_requests_total")
        result.dropped = labelled(delta, "dhcp_packets_dropped_total")
        result.slowpath = labelled(delta, "dhcp_slowpath_requests_total")
        result.socket_drops = delta.get("dhcp_socket_drops_total")
        result.pools_at_flood_end = labelled(at_end, "dhcp_pool_addresses_assigned")
    shutil.rmtree(work, ignore_errors=True)
    return result


# --- report --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def med_range(values: Sequence[float | None], digits: int = 0, unit: str = "") -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    text = fmt(median(present), digits, unit)
    if len(present) > 1:
        text += f" ({fmt(min(present), digits)}-{fmt(max(present), digits)})"
    if len(present) < len(values):
        text += f", {len(values) - len(present)} of {len(values)} none"
    return text


def report(results: list[RunResult], args: argparse.Namespace, env: dict[str, Any]) -> str:
    ok = [r for r in results if r.error is None]
    lines = [
        f"# Flood benchmark, {env['date']}",
        "",
        f"Daemon: {env['source']}. Machine: {env['cpus']} CPUs, kernel {env['kernel']}, "
        f"load average at start {env['load']:.2f}. Command: `{env['command']}`.",
        f"{args.subscribers} known subscribers renewing at {args.renew_rate:g}/s; flood of "
        f"{args.flood_seconds:g} s at {'max' if not args.rate else f'{args.rate:,}/s'} "
        f"requested, {args.relay_share:.0%} through relay A; {len(ok)} of {len(results)} runs "
        "measured. Medians over runs, (min-max).",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]

    def row(name: str, value: str) -> None:
        lines.append(f"| {name} | {value} |")

    pct = [None if r.renew_before is None else 100 * r.renew_before for r in ok]
    pct_flood = [None if r.renew_flood is None else 100 * r.renew_flood for r in ok]
    row("offered flood rate (frames/s sent)", med_range([r.offered_rate for r in ok]))
    row("renewals answered before the flood (%)", med_range(pct, 2))
    row("renewals answered during the flood (%, goal >= 99)", med_range(pct_flood, 2))
    for name, attr in (("relay B (other relay, other subnet)", "relay_b"),
                       ("flooded link", "link")):  # fmt: skip
        got = [getattr(r, f"probe_{attr}") for r in ok]
        row(f"new subscriber on {name}: leases within {PROBE_LIMIT:.0f} s",
            f"{sum(v is not None for v in got)} of {len(got)}")  # fmt: skip
        quiet = med_range([getattr(r, f"quiet_{attr}") for r in ok], 3)
        row(f"new subscriber on {name}: seconds to the lease [with no flood]",
            f"{med_range(got, 2)} [{quiet}]")  # fmt: skip
    rec = [r.recovery for r in ok]
    row(f"recovery after the flood (s until a new client's lease takes < 1 s; limit "
        f"{args.recover_limit:g} s)", med_range(rec, 1))  # fmt: skip
    row("daemon VmHWM before the flood (MiB)", med_range([r.hwm_before_mib for r in ok], 1))
    row("daemon VmHWM after the flood (MiB)", med_range([r.hwm_after_mib for r in ok], 1))
    growth = [
        None
        if r.hwm_after_mib is None or r.hwm_before_mib is None
        else r.hwm_after_mib - r.hwm_before_mib
        for r in ok
    ]
    row("VmHWM growth over flood and recovery (MiB)", med_range(growth, 1))
    row("daemon RSS before the flood / sampled peak (MiB)",
        f"{med_range([r.rss_before_mib for r in ok], 1)} / "
        f"{med_range([r.rss_peak_mib for r in ok], 1)}")  # fmt: skip
    row("daemon CPU time during the flood (s, all threads)",
        med_range([r.daemon_cpu_s for r in ok], 1))  # fmt: skip
    row(
        "daemon waiting for a CPU during the flood (s, summed over threads)",
        med_range([r.daemon_wait_s for r in ok], 1),
    )
    row("daemon log written during the flood (KiB)",
        med_range([None if r.log_bytes is None else r.log_bytes / 1024 for r in ok]))  # fmt: skip
    row("daemon still running at the end", f"{sum(r.daemon_alive for r in ok)} of {len(ok)}")
    lines += ["", "Counters, increase over flood and recovery (medians over runs):", ""]

    def counters(title: str, get: Callable[[RunResult], dict[str, float]]) -> None:
        keys = sorted({k for r in ok for k in get(r)})
        if not keys:
            lines.append(f"- {title}: none")
            return
        parts = [f"{k} {med_range([get(r).get(k, 0.0) for r in ok])}" for k in keys]
        lines.append(f"- {title}: " + "; ".join(parts))

    counters("kernel, dhcp_fastpath_requests_total by result",
             lambda r: {"rate_limit": 0.0, **r.fastpath})  # fmt: skip
    counters("daemon, dhcp_slowpath_requests_total by result", lambda r: r.slowpath)
    counters("daemon, dhcp_packets_dropped_total by reason", lambda r: r.dropped)
    lines.append(f"- daemon, dhcp_socket_drops_total: {med_range([r.socket_drops for r in ok])}")
    sent = [r.renew_counts["counters"][0] for r in ok if "counters" in r.renew_counts]
    lines.append(
        f"- renewals sent over the same span (compare the kernel's ack): {med_range(sent)}"
    )
    sizes = {name: f"{first}-{last}" for name, _, first, last, _ in POOLS}
    counters(f"addresses assigned (offered, leased) when the flood ended; pools {sizes}",
             lambda r: r.pools_at_flood_end)  # fmt: skip
    for r in results:
        if r.error:
            lines.append(f"- run {r.run}: ERROR {r.error}")
    return "\n".join(lines) + "\n"


def scenario(results: list[RunResult], args: argparse.Namespace, env: dict[str, Any]) -> Scenario:
    """The report's `flood` scenario: brushtail only, one value per run (None: failed)."""

    def values(get: Callable[[RunResult], float | None]) -> dict[str, list[float | None]]:
        return {"brushtail": [None if r.error else get(r) for r in results]}

    def pct(share: float | None) -> float | None:
        return None if share is None else 100.0 * share

    def served(seconds: float | None) -> float:
        return 0.0 if seconds is None else 1.0

    def growth(r: RunResult) -> float | None:
        if r.hwm_after_mib is None or r.hwm_before_mib is None:
            return None
        return r.hwm_after_mib - r.hwm_before_mib

    def cpu_pct(r: RunResult) -> float | None:
        return None if r.daemon_cpu_s is None else 100.0 * r.daemon_cpu_s / args.flood_seconds

    def wait_pct(r: RunResult) -> float | None:
        return None if r.daemon_wait_s is None else 100.0 * r.daemon_wait_s / args.flood_seconds

    metrics = {
        "flood_rate": Metric("flood DISCOVERs/s sent", "/s", "higher",
                             values(lambda r: r.offered_rate)),
        "renewals_before_pct": Metric("renewals answered before the flood", "%", "higher",
                                      values(lambda r: pct(r.renew_before))),
        "renewals_flood_pct": Metric("renewals answered during the flood", "%", "higher",
                                     values(lambda r: pct(r.renew_flood))),
        "new_other_relay_served": Metric(
            f"new subscriber on another relay leased within {PROBE_LIMIT:g} s (1 = yes)", "",
            "higher", values(lambda r: served(r.probe_relay_b))),
        "new_other_relay_s": Metric("new subscriber on another relay: s to a lease", "s",
                                    "lower", values(lambda r: r.probe_relay_b)),
        "new_flooded_link_served": Metric(
            f"new subscriber on the flooded link leased within {PROBE_LIMIT:g} s (1 = yes)",
            "", "higher", values(lambda r: served(r.probe_link))),
        "new_flooded_link_s": Metric("new subscriber on the flooded link: s to a lease", "s",
                                     "lower", values(lambda r: r.probe_link)),
        "recovery_s": Metric("recovery after the flood", "s", "lower",
                             values(lambda r: r.recovery)),
        "hwm_growth_mib": Metric("peak memory growth (VmHWM)", "MiB", "lower", values(growth)),
        "daemon_cpu_pct": Metric("daemon CPU during the flood", "%", "lower", values(cpu_pct)),
        "cpu_wait_pct": Metric("daemon waiting for its CPU during the flood", "%", "lower",
                               values(wait_pct)),
        "socket_drops": Metric("daemon socket drops", "", "lower",
                               values(lambda r: r.socket_drops)),
    }  # fmt: skip
    why = (
        "not run under this flood: the harness drives brushtail's daemon and reads its "
        "counters; a peer under the same random-MAC flood is not measured yet"
    )
    return Scenario(
        scenario="flood",
        title="Random-MAC DISCOVER flood while known subscribers renew",
        command=env["command"],
        started=env["started"],
        seconds=float(env["wall_seconds"]),
        revision=env["source"],
        runs=args.runs,
        metrics=metrics,
        skipped={"kea": why, "dnsmasq": why, "dhcpd": why},
        notes=[f"run {r.run} failed: {r.error}" for r in results if r.error],
        machine={
            "cpus": env["cpus"],
            "kernel": env["kernel"],
            "loadavg_before": env["load"],
            "loadavg_after": env.get("load_after"),
            "daemon_wait_s": [r.daemon_wait_s for r in results],
            "subscribers": args.subscribers,
            "renew_rate": args.renew_rate,
            "flood_seconds": args.flood_seconds,
            "requested_rate": args.rate,
            "relay_share": args.relay_share,
        },
    )


# --- main ----------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 run, 300 subscribers, 10 s flood")
    p.add_argument("--rev", help="benchmark this commit's bpf/ and brushtaild/")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--renew-rate", type=float, default=200.0, help="renewals per second")
    p.add_argument("--rate", type=int, default=50_000, help="flood frames/s, 0 = max")
    p.add_argument("--flood-seconds", type=float, default=20.0)
    p.add_argument("--relay-share", type=float, default=0.5)
    p.add_argument("--baseline", type=float, default=3.0)
    p.add_argument("--probe-after", type=float, default=2.0)
    p.add_argument("--recover-limit", type=float, default=60.0)
    p.add_argument("--json", type=Path, help="write the report's `flood` scenario here")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.subscribers, args.flood_seconds, args.recover_limit = 1, 300, 10.0, 30.0
        args.renew_rate = min(args.renew_rate, 100.0)
    if not 0 <= args.relay_share <= 1 or args.probe_after >= args.flood_seconds:
        p.error("--relay-share is a fraction; --probe-after must fall inside the flood")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (namespaces, XDP)", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    swept = sweep_stale()
    if swept:
        print(f"swept leftovers of dead runs: {', '.join(swept)}", file=sys.stderr)
    snapshot, source = source_snapshot(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    results: list[RunResult] = []
    env = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "source": source,
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "load": os.getloadavg()[0],
        "command": "bench/flood.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    try:
        root = snapshot / "runs"
        root.mkdir()
        gen = root / "floodgen"
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(gen), str(GEN_C)], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        for run in range(args.runs):
            t0 = time.monotonic()
            try:
                r = one_run(run, args, root, gen, snapshot)
            except (BenchError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                r = RunResult(run, error=f"{type(exc).__name__}: {exc}")
            results.append(r)
            print(
                f"run {run}: "
                + (f"ERROR {r.error}" if r.error else
                   f"offered {fmt(r.offered_rate)}/s "
                   f"renewals {fmt(100 * (r.renew_flood or 0), 2)}% "
                   f"relay-b {fmt(r.probe_relay_b, 2)} s link {fmt(r.probe_link, 2)} s "
                   f"recovery {fmt(r.recovery, 1)} s HWM {fmt(r.hwm_after_mib, 1)} MiB")
                + f" [{time.monotonic() - t0:.0f} s]",
                file=sys.stderr, flush=True,
            )  # fmt: skip
    except Interrupted as exc:
        print(f"interrupted ({exc}); cleaning up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
    env["wall_seconds"] = round(time.monotonic() - started)
    text = report(results, args, env) + f"\nWall time: {env['wall_seconds']} s.\n"
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"flood-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.md"
    out.write_text(text)
    raw = {"env": env, "args": vars(args), "results": [asdict(r) for r in results]}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    if args.json is not None:
        env["load_after"] = os.getloadavg()[0]
        scenario(results, args, env).write(args.json)
        print(f"scenario written to {args.json}", file=sys.stderr)
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
