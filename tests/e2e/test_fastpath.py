"""The XDP fast path end to end: real clients renewing against the program brushtaild
attaches to the server end of the link, with the daemon running, killed and restarting.

Each test attaches the pass program to the client end (XDP_TX on a veth is delivered only
if the peer runs XDP too) and pins its maps under its own directory, removed at the end
whatever happens. Which path answered is read from the counters: the kernel's
(`dhcp_fastpath_requests_total`, pinned, so they survive restarts) against the slow
path's (`dhcp_slowpath_requests_total`, per process).

A note on udhcpc: its SIGUSR1 renewal is sent from a throwaway socket and only then does
udhcpc open the socket it listens on. The kernel's ACK comes back in microseconds, before
that, and is refused (UDP port unreachable); udhcpc rebinds by broadcast a second later
(-T 1) and takes that ACK, also the kernel's. So a udhcpc renewal is usually two kernel
ACKs, and the tests count at least one.
"""

import contextlib
import ipaddress
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from tests.e2e.clients import DhclientProcess, Events, UdhcpcProcess, run_perfdhcp
from tests.e2e.daemon import PYTHON, Brushtaild, sweep_stale_pins
from tests.e2e.netns import SERVER_IF, Link
from tests.e2e.xdp_pass import attach_client_pass

T = TypeVar("T")

# Compiling the program takes seconds, more on a busy machine.
START_TIMEOUT = 60.0
FAST_ACK = 'dhcp_fastpath_requests_total{result="ack"}'
FAST_OFFER = 'dhcp_fastpath_requests_total{result="offer"}'
FAST_MISS = 'dhcp_fastpath_requests_total{result="miss"}'
FAST_MESSAGE = 'dhcp_fastpath_requests_total{result="message"}'
SLOW_ACK = 'dhcp_slowpath_requests_total{result="ack"}'
SLOW_OFFER = 'dhcp_slowpath_requests_total{result="offer"}'
SLOW_NAK = 'dhcp_slowpath_requests_total{result="nak"}'
ENTRIES = "dhcp_cache_entries"
RELAYS = "dhcp_fastpath_relays"
ATTACHED = re.compile(
    r"fast path attached to \S+ in (native|generic) mode: (\d+) entries.*"
    r" compiled and loaded in ([\d.]+)s"
)


def wait_until(what: str, check: Callable[[], T], timeout: float = 15.0) -> T:
    """Polls `check` until it returns something true, and returns that; fails after
    `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {what} within {timeout:.0f}s (last: {value!r})")
        time.sleep(0.1)


@contextlib.contextmanager
def fast_daemon(link: Link, workdir: Path, pool_extra: str = "") -> Iterator[Brushtaild]:
    """A daemon (not started) with the fast path on; killed and its pins removed on exit."""
    sweep_stale_pins()
    attach_client_pass(link)
    daemon = Brushtaild(link, workdir, fastpath=True, pool_extra=pool_extra)
    try:
        yield daemon
    finally:
        daemon.kill()
        daemon.remove_pins()


def _lease_db(state_dir: Path, mode: str = "ro") -> sqlite3.Connection:
    return sqlite3.connect(f"file:{state_dir / 'leases.sqlite3'}?mode={mode}", uri=True)


def stored_expiry(state_dir: Path, address: str) -> float:
    with contextlib.closing(_lease_db(state_dir)) as db:
        row = db.execute(
            "SELECT expires FROM lease WHERE address = ?", (int(ipaddress.IPv4Address(address)),)
        ).fetchone()
    assert row is not None, f"{address} is not in the lease store"
    return float(row[0])


def fast_acks(daemon: Brushtaild, address: str) -> list[str]:
    """This run's log lines for renewals the kernel answered (recorded by the daemon)."""
    return [
        line for line in daemon.lines("ack") if f"ip={address} " in line and "path=fast" in line
    ]


def scrape(daemon: Brushtaild) -> defaultdict[str, float]:
    """The daemon's samples; a labelled counter never incremented in this process is not
    exposed yet, and reads 0."""
    return defaultdict(float, daemon.samples())


def entries(daemon: Brushtaild) -> float:
    return scrape(daemon)[ENTRIES]


def attached_entries(daemon: Brushtaild) -> int:
    match = ATTACHED.search(daemon.log())
    assert match is not None, daemon.log()
    return int(match.group(2))


