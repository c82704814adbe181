"""Crash safety against the real daemon: SIGKILL brushtaild at random moments while clients
obtain and renew leases on both paths, restart it as systemd would, and check the store
against every ACK the clients received.

The clients: perfdhcp (Kea's) relaying for a few hundred simulated clients, with renewals
(-f), and real ones: ISC dhclient and busybox udhcpc, each on its own MAC (macvlans on the
client end; one dhclient on `cli0` itself). The fast path is on, so renewals and repeat
exchanges of known clients are answered in the kernel, also while no daemon runs. Leases
are short (60 s, T1 5 s) so renewals happen throughout; udhcpc, which ignores T1, is sent
SIGUSR1 every few seconds. A second perfdhcp ("churn") cycles through 600 clients at 10/s,
so each comes back exactly one lease time after its last exchange, at its lease's expiry,
in a pool smaller than all clients together: addresses freed by expiry are handed out again
at once (issue 9 review findings 1 and 17 show up there; `Plan(churn_rate=0)` leaves it
out). perfdhcp's renewals carry no option 55 while its exchanges do, so its clients move
between the two paths: the kernel answers only requests with the list it was given.

What the clients were told is read off the wire (tests/e2e/capture.py): every DHCPACK that
reached the client end, from either path, with the REQUEST it answers. After each restart
(same config, state dir and pins) the checks are:

- recorded: every ACK is in the lease store for the same client (option 61 of its
  REQUEST, else htype + chaddr), bound, with at least the expiry the client was told;
- unique: no address was ACKed to a client while another client's ACKed lease of it ran.

"At least the expiry it was told": a client told lease time L at time t_ack holds the
address until t_ack + L, but the server stamps its expiry when it handles the REQUEST,
which is earlier (the slow path: batch receive, before its fsync; the kernel: XDP receive
time). Neither can stamp it before the REQUEST left the client, so the floor checked is
t_request + L, with t_request the first copy of that REQUEST (same chaddr and xid) on the
wire, minus CLOCK_SLACK (50 ms) for the kernel's expiry: it is CLOCK_BOOTTIME nanoseconds,
converted to Unix time with an offset the daemon read at its start; between two daemon
starts the two clocks drift by NTP slew alone (at most 500 ppm, under 10 ms over one
round), and float seconds round at well under a microsecond. The largest shortfall against
the naive t_ack + L is reported as `max_lag`.

Which ACKs must be in the store when:

- at "started", every ACK received before the daemon that logged it was spawned: the slow
  path commits before it sends, and the kernel's renewals up to then, those it answered
  while no daemon ran included, are in the ring (which the daemon drains and commits in
  start-up, after compiling, before attaching and logging "started") or were committed by
  an earlier daemon. A renewal a killed daemon had read from the ring but not committed
  would fail here;
- ACKs the kernel sent after the spawn may legitimately be only in the ring at "started":
  the old program answers until the new one is attached, and the start-up drain came just
  before that. The daemon drains the ring at every wake-up (at least once a second,
  `IDLE_WAKEUP`), so DRAIN_BOUND after any moment every ACK before it is in the store.
"""

import contextlib
import ipaddress
import random
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.options import decode_u32, format_ip, format_mac
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.server import client_identity
from brushtaild.store.lease_store import read_snapshot
from tests.e2e.capture import FLUSH_DELAY, Capture, Seen
from tests.e2e.clients import DhclientProcess, UdhcpcProcess
from tests.e2e.daemon import Brushtaild, sweep_stale_pins
from tests.e2e.netns import CLIENT_IF, PREFIX_LEN, RELAY_IP, SERVER_IP, Link, ip
from tests.e2e.xdp_pass import attach_client_pass

# The kernel's expiry, converted from CLOCK_BOOTTIME, may fall this far below the REQUEST's
# wall-clock time + lease time (module docstring).
CLOCK_SLACK = 0.05
# A retransmitted REQUEST keeps its xid: the floor is taken from the first copy sent within
# this long before the ACK (udhcpc rebinds a second after its unicast renewal).
RETRY_WINDOW = 10.0
# ACKs whose floor is this close to the check are not checked: the lease may be expiring.
EXPIRY_MARGIN = 1.0
# The daemon drains the ring at least once a second (daemon/main.py IDLE_WAKEUP), plus a
# commit and the capture's own delay.
DRAIN_BOUND = 2.0
SETTLE = DRAIN_BOUND + 1.0
LEASE_TIME = 60
RENEWAL_TIME = 5
REBINDING_TIME = 45
START_TIMEOUT = 90.0
POOL_FIRST = ipaddress.IPv4Address("198.18.1.0")
CHURN_RELAY_IP = "198.18.0.3"
PERFDHCP_BASE = "00:0c:01:00:00:00"
CHURN_BASE = "00:0d:01:00:00:00"
PAD_OPTION = 224  # site-specific (RFC 2132 section 2): the server ignores it
FAST_ACK = 'dhcp_fastpath_requests_total{result="ack"}'


