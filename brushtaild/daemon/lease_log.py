"""The lease log: one line per lease event (who, what address, which path).

Under load the slow path produces tens of thousands of events a second, and a logging call
per event (record, handler lock, formatter, one write(2) each) cost a fifth of the daemon's
time. Events are therefore formatted straight to text and written once per batch of
requests; journald, when stderr goes to it, still stores each line as its own entry.
Under journald `journal.JournalLeaseLog` replaces this with structured entries that
`journalctl` can filter by subscriber; both keep the `LeaseSink` interface.

OFFERs and INFORM answers are logged at DEBUG, every other event at INFO: they change no
lease, and a DISCOVER flood (random MACs, one OFFER each) would otherwise turn into a flood
of log writes competing with the lease store for the disk. So are leases replicated from
peers: every site logs its own ACKs at INFO, and logging each other site's again would
multiply the log by the number of sites. The history of who held which address is in the
ACK, RELEASE, DECLINE, EXPIRE and REVOKE lines of the site that made them (and NAKs say who
was refused).
"""

import contextlib
import logging
from collections.abc import Iterable
from typing import Protocol, TextIO

from brushtaild.dhcp.options import format_ip, format_mac
from brushtaild.engine.decisions import LeaseEvent, LeaseEventKind

_DEBUG_EVENTS = frozenset({LeaseEventKind.OFFER, LeaseEventKind.INFORM, LeaseEventKind.REPLICATED})


def event_level(event: LeaseEvent) -> int:
    """The logging level of a lease event."""
    return logging.DEBUG if event.kind in _DEBUG_EVENTS else logging.INFO


def format_event(event: LeaseEvent, path: str) -> str:
    text = (
        f"{event.kind.value} client={event.client_id.hex()} mac={format_mac(event.hwaddr)} "
        f"ip={format_ip(event.address)} pool={event.pool or '-'} path={path}"
    )
    if event.vlans:
        text += f" vlan={event.vlan_text}"
    return f"{text} detail={event.detail!r}" if event.detail else text


def format_line(event: LeaseEvent, path: str) -> str:
    """The event as a line of the daemon's text log, level first like its other records."""
    return f"{logging.getLevelName(event_level(event))} {format_event(event, path)}\n"


class LeaseSink(Protocol):
    """Where the daemon's lease events go: collected per batch of requests, written by
    `flush()` once the batch's replies are sent, so logging never delays an ACK."""

    level: int  # the configured log level: events below it are not written

    def add(self, events: Iterable[LeaseEvent], path: str) -> None: ...

    def flush(self) -> None: ...


class LeaseLog:
    """Lease events as text lines on a stream, one write per batch."""

    def __init__(self, stream: TextIO, level: int = logging.INFO) -> None:
        self._stream = stream
        self.level = level
        self._lines: list[str] = []

    def add(self, events: Iterable[LeaseEvent], path: str) -> None:
        level = self.level
        self._lines.extend(format_line(e, path) for e in events if event_level(e) >= level)

    def flush(self) -> None:
        if self._lines:
            # A log stream that is gone (journald restarting, EPIPE) loses these lines; it
            # must not stop the daemon: the leases themselves are on disk.
            with contextlib.suppress(OSError):
                self._stream.write("".join(self._lines))
                self._stream.flush()
            self._lines.clear()
