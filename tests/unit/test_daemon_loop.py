"""The daemon's loop against a fake packet socket and fast path: what a request, a socket or
the fast path can throw at it, and what it must do with it (the engine and store are real)."""

import contextlib
import errno
import io as io_module
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from brushtaild.config import model as config_module
from brushtaild.config.model import Config
from brushtaild.daemon import main
from brushtaild.daemon.lease_log import LeaseLog
from brushtaild.daemon.main import Daemon, Signals
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode, parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.engine.decisions import (
    Decision,
    Destination,
    DestKind,
    Ingress,
    LeaseEvent,
    LeaseEventKind,
    Reply,
)
from brushtaild.engine.leases import Lease
from brushtaild.net.packet_io import Received
from brushtaild.store.lease_store import StoreError
from brushtaild.xdp import maps
from brushtaild.xdp.fastpath import Renewal
from brushtaild.xdp.loader import LoadError
from brushtaild.xdp.maps import Result
from brushtaild.xdp.stats import Snapshot
from tests.engine_helpers import INGRESS, SERVER, mac, make_config, request

RELAY = opt.parse_ip("198.19.0.1")  # giaddr of a relay the server has no route to


@dataclass
class FakeIO:
    """PacketIO's interface: batches handed out in order, replies recorded or refused."""

    batches: list[Received] = field(default_factory=list)
    sent: list[tuple[bytes, Destination]] = field(default_factory=list)
    refuse: Callable[[Destination], OSError | None] = lambda _dest: None
    stale_before: list[float] = field(default_factory=list)
    aged_before: list[float] = field(default_factory=list)
    mac: bytes = b"\x02\x00\x00\x00\x00\xfe"
    queued: bool = False  # pending(): a frame came while the batch was decided

    def fileno(self) -> int:
        return -1

    def pending(self) -> bool:
        return self.queued

    def receive_batch(
        self, limit: int, stale_before: float = 0.0, aged_before: float = 0.0
    ) -> Received:
        self.stale_before.append(stale_before)
        self.aged_before.append(aged_before)
        return self.batches.pop(0) if self.batches else Received()

    def send(self, payload: bytes, dest: Destination, ingress: Ingress) -> None:
        error = self.refuse(dest)
        if error is not None:
            raise error
        self.sent.append((payload, dest))

    def sent_types(self) -> list[MessageType | None]:
        return [parse(payload).message_type for payload, _ in self.sent]

    def kernel_drops(self) -> int:
        return 0

    def close(self) -> None:
        pass


class FakeFastPath:
    """What the daemon asks of xdp.fastpath.FastPath, recorded."""

    def __init__(self, calls: list[str], renewals: list[Renewal] | None = None) -> None:
        self.calls = calls
        self.pending = list(renewals or [])
        self.attach_error: Exception | None = None
        self.apply_error: Exception | None = None
        self.mode = "generic"
        self.withdrawn: list[int] = []
        self.sync = self
        self.relays = self
        self.entries = 0
        self.answered_relays: list[int] = []
        self.relay_refreshes = 0

    def answered(self, reply: Reply) -> None:
        if reply.dest.kind is DestKind.RELAY:
            self.answered_relays.append(reply.dest.ip)

    def refresh(self, now: float) -> None:
        self.relay_refreshes += 1

    def renewals(self) -> list[Renewal]:
        self.calls.append("renewals")
        pending, self.pending = self.pending, []
        return pending

    def withdraw(self, address: int) -> None:
        self.withdrawn.append(address)

    def recorded_up_to_here(self) -> None:
        self.calls.append("released")

    def attach(self, server_mac: bytes, now: float) -> str:
        if self.attach_error is not None:
            raise self.attach_error
        return self.mode

    def apply(self, decisions: list[Decision], now: float) -> None:
        self.calls.append("apply")
        if self.apply_error is not None:
            raise self.apply_error

    def collector(self) -> Any:
        return _EmptyCollector()

    def snapshot(self) -> Snapshot:
        return Snapshot({result: 0 for result in Result}, [])

    def close(self) -> None:
        self.calls.append("close")


class _EmptyCollector:
    def collect(self) -> Iterator[Any]:
        return iter(())


@pytest.fixture
def io(monkeypatch: pytest.MonkeyPatch) -> FakeIO:
    fake = FakeIO()
    monkeypatch.setattr(main, "PacketIO", lambda ifname, server_id: fake)
    return fake