# --- what the clients were told --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """One DHCPACK a client received, with the REQUEST it answers."""

    at: float  # when it reached the client end (kernel timestamp, Unix seconds)
    asked_at: float  # when the first copy of its REQUEST left the client end
    client: bytes  # the client id the server keys the lease by
    hwaddr: bytes
    address: int
    lease_time: int
    xid: int

    @property
    def told(self) -> float:
        """The expiry as the client counts it from the ACK."""
        return self.at + self.lease_time

    @property
    def floor(self) -> float:
        """The least expiry the server may have stored for it."""
        return self.asked_at + self.lease_time - CLOCK_SLACK

    def describe(self) -> str:
        return (
            f"ACK xid={self.xid:#010x} to client={self.client.hex()} "
            f"mac={format_mac(self.hwaddr)} ip={format_ip(self.address)} "
            f"lease={self.lease_time}s at={self.at:.6f} (REQUEST at {self.asked_at:.6f})"
        )


@dataclass
class Acks:
    """The ACKs in a capture; `unmatched` counts those whose REQUEST was not captured
    (their floor falls back to the ACK's time minus RETRY_WINDOW's worth of doubt)."""

    acks: list[Ack]
    unmatched: int = 0


def acks_from(seen: Sequence[Seen]) -> Acks:
    requests: dict[tuple[bytes, int], list[tuple[float, bytes]]] = defaultdict(list)
    acks: list[Ack] = []
    unmatched = 0
    for item in seen:
        msg = item.message
        key = (msg.hwaddr, msg.xid)
        if not item.from_server:
            if msg.op == 1 and msg.message_type is MessageType.REQUEST:
                requests[key].append((item.at, client_identity(msg)))
            continue
        lease_time = msg.options.get(OptionCode.LEASE_TIME)
        if msg.message_type is not MessageType.ACK or not msg.yiaddr or lease_time is None:
            continue
        asked = [r for r in requests[key] if item.at - RETRY_WINDOW <= r[0] <= item.at]
        if asked:
            asked_at, client = asked[0]
        else:
            unmatched += 1
            asked_at, client = item.at - RETRY_WINDOW, bytes((msg.htype,)) + msg.hwaddr
        acks.append(
            Ack(item.at, asked_at, client, msg.hwaddr, msg.yiaddr, decode_u32(lease_time), msg.xid)
        )
    return Acks(acks, unmatched)


# --- the checks ------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    check: str  # "recorded" or "unique"
    kind: str  # what exactly: "missing", "another client", "not bound", "short", "two clients"
    ack: Ack
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.ack.describe()}: {self.detail}"


def tally(violations: Sequence[Violation]) -> dict[str, int]:
    """How many violations of each check and kind, as "recorded/missing": n."""
    counts: dict[str, int] = defaultdict(int)
    for violation in violations:
        counts[f"{violation.check}/{violation.kind}"] += 1
    return dict(sorted(counts.items()))


@dataclass
class StoreCheck:
    checked: int = 0
    violations: list[Violation] = field(default_factory=list)
    min_margin: float | None = None  # least (stored expiry - floor) over checked ACKs
    max_lag: float = 0.0  # largest (told - stored expiry): what a naive check would miss


def check_recorded(
    acks: Sequence[Ack], leases: Sequence[Lease], *, received_before: float, now: float
) -> StoreCheck:
    """Every ACK received before `received_before` whose lease still runs at `now` is in
    `leases` (a store snapshot read at `now`) for its client, bound, expiring no earlier
    than its floor."""
    by_address = {lease.address: lease for lease in leases}
    result = StoreCheck()
    for ack in acks:
        if ack.at >= received_before or ack.floor <= now + EXPIRY_MARGIN:
            continue
        result.checked += 1
        lease = by_address.get(ack.address)
        problem = _problem(ack, lease)
        if problem is not None:
            result.violations.append(Violation("recorded", problem[0], ack, problem[1]))
            continue
        assert lease is not None
        margin = lease.expires - ack.floor
        result.min_margin = margin if result.min_margin is None else min(result.min_margin, margin)
        result.max_lag = max(result.max_lag, ack.told - lease.expires)
    return result