def load_seconds(daemon: Brushtaild) -> float:
    """How long this run took to compile and load the program."""
    match = ATTACHED.search(daemon.log())
    assert match is not None, daemon.log()
    return float(match.group(3))


def udhcpc_bound(
    link: Link, workdir: Path, request: Sequence[str] = ()
) -> tuple[UdhcpcProcess, str]:
    client = UdhcpcProcess(link, workdir, discovers=10, request=request).start()
    bound = client.wait_bound(15)
    assert bound.reasons[-1] == "bound" and bound.address is not None, bound.log
    return client, bound.address


@contextlib.contextmanager
def fast_client(link: Link, workdir: Path) -> Iterator[tuple[Brushtaild, UdhcpcProcess, str]]:
    """A started fast-path daemon, and a udhcpc bound by it whose lease has its entry."""
    with fast_daemon(link, workdir) as daemon:
        daemon.start(START_TIMEOUT)
        client, address = udhcpc_bound(link, workdir / "udhcpc")
        with client:
            wait_until("lease entry", lambda: entries(daemon) == 1)
            yield daemon, client, address


def dhclient_bound(client: DhclientProcess, daemon: Brushtaild) -> str:
    """The address dhclient bound from the slow path, once its kernel entry is in."""
    bound = client.wait_bound(15)
    assert bound.reasons[-1] == "BOUND" and bound.address is not None, bound.log
    wait_until("lease entry", lambda: entries(daemon) == 1)
    return bound.address


def renew(client: UdhcpcProcess, address: str) -> None:
    renewed = client.renew(10)
    assert renewed.reasons[-1] == "renew" and renewed.address == address, renewed.log