@pytest.fixture
def detached(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Interfaces the daemon removed a leftover program from."""
    calls: list[str] = []

    def take_down_leftover(daemon: Daemon, why: str) -> None:
        calls.append(daemon.config.interface)

    monkeypatch.setattr(Daemon, "_take_down_leftover", take_down_leftover)
    return calls


@pytest.fixture
def signals() -> Iterator[Signals]:
    installed = Signals()
    yield installed
    installed.close()


def daemon_config(tmp_path: Path, fastpath: bool = False) -> Config:
    return replace(
        make_config(),
        state_dir=tmp_path / "state",
        control_socket=tmp_path / "control.sock",
        fastpath=config_module.FastPath(enabled=fastpath, pin_dir=tmp_path / "pins"),
        trusted_relays=(IPv4Network(RELAY),),
    )


@pytest.fixture
def daemon(tmp_path: Path, io: FakeIO, detached: list[str], signals: Signals) -> Iterator[Daemon]:
    started = Daemon(daemon_config(tmp_path), tmp_path / "brushtail.yaml", signals)
    yield started
    started.store.close()


def frame(msg: Message, ingress: Ingress = INGRESS) -> tuple[bytes, Ingress]:
    return encode(msg, max_size=1500), ingress


def relayed_discover(n: int) -> Message:
    """A DISCOVER from a relay we cannot route to, selecting our subnet with option 118."""
    return request(
        MessageType.DISCOVER,
        n,
        giaddr=RELAY,
        extra={OptionCode.SUBNET_SELECTION: opt.ip(opt.parse_ip("198.18.0.0"))},
    )


def dropped(daemon: Daemon, reason: str) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "dhcp_packets_dropped_total", {"reason": reason}
    )
    return value or 0.0


def sample(daemon: Daemon, name: str, labels: dict[str, str] | None = None) -> float | None:
    return daemon.metrics.registry.get_sample_value(name, labels or {})


def unreachable(dest: Destination) -> OSError | None:
    if dest.kind is DestKind.RELAY:
        return OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))
    return None


# --- send and receive errors ---------------------------------------------------------------


def test_a_reply_that_cannot_be_sent_is_dropped_and_the_batch_goes_on(
    daemon: Daemon, io: FakeIO
) -> None:
    io.refuse = unreachable
    io.batches.append(
        Received(frames=[frame(relayed_discover(1)), frame(request(MessageType.DISCOVER, 2))])
    )
    daemon._serve_batch()
    assert io.sent_types() == [MessageType.OFFER]  # the direct client's
    assert dropped(daemon, "send_failed") == 1
    labels = {"operation": "send", "error": "ENETUNREACH"}
    assert sample(daemon, "dhcp_socket_errors_total", labels) == 1


def test_an_ack_that_cannot_be_sent_still_leaves_its_lease_on_disk(
    daemon: Daemon, io: FakeIO
) -> None:
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 1))]))
    daemon._serve_batch()
    offered = parse(io.sent[0][0]).yiaddr
    io.refuse = lambda _dest: OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
    req = request(MessageType.REQUEST, 1, requested=offered, server_id=daemon.config.server_id)
    io.batches.append(Received(frames=[frame(req)]))
    daemon._serve_batch()
    assert dropped(daemon, "send_failed") == 1
    assert [lease.address for lease in daemon.store.load()] == [offered]


def test_a_receive_error_is_counted_and_the_loop_pauses_then_goes_on(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(main.time, "sleep", pauses.append)
    down = OSError(errno.ENETDOWN, os.strerror(errno.ENETDOWN))
    # What was read before the error is still answered.
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 1))], error=down))
    io.batches.append(Received(error=down))
    daemon._serve_batch()
    daemon._serve_batch()
    assert io.sent_types() == [MessageType.OFFER]
    labels = {"operation": "receive", "error": "ENETDOWN"}
    assert sample(daemon, "dhcp_socket_errors_total", labels) == 2
    # A repeating error costs a pause per batch, not a busy loop.
    assert pauses == [main.RECEIVE_ERROR_PAUSE] * 2
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 2))]))
    daemon._serve_batch()
    assert io.sent_types() == [MessageType.OFFER] * 2
    assert len(pauses) == 2


def test_stale_requests_are_counted_and_the_threshold_is_the_queue_age(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(main.clock, "wall", lambda: 1_000_000.0)
    io.batches.append(Received(stale=3))
    daemon._serve_batch()
    assert io.stale_before == [1_000_000.0 - main.MAX_QUEUE_AGE]
    assert dropped(daemon, "stale") == 3


def test_aged_discovers_are_shed_and_aged_requests_answered(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a backlog the DISCOVERs that waited past MAX_DISCOVER_AGE are dropped as
    `backlog`; a REQUEST that waited as long is answered, and so is a fresh DISCOVER."""
    monkeypatch.setattr(main.clock, "wall", lambda: 1_000_000.0)
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 1))]))
    daemon._serve_batch()
    offered = parse(io.sent[0][0]).yiaddr
    req = request(MessageType.REQUEST, 1, requested=offered, server_id=daemon.config.server_id)
    aged = [frame(request(MessageType.DISCOVER, 2)), (b"junk", INGRESS), frame(req)]
    fresh = [frame(request(MessageType.DISCOVER, 3))]
    io.batches.append(Received(frames=[*aged, *fresh], aged=len(aged)))
    daemon._serve_batch()
    assert io.aged_before[-1] == 1_000_000.0 - main.MAX_DISCOVER_AGE
    assert (dropped(daemon, "backlog"), dropped(daemon, "truncated")) == (1, 1)
    assert io.sent_types() == [MessageType.OFFER, MessageType.OFFER, MessageType.ACK]
    assert [parse(payload).hwaddr for payload, _ in io.sent[1:]] == [mac(3), mac(1)]


