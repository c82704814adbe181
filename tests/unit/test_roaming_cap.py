"""A roaming client's kernel entry (an address of another site's block): capped at its
`extension_limit`, the cap raised when the owner's acknowledgement is absorbed, and the
kernel's renewals recorded no later than the limit (docs/STATE.md, rule 2)."""

import math
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from brushtaild.daemon import clock
from brushtaild.dhcp.constants import MessageType
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.decisions import Decision
from brushtaild.engine.leases import Lease
from brushtaild.engine.server import Server
from brushtaild.xdp import maps
from brushtaild.xdp.sync import MapSync, cap_ns, key_bytes
from tests.engine_helpers import mac, request
from tests.unit.test_server_replication import CONFIG, LAYOUT, SITES, T0, Cluster, owner
from tests.unit.test_xdp_maps import FakeProgram


class Synced(Cluster):
    """The three sites, each with its kernel maps kept as the daemon keeps them: a site's
    own decisions and what it absorbs from its peers are applied to its MapSync."""

    def __init__(self) -> None:
        super().__init__()
        self.programs = {s: FakeProgram() for s in SITES}
        self.syncs = {s: MapSync(self.programs[s], self.servers[s]) for s in SITES}

    def ask(self, site: str, msg: Message, now: float) -> Decision:
        decision = super().ask(site, msg, now)
        self.syncs[site].apply([decision], now)
        return decision

    def absorb(self, site: str, leases: list[Lease], now: float) -> Decision:
        absorbed = super().absorb(site, leases, now)
        self.syncs[site].apply([absorbed], now)
        return absorbed

    def entry(self, site: str, n: int) -> maps.LeaseEntry | None:
        rows = self.programs[site].tables["leases"].rows
        row = rows.get(key_bytes(mac(n)))
        return None if row is None else maps.LeaseEntry.from_buffer_copy(row[1])


def roaming() -> tuple[Synced, int]:
    """Client 1 bound at c (T0, lease 100 s), known at b by replication."""
    cluster = Synced()
    address = cluster.dora("c", 1, T0).yiaddr
    assert owner(address) == "c"
    cluster.deliver(T0)
    return cluster, address


def test_a_roaming_clients_entry_is_capped_at_its_extension_limit() -> None:
    cluster, address = roaming()
    # c acknowledged T0 + 100; b may extend 30 s past it.
    at_b = cluster.entry("b", 1)
    assert at_b is not None and maps.host32(at_b.address) == address
    assert at_b.cap_ns == cap_ns(T0 + 130)
    assert at_b.expires_ns == clock.to_boot_ns(T0 + 100)
    # At the owner the same client has no cap.
    at_c = cluster.entry("c", 1)
    assert at_c is not None and at_c.cap_ns == 0


def test_the_owners_acknowledgement_raises_the_cap_of_the_entry() -> None:
    cluster, address = roaming()
    renewal = request(MessageType.REQUEST, 1, ciaddr=address)
    # The slow path extends it to the bound: the entry keeps its cap.
    assert cluster.ask("b", renewal, T0 + 90).lease_writes[0].expires == T0 + 130
    capped = cluster.entry("b", 1)
    assert capped is not None and capped.cap_ns == cap_ns(T0 + 130)
    assert capped.expires_ns == clock.to_boot_ns(T0 + 130)
    # c learns of the extension and acknowledges it; b absorbs that and rewrites the entry.
    absorbed = cluster.deliver(T0 + 91)
    assert any(d.lease_writes for d in absorbed)
    raised = cluster.entry("b", 1)
    assert raised is not None and raised.cap_ns == cap_ns(T0 + 160)


@dataclass
class Roaming:
    """A replication that owns nothing, with a limit the test moves."""

    limit: float
    block_size: int = 256

    def owns(self, address: int, now: float) -> bool:
        return False

    def may_allocate(self, address: int, client_id: bytes, now: float) -> bool:
        return False

    def extension_limit(self, address: int, client_id: bytes, now: float) -> float:
        return self.limit