def options_from_both_paths(
    daemon: Brushtaild, link: Link, workdir: Path, request: Sequence[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """What udhcpc asking for `request` was given by the started `daemon`'s slow path
    (bound), then by the kernel (its renewal, checked to be a fast-path ACK)."""
    client, address = udhcpc_bound(link, workdir, request=request)
    with client:
        slow = client.received()
        wait_until("lease entry", lambda: entries(daemon) == 1)
        before = scrape(daemon)
        renew(client, address)
        wait_until("path=fast ack line", lambda: fast_acks(daemon, address))
        fast = client.received()
    assert scrape(daemon)[FAST_ACK] >= before[FAST_ACK] + 1
    return slow, fast


def restart_on_lease_file(client: DhclientProcess, timeout: float = 15.0) -> Events:
    """Starts dhclient again on its lease file (it is not running): an INIT-REBOOT."""
    seen = len(client.events().events)
    client.start()
    return client.wait_for({"REBOOT", "BOUND", "FAIL", "NAK"}, timeout, after=seen)


def test_udhcpc_renewals_are_answered_in_the_kernel(link: Link, tmp_path: Path) -> None:
    with fast_daemon(link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        assert attached_entries(daemon) == 0
        client, address = udhcpc_bound(link, tmp_path / "udhcpc")
        with client:
            # The first exchange is the slow path's; once on disk, the lease gets an entry.
            wait_until("lease entry", lambda: entries(daemon) == 1)
            before = scrape(daemon)
            expires = stored_expiry(daemon.state_dir, address)
            for _ in range(2):
                renew(client, address)
            # The daemon records what the kernel answered within its next wake-up.
            wait_until("path=fast ack lines", lambda: len(fast_acks(daemon, address)) >= 2)
            wait_until("later expiry", lambda: stored_expiry(daemon.state_dir, address) > expires)
            after = scrape(daemon)
        assert after[FAST_ACK] >= before[FAST_ACK] + 2
        for slow in (SLOW_ACK, SLOW_OFFER):
            assert after[slow] == before[slow], slow
        assert after["dhcp_cache_hit_ratio"] > 0


def test_a_relays_renewals_are_answered_in_the_kernel_at_its_next_hop(
    relay_link: Link, tmp_path: Path
) -> None:
    """perfdhcp plays a relay on the link: the slow path answers its first exchanges, the
    daemon gives the program the relay's next hop (from the neighbour table), and the
    kernel answers the renewals perfdhcp then sends, which reach the relay."""
    with fast_daemon(relay_link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        # Long enough that most renewals come after the next hop is known: the relay's
        # entry waits for the slow path's first answers and a resolution (retried every
        # second), which a loaded machine delays (at 6 s, a CI run saw 9 kernel ACKs).
        result = run_perfdhcp(relay_link, rate=20, duration=10, clients=20, extra_args=["-f", "10"])
        after = scrape(daemon)
    assert after[RELAYS] == 1
    assert after['dhcp_fastpath_requests_total{result="relay"}'] >= 1  # before it was known
    # perfdhcp counts its renewals with the REQUESTs: none of them went unanswered.
    requests = result.exchanges["REQUEST-ACK"]
    assert requests.drops == 0 and after[FAST_ACK] >= 10, result.output


def test_dhclient_reboot_and_discover_are_answered_in_the_kernel(
    link: Link, tmp_path: Path
) -> None:
    with fast_daemon(link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        client = DhclientProcess(link, tmp_path / "dhclient")
        with client.start():
            address = dhclient_bound(client, daemon)
            before = scrape(daemon)
            expires = stored_expiry(daemon.state_dir, address)
            # INIT-REBOOT: a broadcast REQUEST for the address in its lease file.
            rebooted = client.reboot(15)
            assert rebooted.reasons[-1] == "REBOOT" and rebooted.address == address
            client.stop()
        # A bound client that lost its lease file starts over with a DISCOVER: the kernel
        # offers it the address it holds, then acknowledges the REQUEST for it.
        fresh = DhclientProcess(link, tmp_path / "fresh")
        with fresh.start():
            got = fresh.wait_bound(15)
            assert got.reasons[-1] == "BOUND" and got.address == address, got.log
        wait_until("path=fast ack lines", lambda: len(fast_acks(daemon, address)) >= 2)
        wait_until("later expiry", lambda: stored_expiry(daemon.state_dir, address) > expires)
        after = scrape(daemon)
        assert after[FAST_ACK] >= before[FAST_ACK] + 2
        assert after[FAST_OFFER] >= before[FAST_OFFER] + 1
        for slow in (SLOW_ACK, SLOW_OFFER):
            assert after[slow] == before[slow], slow


def test_renewals_are_answered_while_the_daemon_is_dead_and_recorded_after_restart(
    link: Link, tmp_path: Path
) -> None:
    with fast_client(link, tmp_path) as (daemon, client, address):
        expires = stored_expiry(daemon.state_dir, address)
        daemon.kill()
        # Nothing in userspace answers now: the program does, and queues each renewal.
        renewed = 2
        for _ in range(renewed):
            renew(client, address)
        assert stored_expiry(daemon.state_dir, address) == expires
        # Renew throughout the restart: while the new daemon compiles its program, the
        # old one answers; then the new one replaces it.
        daemon.spawn()
        before_attach = 0
        deadline = time.monotonic() + START_TIMEOUT
        while "fast path attached" not in daemon.log():
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
            assert time.monotonic() < deadline, daemon.log()
            renew(client, address)
            renewed += 1
            if "fast path attached" not in daemon.log():
                before_attach += 1
        daemon.wait_started(START_TIMEOUT)
        assert before_attach >= 1, "no renewal fell in the compile window"
        # It adopted the pinned maps: the lease's entry was there, none was stale.
        assert attached_entries(daemon) == 1
        renew(client, address)
        renewed += 1
        # Every renewal is recorded, those queued while no daemon ran included.
        wait_until("path=fast ack lines", lambda: len(fast_acks(daemon, address)) >= renewed)
        wait_until("later expiry", lambda: stored_expiry(daemon.state_dir, address) > expires)
        samples = scrape(daemon)
        # This daemon's slow path acknowledged nothing; the pinned counters kept counting.
        assert samples[SLOW_ACK] == 0
        assert samples[FAST_ACK] >= renewed
        assert samples[ENTRIES] == 1


def test_release_and_expiry_take_the_lease_out_of_the_kernel(link: Link, tmp_path: Path) -> None:
    with fast_daemon(link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        compile_seconds = load_seconds(daemon)
        client = DhclientProcess(link, tmp_path / "dhclient")
        with client.start():
            address = dhclient_bound(client, daemon)
            before = scrape(daemon)
            # RELEASE is the slow path's by design; it takes the entry out.
            assert client.release().reasons[-1] == "RELEASE"
            wait_until("entry removed", lambda: entries(daemon) == 0)
            released = daemon.lines("release")
            assert any(f"ip={address} " in line and "path=slow" in line for line in released)
            middle = scrape(daemon)
            assert middle[FAST_MESSAGE] >= before[FAST_MESSAGE] + 1
            # Back on its lease file, the client is the slow path's to decide.
            again = restart_on_lease_file(client)
            assert again.reasons[-1] in ("REBOOT", "BOUND"), again.log
            assert again.address == address
            wait_until("lease entry again", lambda: entries(daemon) == 1)
            after = scrape(daemon)
            assert after[FAST_ACK] == middle[FAST_ACK]
            assert after[FAST_OFFER] == middle[FAST_OFFER]
            assert after[FAST_MISS] > middle[FAST_MISS]
            assert after[SLOW_ACK] > middle[SLOW_ACK]
            client.kill()  # no RELEASE: the lease stays until it expires
        # A lease expiring soon, as if bound almost an hour ago. The store is only written
        # while no daemon runs; the restart loads it, compiles (as long as the first start
        # did, give or take the machine's load) and only then fills the map from it.
        assert daemon.stop() == 0
        expires = time.time() + 3 * compile_seconds + 5
        with contextlib.closing(_lease_db(daemon.state_dir, "rw")) as db, db:
            db.execute(
                "UPDATE lease SET expires = ? WHERE address = ?",
                (expires, int(ipaddress.IPv4Address(address))),
            )
        daemon.start(START_TIMEOUT)
        assert attached_entries(daemon) == 1
        wait_until(
            "expire line",
            lambda: any(f"ip={address} " in line for line in daemon.lines("expire")),
            timeout=expires - time.time() + 15,
        )
        wait_until("entry removed", lambda: entries(daemon) == 0)
        before = scrape(daemon)
        with client:
            again = restart_on_lease_file(client)
            assert again.reasons[-1] in ("REBOOT", "BOUND", "NAK", "FAIL"), again.log
            after = scrape(daemon)
        assert after[FAST_ACK] == before[FAST_ACK] and after[FAST_OFFER] == before[FAST_OFFER]
        slow = (SLOW_ACK, SLOW_NAK, SLOW_OFFER)
        assert sum(after[k] for k in slow) > sum(before[k] for k in slow)


def test_a_pin_dir_outside_bpffs_is_refused(link: Link, tmp_path: Path) -> None:
    daemon = Brushtaild(link, tmp_path, fastpath=True)
    config = daemon.config_file.read_text()
    for bad in ("/tmp/brushtail-pins", "/sys/fs/bpf/../brushtail"):
        daemon.config_file.write_text(config.replace(str(daemon.pin_dir), bad))
        check = link.run_in(
            link.server_ns,
            [PYTHON, "-m", "brushtaild.cli", "check-config", str(daemon.config_file)],
            check=False,
        )
        assert check.returncode == 1, check.stdout + check.stderr
        assert f"fastpath.pin_dir: '{bad}' is not a directory under /sys/fs/bpf" in check.stderr
        # The daemon refuses it the same way, before touching the interface.
        run = link.run_in(
            link.server_ns,
            [PYTHON, "-m", "brushtaild", "--config", str(daemon.config_file)],
            check=False,
        )
        assert run.returncode == 78 and "fastpath.pin_dir" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    assert _xdp_program(link) is None
    assert not daemon.pin_dir.exists()


def test_fastpath_disabled_runs_the_slow_path_alone(link: Link, tmp_path: Path) -> None:
    attach_client_pass(link)
    with Brushtaild(link, tmp_path, fastpath=False).start() as daemon:
        assert "fast path" not in daemon.log()
        client, address = udhcpc_bound(link, tmp_path / "udhcpc")
        with client:
            renew(client, address)
        samples = scrape(daemon)
        assert _xdp_program(link) is None and not daemon.pin_dir.exists()
        assert not [name for name in samples if name.startswith(("dhcp_fastpath", "dhcp_cache"))]
        assert samples[SLOW_ACK] == 2
        assert all("path=slow" in line for line in daemon.lines("ack"))


def _xdp_program(link: Link) -> str | None:
    """The name of the XDP program on the server end, if any."""
    out = link.run_in(link.server_ns, ["ip", "-d", "link", "show", "dev", SERVER_IF]).stdout
    match = re.search(r"prog/xdp id \d+ name (\S+)", out)
    return match.group(1) if match else None