# --- one request cannot stop the loop ------------------------------------------------------


def test_an_engine_failure_drops_that_request_only(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    handle = daemon.server.handle

    def failing(msg: Message, ingress: Ingress, now: float) -> Decision:
        if msg.hwaddr != mac(9):
            raise KeyError("a bug")
        return handle(msg, ingress, now)

    monkeypatch.setattr(daemon.server, "handle", failing)
    bad = [frame(request(MessageType.DISCOVER, n)) for n in range(1, 6)]
    io.batches.append(Received(frames=[*bad, frame(request(MessageType.DISCOVER, 9))]))
    with caplog.at_level(logging.WARNING, logger="brushtaild"):
        daemon._serve_batch()
    assert io.sent_types() == [MessageType.OFFER]
    assert dropped(daemon, "internal_error") == 5
    # Logged once for the five, at error level, with the traceback.
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "reason=internal_error" in errors[0].getMessage()
    assert "KeyError" in caplog.text and "Traceback" in caplog.text


def test_a_reply_the_edge_cannot_build_is_an_internal_error(daemon: Daemon, io: FakeIO) -> None:
    # PacketIO raises ValueError for a reply it cannot put on the wire (wrong interface).
    io.refuse = lambda _dest: None
    send = io.send

    def refuse_value(payload: bytes, dest: Destination, ingress: Ingress) -> None:
        if ingress.src_mac == b"\x02" * 6:
            raise ValueError("reply for ingress cannot leave via sub0")
        send(payload, dest, ingress)

    io.send = refuse_value  # type: ignore[method-assign]
    other = Ingress(2, b"\x04" * 6, 0, 0xFFFFFFFF)
    io.batches.append(
        Received(
            frames=[
                frame(request(MessageType.DISCOVER, 1)),
                frame(request(MessageType.DISCOVER, 2), other),
            ]
        )
    )
    daemon._serve_batch()
    assert dropped(daemon, "internal_error") == 1
    assert io.sent_types() == [MessageType.OFFER]


def test_repeated_option_82_does_not_stop_the_loop(daemon: Daemon, io: FakeIO) -> None:
    """Review finding 2: option 82 twice, 255 bytes each, no option 57 (the engine may drop
    it with a reason of its own; the daemon must survive either way)."""
    agent = b"\x01\xfd" + b"A" * 253 + b"\x02\xfd" + b"B" * 253
    msg = request(MessageType.DISCOVER, 1, extra={OptionCode.RELAY_AGENT_INFO: agent})
    io.batches.append(
        Received(frames=[frame(msg)] * 10 + [frame(request(MessageType.DISCOVER, 2))])
    )
    daemon._serve_batch()
    assert io.sent_types()[-1] is MessageType.OFFER
    assert sample(daemon, "dhcp_packets_dropped_total") is None  # labelled only
    total = sum(
        s.value
        for family in daemon.metrics.dropped.collect()
        for s in family.samples
        if s.name.endswith("_total")
    )
    assert total >= 10


def test_a_store_failure_still_stops_the_daemon(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_args: object) -> None:
        raise StoreError("disk full")

    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 1))]))
    daemon._serve_batch()
    offered = parse(io.sent[0][0]).yiaddr
    monkeypatch.setattr(daemon.store, "apply", fail)
    req = request(MessageType.REQUEST, 1, requested=offered, server_id=daemon.config.server_id)
    io.batches.append(Received(frames=[frame(req)]))
    with pytest.raises(StoreError):
        daemon._serve_batch()
    assert io.sent_types() == [MessageType.OFFER]  # no ACK for what is not on disk


