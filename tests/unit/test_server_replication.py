"""The engine with a replica: new clients only in this site's blocks, roaming clients
extended only to the bound (their kernel entries capped there), merged bindings absorbed."""

from collections import deque
from dataclasses import replace
from ipaddress import IPv4Network

from brushtaild.config.model import AddressRange
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.allocator import Admission, PoolAllocator
from brushtaild.engine.decisions import Decision, LeaseEventKind, NakReason
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.server import Server, client_identity
from brushtaild.replication.blocks import BlockLayout
from brushtaild.replication.params import Params
from brushtaild.replication.replica import Outgoing, Replica
from tests.engine_helpers import INGRESS, SERVER, make_config, make_pool, request

T0 = 1_800_000_000.0
LEASE = 100
POOL = make_pool(first="198.18.1.0", last="198.18.1.63", lease_time=LEASE)
CONFIG = make_config(POOL)
SITES = ("a", "b", "c")
LAYOUT = BlockLayout.of_config(CONFIG, SITES, 4)
PARAMS = Params(LEASE, extension_bound=30, max_skew=2, lost_after=140)


class Cluster:
    """Three sites wired as the daemon wires them; messages go only when delivered."""

    def __init__(self) -> None:
        self.replicas = {s: Replica(s, LAYOUT, PARAMS, None, T0) for s in SITES}
        self.servers = {s: Server(CONFIG, [], T0, replication=r) for s, r in self.replicas.items()}
        self.flight: deque[tuple[str, Outgoing]] = deque()

    def ask(self, site: str, msg: Message, now: float) -> Decision:
        decision = self.servers[site].handle(msg, INGRESS, now)
        for lease in decision.lease_writes:
            self.flight += [(site, m) for m in self.replicas[site].local_update(lease, now)]
        self.servers[site].table.check()
        return decision

    def deliver(self, now: float, down: str = "") -> list[Decision]:
        """Every message in flight, and the answers, except to or from `down`."""
        decisions = []
        while self.flight:
            sender, message = self.flight.popleft()
            if down in (sender, message.peer):
                continue
            received = self.replicas[message.peer].receive(sender, message.payload, now)
            self.flight += [(message.peer, m) for m in received.messages]
            decisions.append(self.absorb(message.peer, [b.lease() for b in received.bindings], now))
        return decisions

    def absorb(self, site: str, leases: list[Lease], now: float) -> Decision:
        decision = self.servers[site].absorb(leases, now)
        self.servers[site].table.check()
        return decision

    def dora(self, site: str, client: int, now: float) -> Message:
        offer = self.ask(site, request(MessageType.DISCOVER, client), now).replies[0].message
        selecting = request(MessageType.REQUEST, client, requested=offer.yiaddr, server_id=SERVER)
        ack = self.ask(site, selecting, now).replies[0].message
        assert ack.message_type is MessageType.ACK
        return ack


def owner(address: int) -> str:
    block = LAYOUT.block_of(address)
    assert block is not None
    return LAYOUT.initial_owner(block)


def lease_times(reply: Message) -> tuple[int, int, int]:
    o = reply.options
    codes = (OptionCode.LEASE_TIME, OptionCode.RENEWAL_TIME, OptionCode.REBINDING_TIME)
    return tuple(opt.decode_u32(o[c]) for c in codes)  # type: ignore[return-value]


def test_a_new_client_is_given_only_addresses_of_this_sites_blocks_until_they_run_out() -> None:
    cluster = Cluster()
    for site in SITES:
        owned = sum(
            b.last - b.first + 1 for b in LAYOUT.blocks() if LAYOUT.initial_owner(b) == site
        )
        given = []
        for n in range(100):
            client = 1000 * ord(site) + n
            if cluster.ask(site, request(MessageType.DISCOVER, client), T0).drop is not None:
                break
            given.append(cluster.dora(site, client, T0).yiaddr)
        assert len(given) == owned and all(owner(a) == site for a in given)


