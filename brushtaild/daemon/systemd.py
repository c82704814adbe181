"""Telling systemd how the daemon is doing: sd_notify(3) readiness, status and watchdog.

The protocol is one datagram of newline-separated KEY=VALUE assignments to the AF_UNIX
socket named by $NOTIFY_SOCKET ('@' for the abstract namespace). It is written here rather
than taken from python3-systemd's `daemon.notify` because the daemon pings from its packet
loop: one socket kept open costs a single sendto(2) per message, where libsystemd re-reads
the environment and opens a fresh socket each call, and a send failure must never raise
into the loop. Outside systemd (no $NOTIFY_SOCKET) every call is a no-op.

Nothing here reads a clock: the daemon passes the time in, so clock reads stay in clock.py
and the watchdog schedule is testable with plain numbers.
"""

import os
import socket
from collections.abc import Mapping

# Lowest ping interval we accept, whatever $WATCHDOG_USEC says: a misconfigured
# WatchdogSec=1ms would otherwise turn the select timeout into a busy loop.
MIN_PING_INTERVAL = 0.01


def _address(name: str) -> str | bytes:
    # An abstract socket's name starts with a NUL byte, which an environment variable cannot
    # carry, so systemd writes it as '@'.
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


class Notifier:
    """sd_notify messages to the service manager; silent when there is none."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        name = env.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        self._address: str | bytes = ""
        if name.startswith(("/", "@")):
            self._address = _address(name)
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # The manager drains its socket quickly; if it ever stalls, a lost STATUS or
            # WATCHDOG is better than a packet loop blocked on it.
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """One datagram; False if there is no manager or it could not be reached."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode(), self._address)
        except OSError:
            # The manager restarted or is momentarily full: the next ping or status retries,
            # and systemd itself enforces what a missing READY or WATCHDOG means.
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def reloading(self, monotonic_usec: int) -> bool:
        """Before a reload; `ready()` ends it. MONOTONIC_USEC (CLOCK_MONOTONIC) lets systemd
        253+ tell this reload from an earlier one; older managers ignore it."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def ping(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """When the main loop owes systemd a WATCHDOG=1: every half of $WATCHDOG_USEC, as
    sd_watchdog_enabled(3) recommends, so one late loop turn does not get us killed."""

    def __init__(self, env: Mapping[str, str] = os.environ, pid: int | None = None) -> None:
        self.interval: float | None = None  # seconds between pings; None: no watchdog
        self._due = 0.0
        me = os.getpid() if pid is None else pid
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
            # $WATCHDOG_PID names the process systemd watches; a child that inherited the
            # environment must not ping on its parent's behalf.
            owner = int(env.get("WATCHDOG_PID", str(me)))
        except ValueError:
            return
        if usec > 0 and owner == me:
            self.interval = max(usec / 2_000_000, MIN_PING_INTERVAL)

    def start(self, now: float) -> None:
        """Ping at the first loop turn after `now` (systemd arms the watchdog at READY=1)."""
        self._due = now

    def due(self, now: float) -> bool:
        return self.interval is not None and now >= self._due

    def pinged(self, now: float) -> None:
        if self.interval is not None:
            self._due = now + self.interval

    def wait(self, now: float) -> float | None:
        """Longest the loop may sleep before the next ping; None: no limit from us."""
        if self.interval is None:
            return None
        return max(self._due - now, 0.0)