def _problem(ack: Ack, lease: Lease | None) -> tuple[str, str] | None:
    """What is wrong with `lease` as the record of `ack` (kind, detail), or None."""
    if lease is None:
        return "missing", "not in the store"
    if lease.client_id != ack.client:
        return "another client", (
            f"stored for another client {lease.client_id.hex()} "
            f"(mac {format_mac(lease.hwaddr)}, expires {lease.expires:.6f})"
        )
    if lease.state is not LeaseState.BOUND:
        return "not bound", f"stored as {lease.state.name}, expires {lease.expires:.6f}"
    if lease.expires < ack.floor:
        return "short", (
            f"stored expiry {lease.expires:.6f} is {ack.floor - lease.expires:.3f}s short "
            f"of the floor {ack.floor:.6f} (told {ack.told:.6f})"
        )
    return None


def check_unique(acks: Sequence[Ack]) -> list[Violation]:
    """No address ACKed to a client while another client's ACKed lease of it still ran.
    A lease is taken to run until its floor at least, which the server's own expiry can
    only exceed: an overlap here is an address the server gave to two clients."""
    holders: dict[int, dict[bytes, float]] = defaultdict(dict)
    violations = []
    for ack in sorted(acks, key=lambda a: a.at):
        held = holders[ack.address]
        for other, until in held.items():
            if other != ack.client and until > ack.at:
                violations.append(
                    Violation(
                        "unique",
                        "two clients",
                        ack,
                        f"client {other.hex()} holds it until at least {until:.6f}",
                    )
                )
        held[ack.client] = max(held.get(ack.client, 0.0), ack.floor)
    return violations


# --- the run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How a run kills and restarts; times in seconds, drawn uniformly from the ranges."""

    rounds: int
    seed: int
    run: tuple[float, float] = (3.0, 8.0)  # daemon up before the SIGKILL
    down: tuple[float, float] = (0.0, 1.5)  # dead before the restart (systemd's RestartSec)
    startup_kill: float = 0.3  # chance that a restart is itself killed before it is ready
    perfdhcp_rate: int = 40  # exchanges a second
    perfdhcp_renew_rate: int = 10  # of which renewals (sent without option 55)
    perfdhcp_clients: int = 200
    # perfdhcp's requests are smaller than our replies, and XDP on a veth cannot grow a
    # frame in place (the kernel passes them up as `no_room`): an option this long makes
    # room, so the kernel answers them too.
    perfdhcp_pad: int = 120
    # Real clients: (kind, interface); "cli0" is the client end itself, others macvlans.
    real_clients: tuple[tuple[str, str], ...] = (
        ("dhclient", CLIENT_IF),
        ("dhclient", "mv1"),
        ("udhcpc", "mv2"),
        ("udhcpc", "mv3"),
    )
    udhcpc_renew_every: tuple[float, float] = (1.5, 4.0)
    # A second perfdhcp, relaying from CHURN_RELAY_IP for many clients that come back about
    # once a lease time, some just before their lease runs out and some just after; with
    # the pool smaller than all clients together, expired addresses are soon handed out
    # again, so an address the engine wrongly thinks free goes to another client.
    churn_rate: int = 10
    churn_clients: int = 600
    pool_size: int = 700


@dataclass
class Round:
    number: int
    acks: int  # ACKs received since the previous round's last check
    fast: int  # of which the kernel's (pinned counter)
    startup_killed: bool
    start_seconds: float  # spawn to "started"
    at_start: StoreCheck  # at "started": ACKs before the daemon was spawned
    settled: StoreCheck  # SETTLE later: ACKs up to DRAIN_BOUND before
    unique: list[Violation]
    new: list[Violation] = field(default_factory=list)  # first seen in this round

    @property
    def slow(self) -> int:
        return self.acks - self.fast

    @property
    def violations(self) -> list[Violation]:
        return self.at_start.violations + self.settled.violations + self.unique

    def line(self) -> str:
        checks = self.at_start.checked + self.settled.checked
        passed = checks - len(self.at_start.violations) - len(self.settled.violations)
        return (
            f"round {self.number:2d}: acks {self.acks:5d} (fast {self.fast:5d}, slow "
            f"{self.slow:5d})  restart {self.start_seconds:5.1f}s"
            f"{' after a kill in start-up' if self.startup_killed else ''}  checks "
            f"{passed}/{checks} recorded (at start {self.at_start.checked}, settled "
            f"{self.settled.checked}), unique {'ok' if not self.unique else len(self.unique)}"
            + (f"; new violations: {tally(self.new)}" if self.new else "")
        )


