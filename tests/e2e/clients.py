"""Real DHCP clients in a Link's client namespace, and what they report.

dhclient (isc-dhcp-client) and udhcpc (busybox) run with our own scripts
(dhclient-script.sh, udhcpc-script.sh next to this file), which only set the address on
the interface and append one "reason ip" line to an events file (and leave the variables
the client gave them, its received options, beside it: `received()`); Debian's
/sbin/dhclient-script is never run, because it would rewrite the host's /etc/resolv.conf.
Every dhclient invocation, including the `-r`/`-x` ones that stop a running client and run
the script themselves, goes through `DhclientProcess._argv` so it always carries `-sf`.

Renewal: ISC dhclient catches no signal at all (SIGHUP or SIGUSR1 simply kill it), so it
renews only at T1; `DhclientProcess.reboot()` restarts it on its lease file instead, which
makes it do an INIT-REBOOT (broadcast REQUEST for the old address, event REBOOT). udhcpc
renews on SIGUSR1 (unicast REQUEST to the server, event "renew") and releases on SIGUSR2.

perfdhcp (kea-admin) plays a relay: it binds the client end's address, port 67, puts that
address in giaddr, and expects the replies there; the Link needs `client_ip`.
"""

import contextlib
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.e2e.netns import CLIENT_IF, SERVER_IP, Link, terminate

HERE = Path(__file__).parent
DHCLIENT_SCRIPT = HERE / "dhclient-script.sh"
UDHCPC_SCRIPT = HERE / "udhcpc-script.sh"
EVENTS_ENV = "BT_EVENTS"
_POLL = 0.05

# Reasons after which the interface has an address, and after which it has none.
_BINDING = frozenset({"BOUND", "RENEW", "REBIND", "REBOOT", "bound", "renew"})
_UNBINDING = frozenset({"RELEASE", "EXPIRE", "STOP", "deconfig"})


@dataclass(frozen=True)
class Event:
    reason: str
    ip: str | None


@dataclass
class Events:
    """What a client reported through its script, plus how it ended, for assertions."""

    events: list[Event]
    returncode: int | None = None
    log: str = ""

    @property
    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    @property
    def address(self) -> str | None:
        """The address the client holds according to its last binding or unbinding event."""
        for event in reversed(self.events):
            if event.reason in _BINDING:
                return event.ip
            if event.reason in _UNBINDING:
                return None
        return None


def read_events(path: Path) -> list[Event]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        reason, _, ip = line.partition(" ")
        events.append(Event(reason, ip if ip not in ("", "-") else None))
    return events