def _two_offers(daemon: Daemon, io: FakeIO) -> list[Message]:
    """Clients 1 and 2 offered an address each: their REQUESTs, ready to send."""
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, n)) for n in (1, 2)]))
    daemon._serve_batch()
    server_id = daemon.config.server_id
    offers = [parse(payload) for payload, _ in io.sent]
    return [
        request(MessageType.REQUEST, n, requested=offer.yiaddr, server_id=server_id)
        for n, offer in zip((1, 2), offers, strict=True)
    ]


def test_a_full_batch_reads_the_next_while_its_commit_runs_and_acks_after_it(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load (a full batch) the commit runs on the writer thread while the loop reads
    and parses the next batch; the ACKs leave only once the commit has returned, and the
    batch read ahead is served next without reading the socket."""
    monkeypatch.setattr(main, "BATCH", 2)
    requests = _two_offers(daemon, io)
    calls: list[str] = []
    read_ahead = threading.Event()
    receive_batch, send, apply = io.receive_batch, io.send, daemon.store.apply

    def receive(limit: int, stale_before: float = 0.0, aged_before: float = 0.0) -> Received:
        calls.append("receive")
        if len(calls) > 1:
            read_ahead.set()
        return receive_batch(limit, stale_before, aged_before)

    def commit(writes: list[Lease], deletes: list[int]) -> None:
        calls.append(f"commit on {threading.current_thread().name.split('_')[0]}")
        # Returns only once the next batch was read: that read overlapped this commit.
        calls.append("read ahead" if read_ahead.wait(10) else "not read ahead")
        apply(writes, deletes)
        calls.append("committed")

    def record_send(payload: bytes, dest: Destination, ingress: Ingress) -> None:
        calls.append(f"send {parse(payload).message_type.name}")  # type: ignore[union-attr]
        send(payload, dest, ingress)

    monkeypatch.setattr(io, "receive_batch", receive)
    monkeypatch.setattr(io, "send", record_send)
    monkeypatch.setattr(daemon.store, "apply", commit)
    io.batches.append(Received(frames=[frame(req) for req in requests]))
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 3))]))
    daemon._serve_batch()
    assert calls == [
        "receive",
        "commit on store",
        "receive",
        "read ahead",
        "committed",
        "send ACK",
        "send ACK",
    ]
    assert daemon._prefetched is not None
    daemon._serve_batch()  # the batch read ahead: no read of the socket, client 3 offered
    assert calls[7:] == ["send OFFER"]
    assert daemon._prefetched is None


def test_a_failed_commit_under_load_lets_no_ack_out(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's failure on the writer thread reaches the loop, which stops, and no ACK
    of the batch leaves, whatever was read meanwhile."""
    monkeypatch.setattr(main, "BATCH", 2)
    requests = _two_offers(daemon, io)

    def fail(*_args: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(daemon.store, "apply", fail)
    io.batches.append(Received(frames=[frame(req) for req in requests]))
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 3))]))
    with pytest.raises(StoreError):
        daemon._serve_batch()
    assert io.sent_types() == [MessageType.OFFER] * 2


def test_a_frame_queued_meanwhile_has_the_commit_overlap_its_read(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that is not full still hands its commit to the writer thread when a frame
    came while it was decided, and that frame is read while the commit runs."""
    requests = _two_offers(daemon, io)
    threads: list[str] = []
    apply = daemon.store.apply

    def commit(writes: list[Lease], deletes: list[int]) -> None:
        threads.append(threading.current_thread().name.split("_")[0])
        apply(writes, deletes)

    monkeypatch.setattr(daemon.store, "apply", commit)
    io.queued = True
    io.batches.append(Received(frames=[frame(req) for req in requests]))
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 3))]))
    daemon._serve_batch()
    assert threads == ["store"]
    assert io.sent_types() == [MessageType.OFFER] * 2 + [MessageType.ACK] * 2
    assert daemon._prefetched is not None and len(daemon._prefetched.requests) == 1


def test_a_batch_that_is_not_full_commits_on_the_loop_thread(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At light load the commit is not handed to the writer thread: the hand-over would
    only delay the ACK."""
    requests = _two_offers(daemon, io)
    threads: list[str] = []
    apply = daemon.store.apply

    def commit(writes: list[Lease], deletes: list[int]) -> None:
        threads.append(threading.current_thread().name)
        apply(writes, deletes)

    monkeypatch.setattr(daemon.store, "apply", commit)
    io.batches.append(Received(frames=[frame(req) for req in requests]))
    daemon._serve_batch()
    assert threads == [threading.current_thread().name]
    assert io.sent_types() == [MessageType.OFFER] * 2 + [MessageType.ACK] * 2
    assert daemon._prefetched is None


# --- the fast path -------------------------------------------------------------------------


def test_kernel_renewals_are_absorbed_before_the_batch_is_decided(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 17: a renewal the kernel ACKed must reach the engine before the
    engine acts on the batch's time (expiry, offers)."""
    calls: list[str] = []
    daemon.fastpath = FakeFastPath(calls)  # type: ignore[assignment]
    handle = daemon.server.handle
    renewal = daemon.server.kernel_renewal

    def record_handle(msg: Message, ingress: Ingress, now: float) -> Decision:
        calls.append("handle")
        return handle(msg, ingress, now)

    def record_renewal(
        hwaddr: bytes, address: int, expires: float, now: float, vlans: tuple[int, ...]
    ) -> Decision:
        calls.append("kernel_renewal")
        return renewal(hwaddr, address, expires, now, vlans)

    monkeypatch.setattr(daemon.server, "handle", record_handle)
    monkeypatch.setattr(daemon.server, "kernel_renewal", record_renewal)
    daemon.fastpath.pending.append(  # type: ignore[union-attr]
        Renewal(maps.Key(mac(7)).packed(), 0xC6120105, 2e9)
    )
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 1))]))
    daemon._serve_batch()
    assert calls.index("kernel_renewal") < calls.index("handle")
    # Not a lease the engine holds: refused, and its kernel entry withdrawn.
    assert daemon.fastpath.withdrawn == [0xC6120105]  # type: ignore[union-attr]


