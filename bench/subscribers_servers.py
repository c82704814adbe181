"""The servers of bench/subscribers.py, each started with its known subscribers holding a
lease and ACKing their renewals (see that script's docstring), and the trivial XDP
responder in place of a server."""

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import fastpath  # bench/ is the script's sys.path[0]
import flood
import slowpath
from subscribers_wire import ClientPrograms, Pacer, renewal_frames

from tests.e2e import netns
from tests.e2e.daemon import Brushtaild, sum_samples
from tests.e2e.netns import CLIENT_IF, RELAY_IP, SERVER_IF, Link, in_netns

STATE_DIR = Path("/var/tmp")
WORK_PREFIX = "btsub-"
SERVER_CPU, LOAD_CPU = 0, 1  # the server; this process (pacer, counters) and perfdhcp
SETTLE = 0.3  # after the last renewal of a step: answers still on their way count
IDLE_LIMIT = 5.0  # waiting for the server's sockets to drain between steps
WARM_RATE = {"brushtail": 20_000, "kea": 4000, "dnsmasq": 250, "dhcpd": 250}
BIND_LIMIT = 90.0
BRUSHTAIL_LAST = "198.19.255.254"


# --- one server, started with its subscribers bound ----------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    progs: ClientPrograms
    snapshot: Path
    rate_limits: bool = False  # brushtail with its default rate limits (part flood)


@dataclass
class Session:
    server: str
    run: int
    link: Link
    work: Path
    pid: int
    bound: list[tuple[bytes, str]]
    pacer: Pacer
    progs: ClientPrograms
    restart: Callable[[], int]  # SIGTERM, start on the same state; returns the new pid
    daemon: Brushtaild | None = None
    capacity: float | None = None  # renewals/s the pacer found sustained (part renewals)


def pin_server(pid: int) -> None:
    subprocess.run(["taskset", "-a", "-cp", str(SERVER_CPU), str(pid)],
                   capture_output=True, check=True)  # fmt: skip


def start_brushtail(
    link: Link, work: Path, run: int, ctx: Context, stack: contextlib.ExitStack
) -> tuple[int, Callable[[], int], Brushtaild]:
    pin_dir = fastpath.BPFFS / f"{fastpath.PIN_PREFIX}{os.getpid()}-sub-{run}"
    stack.callback(fastpath.remove_pins, pin_dir)
    daemon = Brushtaild(link, work, fastpath=True, last=BRUSHTAIL_LAST,
                        env={"PYTHONPATH": str(ctx.snapshot)})  # fmt: skip
    text = daemon.config_file.read_text().replace(str(daemon.pin_dir), str(pin_dir))
    text = text.replace("subnet: 198.18.0.0/16", "subnet: 198.18.0.0/15")
    if not ctx.rate_limits:
        text += "  rate_limit: 0\n  relay_rate_limit: 0\n"
    daemon.config_file.write_text(text)
    daemon.pin_dir = pin_dir
    stack.enter_context(daemon)

    def start() -> int:
        daemon.start(timeout=120)
        pid = flood.daemon_pid(daemon)
        pin_server(pid)
        return pid

    def restart() -> int:
        daemon.stop(timeout=30)
        return start()

    return start(), restart, daemon


def known(count: int) -> list[tuple[bytes, str]]:
    """The peers' known subscribers: MAC 02:5b:..., addresses from the pool's start."""
    first = int(IPv4Address(slowpath.POOL_FIRST))
    return [(flood.subscriber_mac(i), str(IPv4Address(first + i))) for i in range(count)]


def write_leases(server: str, work: Path, bound: list[tuple[bytes, str]]) -> None:
    """The subscribers' leases in the file the peer reads at start (where bench/slowpath.py
    starts it): Kea's memfile CSV, dnsmasq's lease file, dhcpd.leases; an hour left each."""
    now = int(time.time())
    end = now + slowpath.LEASE_TIME
    if server == "kea":
        rows = [f"{a},{m.hex(':')},,{slowpath.LEASE_TIME},{end},1,0,0,,0," for m, a in bound]
        header = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,"
        text = header + "hostname,state,user_context\n" + "\n".join(rows) + "\n"
        (work / "kea-leases4.csv").write_text(text)
    elif server == "dnsmasq":
        text = "".join(f"{end} {m.hex(':')} {a} * *\n" for m, a in bound)
        (work / "dnsmasq.leases").write_text(text)
    else:

        def when(t: int) -> str:
            tm = time.gmtime(t)
            return f"{(tm.tm_wday + 1) % 7} {time.strftime('%Y/%m/%d %H:%M:%S', tm)}"

        (work / "dhcpd.leases").write_text("".join(
            f"lease {a} {{\n  starts {when(now)};\n  ends {when(end)};\n"
            f"  binding state active;\n  next binding state free;\n"
            f"  hardware ethernet {m.hex(':')};\n}}\n"
            for m, a in bound
        ))  # fmt: skip