class _ClientProcess:
    """A DHCP client running in the foreground in the client namespace, with its files."""

    name = "client"

    def __init__(self, link: Link, workdir: Path, ifname: str) -> None:
        self.link = link
        self.ifname = ifname
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.events_file = workdir / f"{self.name}.events"
        self.log_file = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        with self.log_file.open("ab") as log:
            self.proc = self.link.popen_in(
                self.link.client_ns, argv, stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def events(self) -> Events:
        returncode = self.proc.poll() if self.proc is not None else None
        log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return Events(read_events(self.events_file), returncode, log)

    def received(self) -> dict[str, str]:
        """The variables the client gave its script at its last binding event: the lease's
        options under the client's own names (dhclient: new_ntp_servers ..., udhcpc:
        ntpsrv ...)."""
        path = self.events_file.with_name(self.events_file.name + ".env")
        lines = path.read_text().splitlines() if path.exists() else []
        return dict(line.partition("=")[::2] for line in lines if "=" in line)

    def wait_for(self, reasons: set[str], timeout: float, after: int = 0) -> Events:
        """Wait until an event in `reasons` is reported past index `after`, or the client
        exits, or `timeout` seconds pass; return everything reported so far."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.events()
            if any(e.reason in reasons for e in current.events[after:]):
                return current
            if current.returncode is not None or time.monotonic() >= deadline:
                return current
            time.sleep(_POLL)

    def kill(self) -> None:
        """Stop without running the script: the address, if any, stays on the interface."""
        if self.proc is not None:
            terminate(self.proc)

    def wait_exit(self, timeout: float) -> Events:
        """Wait up to `timeout` seconds for the client to exit by itself."""
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        return self.events()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


class DhclientProcess(_ClientProcess):
    """ISC dhclient in the foreground (`-d`) with its own config, lease, pid and events."""

    name = "dhclient"

    def __init__(
        self,
        link: Link,
        workdir: Path,
        *,
        timeout: float = 10.0,
        once: bool = False,
        ifname: str = CLIENT_IF,
        extra_conf: str = "",
    ) -> None:
        super().__init__(link, workdir, ifname)
        self.once = once
        self.conf_file = workdir / "dhclient.conf"
        self.lease_file = workdir / "dhclient.leases"
        self.pid_file = workdir / "dhclient.pid"
        # Our own config, not /etc/dhcp/dhclient.conf: `timeout` bounds the wait for a lease
        # (after which `-1` exits 2), the short intervals keep retries within a test's time.
        self.conf_file.write_text(
            f"timeout {max(1, math.ceil(timeout))};\n"
            "retry 1;\n"
            "initial-interval 1;\n"
            "backoff-cutoff 2;\n"
            "request subnet-mask, broadcast-address, routers, domain-name-servers,"
            " interface-mtu, dhcp-lease-time, dhcp-renewal-time, dhcp-rebinding-time;\n"
            f"{extra_conf}"
        )

    def _argv(self, *flags: str) -> list[str]:
        return [
            "dhclient", "-4", *flags,
            "-cf", str(self.conf_file), "-lf", str(self.lease_file),
            "-pf", str(self.pid_file), "-sf", str(DHCLIENT_SCRIPT),
            "-e", f"{EVENTS_ENV}={self.events_file}",
            self.ifname,
        ]  # fmt: skip

    def start(self) -> Self:
        self._spawn(self._argv("-d", "-v", *(["-1"] if self.once else [])))
        return self

    def wait_bound(self, timeout: float) -> Events:
        return self.wait_for({"BOUND", "REBOOT", "FAIL"}, timeout)

    def _control(self, flag: str, timeout: float) -> None:
        """Run `dhclient -r` or `-x`: it signals the running client, then runs the script."""
        self.link.run_in(self.link.client_ns, self._argv(flag), timeout=timeout)
        if self.proc is not None:
            self.proc.wait(timeout=timeout)

    def release(self, timeout: float = 10.0) -> Events:
        """Send DHCPRELEASE and stop; the script sees RELEASE and removes the address."""
        self._control("-r", timeout)
        return self.events()

    def stop(self, timeout: float = 10.0) -> Events:
        """Stop without releasing; the script sees STOP and removes the address."""
        self._control("-x", timeout)
        return self.events()

    def reboot(self, timeout: float) -> Events:
        """Restart on the same lease file: INIT-REBOOT, reported as REBOOT (or FAIL).

        The nearest thing to a forced renewal that dhclient offers (see module docstring).
        """
        self.stop(timeout)
        seen = len(self.events().events)
        self.start()
        return self.wait_for({"REBOOT", "BOUND", "FAIL"}, timeout, after=seen)


class UdhcpcProcess(_ClientProcess):
    """busybox udhcpc in the foreground (`-f`) with its own script and events."""

    name = "udhcpc"

    def __init__(
        self,
        link: Link,
        workdir: Path,
        *,
        discovers: int = 3,
        quit_when_bound: bool = False,
        ifname: str = CLIENT_IF,
        request: Sequence[str] = (),
    ) -> None:
        """`request`: options asked for besides udhcpc's defaults (`-O`: a name such as
        ntpsrv, or a code)."""
        super().__init__(link, workdir, ifname)
        self.discovers = discovers
        self.quit_when_bound = quit_when_bound
        self.request = request

    def start(self) -> Self:
        argv = [
            "udhcpc", "-f", "-i", self.ifname, "-s", str(UDHCPC_SCRIPT),
            # One DISCOVER a second, `discovers` times, then exit (-n) rather than sleep.
            "-t", str(self.discovers), "-T", "1", "-A", "1", "-n",
        ]  # fmt: skip
        if self.quit_when_bound:
            argv.append("-q")
        for option in self.request:
            argv += ["-O", option]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        env[EVENTS_ENV] = str(self.events_file)
        self._spawn(argv, env)
        return self

    def wait_bound(self, timeout: float) -> Events:
        return self.wait_for({"bound", "leasefail"}, timeout)

    def _signal(self, sig: signal.Signals, reasons: set[str], timeout: float) -> Events:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("udhcpc is not running")
        seen = len(self.events().events)
        self.proc.send_signal(sig)
        return self.wait_for(reasons, timeout, after=seen)

    def renew(self, timeout: float) -> Events:
        """SIGUSR1: unicast REQUEST to the server (event "renew"), or DISCOVER if unbound."""
        return self._signal(signal.SIGUSR1, {"renew", "bound", "leasefail"}, timeout)

    def release(self, timeout: float) -> Events:
        """SIGUSR2: DHCPRELEASE, then "deconfig"; udhcpc stays idle until SIGUSR1."""
        return self._signal(signal.SIGUSR2, {"deconfig"}, timeout)


def dhclient_obtain(link: Link, workdir: Path, timeout: float = 10.0) -> Events:
    """One `dhclient -1` attempt: the events up to BOUND, or to its exit (FAIL) on timeout.

    The client is then killed without running its script, so a bound address stays.
    """
    with DhclientProcess(link, workdir, timeout=timeout, once=True).start() as client:
        # dhclient's own `timeout` ends the attempt; the margin covers its start-up.
        events = client.wait_bound(timeout + 5)
        if "BOUND" not in events.reasons:
            # The script reports FAIL just before dhclient exits: a loaded machine can see
            # the event before the exit status.
            events = client.wait_exit(5)
        return events


def udhcpc_obtain(link: Link, workdir: Path, timeout: float = 10.0) -> Events:
    """One udhcpc attempt with about `timeout` one-second DISCOVERs; quits once bound."""
    discovers = max(1, math.ceil(timeout))
    with UdhcpcProcess(link, workdir, discovers=discovers, quit_when_bound=True).start() as client:
        # -q and -n make udhcpc exit either way; the margin covers its start-up.
        return client.wait_exit(timeout + 5)


# --- perfdhcp -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExchangeStats:
    sent: int
    received: int
    drops: int
    orphans: int
    rejected_leases: int
    non_unique_addresses: int
    avg_delay_ms: float | None


@dataclass
class PerfdhcpResult:
    returncode: int
    rate: float | None  # completed exchanges per second
    expected_rate: float | None
    malformed: int
    exchanges: dict[str, ExchangeStats] = field(default_factory=dict)
    output: str = ""


_SECTION = re.compile(r"^\*\*\*Statistics for: (\S+)\*\*\*$")
_COUNTER = re.compile(r"^(sent packets|received packets|drops|orphans|rejected leases"
                      r"|non unique addresses): (\d+)$")  # fmt: skip
_AVG_DELAY = re.compile(r"^avg delay: ([\d.]+) ms$")
_RATE = re.compile(r"^Rate: ([\d.]+) \S+ exchanges/second, expected rate: ([\d.]+)")
_MALFORMED = re.compile(r"^Malformed packets: (\d+)$")


def parse_perfdhcp(output: str, returncode: int = 0) -> PerfdhcpResult:
    """Read perfdhcp's final report (the `***Statistics for: X***` sections)."""
    result = PerfdhcpResult(returncode, None, None, 0, output=output)
    section: str | None = None
    counters: dict[str, dict[str, int]] = {}
    delays: dict[str, float] = {}
    for raw in output.splitlines():
        line = raw.strip()
        if match := _SECTION.match(line):
            section = match.group(1)
            counters[section] = {}
        elif (match := _COUNTER.match(line)) and section is not None:
            counters[section][match.group(1)] = int(match.group(2))
        elif (match := _AVG_DELAY.match(line)) and section is not None:
            delays[section] = float(match.group(1))
        elif match := _RATE.match(line):
            result.rate = float(match.group(1))
            result.expected_rate = float(match.group(2))
        elif match := _MALFORMED.match(line):
            result.malformed = int(match.group(1))
    for name, values in counters.items():
        result.exchanges[name] = ExchangeStats(
            sent=values.get("sent packets", 0),
            received=values.get("received packets", 0),
            drops=values.get("drops", 0),
            orphans=values.get("orphans", 0),
            rejected_leases=values.get("rejected leases", 0),
            non_unique_addresses=values.get("non unique addresses", 0),
            avg_delay_ms=delays.get(name),
        )
    return result