def test_the_ring_is_read_once_per_wake_up(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch and the housekeeping after it share one read of the renewals ring, and
    expiry runs at the batch's time, before which the batch absorbed every renewal."""
    calls: list[str] = []
    daemon.fastpath = FakeFastPath(calls)  # type: ignore[assignment]
    ticked: list[float] = []
    tick = daemon.server.tick

    def record_tick(now: float) -> Decision:
        ticked.append(now)
        return tick(now)

    monkeypatch.setattr(daemon.server, "tick", record_tick)
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 1))]))
    decided_at = daemon._serve_batch()
    daemon._housekeeping(decided_at)
    assert calls.count("renewals") == 1
    assert ticked == [decided_at]


def test_without_a_batch_the_ring_is_read_after_the_time_expiry_runs_at(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal the kernel answers between the two reads is one of a lease still
    unexpired at that time: read the other way round, expiry could end the lease first."""
    calls: list[str] = []
    daemon.fastpath = FakeFastPath(calls)  # type: ignore[assignment]
    wall = main.clock.wall
    tick = daemon.server.tick

    def record_wall() -> float:
        calls.append("clock")
        return wall()

    def record_tick(now: float) -> Decision:
        calls.append("expiry")
        return tick(now)

    monkeypatch.setattr(main.clock, "wall", record_wall)
    monkeypatch.setattr(daemon.server, "tick", record_tick)
    daemon._housekeeping()
    assert calls.index("clock") < calls.index("renewals") < calls.index("expiry")
    assert calls.count("renewals") == 1


def test_the_ring_gives_renewals_back_only_after_their_commit(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the crash test: renewals read from the ring and not yet committed when the
    daemon is killed must still be in the ring for the next one."""
    calls: list[str] = []
    daemon.fastpath = FakeFastPath(calls)  # type: ignore[assignment]
    apply = daemon.store.apply

    def record_apply(writes: list[Lease], deletes: list[int]) -> None:
        calls.append("commit")
        apply(writes, deletes)

    monkeypatch.setattr(daemon.store, "apply", record_apply)
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 1))]))
    daemon._serve_batch()
    io.batches.append(
        Received(
            frames=[
                frame(request(MessageType.REQUEST, 1, requested=0xC6120100, server_id=0xC6120001))
            ]
        )
    )
    daemon._serve_batch()
    # The second batch binds: its renewals are read, committed with it, then released.
    second = calls[calls.index("renewals", 1) :]
    assert second.index("renewals") < second.index("commit") < second.index("released")


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[socket.socket]:
    """systemd's notify socket, as the daemon's Notifier finds it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_no_bcc_means_the_slow_path_alone_said_loudly(
    tmp_path: Path,
    io: FakeIO,
    detached: list[str],
    signals: Signals,
    notify: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_headers(config: Config, server: object) -> None:
        raise LoadError("cannot load bpf/brushtail.c: kernel headers not found\nmore detail")

    monkeypatch.setattr(main, "FastPath", no_headers)
    config = daemon_config(tmp_path, fastpath=True)
    with caplog.at_level(logging.INFO, logger="brushtaild"):
        daemon = Daemon(config, tmp_path / "brushtail.yaml", signals)
        daemon._start_complete()
    try:
        assert daemon.fastpath is None
        assert "fast path FAILED, serving on the slow path alone" in caplog.text
        assert "kernel headers not found" in caplog.text
        assert sample(daemon, "dhcp_fastpath_up") == 0
        # A program an earlier run left attached must not answer from unmaintained maps.
        assert detached == [config.interface]
        status = notify.recv(4096).decode()
        assert status.startswith("READY=1\n")
        assert "fast path: FAILED (cannot load bpf/brushtail.c: kernel headers not found)" in status
        # And it serves.
        io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 1))]))
        daemon._serve_batch()
        assert io.sent_types() == [MessageType.OFFER]
    finally:
        daemon.store.close()


def test_attach_failure_means_the_slow_path_alone(
    tmp_path: Path,
    io: FakeIO,
    detached: list[str],
    signals: Signals,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    fast = FakeFastPath(calls)
    fast.attach_error = LoadError("cannot attach XDP to sub0: native: busy; generic: busy")
    monkeypatch.setattr(main, "FastPath", lambda config, server: fast)
    daemon = Daemon(daemon_config(tmp_path, fastpath=True), tmp_path / "x.yaml", signals)
    try:
        assert sample(daemon, "dhcp_fastpath_up") is None  # not known before the attach
        daemon._start_complete()
        assert daemon.fastpath is None and "close" in calls
        assert sample(daemon, "dhcp_fastpath_up") == 0
        assert "FAILED (cannot attach XDP to sub0" in daemon._status(1.0)
    finally:
        daemon.store.close()


def test_a_fastpath_that_fails_to_follow_is_removed_and_the_acks_still_go(
    tmp_path: Path,
    io: FakeIO,
    detached: list[str],
    signals: Signals,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    fast = FakeFastPath(calls)
    monkeypatch.setattr(main, "FastPath", lambda config, server: fast)
    daemon = Daemon(daemon_config(tmp_path, fastpath=True), tmp_path / "x.yaml", signals)
    try:
        daemon._start_complete()
        assert sample(daemon, "dhcp_fastpath_up") == 1
        fast.apply_error = RuntimeError("map full")
        io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 1))]))
        daemon._serve_batch()
        assert daemon.fastpath is None and sample(daemon, "dhcp_fastpath_up") == 0
        assert io.sent_types() == [MessageType.OFFER]
    finally:
        daemon.store.close()


# --- start-up ------------------------------------------------------------------------------


def test_the_fast_path_compiles_on_a_thread_and_then_serves_the_engine(
    tmp_path: Path, io: FakeIO, detached: list[str], signals: Signals,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The compile (seconds of clang) runs beside the store load and the engine build; the
    maps are then planned from the engine, not from the empty one it started with."""
    fast = FakeFastPath([])
    threads: list[str] = []

    def compiling(config: Config, server: object) -> FakeFastPath:
        threads.append(threading.current_thread().name)
        return fast

    monkeypatch.setattr(main, "FastPath", compiling)
    daemon = Daemon(daemon_config(tmp_path, fastpath=True), tmp_path / "x.yaml", signals)
    try:
        assert threads and threads[0] != threading.main_thread().name
        assert daemon.fastpath is fast and fast.server is daemon.server  # type: ignore[attr-defined]
    finally:
        daemon.store.close()