def roaming_server(limit: float) -> tuple[Server, Lease, Roaming]:
    """Client 1's lease at c's address, absorbed by a server that owns no block."""
    cluster, address = roaming()
    lease = cluster.servers["b"].lease_at(address)
    assert lease is not None
    fake = Roaming(limit)
    return Server(CONFIG, [lease], T0, replication=fake), lease, fake


def test_no_entry_once_the_slow_path_would_nak() -> None:
    server, lease, _ = roaming_server(T0 + 60.5)
    answer = server.kernel_answer(lease, T0 + 59)
    assert answer is not None and answer.cap == T0 + 60.5
    assert server.kernel_answer(lease, T0 + 60) is None


def test_a_kernel_renewal_within_the_limit_is_recorded_as_it_is() -> None:
    server, lease, _ = roaming_server(T0 + 130)
    renewed = server.kernel_renewal(lease.hwaddr, lease.address, T0 + 125, T0 + 25)
    assert renewed.drop is None and renewed.lease_writes[0].expires == T0 + 125
    assert server.renewals_past_cap == 0


def test_a_kernel_renewal_past_the_limit_is_recorded_at_the_limit_and_counted() -> None:
    """It cannot happen with an entry's current cap; an entry written before the limit
    fell can, until the decision's write rewrites it with the lower cap."""
    server, lease, fake = roaming_server(T0 + 130)
    fake.limit = T0 + 110
    renewed = server.kernel_renewal(lease.hwaddr, lease.address, T0 + 125, T0 + 25)
    assert renewed.drop is None and renewed.lease_writes[0].expires == T0 + 110
    assert server.renewals_past_cap == 1
    program = FakeProgram()
    sync = MapSync(program, server)
    sync.apply([renewed], T0 + 25)
    (row,) = program.tables["leases"].rows.values()
    assert maps.LeaseEntry.from_buffer_copy(row[1]).cap_ns == cap_ns(T0 + 110)
    # Counted across a reload.
    assert server.reconfigured(CONFIG, T0 + 26).renewals_past_cap == 1


def test_a_kernel_renewal_past_a_limit_already_gone_is_stale() -> None:
    server, lease, fake = roaming_server(T0 + 130)
    fake.limit = 0.0  # the client holds no binding there any more
    renewed = server.kernel_renewal(lease.hwaddr, lease.address, T0 + 125, T0 + 25)
    assert renewed.drop is DropReason.STALE_RENEWAL and not renewed.lease_writes
    assert server.renewals_past_cap == 1
    assert server.lease_at(lease.address) == lease


def test_a_block_handed_over_has_its_entries_capped_at_the_resync() -> None:
    cluster = Synced()
    address = cluster.dora("b", 1, T0).yiaddr
    entry = cluster.entry("b", 1)
    assert entry is not None and entry.cap_ns == 0
    # The block goes to c: its leases, written again (Server.leases_in), are capped.
    block = LAYOUT.block_of(address)
    assert block is not None
    cluster.replicas["b"].hand_over(block.first, "c", T0 + 1)
    resync = Decision(lease_writes=cluster.servers["b"].leases_in(block.first, block.last))
    cluster.syncs["b"].apply([resync], T0 + 1)
    capped = cluster.entry("b", 1)
    assert capped is not None and capped.cap_ns == cap_ns(T0 + 130)


def test_a_lease_of_this_sites_block_has_no_cap() -> None:
    cluster = Synced()
    address = cluster.dora("b", 1, T0).yiaddr
    lease = cluster.servers["b"].lease_at(address)
    assert lease is not None
    answer = cluster.servers["b"].kernel_answer(lease, T0)
    assert answer is not None and answer.cap is None
    assert math.isinf(cluster.servers["b"].table.extension_limit(address, lease.client_id, T0))


@given(st.floats(1e-3, 1e9))
def test_a_cap_converted_back_is_never_past_the_limit(since_boot: float) -> None:
    limit = clock.from_boot_ns(0) + since_boot
    assert 0 < cap_ns(limit) <= clock.to_boot_ns(limit)
    assert clock.from_boot_ns(cap_ns(limit)) <= limit


def test_no_cap_is_0_and_a_cap_before_boot_still_one() -> None:
    assert cap_ns(None) == 0
    assert cap_ns(clock.from_boot_ns(0) - 10) == 1
