"""Replicas of three sites driven by hand: deltas, roaming, reuse, anti-entropy, refusals,
handover, eviction, a conflict, a restart."""

from collections import deque
from dataclasses import replace

import pytest

from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.replication.blocks import BlockLayout
from brushtaild.replication.hlc import Hlc
from brushtaild.replication.params import Params
from brushtaild.replication.policy import EvictionRefused
from brushtaild.replication.replica import Outgoing, Replica
from brushtaild.replication.state import Binding
from brushtaild.replication.wire import MAX_PAYLOAD, Delta

T0 = 1_800_000_000.0
LEASE = 100.0
PARAMS = Params(LEASE, extension_bound=30, max_skew=2, lost_after=140, repair_messages=4)
FIRST, LAST = 0xC6120000, 0xC61203FF  # 1024 addresses: 64 blocks of 16
LAYOUT = BlockLayout(["a", "b", "c"], [("p", FIRST, LAST)], 16)
CLIENT = b"\x01client"
OTHER = b"\x01other"


def cluster(now: float = T0) -> dict[str, Replica]:
    return {s: Replica(s, LAYOUT, PARAMS, None, now) for s in LAYOUT.sites}


def deliver(
    sites: dict[str, Replica], messages: list[Outgoing], sender: str, now: float, down: str = ""
) -> list[Binding]:
    """Run the messages and every answer to the end; the bindings the merges changed."""
    queue = deque((sender, m) for m in messages)
    changed = []
    while queue:
        src, message = queue.popleft()
        assert len(message.payload) <= MAX_PAYLOAD
        if message.peer == down:
            continue
        received = sites[message.peer].receive(src, message.payload, now)
        changed += received.bindings
        queue.extend((message.peer, m) for m in received.messages)
    return changed


def owned_address(replica: Replica, now: float = T0) -> int:
    return replica.policy.owned_blocks(int(now * 1000))[0].first


def lease(address: int, client: bytes = CLIENT, expires: float = T0 + LEASE) -> Lease:
    return Lease(address, client, b"\x02" * 6, "p", LeaseState.BOUND, expires, T0)


def test_every_address_has_exactly_one_owner_and_all_sites_agree() -> None:
    sites = cluster()
    for block in LAYOUT.blocks():
        owners = [s for s, r in sites.items() if r.policy.owns(block, int(T0 * 1000))]
        assert len(owners) == 1


def test_a_lease_made_at_one_site_reaches_the_others_as_the_same_lease() -> None:
    sites = cluster()
    address = owned_address(sites["a"])
    assert sites["a"].may_allocate(address, CLIENT, T0)
    changed = deliver(sites, sites["a"].local_update(lease(address), T0), "a", T0)
    assert [b.lease() for b in changed] == [lease(address), lease(address)]
    for replica in sites.values():
        assert replica.state.bindings[address].owner_expires_ms == (T0 + LEASE) * 1000
    assert len({r.digests.total() for r in sites.values()}) == 1


def test_a_roaming_client_is_extended_only_the_bound_past_what_the_owner_acknowledged() -> None:
    sites = cluster()
    address = owned_address(sites["a"])
    deliver(sites, sites["a"].local_update(lease(address), T0), "a", T0)
    b = sites["b"]
    assert not b.may_allocate(address, CLIENT, T0)
    assert b.extension_limit(address, CLIENT, T0 + 50) == T0 + LEASE + 30
    assert b.extension_limit(address, OTHER, T0 + 50) == 0.0
    # Cut off from the owner: b extends to the limit and no further.
    b.local_update(lease(address, expires=T0 + 130), T0 + 50)
    assert b.extension_limit(address, CLIENT, T0 + 60) == T0 + 130
    # Once the owner hears of the extension it acknowledges it: the limit moves on.
    out = b.local_update(lease(address, expires=T0 + 130), T0 + 60)
    deliver(sites, out, "b", T0 + 60)
    assert sites["a"].state.bindings[address].owner_expires_ms == (T0 + 130) * 1000
    assert b.extension_limit(address, CLIENT, T0 + 60) == T0 + 160


def test_the_owner_reuses_another_clients_address_only_after_every_possible_extension() -> None:
    sites = cluster()
    a = sites["a"]
    address = owned_address(a)
    a.local_update(lease(address), T0)
    assert a.may_allocate(address, CLIENT, T0 + 1)
    assert not a.may_allocate(address, OTHER, T0 + LEASE)
    assert not a.may_allocate(address, OTHER, T0 + LEASE + 31.9)
    assert a.may_allocate(address, OTHER, T0 + LEASE + 32)


