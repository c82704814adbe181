"""Lease events as structured journal entries, and when the daemon uses them."""

import io
import logging
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from brushtaild.daemon import journal
from brushtaild.daemon.lease_log import format_event, format_line
from brushtaild.engine.decisions import LeaseEvent, LeaseEventKind

ACK = LeaseEvent(
    kind=LeaseEventKind.ACK,
    client_id=bytes.fromhex("01aabbccddeeff"),
    hwaddr=bytes.fromhex("AABBCCDDEEFF"),
    address=0xC6120105,  # 198.18.1.5
    pool="residential",
)


def parse_entry(datagram: bytes) -> dict[str, str]:
    """journald's native protocol: NAME=value lines, or NAME, newline, 64-bit LE length,
    value, newline for values that may hold newlines."""
    entry: dict[str, str] = {}
    while datagram:
        line, _, rest = datagram.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
        else:
            name, size = line, int.from_bytes(rest[:8], "little")
            value, rest = rest[8 : 8 + size], rest[8 + size :]
            assert rest[:1] == b"\n"
            rest = rest[1:]
        assert name.decode() not in entry, f"{name!r} twice"
        entry[name.decode()] = value.decode()
        datagram = rest
    return entry


class Recorder:
    """A sender that keeps what it is given, and after `room` entries reports a full queue."""

    def __init__(self, room: int = 1000) -> None:
        self.entries: list[dict[str, str]] = []
        self.room = room

    def __call__(self, datagram: bytes) -> None:
        if len(self.entries) >= self.room:
            raise BlockingIOError
        self.entries.append(parse_entry(datagram))


def test_ack_entry_fields() -> None:
    sender = Recorder()
    stream = io.StringIO()
    sink = journal.JournalLeaseLog("edge-a", stream, sender=sender)
    sink.add([ACK], "slow")
    assert sender.entries == []  # nothing is sent before the batch's flush
    sink.flush()
    assert sender.entries == [
        {
            "MESSAGE": "ack client=01aabbccddeeff mac=aa:bb:cc:dd:ee:ff ip=198.18.1.5 "
            "pool=residential path=slow",
            "PRIORITY": "6",
            "SYSLOG_IDENTIFIER": "brushtaild",
            "LEASE_EVENT": "ack",
            "CLIENT_ID": "01aabbccddeeff",
            "CLIENT_MAC": "aa:bb:cc:dd:ee:ff",
            "LEASE_IP": "198.18.1.5",
            "POOL": "residential",
            "SITE": "edge-a",
            "DHCP_PATH": "slow",
        }
    ]
    # MESSAGE is the text log's line, so both outputs read the same.
    assert sender.entries[0]["MESSAGE"] == format_event(ACK, "slow")
    sink.flush()
    assert len(sender.entries) == 1
    assert stream.getvalue() == ""


def test_detail_and_missing_pool() -> None:
    sender = Recorder()
    sink = journal.JournalLeaseLog("edge-a", io.StringIO(), sender=sender)
    nak = LeaseEvent(LeaseEventKind.NAK, b"\x01", b"\x01\x02", 0, "", detail="not\nyours")
    sink.add([nak], "fast")
    sink.flush()
    (entry,) = sender.entries
    assert "POOL" not in entry
    # A newline in a value needs the protocol's length-prefixed form; MESSAGE quotes it.
    assert entry["LEASE_DETAIL"] == "not\nyours"
    assert entry["MESSAGE"].endswith("path=fast detail='not\\nyours'")
    assert entry["DHCP_PATH"] == "fast"
    assert entry["LEASE_EVENT"] == "nak"


def test_disabled_sink_sends_nothing() -> None:
    sender = Recorder()
    sink = journal.JournalLeaseLog("edge-a", io.StringIO(), logging.WARNING, sender=sender)
    sink.add([ACK], "slow")
    sink.flush()
    assert sender.entries == []


def test_what_journald_cannot_take_goes_out_as_text_lines() -> None:
    sender = Recorder(room=1)
    stream = io.StringIO()
    sink = journal.JournalLeaseLog("edge-a", stream, sender=sender)
    second = replace(ACK, address=0xC6120106)
    third = replace(ACK, address=0xC6120107, kind=LeaseEventKind.RELEASE)
    sink.add([ACK, second], "slow")
    sink.add([third], "fast")
    sink.flush()
    # The first fitted; from the first refusal on, the batch is written as text, in order,
    # exactly as the text log would have it.
    assert [e["LEASE_IP"] for e in sender.entries] == ["198.18.1.5"]
    assert stream.getvalue() == format_line(second, "slow") + format_line(third, "fast")
    # The next batch tries structured entries again.
    sender.room = 2
    sink.add([ACK], "slow")
    sink.flush()
    assert len(sender.entries) == 2


def test_default_sender_is_a_datagram_to_the_journal_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "socket"
    monkeypatch.setattr(journal, "JOURNAL_SOCKET", str(path))
    stream = io.StringIO()
    sink = journal.JournalLeaseLog("edge-a", stream)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.bind(str(path))
        sink.add([ACK], "slow")
        sink.flush()
        assert parse_entry(journald.recv(4096))["CLIENT_MAC"] == "aa:bb:cc:dd:ee:ff"
    # journald gone (restarting): the events still reach the stream.
    sink.add([ACK], "slow")
    sink.flush()
    assert stream.getvalue() == format_line(ACK, "slow")


def test_connected_only_to_the_named_stream(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        st = os.fstat(stream.fileno())
        assert journal.connected(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not journal.connected(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not journal.connected(stream, {"JOURNAL_STREAM": "garbage"})
        assert not journal.connected(stream, {})
    # A closed or fd-less stream (pytest's capture) is never the journal.
    assert not journal.connected(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not journal.connected(sys.stderr, {"JOURNAL_STREAM": "1:1"})


def test_log_records_handler_names_the_daemon() -> None:
    sent: list[tuple[str, dict[str, object]]] = []
    handler = journal.handler()
    # JournalHandler keeps its sender, systemd.journal.send, as `send`; record its arguments.
    handler.send = lambda MESSAGE, **fields: sent.append((MESSAGE, fields))  # type: ignore[attr-defined]
    record = logging.LogRecord("brushtaild", logging.WARNING, __file__, 1, "drop %s", ("x",), None)
    handler.handle(record)
    ((message, fields),) = sent
    assert message == "drop x"
    assert fields["SYSLOG_IDENTIFIER"] == "brushtaild"
    assert fields["PRIORITY"] == "4"