def test_a_start_that_fails_while_compiling_closes_the_compiled_fast_path(
    tmp_path: Path, detached: list[str], signals: Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its pin directory's lock must not outlive the failed start."""
    calls: list[str] = []
    monkeypatch.setattr(main, "FastPath", lambda config, server: FakeFastPath(calls))

    def no_interface(ifname: str, server_id: int) -> None:
        raise OSError(19, "No such device")

    monkeypatch.setattr(main, "PacketIO", no_interface)
    with pytest.raises(OSError):
        Daemon(daemon_config(tmp_path, fastpath=True), tmp_path / "x.yaml", signals)
    assert calls == ["close"]


def test_signals_are_handled_during_the_compile(
    tmp_path: Path, io: FakeIO, detached: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 16: a SIGHUP while BCC compiles (tens of seconds) must become a
    reload once started, not kill the daemon; a SIGTERM then is a clean exit 0."""
    handlers: list[object] = []

    def compiling(config: Config, server: object) -> None:
        handlers.append(signal.getsignal(signal.SIGHUP))
        handlers.append(signal.getsignal(signal.SIGTERM))
        # Only if handled: the default action would end the test run itself.
        if all(callable(h) for h in handlers):
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGTERM)
        raise LoadError("stop here")

    monkeypatch.setattr(main, "FastPath", compiling)
    path = tmp_path / "brushtail.yaml"
    path.write_text(
        f"site: edge-a\ninterface: sub0\nserver_id: 198.18.0.1\nstate_dir: {tmp_path}/state\n"
        "pools:\n  - name: residential\n    subnet: 198.18.0.0/16\n"
        '    ranges: ["198.18.1.0-198.18.1.9"]\n'
        # Checked by the config (under bpffs), never touched: FastPath is the stand-in.
        f"fastpath:\n  enabled: true\n  pin_dir: /sys/fs/bpf/brushtail-unit-{os.getpid()}\n"
    )
    before = signal.getsignal(signal.SIGHUP)
    level = logging.getLogger().level
    try:
        assert main.main(["--config", str(path)]) == 0
    finally:
        logging.getLogger().setLevel(level)
    assert all(callable(h) and h is not signal.SIG_DFL for h in handlers), handlers
    # main() puts back what it found.
    assert signal.getsignal(signal.SIGHUP) is before


def test_a_sighup_during_startup_is_a_reload_once_started(
    tmp_path: Path, io: FakeIO, detached: list[str], signals: Signals,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    def compiling(config: Config, server: object) -> FakeFastPath:
        os.kill(os.getpid(), signal.SIGHUP)
        return FakeFastPath([])

    monkeypatch.setattr(main, "FastPath", compiling)
    daemon = Daemon(daemon_config(tmp_path, fastpath=True), tmp_path / "x.yaml", signals)
    try:
        assert signals.reload and not signals.stop
    finally:
        daemon.store.close()


def test_the_watchdog_is_fed_while_a_reload_rebuilds_the_leases(
    tmp_path: Path,
    io: FakeIO,
    detached: list[str],
    signals: Signals,
    notify: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding 16: a reload at 1M leases takes longer than WatchdogSec."""
    monkeypatch.setenv("WATCHDOG_USEC", "20000")
    path = tmp_path / "brushtail.yaml"
    path.write_text(
        f"site: edge-a\ninterface: sub0\nserver_id: 198.18.0.1\nstate_dir: {tmp_path}/state\n"
        "pools:\n  - name: residential\n    subnet: 198.18.0.0/16\n"
        '    ranges: ["198.18.1.0-198.18.1.9"]\n'
        "fastpath:\n  enabled: false\n"
    )
    daemon = Daemon(main.load_daemon_config(path), path, signals)
    try:
        daemon._start_complete()
        assert notify.recv(4096).startswith(b"READY=1")
        reconfigured = daemon.server.reconfigured

        def slow_rebuild(config: Config, now: float, keepalive: Callable[[], object]) -> Any:
            for _ in range(3):
                time.sleep(0.02)
                keepalive()
            return reconfigured(config, now, keepalive)

        monkeypatch.setattr(daemon.server, "reconfigured", slow_rebuild)
        daemon._reload_config()
        pings = []
        notify.settimeout(0.1)
        with contextlib.suppress(TimeoutError):
            while True:
                pings.append(notify.recv(4096))
        assert pings.count(b"WATCHDOG=1") >= 3
    finally:
        daemon.store.close()


# --- the fast path's and the housekeeping's failures stay out of the loop ------------------


class _Broken(FakeFastPath):
    def renewals(self) -> list[Renewal]:
        raise OSError(errno.EBUSY, "retired pins busy")


def test_a_ring_that_cannot_be_read_takes_the_fast_path_down_not_the_daemon(
    daemon: Daemon, io: FakeIO, detached: list[str]
) -> None:
    calls: list[str] = []
    daemon.fastpath = _Broken(calls)  # type: ignore[assignment]
    daemon._fastpath_collector = _EmptyCollector()  # type: ignore[assignment]
    daemon.metrics.registry.register(daemon._fastpath_collector)
    taken_down_before = len(detached)
    io.batches.append(Received(frames=[frame(request(MessageType.DISCOVER, 1))]))
    daemon._serve_batch()
    assert daemon.fastpath is None and "close" in calls
    assert detached[taken_down_before:] == [daemon.config.interface]
    assert io.sent_types() == [MessageType.OFFER]


def test_a_take_down_that_fails_at_run_time_leaves_the_loop_going(
    daemon: Daemon, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(_daemon: Daemon, why: str) -> None:
        raise OSError(errno.EPERM, "bpffs is read-only")

    monkeypatch.setattr(Daemon, "_take_down_leftover", refuse)
    calls: list[str] = []
    daemon.fastpath = _Broken(calls)  # type: ignore[assignment]
    daemon._fastpath_collector = _EmptyCollector()  # type: ignore[assignment]
    daemon.metrics.registry.register(daemon._fastpath_collector)
    daemon._housekeeping()
    assert daemon.fastpath is None
    assert "FAILED" in daemon._status(1.0)


def test_an_expiry_bug_is_counted_and_the_loop_goes_on(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_tick(now: float) -> Decision:
        raise RuntimeError("bug")

    monkeypatch.setattr(daemon.server, "tick", broken_tick)
    daemon._housekeeping()
    assert dropped(daemon, "internal_error") == 1


def test_a_log_stream_that_is_gone_does_not_stop_the_daemon(daemon: Daemon) -> None:
    class Gone(io_module.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "journald went away")

    log = LeaseLog(Gone())
    log.add([LeaseEvent(LeaseEventKind.ACK, b"\x01", b"\x02" * 6, 1, "p")], "slow")
    log.flush()


def test_relays_answered_are_handed_to_the_fast_path_and_a_refresh_failure_stays_inside(
    daemon: Daemon, io: FakeIO, caplog: pytest.LogCaptureFixture
) -> None:
    fast = FakeFastPath([])
    daemon.fastpath = fast  # type: ignore[assignment]
    io.batches.append(Received(frames=[frame(relayed_discover(1))]))
    daemon._serve_batch()
    assert fast.answered_relays == [RELAY]
    daemon._housekeeping()
    assert fast.relay_refreshes == 1

    def broken(now: float) -> None:
        raise OSError(errno.ENOBUFS, "netlink buffer overrun")

    fast.refresh = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        daemon._housekeeping()  # logged, not raised
    assert "relay refresh failed" in caplog.text


# --- metrics after a known sequence ---------------------------------------------------------


def test_metrics_count_each_reply_nak_reason_lease_event_and_pool_state(
    daemon: Daemon, io: FakeIO
) -> None:
    first = opt.parse_ip("198.18.1.0")
    second = first + 1
    elsewhere = opt.parse_ip("203.0.113.5")
    sequence = [
        request(MessageType.DISCOVER, 1),
        request(MessageType.REQUEST, 1, requested=first, server_id=SERVER),
        request(MessageType.DISCOVER, 2),
        request(MessageType.REQUEST, 2, requested=second, server_id=SERVER),
        request(MessageType.DECLINE, 2, requested=second, server_id=SERVER),
        request(MessageType.RELEASE, 1, ciaddr=first, server_id=SERVER),
        request(MessageType.REQUEST, 3, requested=elsewhere),  # INIT-REBOOT, wrong network
        request(MessageType.REQUEST, 3, server_id=SERVER),  # SELECTING without option 50
        request(MessageType.REQUEST, 3, requested=first, server_id=SERVER),  # free again
    ]
    for msg in sequence:  # one a batch: a batch puts its DISCOVERs last
        io.batches.append(Received(frames=[frame(msg)]))
        daemon._serve_batch()
    replies = {"offer": 2, "ack": 3, "nak": 2}
    for result, count in replies.items():
        assert sample(daemon, "dhcp_slowpath_requests_total", {"result": result}) == count
    naks = {"not_on_network": 1, "no_requested_address": 1, "address_in_use": 0}
    for reason, count in naks.items():
        assert sample(daemon, "dhcp_naks_total", {"reason": reason}) == count
    events = {"offer": 2, "ack": 3, "nak": 2, "release": 1, "decline": 1, "expire": 0}
    for event, count in events.items():
        labels = {"event": event, "path": "slow"}
        assert sample(daemon, "dhcp_lease_events_total", labels) == count, event
    pool = {"pool": "residential"}
    assert sample(daemon, "dhcp_pool_addresses", pool) == 10
    assert sample(daemon, "dhcp_pool_addresses_assigned", pool) == 2  # client 3, the decline
    assert sample(daemon, "dhcp_pool_addresses_declined", pool) == 1
    assert sample(daemon, "dhcp_pool_utilization_ratio", pool) == pytest.approx(0.2)


def test_a_failing_relay_bookkeeping_drops_one_request_not_the_loop(
    daemon: Daemon, io: FakeIO
) -> None:
    fast = FakeFastPath([])
    daemon.fastpath = fast  # type: ignore[assignment]

    def broken(reply: Reply) -> None:
        raise RuntimeError("bug")

    fast.answered = broken  # type: ignore[method-assign]
    io.batches.append(Received(frames=[frame(relayed_discover(1))]))
    daemon._serve_batch()  # does not raise
    assert io.sent_types() == [MessageType.OFFER]
    assert dropped(daemon, "internal_error") == 1