def test_a_roaming_client_is_extended_only_to_the_bound_then_naked_and_gets_an_address_here() -> (
    None
):
    cluster = Cluster()
    ack = cluster.dora("c", 1, T0)
    address = ack.yiaddr
    assert owner(address) == "c"
    cluster.deliver(T0)
    # c is cut off: b extends the client at most 30 s past what c acknowledged (T0 + 100).
    late = T0 + 90
    renewal = request(MessageType.REQUEST, 1, ciaddr=address)
    decision = cluster.ask("b", renewal, late)
    reply = decision.replies[0].message
    assert reply.message_type is MessageType.ACK
    assert lease_times(reply) == (40, 20, 35)
    assert decision.lease_writes[0].expires == T0 + 130
    # The kernel's entry is capped there too.
    answer = cluster.servers["b"].kernel_answer(decision.lease_writes[0], late)
    assert answer is not None and answer.cap == T0 + 130
    cluster.flight.clear()  # lost: c never hears of the extension
    # Under a second left: no entry, as the slow path NAKs.
    assert cluster.servers["b"].kernel_answer(decision.lease_writes[0], T0 + 129.5) is None
    decision = cluster.ask("b", renewal, T0 + 129.5)
    assert decision.nak is NakReason.OTHER_SITE
    # It DISCOVERs at b and is given one of b's addresses.
    fresh = cluster.dora("b", 1, T0 + 129.5)
    assert owner(fresh.yiaddr) == "b"


def test_no_binding_is_made_in_another_sites_block_for_a_client_it_does_not_know() -> None:
    cluster = Cluster()
    foreign = next(b.first for b in LAYOUT.blocks() if LAYOUT.initial_owner(b) == "c")
    decision = cluster.ask("a", request(MessageType.REQUEST, 7, ciaddr=foreign), T0)
    assert decision.nak is NakReason.OTHER_SITE and not decision.lease_writes
    selecting = request(MessageType.REQUEST, 7, requested=foreign, server_id=SERVER)
    assert cluster.ask("a", selecting, T0).nak is NakReason.OTHER_SITE


def test_absorb_replaces_another_clients_record_its_kernel_entry_goes_and_it_is_naked() -> None:
    cluster = Cluster()
    address = cluster.dora("b", 1, T0).yiaddr
    server = cluster.servers["b"]
    loser = server.lease_at(address)
    assert loser is not None and server.kernel_answer(loser, T0) is not None
    winner = replace(loser, client_id=client_identity(request(MessageType.DISCOVER, 2)))
    decision = server.absorb([winner], T0 + 1)
    server.table.check()
    assert decision.lease_writes == [winner] and decision.skipped == 0
    assert [e.kind for e in decision.events] == [LeaseEventKind.REPLICATED]
    assert server.lease_at(address) == winner
    assert server.table.lease_of(loser.client_id) is None
    # The write re-keys the kernel's entry: the winner's, here where b owns the address.
    assert server.kernel_answer(winner, T0 + 1) is not None
    renewal = request(MessageType.REQUEST, 1, ciaddr=address)
    assert cluster.ask("b", renewal, T0 + 2).nak is NakReason.ADDRESS_IN_USE


def test_absorb_moves_a_client_forgets_its_old_record_and_frees_a_quarantine_that_ended() -> None:
    cluster = Cluster()
    server = cluster.servers["a"]
    first = cluster.dora("a", 1, T0).yiaddr
    held = server.lease_at(first)
    assert held is not None
    elsewhere = next(b.first for b in LAYOUT.blocks() if LAYOUT.initial_owner(b) == "c")
    decision = server.absorb([replace(held, address=elsewhere, pool="gone")], T0 + 1)
    server.table.check()
    assert decision.lease_deletes == [first]
    moved = server.table.lease_of(held.client_id)
    assert moved is not None and moved.address == elsewhere and moved.pool == POOL.name
    assert server.kernel_answer(moved, T0 + 1) is None  # c's block: the slow path's
    quarantine = Lease(first, b"", held.hwaddr, POOL.name, LeaseState.DECLINED, T0 + 5, T0)
    server.absorb([quarantine], T0 + 2)
    assert server.pool_usage()[POOL.name].declined == 1
    server.absorb([replace(quarantine, expires=T0 + 2)], T0 + 3)
    server.table.check()
    assert server.lease_at(first) is None and server.pool_usage()[POOL.name].declined == 0


