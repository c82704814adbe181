"""The daemon's side of replication (daemon/main.py) against a fake replication service:
local writes stamped before the commit and sent only after it, peers' bindings absorbed
without going back to the replica, a conflict's loser withdrawn from the kernel's maps
before the winner goes in, and the loser NAKed at its next request."""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from brushtaild.daemon import main
from brushtaild.daemon.main import Daemon, Signals
from brushtaild.daemon.replication import Incoming, ReplicationService
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import MessageType
from brushtaild.engine.decisions import Decision
from brushtaild.engine.leases import LeaseState
from brushtaild.net.packet_io import Received
from brushtaild.replication.hlc import Hlc
from brushtaild.replication.replica import Counters
from brushtaild.replication.state import Binding, Conflict
from brushtaild.store.lease_store import ReplicaChanges
from tests.engine_helpers import mac, request
from tests.unit import test_daemon_loop
from tests.unit.test_control import bind
from tests.unit.test_daemon_loop import FakeFastPath, FakeIO, daemon_config, frame

# The loop tests' fixtures: a fake packet socket, no leftover program, signals installed.
io = test_daemon_loop.io
detached = test_daemon_loop.detached
signals = test_daemon_loop.signals


@dataclass
class FakeService:
    """What the daemon asks of ReplicationService, recorded in order."""

    calls: list[str] = field(default_factory=list)
    recorded: list[Decision] = field(default_factory=list)
    incoming: Incoming = field(default_factory=Incoming)

    def record(self, decisions: list[Decision], now: float) -> None:
        self.calls.append("record")
        self.recorded += decisions

    def changes(self) -> ReplicaChanges | None:
        return None

    def receive(self, now: float) -> Incoming:
        incoming, self.incoming = self.incoming, Incoming()
        return incoming

    def flush(self, now: float) -> None:
        self.calls.append("flush")

    def tick(self, now: float) -> None:
        pass

    def peers_up(self, now: float) -> list[str]:
        return ["edge-b"]

    @property
    def replica(self) -> Any:
        return SimpleNamespace(peers=("edge-b", "edge-c"))

    def next_deadline(self) -> float:
        return time.time() + 60

    def log_conflicts(self, conflicts: list[Conflict]) -> None:
        ReplicationService.log_conflicts(self, conflicts)  # type: ignore[arg-type]

    def close(self) -> None:
        pass


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> FakeFastPath:
    fake = FakeFastPath([])
    monkeypatch.setattr(main, "FastPath", lambda config, server: fake)
    return fake


@pytest.fixture
def wired(
    tmp_path: Path, io: FakeIO, detached: list[str], signals: Signals, fast: FakeFastPath
) -> Any:
    daemon = Daemon(daemon_config(tmp_path, fastpath=True), tmp_path / "x.yaml", signals)
    service = FakeService()
    daemon.replication = service  # type: ignore[assignment]
    daemon._lag = daemon.metrics.add_replication(Counters, lambda: 0, lambda: 0)
    daemon._start_complete()
    assert daemon._status(time.perf_counter()).endswith("peers: 1/2 up (edge-b)")
    yield daemon, service
    daemon.store.close()


def binding(address: int, n: int, tenure_ms: int, expires: float) -> Binding:
    stamp = Hlc(tenure_ms, 0, "edge-b")
    return Binding(
        address=address,
        tenure=stamp,
        client_id=b"\x01" + mac(n),
        stamp=stamp,
        hwaddr=mac(n),
        pool="residential",
        state=LeaseState.BOUND,
        expires_ms=int(expires * 1000),
        owner_expires_ms=int(expires * 1000),
    )


def test_local_writes_are_recorded_before_the_commit_and_sent_after_it(
    wired: Any, io: FakeIO, fast: FakeFastPath
) -> None:
    daemon, service = wired
    address = bind(daemon, io, 1)
    written = [lease for d in service.recorded for lease in d.lease_writes]
    assert [lease.address for lease in written if lease.state is LeaseState.BOUND] == [address]
    # The batch is recorded (and committed) before housekeeping sends what it produced.
    service.calls.clear()
    daemon._housekeeping(None)
    assert service.calls[-1] == "flush"


def test_a_conflict_loser_is_withdrawn_replaced_by_the_winner_and_naked(
    wired: Any, io: FakeIO, fast: FakeFastPath, caplog: pytest.LogCaptureFixture
) -> None:
    daemon, service = wired
    address = bind(daemon, io, 1)
    now = time.time()
    winner = binding(address, 2, int(now * 1000), now + 600)
    loser = binding(address, 1, int(now * 1000) - 5000, now + 3600)
    service.incoming = Incoming([winner.lease()], [Conflict(winner, loser)], [winner.stamp.wall])
    service.recorded.clear()
    fast.withdrawn.clear()
    with caplog.at_level(logging.WARNING):
        daemon._serve_peers()
    assert fast.withdrawn[:1] == [address]
    stored = {lease.address: lease for lease in daemon.store.load()}
    assert stored[address].client_id == winner.client_id
    # The absorbed write does not go back to the replica as a local change.
    assert not [lease for d in service.recorded for lease in d.lease_writes]
    assert f"replication conflict ip={opt.format_ip(address)}" in caplog.text
    assert daemon.metrics.registry.get_sample_value("dhcp_replication_lag_seconds_count") == 1
    # The loser's renewal is refused.
    renewal = request(MessageType.REQUEST, 1, ciaddr=address)
    io.batches.append(Received(frames=[frame(renewal)]))
    daemon._serve_batch()
    assert parse(io.sent[-1][0]).message_type is MessageType.NAK