def run_perfdhcp(
    link: Link,
    *,
    rate: int,
    duration: float,
    clients: int,
    exit_wait: float = 1.0,
    server: str = SERVER_IP,
    extra_args: Sequence[str] = (),
) -> PerfdhcpResult:
    """Run perfdhcp as a relay from the client end for `duration` seconds at `rate`
    four-way exchanges a second, spread over `clients` simulated clients.

    `exit_wait` keeps it listening that long after the last send, so answers still in
    flight are not counted as drops. Exit status 3 (some exchanges failed) is a result,
    not an error; 1 and 2 raise.
    """
    if link.client_ip is None:
        raise ValueError("perfdhcp needs a Link with client_ip: it relays from that address")
    argv = [
        "perfdhcp", "-4", "-l", CLIENT_IF,
        "-r", str(rate), "-p", str(math.ceil(duration)), "-R", str(clients),
        "-W", str(int(exit_wait * 1_000_000)), *extra_args, server,
    ]  # fmt: skip
    done = link.run_in(link.client_ns, argv, timeout=duration + exit_wait + 30, check=False)
    output = done.stdout + done.stderr
    if done.returncode not in (0, 3):
        raise RuntimeError(f"perfdhcp exited {done.returncode}:\n{output}")
    return parse_perfdhcp(output, done.returncode)