def test_a_released_address_waits_as_long_as_an_expired_one() -> None:
    """A site cut off from the release may still extend the client meanwhile."""
    sites = cluster()
    a = sites["a"]
    address = owned_address(a)
    a.local_update(lease(address), T0)
    released = replace(lease(address), state=LeaseState.RELEASED, expires=T0 + 5)
    a.local_update(released, T0 + 5)
    assert a.state.bindings[address].lease().state is LeaseState.RELEASED
    assert not a.may_allocate(address, OTHER, T0 + 10)
    assert a.may_allocate(address, OTHER, T0 + LEASE + 32)


def test_a_peer_that_missed_everything_is_repaired_a_bounded_amount_at_a_time() -> None:
    sites = cluster()
    a, b = sites["a"], sites["b"]
    addresses = [
        x for blk in a.policy.owned_blocks(int(T0 * 1000)) for x in range(blk.first, blk.last + 1)
    ]
    for n, address in enumerate(addresses[:300]):
        a.local_update(lease(address, b"\x01%d" % n), T0)  # b and c were down: all lost
    now, rounds = T0, 0
    while a.digests.total() != b.digests.total():
        rounds += 1
        assert rounds < 50
        now += 1
        for site in ("a", "b"):
            out = [m for m in sites[site].tick(now) if m.peer != "c"]
            sent_before = a.counters.messages_sent
            deliver(sites, out, site, now, down="c")
            # One round's repair stays within repair_messages (plus a request).
            assert a.counters.messages_sent - sent_before <= PARAMS.repair_messages + 1
    assert rounds > 1  # not all at once
    assert b.state.bindings == a.state.bindings


def test_a_stamp_too_far_ahead_is_refused_until_the_clock_catches_up() -> None:
    sites = cluster()
    a, b = sites["a"], sites["b"]
    address = owned_address(a)
    out = a.local_update(lease(address), T0 + 10)  # a's clock runs 10 s ahead of b's
    to_b = [m for m in out if m.peer == "b"]
    assert deliver(sites, to_b, "a", T0) == []
    assert b.counters.too_far_ahead == 1
    assert address not in b.state.bindings
    assert deliver(sites, to_b, "a", T0 + 8) != []


def test_a_relayed_binding_too_far_ahead_is_left_out_and_the_rest_merged() -> None:
    sites = cluster()
    a, b = sites["a"], sites["b"]
    now_ms = int(T0 * 1000)
    good = Binding(
        FIRST,
        Hlc(now_ms, 0, "c"),
        CLIENT,
        Hlc(now_ms, 0, "c"),
        b"",
        "p",
        LeaseState.BOUND,
        now_ms + 100_000,
        now_ms + 100_000,
    )
    ahead = Hlc(now_ms + 60_000, 0, "c")  # c's clock is a minute fast
    bad = replace(good, address=FIRST + 1, tenure=ahead, stamp=ahead)
    payload = a.codec.encode(Delta(Hlc(now_ms, 0, "a"), (good, bad)))
    assert b.receive("a", payload, T0).bindings == [good]
    assert b.counters.too_far_ahead == 1
    assert b.clock.last.wall == now_ms
    assert b.receive("a", payload, T0 + 59).bindings == [bad]


def test_messages_from_strangers_impostors_and_garbage_are_counted_and_ignored() -> None:
    sites = cluster()
    a, b = sites["a"], sites["b"]
    out = a.local_update(lease(owned_address(a)), T0)
    payload = next(m.payload for m in out if m.peer == "b")
    assert b.receive("mallory", payload, T0).bindings == []
    assert b.receive("c", payload, T0).bindings == []  # signed "a", came from c
    assert b.receive("a", payload[:-1], T0).bindings == []
    assert (b.counters.unknown_peer, b.counters.wrong_sender, b.counters.malformed) == (1, 1, 1)
    assert b.state.bindings == {}


