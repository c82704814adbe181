"""journald: lease events as structured entries, and the daemon's log records.

Under systemd an operator's question is "what happened to this subscriber": with one field
per fact, `journalctl -u brushtaild CLIENT_MAC=aa:bb:cc:dd:ee:ff` answers it from the
journal's index instead of a grep through every line.

A structured entry costs far more than a text line: one datagram per event, about 13 us of
the daemon's CPU and 30 us of journald's, against 1.5 us and 12 us for a line in a batched
write (docs/OPERATIONS.md has the figures). So entries go over journald's native protocol on
a non-blocking socket of our own rather than through libsystemd's blocking `sendv`: when
journald falls behind and its queue is full, the rest of the batch goes out as the usual
text lines on stderr, which reach the same journal with the same MESSAGE. A DHCP storm
therefore never waits on journald for structure, and no event is left out for it.
"""

import io
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import TextIO

from systemd.journal import JournalHandler

from brushtaild.daemon.lease_log import event_level, format_event, format_line
from brushtaild.dhcp.options import format_ip, format_mac
from brushtaild.engine.decisions import LeaseEvent

SYSLOG_IDENTIFIER = "brushtaild"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
# syslog(3) priorities of the text line's levels: a lease event is routine.
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6}

# Sends one native-protocol datagram; raises OSError (BlockingIOError when journald's
# queue is full). Tests inject a recorder.
Sender = Callable[[bytes], object]


def connected(stream: TextIO, env: Mapping[str, str] = os.environ) -> bool:
    """True when `stream` is the journal stream systemd connected us to.

    $JOURNAL_STREAM names it as "device:inode"; comparing with the stream's own fstat keeps
    a redirection (`brushtaild 2>file` under a journald-started shell, or a child that
    inherited the variable) on text output, as systemd.exec(5) recommends.
    """
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isascii() and device.isdigit() and inode.isascii() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def _binary_field(name: str, value: str) -> bytes:
    # The native protocol's form for a value that may hold a newline: name, newline,
    # 64-bit little-endian length, value, newline.
    data = value.encode()
    return name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"


def lease_entry(event: LeaseEvent, path: str, common: bytes = b"") -> bytes:
    """One journal entry as a native-protocol datagram. MESSAGE is the text line's message.

    Every field but the engine's free-text detail is built from hex, addresses and names
    the config restricts to printable characters without newlines, so they take the plain
    NAME=value form."""
    fields = [
        f"MESSAGE={format_event(event, path)}",
        f"PRIORITY={PRIORITIES[event_level(event)]}",
        f"LEASE_EVENT={event.kind.value}",
        f"CLIENT_ID={event.client_id.hex()}",
        f"CLIENT_MAC={format_mac(event.hwaddr)}",
        f"LEASE_IP={format_ip(event.address)}",
        f"DHCP_PATH={path}",
    ]
    # An event outside any pool (a NAK for a foreign network) has none to match on.
    if event.pool:
        fields.append(f"POOL={event.pool}")
    if event.vlans:
        fields.append(f"LEASE_VLAN={event.vlan_text}")
    fields.append("")
    entry = "\n".join(fields).encode() + common
    if event.detail:
        entry += _binary_field("LEASE_DETAIL", event.detail)
    return entry


class JournalLeaseLog:
    """A `lease_log.LeaseSink` writing one structured journal entry per lease event, and
    text lines on `stream` for the events journald cannot take at the moment."""

    def __init__(
        self,
        site: str,
        stream: TextIO,
        level: int = logging.INFO,
        sender: Sender | None = None,
    ) -> None:
        self.level = level
        self._stream = stream
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._send = sender or self._sendto
        self._common = f"SYSLOG_IDENTIFIER={SYSLOG_IDENTIFIER}\nSITE={site}\n".encode()
        self._pending: list[tuple[LeaseEvent, str]] = []

    def add(self, events: Iterable[LeaseEvent], path: str) -> None:
        level = self.level
        self._pending.extend((e, path) for e in events if event_level(e) >= level)

    def flush(self) -> None:
        if not self._pending:
            return
        common = self._common
        for sent, (event, path) in enumerate(self._pending):
            try:
                self._send(lease_entry(event, path, common))
            except OSError:
                # Queue full (or journald restarting): stop trying for this batch, so a
                # storm costs a text line per event rather than a failed send per event.
                self._stream.write("".join(format_line(e, p) for e, p in self._pending[sent:]))
                self._stream.flush()
                break
        self._pending.clear()

    def _sendto(self, entry: bytes) -> None:
        self._sock.sendto(entry, JOURNAL_SOCKET)


def handler() -> logging.Handler:
    """The daemon's other log records (start, reload, drops, errors) as journal entries,
    with their level as PRIORITY and the same SYSLOG_IDENTIFIER as the lease events."""
    journal: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
    # PRIORITY carries the level; journalctl adds time, host and identifier itself.
    journal.setFormatter(logging.Formatter("%(message)s"))
    return journal
