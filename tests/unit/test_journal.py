"""Lease events as structured journal entries, and when the daemon uses them."""

import logging
import os
import sys
from pathlib import Path

from brushtaild.daemon import journal
from brushtaild.daemon.lease_log import format_event
from brushtaild.engine.decisions import LeaseEvent, LeaseEventKind

ACK = LeaseEvent(
    kind=LeaseEventKind.ACK,
    client_id=bytes.fromhex("01aabbccddeeff"),
    hwaddr=bytes.fromhex("AABBCCDDEEFF"),
    address=0xC6120105,  # 198.18.1.5
    pool="residential",
)


class Recorder:
    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []

    def __call__(self, *fields: str) -> None:
        entry: dict[str, str] = {}
        for field in fields:
            name, _, value = field.partition("=")
            assert name not in entry, f"{name} twice"
            entry[name] = value
        self.entries.append(entry)


def test_ack_entry_fields() -> None:
    sender = Recorder()
    sink = journal.JournalLeaseLog("edge-a", sender=sender)
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


def test_detail_and_missing_pool() -> None:
    sender = Recorder()
    sink = journal.JournalLeaseLog("edge-a", sender=sender)
    nak = LeaseEvent(LeaseEventKind.NAK, b"\x01", b"\x01\x02", 0, "", detail="not yours")
    sink.add([nak], "fast")
    sink.flush()
    (entry,) = sender.entries
    assert "POOL" not in entry
    assert entry["LEASE_DETAIL"] == "not yours"
    assert entry["DHCP_PATH"] == "fast"
    assert entry["LEASE_EVENT"] == "nak"


def test_disabled_sink_sends_nothing() -> None:
    sender = Recorder()
    sink = journal.JournalLeaseLog("edge-a", enabled=False, sender=sender)
    sink.add([ACK], "slow")
    sink.flush()
    assert sender.entries == []


def test_an_unreachable_journal_does_not_stop_the_batch() -> None:
    sent: list[tuple[str, ...]] = []

    def flaky(*fields: str) -> None:
        if not sent:
            sent.append(())
            raise ConnectionRefusedError
        sent.append(fields)

    sink = journal.JournalLeaseLog("edge-a", sender=flaky)
    sink.add([ACK, ACK], "slow")
    sink.flush()
    assert len(sent) == 2 and sent[1]


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
