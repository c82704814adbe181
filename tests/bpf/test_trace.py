"""Tracing in the kernel: with a tracer on, every result the program counts is queued on
the trace ring with what the program knew (answered, passed, dropped; MAC, VLANs, relay,
address, message type, latency); off, nothing is; the MAC and result filters choose what
is queued; the bucket bounds the events a second and counts the rest; one tracer at a
time, and it turns tracing off when it closes."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType
from brushtaild.xdp import libbpf, maps
from brushtaild.xdp.loader import Program, Version
from brushtaild.xdp.trace import Event, Filter, TraceError, Tracer
from tests.bpf.frames import MALFORMED_FRAMES
from tests.bpf.harness import ENGINE_LAG, XDP_DROP, XDP_PASS, XDP_TX, Fastpath, client_message

A = bytes.fromhex("02b700000601")
B = bytes.fromhex("02b700000602")
RELAY = opt.parse_ip("198.18.2.2")
ALL = Filter(rate=1_000_000)  # far above what a test sends


@pytest.fixture
def tracing(program: Program) -> Iterator[None]:
    """The trace is off after the test, whatever it did."""
    yield
    assert config_slot(program, maps.CFG_TRACE_COST) == 0


def config_slot(program: Program, slot: int) -> int:
    value = Version(program.pin_dir).config(slot)
    assert value is not None
    return value


def traced(program: Program, wanted: Filter, *frames: bytes, repeat: int = 1) -> list[Event]:
    """The events a tracer with `wanted` reads while the program runs `frames`."""
    with Tracer(program.pin_dir, wanted) as tracer:
        for frame in frames:
            libbpf.prog_test_run(program.fd, frame, repeat=repeat)
        return tracer.events(0)


def discover(fastpath: Fastpath, mac: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    return fastpath.frame(encode(client_message(MessageType.DISCOVER, mac)), mac=mac, vlans=vlans)


def renewal(fastpath: Fastpath, mac: bytes, address: int) -> bytes:
    msg = client_message(MessageType.REQUEST, mac, ciaddr=address)
    return fastpath.frame(encode(msg), mac=mac, unicast_from=address)


def test_an_answered_renewal_is_traced_with_its_latency(
    fastpath: Fastpath, program: Program, tracing: None
) -> None:
    lease = fastpath.bind(A)
    [event] = traced(program, ALL, renewal(fastpath, A, lease.address))
    assert (event.action, event.result, event.verdict) == (XDP_TX, maps.Result.ACK, "answered ack")
    assert (event.mac, event.address, event.message) == (A, lease.address, MessageType.REQUEST)
    assert (event.outer_vlan, event.inner_vlan, event.relay) == (0, 0, 0)
    assert 0 < event.latency_ns < 10**9
    assert abs(event.time - (fastpath.now + ENGINE_LAG)) < 10


def test_a_miss_is_traced_with_its_vlans(
    fastpath: Fastpath, program: Program, tracing: None
) -> None:
    [event] = traced(program, ALL, discover(fastpath, B, vlans=(100, 200)))
    assert (event.action, event.verdict) == (XDP_PASS, "passed miss")
    assert (event.mac, event.outer_vlan, event.inner_vlan) == (B, 100, 200)
    assert (event.message, event.address, event.latency_ns) == (MessageType.DISCOVER, 0, 0)
    assert event.vlans == "100.200"


def test_a_relayed_miss_names_its_relay(
    fastpath: Fastpath, program: Program, tracing: None
) -> None:
    fastpath.know_relay(RELAY)
    payload = encode(client_message(MessageType.DISCOVER, B, giaddr=RELAY))
    [event] = traced(program, ALL, fastpath.frame(payload, mac=B, relay=True))
    assert (event.verdict, event.mac, event.relay) == ("passed miss", B, RELAY)


def test_a_drop_is_traced(fastpath: Fastpath, program: Program, tracing: None) -> None:
    frame = MALFORMED_FRAMES["a byte after the datagram"](discover(fastpath, A))
    [event] = traced(program, ALL, frame)
    assert (event.action, event.verdict) == (XDP_DROP, "dropped malformed")
    assert event.mac == bytes(6)  # a frame not well-formed has no chaddr to trust


def test_nothing_is_traced_while_nobody_traces(fastpath: Fastpath, program: Program) -> None:
    assert config_slot(program, maps.CFG_TRACE_COST) == 0
    fd = libbpf.obj_get(str(program.pin_dir / "trace"))
    ring = libbpf.RingReader(fd)
    os.close(fd)
    try:
        ring.peek()
        ring.release()
        fastpath.run(discover(fastpath, A))
        assert ring.peek() == []
    finally:
        ring.close()


def test_the_mac_filter(fastpath: Fastpath, program: Program, tracing: None) -> None:
    events = traced(program, Filter(mac=A), discover(fastpath, A), discover(fastpath, B))
    assert [event.mac for event in events] == [A]


def test_the_result_filter(fastpath: Fastpath, program: Program, tracing: None) -> None:
    lease = fastpath.bind(A)
    frames = (
        renewal(fastpath, A, lease.address),
        discover(fastpath, B),
        MALFORMED_FRAMES["a byte after the datagram"](discover(fastpath, B)),
    )
    wanted = Filter(results=frozenset({maps.Result.MISS, maps.Result.MALFORMED}))
    assert [e.result for e in traced(program, wanted, *frames)] == [
        maps.Result.MISS,
        maps.Result.MALFORMED,
    ]


def test_the_bucket_bounds_the_events_and_counts_the_rest(
    fastpath: Fastpath, program: Program, tracing: None
) -> None:
    """The bucket holds one second of events: 100 requests in a few milliseconds at
    10 events a second give 10 events, 11 if the bucket refilled one meanwhile, one fewer
    if the tracer of the test before spent from it less than a second ago."""
    rate, sent = 10, 100
    with Tracer(program.pin_dir, Filter(rate=rate)) as tracer:
        libbpf.prog_test_run(program.fd, discover(fastpath, A), repeat=sent)
        events = tracer.events(0)
        lost = tracer.lost()
    assert rate - 1 <= len(events) <= rate + 1
    assert (lost.rate, lost.full) == (sent - len(events), 0)


def test_one_tracer_at_a_time(program: Program, tracing: None) -> None:
    busy = rf"another trace is running \(pid {os.getpid()}"
    with Tracer(program.pin_dir, ALL), pytest.raises(TraceError, match=busy):
        Tracer(program.pin_dir, ALL)
    Tracer(program.pin_dir, ALL).close()


def test_a_tracer_sets_its_filter_and_turns_the_trace_off_when_it_closes(
    program: Program, tracing: None
) -> None:
    wanted = Filter(rate=50, mac=A, results=frozenset({maps.Result.ACK, maps.Result.MISS}))
    with Tracer(program.pin_dir, wanted):
        assert config_slot(program, maps.CFG_TRACE_COST) == 20_000_000
        assert config_slot(program, maps.CFG_TRACE_MAC).to_bytes(8, "little") == A + bytes(2)
        assert config_slot(program, maps.CFG_TRACE_RESULTS) == (1 << 1) | (1 << 4)
    assert config_slot(program, maps.CFG_TRACE_COST) == 0


def test_without_a_trace_ring_there_is_nothing_to_trace(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no fast path with a trace ring"):
        Tracer(tmp_path, ALL)


def test_a_tracer_shows_nothing_a_killed_one_left(
    fastpath: Fastpath, program: Program, tracing: None
) -> None:
    """A tracer killed by SIGKILL leaves tracing on and its events unread: the next one
    starts from its own filters, with none of them."""
    fd = libbpf.obj_get(str(program.pin_dir / "config"))
    try:
        for slot, value in Filter(mac=B).slots().items():
            libbpf.update_u64(fd, slot, value)
    finally:
        os.close(fd)
    fastpath.run(discover(fastpath, B))
    assert [event.mac for event in traced(program, ALL, discover(fastpath, A))] == [A]
