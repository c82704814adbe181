"""A roaming client (its address in another site's block, docs/STATE.md rule 2) in the
kernel: answered with the slow path's bytes while its lease stays within its entry's cap,
passed (result `cap`) once it would run past it, and then capped or NAKed by the slow
path as the engine decides."""

import pytest

from brushtaild.daemon import clock
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.engine.decisions import NakReason
from brushtaild.xdp import maps
from brushtaild.xdp.loader import Program
from brushtaild.xdp.sync import cap_ns
from tests.bpf.harness import XDP_PASS, XDP_TX, Fastpath, RenewalLog, Sites, assert_same_reply
from tests.bpf.test_differential import (
    KINDS,
    LEASE_TIME,
    MAC,
    LeaseSetup,
    Request,
    establish,
    request_frame,
)

ROAMING = LeaseSetup("bound", "named", "dhclient", "relay A")


def roaming(program: Program, renewal_log: RenewalLog, past_kernel_now: float) -> Fastpath:
    """A client bound here, whose address is then another site's block: its entry is
    rewritten (as after the handover) with a cap `past_kernel_now` seconds after the
    kernel's clock, which runs ENGINE_LAG ahead of the engine's."""
    sites = Sites()
    fastpath = Fastpath(program, renewal_log, replication=sites)
    fastpath.know_relay(ROAMING.giaddr)
    establish(fastpath, ROAMING)
    sites.owned = False
    sites.limit = clock.wall() + past_kernel_now
    fastpath.sync.reconcile(fastpath.now)
    entry = fastpath.entry(maps.Key(MAC))
    assert entry is not None and entry.cap_ns == cap_ns(sites.limit)
    return fastpath


def lease_times(payload: bytes) -> tuple[int, int, int]:
    options = parse(payload).options
    codes = (OptionCode.LEASE_TIME, OptionCode.RENEWAL_TIME, OptionCode.REBINDING_TIME)
    return tuple(opt.decode_u32(options[c]) for c in codes)  # type: ignore[return-value]


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_a_roaming_client_is_answered_in_the_kernel_within_the_cap(
    program: Program, renewal_log: RenewalLog, kind: tuple[int, str]
) -> None:
    """A minute of room: the kernel answers, with the slow path's bytes (a full lease),
    and the renewal it reports, recorded by the engine, stays within the cap."""
    fastpath = roaming(program, renewal_log, LEASE_TIME + 60)
    lease = fastpath.server.lease_at(fastpath.server.leases()[0].address)
    assert lease is not None
    mtype, state = kind
    frame = request_frame(fastpath, ROAMING, lease, Request(mtype, state, xid=7))
    run = fastpath.run(frame)
    reply = assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False))
    assert lease_times(reply.payload)[0] == LEASE_TIME
    renewed = fastpath.absorb_renewals()
    assert renewed == int(mtype == MessageType.REQUEST)
    entry = fastpath.entry(maps.Key(MAC))
    assert entry is not None and entry.expires_ns <= entry.cap_ns
    assert fastpath.server.renewals_past_cap == 0
    held = fastpath.server.lease_at(lease.address)
    sites = fastpath.server.replication
    assert isinstance(sites, Sites) and held is not None and held.expires <= sites.limit


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_past_the_cap_the_kernel_passes_and_the_slow_path_caps_the_lease(
    program: Program, renewal_log: RenewalLog, kind: tuple[int, str]
) -> None:
    """Ten minutes short of a full lease: the kernel passes (result `cap`), whether
    OFFER or ACK; the slow path, at the kernel's time, ACKs with a lease that ends at the
    cap (lease time, T1 and T2 shortened) and OFFERs the same address."""
    fastpath = roaming(program, renewal_log, LEASE_TIME - 600)
    lease = fastpath.server.leases()[0]
    mtype, state = kind
    frame = request_frame(fastpath, ROAMING, lease, Request(mtype, state, xid=7))
    assert fastpath.results_of(frame) == {maps.Result.CAP: 1}
    assert fastpath.run(frame).retval == XDP_PASS
    assert fastpath.renewals() == []
    slow = fastpath.slow_path(frame, now=clock.wall(), apply=False)
    assert slow is not None and len(slow.replies) == 1
    reply = slow.replies[0].message
    assert reply.yiaddr == lease.address
    if mtype == MessageType.DISCOVER:
        assert reply.message_type is MessageType.OFFER
        return
    assert reply.message_type is MessageType.ACK
    lease_time, t1, t2 = lease_times(slow.replies[0].payload)
    assert LEASE_TIME - 602 <= lease_time <= LEASE_TIME - 600
    assert (t1, t2) == (lease_time // 2, lease_time * 7 // 8)


@pytest.mark.parametrize("state", ["renewing", "rebinding", "init-reboot"])
def test_a_roaming_client_at_its_limit_is_passed_and_naked(
    program: Program, renewal_log: RenewalLog, state: str
) -> None:
    """Under a second left at the kernel's time: passed, and the slow path NAKs (the
    client DISCOVERs and gets an address of this site's blocks)."""
    fastpath = roaming(program, renewal_log, 0.5)
    lease = fastpath.server.leases()[0]
    frame = request_frame(fastpath, ROAMING, lease, Request(MessageType.REQUEST, state, xid=7))
    assert fastpath.results_of(frame) == {maps.Result.CAP: 1}
    slow = fastpath.slow_path(frame, now=clock.wall(), apply=False)
    assert slow is not None and slow.nak is NakReason.OTHER_SITE


def test_the_raised_cap_lets_the_kernel_answer_again(
    program: Program, renewal_log: RenewalLog
) -> None:
    """The owner's acknowledgement raises the limit; the rewritten entry is answered."""
    fastpath = roaming(program, renewal_log, LEASE_TIME - 600)
    lease = fastpath.server.leases()[0]
    frame = request_frame(fastpath, ROAMING, lease, Request(MessageType.REQUEST, "renewing", 7))
    assert fastpath.run(frame).retval == XDP_PASS
    sites = fastpath.server.replication
    assert isinstance(sites, Sites)
    sites.limit = clock.wall() + LEASE_TIME + 60
    fastpath.sync.apply([fastpath.server.absorb([lease], fastpath.now)], fastpath.now)
    assert fastpath.run(frame).retval == XDP_TX
    assert fastpath.absorb_renewals() == 1


def test_a_renewal_past_a_limit_that_fell_is_recorded_at_the_limit_and_counted(
    program: Program, renewal_log: RenewalLog
) -> None:
    """The limit falls before the entry is rewritten: the kernel ACKs with the old cap,
    and the engine records the renewal only up to the limit, counts it, and rewrites the
    entry with the new cap, past which the kernel then passes."""
    fastpath = roaming(program, renewal_log, LEASE_TIME + 60)
    lease = fastpath.server.leases()[0]
    sites = fastpath.server.replication
    assert isinstance(sites, Sites)
    # Past the lease's end (ENGINE_LAG behind the kernel), short of the kernel's renewal.
    sites.limit = clock.wall() + LEASE_TIME - 30
    assert lease.expires < sites.limit
    frame = request_frame(fastpath, ROAMING, lease, Request(MessageType.REQUEST, "renewing", 7))
    assert fastpath.run(frame).retval == XDP_TX
    assert fastpath.absorb_renewals() == 1
    assert fastpath.server.renewals_past_cap == 1
    held = fastpath.server.lease_at(lease.address)
    assert held is not None and held.expires == sites.limit
    entry = fastpath.entry(maps.Key(MAC))
    assert entry is not None and entry.cap_ns == cap_ns(sites.limit)
    assert fastpath.results_of(frame) == {maps.Result.CAP: 1}
