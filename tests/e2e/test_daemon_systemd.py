"""brushtaild under a stand-in service manager: the sd_notify messages systemd would get.

The test owns the $NOTIFY_SOCKET socket and sets $WATCHDOG_USEC, as systemd does for a
Type=notify unit with WatchdogSec=; real systemd is exercised by the Molecule scenario.
"""

import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.clients import UdhcpcProcess
from tests.e2e.daemon import Brushtaild
from tests.e2e.netns import Link

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s
STATUS = re.compile(
    r"STATUS=serving sub0: (\d+) leases \(\d+% of (\d+)\), slow path \d+ req/s, "
    r"fast path: disabled, peers: none configured$"
)


class Manager:
    """The notify socket's receiving end, keeping every message it has read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, match: Callable[[str], bool], timeout: float = 10.0) -> str:
        """Read until a message matches; return it."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(message)
            if match(message):
                return message
        raise AssertionError(f"no matching message; got {self.messages}")


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    created = Manager(tmp_path / "notify")
    with created.sock:
        yield created


def test_ready_watchdog_status_reload_stop(link: Link, tmp_path: Path, manager: Manager) -> None:
    env = {"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    with Brushtaild(link, tmp_path, env=env).start() as daemon:
        ready = manager.wait_for(lambda m: "READY=1" in m)
        # Start-up is complete (leases loaded, socket open) before systemd hears READY=1.
        assert "brushtaild 0.1.0 started" in daemon.log()
        assert manager.messages == [ready], "READY=1 must be the first message"
        lines = ready.split("\n")
        assert lines[0] == "READY=1"
        status = STATUS.match(lines[1])
        assert status is not None, ready
        assert status.group(1) == "0" and int(status.group(2)) > 60000

        # The main loop pings at half WATCHDOG_USEC, idle or not.
        started = time.monotonic()
        for _ in range(4):
            manager.wait_for(lambda m: m == "WATCHDOG=1", timeout=WATCHDOG_USEC / 1e6)
        assert time.monotonic() - started < 3.0

        client = UdhcpcProcess(link, tmp_path / "udhcpc", discovers=10)
        with client.start():
            assert client.wait_bound(15).reasons[-1] == "bound"
            # The periodic STATUS line catches up with the new lease.
            refreshed = manager.wait_for(
                lambda m: (s := STATUS.match(m)) is not None and s.group(1) == "1", timeout=12
            )
            assert refreshed.startswith("STATUS=")

            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            reloading = manager.wait_for(lambda m: "RELOADING=1" in m)
            assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", reloading)
            after = manager.wait_for(lambda m: "READY=1" in m)
            assert re.fullmatch(r"READY=1\nSTATUS=serving sub0: 1 leases .*", after)
            client.release(10)

        assert daemon.stop() == 0
        manager.wait_for(lambda m: m == "STOPPING=1", timeout=2)
        assert "brushtaild stopped" in daemon.log()
        # Not under journald: the lease log keeps its text lines on stderr.
        assert daemon.lines("ack")


def test_watchdog_meant_for_another_process(link: Link, tmp_path: Path, manager: Manager) -> None:
    # $WATCHDOG_PID names another process (we inherited its environment): READY and STATUS
    # still go out, WATCHDOG=1 never does.
    env = {
        "NOTIFY_SOCKET": str(manager.path),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "WATCHDOG_PID": "1",
    }
    with Brushtaild(link, tmp_path, env=env).start() as daemon:
        manager.wait_for(lambda m: m.startswith("READY=1\nSTATUS=serving sub0: 0 leases"))
        time.sleep(2 * WATCHDOG_USEC / 1e6)
        assert daemon.stop() == 0
        manager.wait_for(lambda m: m == "STOPPING=1", timeout=2)
    assert "WATCHDOG=1" not in manager.messages
