"""`brushtail trace` without a kernel: a ring record decoded, and shown to people and to
scripts; the config slots a filter sets; the command's arguments. tests/bpf/test_trace.py
reads real records from the program."""

import ctypes
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brushtaild.cli import _parser, main
from brushtaild.daemon import clock
from brushtaild.dhcp.constants import MessageType
from brushtaild.dhcp.options import parse_ip
from brushtaild.xdp import maps
from brushtaild.xdp.trace import Event, Filter, parse_mac

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "brushtail.yaml"
MAC = bytes.fromhex("02b700000701")
XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
# 2026-12-03 10:15:30.123456 UTC, as the program's CLOCK_BOOTTIME stamp
WHEN = 1796292930.123456


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def record(**fields: object) -> bytes:
    event = maps.TraceEvent(
        time_ns=clock.to_boot_ns(WHEN),
        mac=(ctypes.c_uint8 * 6)(*MAC),
        result=maps.Result.ACK,
        action=XDP_TX,
        address=maps.net32(parse_ip("198.18.1.7")),
        msg_type=MessageType.REQUEST,
        latency_ns=12_345,
    )
    for name, value in fields.items():
        setattr(event, name, value)
    return bytes(event)


def test_an_answer_shows_address_message_verdict_and_latency() -> None:
    event = Event.decode(record())
    assert event.line() == (
        "10:15:30.123456 02:b7:00:00:07:01 198.18.1.7 REQUEST answered ack 12.3us"
    )
    assert event.as_json() == {
        "time": "2026-12-03T10:15:30.123456+00:00",
        "mac": "02:b7:00:00:07:01",
        "outer_vlan": 0,
        "inner_vlan": 0,
        "relay": None,
        "address": "198.18.1.7",
        "message": "REQUEST",
        "verdict": "answered",
        "result": "ack",
        "latency_ns": 12345,
    }


def test_a_pass_shows_vlans_and_relay_and_no_latency() -> None:
    raw = record(
        result=maps.Result.MISS,
        action=XDP_PASS,
        outer_vlan=100,
        inner_vlan=200,
        giaddr=maps.net32(parse_ip("198.18.2.2")),
        address=0,
        msg_type=MessageType.DISCOVER,
        latency_ns=0,
    )
    assert Event.decode(raw).line() == (
        "10:15:30.123456 02:b7:00:00:07:01 vlan 100.200 relay 198.18.2.2 - DISCOVER passed miss"
    )


def test_a_drop_before_the_request_was_read_shows_what_is_known() -> None:
    raw = record(
        result=maps.Result.MALFORMED,
        action=XDP_DROP,
        mac=(ctypes.c_uint8 * 6)(),
        outer_vlan=7,
        address=0,
        msg_type=0,
        latency_ns=0,
    )
    event = Event.decode(raw)
    assert event.line() == "10:15:30.123456 - vlan 7 - - dropped malformed"
    assert (event.as_json()["mac"], event.as_json()["message"]) == (None, None)


def test_an_unknown_message_type_is_shown_by_number() -> None:
    assert Event.decode(record(msg_type=42)).message_name == "type-42"


def test_a_filter_sets_the_slots_the_program_reads() -> None:
    wanted = Filter(rate=100, mac=MAC, results=frozenset({maps.Result.MISS, maps.Result.ACK}))
    assert wanted.slots() == {
        maps.CFG_TRACE_MAC: int.from_bytes(MAC + bytes(2), "little"),
        maps.CFG_TRACE_RESULTS: 0b10010,
        maps.CFG_TRACE_COST: 10_000_000,
    }
    # The rate goes in last: it turns tracing on, once the filters are in place.
    assert list(wanted.slots())[-1] == maps.CFG_TRACE_COST
    assert Filter().slots()[maps.CFG_TRACE_MAC] == 0
    assert Filter().slots()[maps.CFG_TRACE_RESULTS] == 0


@pytest.mark.parametrize("text", ["02:b7:00:00:07:01", "02-b7-00-00-07-01", "02b700000701"])
def test_mac_spellings(text: str) -> None:
    assert parse_mac(text) == MAC


def test_the_command_line() -> None:
    args = _parser().parse_args(
        ["trace", "--mac", "02:b7:00:00:07:01", "--reason", "miss", "ack", "--reason", "prl"]
    )
    assert (args.mac, args.reason, args.rate, args.count, args.json) == (
        MAC,
        ["miss", "ack", "prl"],
        100,
        None,
        False,
    )


@pytest.mark.parametrize(
    "argv",
    [["--mac", "02:b7"], ["--reason", "nosuch"], ["--rate", "0"], ["--count", "-1"]],
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["trace", *argv])
    assert exit_.value.code == 2


def test_without_a_pinned_program_it_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "brushtail.yaml"
    pin_dir = f"/sys/fs/bpf/brushtail-unit-none-{os.getpid()}"
    config.write_text(f"{EXAMPLE.read_text()}fastpath:\n  pin_dir: {pin_dir}\n")
    assert main(["trace", "--config", str(config)]) == 1
    assert f"no fast path with a trace ring is pinned under {pin_dir}/v-" in (
        capsys.readouterr().err
    )
