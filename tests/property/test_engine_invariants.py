"""Laws of allocation: whatever clients do, no address is ever given to two of them."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brushtaild.config.model import Limits
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.allocator import PoolAllocator
from brushtaild.engine.leases import LeaseState
from brushtaild.engine.server import Server
from tests.engine_helpers import INGRESS, SERVER, make_config, make_pool, request

POOL = make_pool(first="198.18.1.0", last="198.18.1.7", lease_time=100)
FIRST = opt.parse_ip("198.18.1.0")

allocator_ops = st.lists(
    st.tuples(st.sampled_from(["allocate", "take", "release"]), st.integers(0, 9)), max_size=200
)


@given(allocator_ops)
def test_allocator_never_hands_out_an_address_in_use(ops: list[tuple[str, int]]) -> None:
    alloc = PoolAllocator(POOL, SERVER)
    in_use: set[int] = set()
    for op, offset in ops:
        address = FIRST + offset
        if op == "allocate":
            got = alloc.allocate()
            if got is None:
                assert len(in_use) == alloc.total
            else:
                assert got not in in_use and alloc.contains(got)
                in_use.add(got)
        elif op == "take":
            assert alloc.take(address) == (alloc.contains(address) and address not in in_use)
            if alloc.contains(address):
                in_use.add(address)
        else:
            alloc.release(address)
            in_use.discard(address)
        assert alloc.assigned == len(in_use)


client_ops = st.lists(
    st.tuples(
        st.sampled_from(["discover", "select", "renew", "reboot", "release", "decline", "wait"]),
        st.integers(0, 11),  # client number: more clients than addresses
        st.integers(0, 9),  # address offset, for requests naming an address
    ),
    max_size=120,
)


def _message(op: str, client: int, address: int) -> Message:
    if op == "discover":
        return request(MessageType.DISCOVER, client)
    if op == "select":
        return request(MessageType.REQUEST, client, requested=address, server_id=SERVER)
    if op == "renew":
        return request(MessageType.REQUEST, client, ciaddr=address)
    if op == "reboot":
        return request(MessageType.REQUEST, client, requested=address)
    if op == "release":
        return request(MessageType.RELEASE, client, ciaddr=address)
    return request(MessageType.DECLINE, client, requested=address, server_id=SERVER)


# Clients come on two VLANs (a pool listing none serves them alike), which limits count on.
LIMITS = [Limits(), Limits(max_leases_per_vlan=3, max_offers_per_vlan=2)]


@pytest.mark.parametrize("limits", LIMITS, ids=["no limits", "limits"])
@settings(max_examples=300, deadline=None)
@given(ops=client_ops)
def test_no_address_is_ever_active_for_two_clients(
    limits: Limits, ops: list[tuple[str, int, int]]
) -> None:
    config = replace(make_config(POOL, offer_hold=20, decline_hold=50), limits=limits)
    server = Server(config, [], 0.0)
    now = 0.0
    for op, client, offset in ops:
        address = FIRST + offset
        if op == "wait":
            now += 15
            server.tick(now)
            server.table.check()
            continue
        msg = _message(op, client, address)
        decision = server.handle(msg, replace(INGRESS, vlans=(100 + client % 2,)), now)
        # The table's books, the counts of bound leases and offers per line among them.
        server.table.check()
        if decision.drop is DropReason.POOL_EXHAUSTED:
            usage = server.pool_usage()[POOL.name]
            assert usage.assigned == usage.total
        # Invariant: active leases, quarantines and offers never share an address.
        occupied = [
            lease.address
            for lease in server.leases()
            if lease.state in (LeaseState.BOUND, LeaseState.DECLINED) and lease.expires > now
        ]
        assert len(occupied) == len(set(occupied))
        # The pool's declined count is its quarantine records, whatever ended them.
        declined = [lease for lease in server.leases() if lease.state is LeaseState.DECLINED]
        assert server.pool_usage()[POOL.name].declined == len(declined)
        offered = [r.message.yiaddr for r in decision.replies if r.message.yiaddr]
        for address_offered in offered:
            assert PoolAllocator(POOL, SERVER).contains(address_offered)
            owners = [
                lease.client_id
                for lease in server.leases()
                if lease.address == address_offered
                and lease.state is LeaseState.BOUND
                and lease.expires > now
            ]
            assert owners in ([], [bytes((1,)) + msg.hwaddr])