def test_a_handed_over_block_is_used_only_once_the_new_owner_knows_what_was_acknowledged() -> None:
    sites = cluster()
    a, b = sites["a"], sites["b"]
    block = a.policy.owned_blocks(int(T0 * 1000))[0]
    a.local_update(lease(block.first), T0)  # lost on the way to b
    out = a.hand_over(block.first, "b", T0 + 1)
    assert not a.may_allocate(block.first + 1, OTHER, T0 + 1)
    deliver(sites, out, "a", T0 + 1)
    assert not b.may_allocate(block.first + 1, OTHER, T0 + 1)  # b misses a's lease
    for now in (T0 + 2, T0 + 3):
        deliver(sites, a.tick(now), "a", now)
    assert block.first in b.state.bindings
    assert b.may_allocate(block.first + 1, OTHER, T0 + 3)
    assert not b.may_allocate(block.first, OTHER, T0 + 3)


def test_a_lost_site_is_evicted_only_after_the_bound_and_its_blocks_go_to_the_others() -> None:
    sites = cluster()
    a, b, c = sites["a"], sites["b"], sites["c"]
    c_blocks = c.policy.owned_blocks(int(T0 * 1000))
    with pytest.raises(EvictionRefused):
        a.evict("c", T0 + 139)
    out = a.evict("c", T0 + 140)
    deliver(sites, out, "a", T0 + 140, down="c")
    taken = [blk for blk in c_blocks if a.policy.owns(blk, int((T0 + 140) * 1000))]
    given = [blk for blk in c_blocks if b.policy.owns(blk, int((T0 + 140) * 1000))]
    assert taken and given and len(taken) + len(given) == len(c_blocks)


def test_evicting_a_site_that_was_alive_gives_one_conflict_resolved_alike_everywhere() -> None:
    sites = cluster()
    a, b, c = sites["a"], sites["b"], sites["c"]
    address = owned_address(c)
    # c is cut off but alive; the operator evicts it anyway and a or b takes its block.
    deliver(sites, a.evict("c", T0 + 140), "a", T0 + 140, down="c")
    new_owner = next(r for r in (a, b) if r.may_allocate(address, OTHER, T0 + 141))
    c_out = c.local_update(lease(address, CLIENT, T0 + 240), T0 + 140)
    n_out = new_owner.local_update(lease(address, OTHER, T0 + 241), T0 + 141)
    conflicts = []
    for sender, out in ((c.site, c_out), (new_owner.site, n_out)):
        queue = deque((sender, m) for m in out)
        while queue:
            src, message = queue.popleft()
            received = sites[message.peer].receive(src, message.payload, T0 + 142)
            conflicts += received.conflicts
            queue.extend((message.peer, m) for m in received.messages)
    assert conflicts
    assert {x.winner.client_id for x in conflicts} == {OTHER}
    assert {x.loser.client_id for x in conflicts} == {CLIENT}
    assert {r.state.bindings[address].client_id for r in sites.values()} == {OTHER}
    # Anti-entropy tells c it lost its blocks: it stops allocating in them.
    for now in (T0 + 143, T0 + 144):
        deliver(sites, a.tick(now), "a", now)
    assert not c.may_allocate(address + 1, OTHER, T0 + 144)
    assert len({r.digests.total() for r in sites.values()}) == 1


def test_a_restarted_site_keeps_its_state_and_never_stamps_backwards() -> None:
    sites = cluster()
    a = sites["a"]
    address = owned_address(a)
    out = a.local_update(lease(address), T0 + 100)
    sent = next(d.sent for d in (a.codec.decode(m.payload) for m in out) if isinstance(d, Delta))
    again = Replica("a", LAYOUT, PARAMS, a.snapshot(), T0)  # wall clock set back
    assert again.state.bindings == a.state.bindings
    assert again.clock.now(int(T0 * 1000)) > sent
    assert again.digests.total() == a.digests.total()
    assert isinstance(sent, Hlc)


def test_a_bucket_larger_than_one_rounds_repair_still_gets_across_whole() -> None:
    params = replace(PARAMS, repair_messages=1)  # about 10 bindings a digest
    sites = {s: Replica(s, LAYOUT, params, None, T0) for s in ("a", "b")}
    a, b = sites["a"], sites["b"]
    block = a.policy.owned_blocks(int(T0 * 1000))[0]
    for address in range(block.first, block.last + 1):
        a.local_update(lease(address, b"\x01%d" % address), T0)
    a.hand_over(block.first, "c", T0)  # the register comes last in the bucket
    now = T0
    for _ in range(6):
        now += 1
        for site in ("a", "b"):
            deliver(sites, [m for m in sites[site].tick(now) if m.peer != "c"], site, now, "c")
    assert b.state == a.state