def start_peer(
    server: str, link: Link, work: Path, stack: contextlib.ExitStack
) -> tuple[int, Callable[[], int]]:
    log = stack.enter_context(open(work / "server.out", "ab"))  # noqa: SIM115 (the stack closes it)
    procs = [slowpath.STARTERS[server](link, work, log).proc]

    def restart() -> int:
        netns.terminate(procs[-1], grace=10)
        procs.append(slowpath.STARTERS[server](link, work, log).proc)
        return procs[-1].pid

    return procs[0].pid, restart


def bind(link: Link, count: int) -> list[tuple[bytes, str]]:
    """Every subscriber gets its lease by DORA (bench/flood.py's binder, whose receiving
    side also listens on its two relay addresses: they exist only while it runs)."""
    relays = (flood.RELAY_A, flood.RELAY_B)
    for relay in relays:
        link.run_in(link.client_ns, ["ip", "addr", "add", f"{relay}/32", "dev", CLIENT_IF])
    wire = flood.Wire(link)
    try:
        return flood.bind_subscribers(wire, link.server_mac, count, BIND_LIMIT)
    finally:
        wire.close()
        for relay in relays:
            link.run_in(link.client_ns, ["ip", "addr", "del", f"{relay}/32", "dev", CLIENT_IF],
                        check=False)  # fmt: skip


@contextlib.contextmanager
def session(server: str, run: int, ctx: Context) -> Iterator[Session]:
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-{server}-", dir=STATE_DIR))
    link = fastpath.new_link()
    link.client_ip = RELAY_IP
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        stack.enter_context(link)
        with in_netns(link.client_ns):
            ctx.progs.attach("xdp_answers", CLIENT_IF)
        daemon = None
        if server == "brushtail":
            pid, restart, daemon = start_brushtail(link, work, run, ctx, stack)
            bound = bind(link, ctx.args.subscribers)
            flood.wait_for("kernel entry for every subscriber",
                           lambda: kernel_entries(daemon) >= len(bound), 30)  # fmt: skip
        else:
            bound = known(ctx.args.subscribers)
            write_leases(server, work, bound)
            pid, restart = start_peer(server, link, work, stack)
        flood.add_neighbours(link, bound, work)
        pacer = Pacer(link, renewal_frames(link.server_mac, bound))
        stack.callback(pacer.close)
        s = Session(server, run, link, work, pid, bound, pacer, ctx.progs, restart, daemon)
        wait_answering(s)
        yield s


def wait_answering(s: Session, limit: float = 30.0) -> None:
    """Until the server ACKs renewals (a peer reads its lease file as it starts); then
    every subscriber renews once at a rate the server surely sustains, so that no
    measurement holds a subscriber's first renewal."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        tag = s.progs.begin()
        sent = s.pacer.run(tag, 500, 0.1)
        time.sleep(0.2)
        answers = s.progs.end(sent.count)
        if answers.naks:
            raise flood.BenchError(f"{s.server} NAKs known subscribers' renewals")
        if answers.acks:
            rate = WARM_RATE[s.server]
            s.pacer.run(s.progs.begin(), rate, len(s.bound) / rate)
            time.sleep(SETTLE)
            s.progs.end(0)
            idle(s)
            return
    raise flood.BenchError(f"{s.server} ACKed no renewal within {limit:.0f} s")


def kernel_entries(daemon: Brushtaild) -> float:
    return sum_samples(flood.scrape(daemon), "dhcp_cache_entries")


@contextlib.contextmanager
def floor_session(ctx: Context) -> Iterator[Session]:
    """The trivial responder xdp_floor on the server veth (MAC lookup, swap, XDP_TX) in
    place of a server, with the same subscribers and the same client side."""
    with fastpath.new_link() as link:
        bound = [(flood.subscriber_mac(i), f"198.18.{1 + i // 256}.{i % 256}")
                 for i in range(ctx.args.subscribers)]  # fmt: skip
        ctx.progs.set_clients([mac for mac, _ in bound])
        with in_netns(link.client_ns):
            ctx.progs.attach("xdp_answers", CLIENT_IF)
        with in_netns(link.server_ns):
            ctx.progs.attach("xdp_floor", SERVER_IF)
        pacer = Pacer(link, renewal_frames(link.server_mac, bound))
        try:
            yield Session("floor", 0, link, Path(), os.getpid(), bound, pacer, ctx.progs,
                          lambda: os.getpid())  # fmt: skip
        finally:
            pacer.close()


def idle(s: Session) -> None:
    if s.server != "floor":
        slowpath.wait_idle(s.link, IDLE_LIMIT)