def test_a_blocks_leases_are_there_to_resync_when_its_owner_changes() -> None:
    cluster = Cluster()
    address = cluster.dora("b", 1, T0).yiaddr
    block = LAYOUT.block_of(address)
    assert block is not None
    server = cluster.servers["b"]
    (lease,) = server.leases_in(block.first, block.last)
    assert lease.address == address and server.kernel_answer(lease, T0) is not None
    cluster.flight += [("b", m) for m in cluster.replicas["b"].hand_over(block.first, "a", T0)]
    # A's block now: b's entry is capped as a roaming client's.
    answer = server.kernel_answer(lease, T0)
    assert answer is not None and answer.cap == T0 + 130
    assert server.leases_in(block.last + 1, block.last + 4) == []


def test_absorb_skips_and_counts_what_no_pool_of_ours_holds_and_never_raises() -> None:
    server = Cluster().servers["a"]
    odd = [
        Lease(0x0A000001, b"\x01x", b"\x02" * 6, "p", LeaseState.BOUND, T0 + 10, T0),
        Lease(opt.parse_ip("198.18.1.5"), b"", b"", "", LeaseState.BOUND, T0 + 10, T0),
        Lease(opt.parse_ip("198.18.1.6"), b"\x01y", b"", "x", LeaseState.RELEASED, 0.0, 0.0),
        Lease(opt.parse_ip("198.18.1.7"), b"\x01y", b"\x02", "x", LeaseState.REVOKED, T0 + 9, T0),
    ]
    decision = server.absorb(odd, T0)
    server.table.check()
    assert decision.skipped == 2 and decision.drop is DropReason.REPLICATED_ELSEWHERE
    assert len(decision.lease_writes) == 2


FIRST_1M = opt.parse_ip("198.16.0.1")
BIG = replace(
    POOL,
    subnet=IPv4Network("198.16.0.0/12"),
    ranges=(AddressRange(FIRST_1M, FIRST_1M + 999_999),),
)


class Thirds:
    """A fake replication that owns every third block of 256 (of a site among three)."""

    block_size = 256

    def __init__(self) -> None:
        self.questions = 0

    def owns(self, address: int, now: float) -> bool:
        self.questions += 1
        return (address - FIRST_1M) // 256 % 3 == 0

    def may_allocate(self, address: int, client_id: bytes, now: float) -> bool:
        return self.owns(address, now)

    def extension_limit(self, address: int, client_id: bytes, now: float) -> float:
        return 0.0


def admission(fake: Thirds, now: float = T0) -> Admission:
    return Admission(
        fake.block_size,
        lambda a: fake.owns(a, now),
        lambda a: fake.may_allocate(a, b"", now),
        now,
    )


def test_allocation_skips_other_sites_blocks_whole_in_a_million_address_pool() -> None:
    """A third of 1,000,000 addresses are ours, in blocks of 256: handing all of them out
    asks once per address given and once per block, and an address returned in another
    site's block is set aside, not asked about at every allocation."""
    alloc = PoolAllocator(BIG, SERVER)
    fake = Thirds()
    ours = [a for a in range(FIRST_1M, FIRST_1M + 1_000_000) if fake.owns(a, T0)]
    fake.questions = 0
    given = []
    while (address := alloc.allocate(admission(fake))) is not None:
        given.append(address)
    assert given == ours
    blocks = -(-1_000_000 // 256)
    assert fake.questions <= len(ours) + 2 * blocks  # the last, empty-handed, revisits
    # Another site's address, taken and returned (a roaming lease that ended here):
    # parked with its block at the first allocation that meets it, never asked again.
    foreign = FIRST_1M + 256
    assert alloc.take(foreign)
    alloc.release(foreign)
    alloc.release(ours[0])
    fake.questions = 0
    assert alloc.allocate(admission(fake)) == ours[0]
    assert alloc.allocate(admission(fake)) is None
    asked = fake.questions
    assert alloc.allocate(admission(fake)) is None  # within REVISIT_INTERVAL: no revisit
    assert fake.questions == asked


def test_a_block_that_becomes_ours_is_walked_at_the_next_revisit() -> None:
    alloc = PoolAllocator(BIG, SERVER)
    fake = Thirds()
    while alloc.allocate(admission(fake)) is not None:
        pass
    fake.owns = lambda address, now: True  # type: ignore[method-assign]
    assert alloc.allocate(admission(fake, T0 + 0.5)) is None
    assert alloc.allocate(admission(fake, T0 + 2)) == FIRST_1M + 256
