"""sd_notify messages as the service manager receives them, on a real datagram socket."""

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brushtaild.daemon.systemd import MIN_PING_INTERVAL, Notifier, Watchdog


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A socket standing in for systemd's notify socket, and its $NOTIFY_SOCKET value."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield sock, str(path)


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_each_message_is_one_datagram_with_exact_assignments(
    manager: tuple[socket.socket, str],
) -> None:
    sock, name = manager
    notifier = Notifier({"NOTIFY_SOCKET": name})
    assert notifier.enabled
    assert notifier.ready("serving sub0: 0 leases")
    assert received(sock) == "READY=1\nSTATUS=serving sub0: 0 leases"
    assert notifier.status("serving sub0: 3 leases")
    assert received(sock) == "STATUS=serving sub0: 3 leases"
    assert notifier.ping()
    assert received(sock) == "WATCHDOG=1"
    assert notifier.reloading(123456789)
    assert received(sock) == "RELOADING=1\nMONOTONIC_USEC=123456789"
    assert notifier.stopping()
    assert received(sock) == "STOPPING=1"
    notifier.close()
    assert not notifier.ping()


def test_abstract_namespace_socket() -> None:
    name = f"brushtail-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ping()
        assert received(sock) == "WATCHDOG=1"


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative"}])
def test_no_op_outside_systemd(env: dict[str, str]) -> None:
    notifier = Notifier(env)
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.ping()
    assert not notifier.stopping()


def test_a_vanished_manager_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert not notifier.ping()


def test_watchdog_pings_at_half_the_interval() -> None:
    watchdog = Watchdog({"WATCHDOG_USEC": "10000000"}, pid=42)
    assert watchdog.interval == 5.0
    watchdog.start(100.0)
    assert watchdog.due(100.0)
    watchdog.pinged(100.0)
    assert not watchdog.due(104.9)
    assert watchdog.wait(103.0) == pytest.approx(2.0)
    assert watchdog.due(105.0)
    # Late (a long batch): the loop must not sleep, and pings as soon as it can.
    assert watchdog.wait(106.0) == 0.0


def test_watchdog_pid_must_be_ours() -> None:
    env = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}
    assert Watchdog(env, pid=42).interval == 5.0
    # The variables were inherited from the process systemd watches: not ours to ping.
    assert Watchdog(env, pid=43).interval is None
    assert Watchdog({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}).interval


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "1", "WATCHDOG_PID": "x"},
    ],
)
def test_no_watchdog(env: dict[str, str]) -> None:
    watchdog = Watchdog(env, pid=42)
    assert watchdog.interval is None
    watchdog.start(0.0)
    assert not watchdog.due(1e9)
    assert watchdog.wait(0.0) is None


def test_tiny_watchdog_interval_is_floored() -> None:
    assert Watchdog({"WATCHDOG_USEC": "1"}, pid=42).interval == MIN_PING_INTERVAL


def test_reload_timestamp_clock_is_clock_monotonic() -> None:
    # main.py sends clock.ticks() (perf_counter) as MONOTONIC_USEC, which systemd compares
    # with its own CLOCK_MONOTONIC.
    assert time.get_clock_info("perf_counter").implementation == "clock_gettime(CLOCK_MONOTONIC)"