def test_a_site_with_a_lost_disk_allocates_nothing_for_lost_after_even_across_restarts() -> None:
    """It cannot learn from its peers every lease it gave before the disk was lost."""
    a = Replica("a", LAYOUT, PARAMS, None, T0, recovering=True)
    address = owned_address(Replica("a", LAYOUT, PARAMS, None, T0))
    assert not a.may_allocate(address, CLIENT, T0 + 100)
    again = Replica("a", LAYOUT, PARAMS, a.snapshot(), T0 + 100)  # restarted meanwhile
    assert not again.may_allocate(address, CLIENT, T0 + 139)
    assert again.may_allocate(address, CLIENT, T0 + 140)


def test_a_block_evicted_to_a_site_that_heard_the_lost_one_later_waits_for_its_own_bound() -> None:
    sites = cluster()
    a, b, c = sites["a"], sites["b"], sites["c"]
    # b heard from c at T0 + 50 (a did not): c was alive then, whatever a thinks.
    out = c.local_update(lease(owned_address(c)), T0 + 50)
    b.receive("c", next(m.payload for m in out if m.peer == "b"), T0 + 50)
    deliver(sites, a.evict("c", T0 + 140), "a", T0 + 140, down="c")
    given = [
        blk for blk in c.policy.owned_blocks(int(T0 * 1000)) if b.policy.owner(blk).owner == "b"
    ]
    assert given
    assert not b.policy.owns(given[0], int((T0 + 189) * 1000))
    assert b.policy.owns(given[0], int((T0 + 190) * 1000))


def test_peers_are_up_while_their_rounds_arrive() -> None:
    sites = cluster()
    a = sites["a"]
    assert a.peers_up(T0) == []
    for now in (T0 + 1, T0 + 2):
        for site in ("b", "c"):
            deliver(sites, sites[site].tick(now), site, now)
    assert a.peers_up(T0 + 2) == ["b", "c"]
    assert a.peers_up(T0 + 2 + 3 * 2 * PARAMS.anti_entropy_interval + 0.1) == []


def test_only_the_bindings_that_differ_cross_not_their_buckets() -> None:
    sites = cluster()
    a, b = sites["a"], sites["b"]
    addresses = [
        x
        for blk in a.policy.owned_blocks(int(T0 * 1000))[:8]
        for x in range(blk.first, blk.last + 1)
    ]
    for n, address in enumerate(addresses):
        deliver(sites, a.local_update(lease(address, b"\x01%d" % n), T0), "a", T0, down="c")
    for n in (3, 40, 100):  # b misses three renewals, in three buckets
        a.local_update(lease(addresses[n], b"\x01%d" % n, T0 + 200), T0 + 1)
    before = a.counters.repaired_entries + b.counters.repaired_entries
    now = T0 + 1
    while a.digests.total() != b.digests.total():
        now += 1
        assert now < T0 + 10
        for site in ("a", "b"):
            deliver(sites, [m for m in sites[site].tick(now) if m.peer != "c"], site, now, "c")
    # Three pushed, and b's three older copies asked for (whose is newer, only a merge says).
    assert a.counters.repaired_entries + b.counters.repaired_entries - before == 6


def test_large_blocks_are_repaired_in_small_answers() -> None:
    """The config allows blocks of 65,536 addresses: a digest bucket stays 256 of them,
    so no answer to one message grows with the block."""
    layout = BlockLayout(["a", "b"], [("p", FIRST, FIRST + 4095)], 4096)
    sites = {s: Replica(s, layout, PARAMS, None, T0) for s in ("a", "b")}
    a, b = sites["a"], sites["b"]
    owner = a if a.policy.owned_blocks(int(T0 * 1000)) else b
    for n in range(2000):
        owner.local_update(lease(FIRST + n * 2, b"\x01%d" % n), T0)  # the peer misses them
    now, largest = T0, 0
    while a.digests.total() != b.digests.total():
        now += 1
        assert now < T0 + 100
        for site in ("a", "b"):
            queue = deque((site, m) for m in sites[site].tick(now))
            while queue:
                src, message = queue.popleft()
                assert len(message.payload) <= MAX_PAYLOAD
                answer = sites[message.peer].receive(src, message.payload, now).messages
                largest = max(largest, len(answer))
                queue.extend((message.peer, m) for m in answer)
    assert largest <= PARAMS.repair_messages + 2
