"""The daemon's replication service (brushtaild/daemon/replication.py) between two sites
in one process, over real DTLS on the loopback of a namespace of their own: what a local
change persists and sends, and when; what a peer's message gives the lease table; what
is refused, counted and never raised."""

import select
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from brushtaild.config.model import (
    ClassMatch,
    ClientClass,
    Config,
    Peer,
    Replication,
    ReplicationTuning,
)
from brushtaild.daemon.replication import (
    MAX_SKEW,
    EvictionRefused,
    Incoming,
    ReplicationService,
    params_of,
)
from brushtaild.engine.decisions import Decision
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.replication import pki
from tests.e2e import netns
from tests.engine_helpers import make_config, make_pool

LOOPBACK = "127.0.0.1"
FIRST = 0xC6120100  # 198.18.1.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC).replace(tzinfo=None)
    ca = pki.create_ca(root / "ca", "cluster", 30, now)
    for site in ("a", "b"):
        ca.issue(site, 5, root / site, now)
    return root


@pytest.fixture
def namespace() -> Iterator[str]:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    with netns.Link() as link:
        yield link.server_ns


def config(site: str, certs: Path, peer: str, peer_port: int) -> Config:
    settings = Replication(
        peers=(Peer(peer, IPv4Address(LOOPBACK), peer_port),),
        ca=certs / site / "ca.crt",
        certificate=certs / site / "site.crt",
        key=certs / site / "site.key",
        tuning=ReplicationTuning(block_size=16),
    )
    base = make_config(make_pool(first="198.18.1.0", last="198.18.1.255", lease_time=120))
    return replace(base, site=site, replication=settings)


def pair(namespace: str, certs: Path, now: float) -> tuple[ReplicationService, ReplicationService]:
    with netns.in_netns(namespace):
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
    port_a, port_b = (s.getsockname()[1] for s in socks)
    services = []
    for (site, peer, peer_port), sock in zip(
        (("a", "b", port_b), ("b", "a", port_a)), socks, strict=True
    ):
        cfg = config(site, certs, peer, peer_port)
        assert cfg.replication is not None
        services.append(ReplicationService(cfg, cfg.replication, None, now, sock=sock))
    return services[0], services[1]


def pump(services: tuple[ReplicationService, ...], seconds: float) -> dict[str, Incoming]:
    """Drive both services (flush, read, timers) for `seconds`: what each received."""
    got = {s.replica.site: Incoming() for s in services}
    end = time.time() + seconds
    while time.time() < end:
        for s in services:
            s.flush(time.time())
        readable, _, _ = select.select(services, [], [], 0.02)
        for s in services:
            now = time.time()
            if s in readable:
                incoming = s.receive(now)
                mine = got[s.replica.site]
                mine.leases += incoming.leases
                mine.conflicts += incoming.conflicts
                mine.stamps_ms += incoming.stamps_ms
            if now >= s.next_deadline():
                s.tick(now)
    return got


def lease(address: int, client: int, now: float, state: LeaseState = LeaseState.BOUND) -> Lease:
    hwaddr = bytes((2, 0, 0, 0, 0, client))
    return Lease(address, b"\x01" + hwaddr, hwaddr, "residential", state, now + 120, now)


def owned_address(service: ReplicationService, now: float) -> int:
    blocks = service.replica.policy.owned_blocks(int(now * 1000))
    assert blocks
    return blocks[0].first


def test_params_take_the_longest_lease_of_pools_and_classes() -> None:
    base = make_config(make_pool(lease_time=3600))
    settings = Replication(peers=(Peer("b", IPv4Address("198.19.0.2")),))
    longer = ClientClass("business", ClassMatch(), lease_time=86400)
    params = params_of(replace(base, classes=(longer,)), settings)
    assert params.longest_lease == 86400
    assert params.lost_after == 86400 + 600 + MAX_SKEW
    assert params_of(base, settings).longest_lease == 3600