class CrashRun:
    """Link, daemon, capture and clients for one run of `plan.rounds` rounds; use as a
    context manager, then call `round()` once per round."""

    def __init__(self, workdir: Path, plan: Plan) -> None:
        self.workdir = workdir
        self.plan = plan
        self.random = random.Random(plan.seed)
        self.link = Link(client_ip=RELAY_IP)
        self.daemon: Brushtaild | None = None
        self.capture: Capture | None = None
        self.udhcpcs: list[UdhcpcProcess] = []
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self._mark = 0.0  # when the previous round's last check read the capture
        self._fast = 0.0
        self._start_seconds: list[float] = []
        self.rounds: list[Round] = []

    # -- set-up and teardown --------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._set_up()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._stack.close()

    def _set_up(self) -> None:
        sweep_stale_pins()
        link = self._stack.enter_context(self.link)
        attach_client_pass(link)
        for _, ifname in self.plan.real_clients:
            if ifname != CLIENT_IF:
                ip("-n", link.client_ns, "link", "add", ifname, "link", CLIENT_IF,
                   "type", "macvlan", "mode", "bridge")  # fmt: skip
                ip("-n", link.client_ns, "link", "set", ifname, "up")
        ip("-n", link.client_ns, "addr", "add", f"{CHURN_RELAY_IP}/{PREFIX_LEN}", "dev", CLIENT_IF)
        self.daemon = Brushtaild(
            link,
            self.workdir,
            first=str(POOL_FIRST),
            last=str(POOL_FIRST + self.plan.pool_size - 1),
            lease_time=LEASE_TIME,
            renewal_time=RENEWAL_TIME,
            rebinding_time=REBINDING_TIME,
            fastpath=True,
        )
        self._stack.callback(self.daemon.remove_pins)
        self._stack.callback(self.daemon.kill)
        self.capture = Capture(link, self.workdir / "clients.pcap").start()
        self._stack.callback(self.capture.stop)
        self._timed_start()
        self._fast = self.daemon.metric(FAST_ACK)
        for n, (kind, ifname) in enumerate(self.plan.real_clients):
            where = self.workdir / f"{kind}-{n}"
            if kind == "dhclient":
                client: DhclientProcess | UdhcpcProcess = DhclientProcess(
                    link, where, ifname=ifname, timeout=30
                )
            else:
                client = UdhcpcProcess(link, where, discovers=60, ifname=ifname)
                self.udhcpcs.append(client)
            self._stack.callback(client.kill)
            client.start()
        self._perfdhcp("perfdhcp", RELAY_IP, PERFDHCP_BASE, self.plan.perfdhcp_clients,
                       self.plan.perfdhcp_rate, self.plan.perfdhcp_renew_rate)  # fmt: skip
        if self.plan.churn_rate:
            self._perfdhcp("churn", CHURN_RELAY_IP, CHURN_BASE, self.plan.churn_clients,
                           self.plan.churn_rate, 0)  # fmt: skip
        poker = threading.Thread(target=self._poke_udhcpc, name="udhcpc-renew", daemon=True)
        poker.start()
        self._stack.callback(poker.join, 10)
        self._stack.callback(self._stop.set)
        self._mark = time.time()

    def _perfdhcp(
        self, name: str, relay: str, base: str, clients: int, rate: int, renew_rate: int
    ) -> None:
        """perfdhcp relaying from `relay` until the run ends; its output goes to NAME.log."""
        pad = self.plan.perfdhcp_pad
        proc = self.link.popen_in(
            self.link.client_ns,
            [
                "perfdhcp", "-4", "-l", relay, "-r", str(rate),
                *(["-f", str(renew_rate)] if renew_rate else []),
                "-R", str(clients), "-b", f"mac={base}",
                *(["-o", f"{PAD_OPTION},{'00' * pad}"] if pad else []),
                "-p", "86400", "-s", str(self.plan.seed), SERVER_IP,
            ],
            stdout=self._stack.enter_context((self.workdir / f"{name}.log").open("wb")),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._stack.callback(_terminate, proc)

    def _poke_udhcpc(self) -> None:
        """SIGUSR1 to each udhcpc every few seconds: a unicast renewal, then a broadcast
        one a second later (see test_fastpath's note); udhcpc itself waits for T = L/2."""
        low, high = self.plan.udhcpc_renew_every
        rng = random.Random(self.plan.seed + 1)
        while not self._stop.wait(rng.uniform(low, high)):
            for client in self.udhcpcs:
                if client.proc is not None and client.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        client.proc.send_signal(signal.SIGUSR1)

    def _timed_start(self) -> tuple[float, float]:
        """Starts the daemon and waits for "started"; returns when it was spawned (Unix
        time) and how long it took."""
        assert self.daemon is not None
        spawned_at, started = time.time(), time.monotonic()
        self.daemon.start(START_TIMEOUT)
        seconds = time.monotonic() - started
        self._start_seconds.append(seconds)
        return spawned_at, seconds

    # -- one round ------------------------------------------------------------------------

    def round(self) -> Round:
        daemon, capture, rng = self.daemon, self.capture, self.random
        assert daemon is not None and capture is not None
        time.sleep(rng.uniform(*self.plan.run))
        daemon.kill()
        time.sleep(rng.uniform(*self.plan.down))
        startup_killed = rng.random() < self.plan.startup_kill
        if startup_killed:
            # Anywhere in start-up: loading the store, compiling, draining the ring,
            # filling the maps, attaching.
            typical = max(self._start_seconds)
            daemon.spawn()
            time.sleep(rng.uniform(0.0, typical))
            daemon.kill()
            time.sleep(rng.uniform(*self.plan.down))
        spawned_at, start_seconds = self._timed_start()
        at_start = self._check(received_before=spawned_at)
        time.sleep(SETTLE)
        settled = self._check(received_before=time.time() - DRAIN_BOUND)
        seen = self._acks()
        mark = time.time()
        fast = daemon.metric(FAST_ACK)
        result = Round(
            number=len(self.rounds) + 1,
            acks=sum(1 for a in seen if self._mark <= a.at < mark),
            fast=int(fast - self._fast),
            startup_killed=startup_killed,
            start_seconds=start_seconds,
            at_start=at_start,
            settled=settled,
            unique=[v for v in check_unique(seen) if self._mark <= v.ack.at < mark],
        )
        self._mark, self._fast = mark, fast
        reported = {(v.check, v.ack) for r in self.rounds for v in r.new}
        for violation in result.violations:
            if (violation.check, violation.ack) not in reported:
                reported.add((violation.check, violation.ack))
                result.new.append(violation)
        self.rounds.append(result)
        return result

    def _acks(self) -> list[Ack]:
        assert self.capture is not None
        time.sleep(FLUSH_DELAY)
        return acks_from(self.capture.seen()).acks

    def _check(self, *, received_before: float) -> StoreCheck:
        assert self.daemon is not None
        acks = self._acks()
        now = time.time()
        leases = read_snapshot(self.daemon.state_dir)
        return check_recorded(acks, leases, received_before=received_before, now=now)

    # -- reporting ------------------------------------------------------------------------

    def violations(self) -> list[tuple[int, Violation]]:
        """Each violation once, with the round that first saw it (an ACK missing from the
        store fails every later check until its lease runs out)."""
        return [(r.number, v) for r in self.rounds for v in r.new]

    def summary(self) -> str:
        acks = sum(r.acks for r in self.rounds)
        fast = sum(r.fast for r in self.rounds)
        checks = [c for r in self.rounds for c in (r.at_start, r.settled)]
        checked = sum(c.checked for c in checks)
        failed = sum(len(c.violations) for c in checks)
        margins = [c.min_margin for c in checks if c.min_margin is not None]
        assert self.capture is not None
        matched = acks_from(self.capture.seen())
        return (
            f"{len(self.rounds)} rounds ({sum(r.startup_killed for r in self.rounds)} with a "
            f"kill in start-up): {acks} acks (fast {fast}, slow {acks - fast}), "
            f"{checked - failed}/{checked} recorded checks passed; violations "
            f"{tally([v for _, v in self.violations()]) or 'none'}; "
            f"restart {min(self._start_seconds):.1f}-{max(self._start_seconds):.1f}s; "
            f"least margin over the floor {min(margins, default=0.0) * 1000:.1f} ms, "
            f"largest lag behind ack time + lease "
            f"{max((c.max_lag for c in checks), default=0.0) * 1000:.1f} ms; "
            f"{matched.unmatched} ACKs without a captured REQUEST"
        )

    def daemon_lines(self, address: int) -> list[str]:
        """The daemon's log lines about `address`, for a failure report."""
        assert self.daemon is not None
        text = self.daemon.log_file.read_text(errors="replace")
        return [line for line in text.splitlines() if f"ip={format_ip(address)} " in line]


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
