"""Replicated leases in the kernel's maps: what `Server.absorb` decides reaches them through
MapSync as any decision does. A binding that replaces another client's record takes its
entry; a lease at an address of another site's block gets one capped at its
`extension_limit` (the kernel renews it no further: docs/STATE.md, rule 2), and a client
moving there has its entry moved with it."""

from dataclasses import replace

from brushtaild.engine.server import Server
from brushtaild.xdp import maps
from brushtaild.xdp.sync import cap_ns
from tests.bpf.harness import Fastpath

MAC = bytes.fromhex("02b700000801")
OTHER = bytes.fromhex("02b700000802")


class Sites:
    """A fake replication: every address is ours but those in `foreign`."""

    block_size = 16

    def __init__(self) -> None:
        self.foreign: set[int] = set()

    def owns(self, address: int, now: float) -> bool:
        return address not in self.foreign

    def may_allocate(self, address: int, client_id: bytes, now: float) -> bool:
        return self.owns(address, now)

    def extension_limit(self, address: int, client_id: bytes, now: float) -> float:
        return now + 60 if address in self.foreign else float("inf")


def test_an_absorbed_binding_takes_the_entry_of_the_record_it_replaces(fastpath: Fastpath) -> None:
    lease = fastpath.bind(MAC)
    assert fastpath.entry(maps.Key(MAC)) is not None
    winner = replace(lease, client_id=b"\x01" + OTHER, hwaddr=OTHER)
    decision = fastpath.server.absorb([winner], fastpath.now)
    fastpath.sync.apply([decision], fastpath.now)
    assert fastpath.entry(maps.Key(MAC)) is None
    entry = fastpath.entry(maps.Key(OTHER))
    assert entry is not None and entry.address == maps.net32(lease.address)


def test_an_entry_at_another_sites_address_is_capped(fastpath: Fastpath) -> None:
    sites = Sites()
    fastpath.server = Server(fastpath.config, [], fastpath.now, replication=sites)
    fastpath.sync.server = fastpath.server
    lease = fastpath.bind(MAC)
    assert fastpath.entry(maps.Key(MAC)) is not None
    elsewhere = lease.address + 1
    sites.foreign.add(elsewhere)
    moved = replace(lease, address=elsewhere)
    decision = fastpath.server.absorb([moved], fastpath.now)
    assert decision.lease_deletes == [lease.address]
    fastpath.sync.apply([decision], fastpath.now)
    entry = fastpath.entry(maps.Key(MAC))
    assert entry is not None and entry.address == maps.net32(elsewhere)
    assert entry.cap_ns == cap_ns(fastpath.now + 60)
    # Another client's binding there replaces it: that client's entry, capped alike.
    roaming = replace(moved, client_id=b"\x01" + OTHER, hwaddr=OTHER)
    fastpath.sync.apply([fastpath.server.absorb([roaming], fastpath.now)], fastpath.now)
    assert fastpath.entry(maps.Key(MAC)) is None
    entry = fastpath.entry(maps.Key(OTHER))
    assert entry is not None and entry.cap_ns == cap_ns(fastpath.now + 60)