def test_a_local_change_is_persisted_first_and_sent_only_at_flush(
    namespace: str, certs: Path
) -> None:
    now = time.time()
    a, b = pair(namespace, certs, now)
    try:
        address = owned_address(a, now)
        made = lease(address, 1, now)
        a.record([Decision(lease_writes=[made])], now)
        changes = a.changes()
        assert changes is not None
        assert [binding.address for binding in changes.bindings] == [address]
        assert changes.clock == a.replica.clock.last
        assert a.changes() is None  # taken
        # Nothing was sent before flush: b hears nothing.
        readable, _, _ = select.select([b], [], [], 0.3)
        assert not readable
        got = pump((a, b), 1.0)["b"]
        assert [x.address for x in got.leases] == [address]
        assert got.leases[0].client_id == made.client_id
        assert got.stamps_ms and abs(got.stamps_ms[0] / 1000 - now) < 5
        changes = b.changes()
        assert changes is not None and [x.address for x in changes.bindings] == [address]
        assert b.replica.counters.deltas_received >= 1
        assert b.peers_up(time.time()) == ["a"]
        described = b.describe(time.time())
        assert described["peers"][0]["site"] == "a"  # type: ignore[index]
        assert described["peers"][0]["up"] is True  # type: ignore[index]
    finally:
        a.close()
        b.close()


def test_an_expiry_is_not_replicated(namespace: str, certs: Path) -> None:
    now = time.time()
    a, b = pair(namespace, certs, now)
    try:
        address = owned_address(a, now)
        a.record([Decision(lease_writes=[lease(address, 1, now)])], now)
        a.changes()
        a.record([Decision(lease_writes=[lease(address, 1, now, LeaseState.EXPIRED)])], now)
        assert a.changes() is None
        assert a.replica.state.bindings[address].state is LeaseState.BOUND
    finally:
        a.close()
        b.close()


def test_garbage_from_an_authenticated_peer_is_counted_and_never_raised(
    namespace: str, certs: Path
) -> None:
    now = time.time()
    a, b = pair(namespace, certs, now)
    try:
        a.transport.send("b", b"\x00not a replication message", now)
        got = pump((a, b), 1.0)["b"]
        assert not got.leases
        assert b.replica.counters.malformed == 1
        assert b.errors == 0
    finally:
        a.close()
        b.close()


def test_eviction_is_refused_with_the_wait_then_moves_the_blocks(
    namespace: str, certs: Path
) -> None:
    now = time.time()
    a, b = pair(namespace, certs, now)
    try:
        with pytest.raises(EvictionRefused, match="wait"):
            a.evict("b", now + 1)
        with pytest.raises(ValueError):
            a.evict("nobody", now + 1)
        later = now + a.params.lost_after + 1
        theirs = len(a.layout.blocks()) - a.owned_blocks(now)
        assert theirs > 0
        assert a.moved_blocks(now) == []
        assert a.evict("b", later) == theirs
        changes = a.changes()
        assert changes is not None and len(changes.owners) == theirs
        # Ready only once lost_after has passed here too: then they move, once.
        ready = later + a.params.lost_after
        assert a.owned_blocks(ready) == len(a.layout.blocks())
        assert len(a.moved_blocks(ready)) == theirs
        assert a.moved_blocks(ready + 1) == []
    finally:
        a.close()
        b.close()


def test_recovering_is_honoured_on_a_first_start_only(namespace: str, certs: Path) -> None:
    now = time.time()
    a, b = pair(namespace, certs, now)
    a.close()
    b.close()
    with netns.in_netns(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
    cfg = config("a", certs, "b", 1)
    assert cfg.replication is not None
    fresh = ReplicationService(cfg, cfg.replication, None, now, recovering=True, sock=sock)
    try:
        assert fresh.owned_blocks(now) == 0
        changes = fresh.changes()  # the wait is persisted at once
        assert changes is not None and changes.blind_until_ms > now * 1000
        snapshot = fresh.replica.snapshot()
    finally:
        fresh.close()
    with netns.in_netns(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
    snapshot.blind_until_ms = 0
    again = ReplicationService(cfg, cfg.replication, snapshot, now, recovering=True, sock=sock)
    try:
        assert not again.recovering
        assert again.owned_blocks(now) > 0
    finally:
        again.close()


def test_a_failure_to_tell_the_owned_blocks_is_counted_not_raised(
    namespace: str, certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moved_blocks runs from the daemon's housekeeping: a bug there must not stop the
    loop. The blocks are looked at again at the next call."""
    now = time.time()
    a, b = pair(namespace, certs, now)
    try:

        def broken(now_ms: int) -> list[object]:
            raise RuntimeError("bug")

        monkeypatch.setattr(a.replica.policy, "owned_blocks", broken)
        assert a.moved_blocks(now + 1) == [] and a.errors == 1
        monkeypatch.undo()
        assert a.moved_blocks(now + 2) == []
        assert a.errors == 1
    finally:
        a.close()
        b.close()
