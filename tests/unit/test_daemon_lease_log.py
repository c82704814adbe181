"""Which lease events reach the log, and at what level (review finding 10d)."""

import io
import logging
from dataclasses import replace

from brushtaild.daemon import journal
from brushtaild.daemon.lease_log import LeaseLog, format_line
from brushtaild.engine.decisions import LeaseEvent, LeaseEventKind
from tests.unit.test_journal import Recorder

ACK = LeaseEvent(LeaseEventKind.ACK, b"\x01" + b"\xaa" * 6, b"\xaa" * 6, 0xC6120105, "residential")
EVENTS = [replace(ACK, kind=kind) for kind in LeaseEventKind]
AT_INFO = {"ack", "nak", "release", "decline", "expire", "revoke", "replicated"}


def test_offers_and_informs_are_debug_every_lease_change_info() -> None:
    stream = io.StringIO()
    sink = LeaseLog(stream)
    sink.add(EVENTS, "slow")
    sink.flush()
    assert {line.split()[1] for line in stream.getvalue().splitlines()} == AT_INFO
    assert all(line.startswith("INFO ") for line in stream.getvalue().splitlines())
    stream = io.StringIO()
    sink = LeaseLog(stream, logging.DEBUG)
    sink.add(EVENTS, "slow")
    sink.flush()
    assert len(stream.getvalue().splitlines()) == len(EVENTS)
    assert format_line(replace(ACK, kind=LeaseEventKind.OFFER), "slow").startswith("DEBUG offer ")


def test_journal_entries_follow_the_same_levels() -> None:
    sender = Recorder()
    sink = journal.JournalLeaseLog("edge-a", io.StringIO(), sender=sender)
    sink.add(EVENTS, "slow")
    sink.flush()
    assert {e["LEASE_EVENT"] for e in sender.entries} == AT_INFO
    assert {e["PRIORITY"] for e in sender.entries} == {"6"}
    sender = Recorder()
    sink = journal.JournalLeaseLog("edge-a", io.StringIO(), logging.DEBUG, sender=sender)
    sink.add(EVENTS, "slow")
    sink.flush()
    priorities = {e["LEASE_EVENT"]: e["PRIORITY"] for e in sender.entries}
    assert priorities["offer"] == priorities["inform"] == "7" and priorities["ack"] == "6"
