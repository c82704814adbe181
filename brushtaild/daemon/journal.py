"""journald: lease events as structured entries, and the daemon's log records.

Under systemd an operator's question is "what happened to this subscriber": with one field
per fact, `journalctl -u brushtaild CLIENT_MAC=aa:bb:cc:dd:ee:ff` answers it from the
journal's index instead of a grep through every line. Entries go over journald's native
protocol (python3-systemd's `sendv`, libsystemd underneath: one datagram per entry on a
socket it keeps open). Away from journald the text lines of `lease_log.LeaseLog` stay.
"""

import io
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TextIO

from systemd.journal import JournalHandler, sendv

from brushtaild.daemon.lease_log import format_event
from brushtaild.dhcp.options import format_ip, format_mac
from brushtaild.engine.decisions import LeaseEvent

SYSLOG_IDENTIFIER = "brushtaild"
# syslog(3) "info": a lease event is routine, like the text line's INFO.
PRIORITY_INFO = 6

# Takes "FIELD=value" strings, as systemd.journal.sendv does; tests inject a recorder.
Sender = Callable[..., object]


def connected(stream: TextIO, env: Mapping[str, str] = os.environ) -> bool:
    """True when `stream` is the journal stream systemd connected us to.

    $JOURNAL_STREAM names it as "device:inode"; comparing with the stream's own fstat keeps
    a redirection (`brushtaild 2>file` under a journald-started shell, or a child that
    inherited the variable) on text output, as systemd.exec(5) recommends.
    """
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def lease_fields(event: LeaseEvent, path: str) -> list[str]:
    """The per-event fields of one journal entry; MESSAGE is the text line's message."""
    fields = [
        f"MESSAGE={format_event(event, path)}",
        f"LEASE_EVENT={event.kind.value}",
        f"CLIENT_ID={event.client_id.hex()}",
        f"CLIENT_MAC={format_mac(event.hwaddr)}",
        f"LEASE_IP={format_ip(event.address)}",
        f"DHCP_PATH={path}",
    ]
    # An event outside any pool (a NAK for a foreign network) has none to match on.
    if event.pool:
        fields.append(f"POOL={event.pool}")
    if event.detail:
        fields.append(f"LEASE_DETAIL={event.detail}")
    return fields


class JournalLeaseLog:
    """A `lease_log.LeaseSink` writing one structured journal entry per lease event."""

    def __init__(self, site: str, enabled: bool = True, sender: Sender = sendv) -> None:
        self.enabled = enabled
        self._send = sender
        self._common = (
            f"PRIORITY={PRIORITY_INFO}",
            f"SYSLOG_IDENTIFIER={SYSLOG_IDENTIFIER}",
            f"SITE={site}",
        )
        self._pending: list[tuple[LeaseEvent, str]] = []

    def add(self, events: Iterable[LeaseEvent], path: str) -> None:
        if self.enabled:
            self._pending.extend((event, path) for event in events)

    def flush(self) -> None:
        common = self._common
        for event, path in self._pending:
            try:
                self._send(*lease_fields(event, path), *common)
            except OSError:
                # journald is restarting or gone: the entry is lost as a text line would
                # be, and serving DHCP matters more than logging it.
                continue
        self._pending.clear()


def handler() -> logging.Handler:
    """The daemon's other log records (start, reload, drops, errors) as journal entries,
    with their level as PRIORITY and the same SYSLOG_IDENTIFIER as the lease events."""
    journal: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
    # PRIORITY carries the level; journalctl adds time, host and identifier itself.
    journal.setFormatter(logging.Formatter("%(message)s"))
    return journal
