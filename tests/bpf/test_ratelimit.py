"""The token buckets, keyed on what a sender cannot forge: a burst from one client (its
source MAC) gets `burst` requests through and the rest dropped, whatever chaddr it writes;
other clients are unaffected, even one whose chaddr the flood carries; malformed frames
spend the sender's budget and are dropped; a relay's access line (circuit-id) is limited
on its own before it spends its relay's budget; and a flood of MACs (more than the bucket
table holds) evicts only buckets, never a lease entry.

Only counts are asserted. A bucket refills one request per 1/rate seconds (100 ms here),
and a whole burst takes a few milliseconds, so a slow machine may see one or two more
requests through, never fewer."""

import random
import time

import pytest

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.xdp import maps
from brushtaild.xdp.loader import Program
from tests.bpf.conftest import LIMITS
from tests.bpf.frames import MALFORMED_FRAMES, client_frame
from tests.bpf.harness import (
    NS,
    RELAY_MAC,
    SERVER_IP,
    SERVER_MAC,
    XDP_DROP,
    XDP_TX,
    Fastpath,
    RenewalLog,
    client_message,
)

RATE = 10  # requests per second, per MAC
BURST = 20
RELAY_RATE = 50  # a relay's bucket holds one second's worth
SLACK = 2  # refills a slow machine might see during one burst
A = bytes.fromhex("02b700000401")
B = bytes.fromhex("02b700000402")
UNKNOWN = bytes.fromhex("02b7000004ff")
ATTACKER = bytes.fromhex("02b7000004aa")
RELAY = opt.parse_ip("198.18.2.2")


def discover(fastpath: Fastpath, mac: bytes) -> bytes:
    return fastpath.frame(encode(client_message(MessageType.DISCOVER, mac)), mac=mac)


@pytest.fixture
def limited(program: Program, renewal_log: RenewalLog) -> Fastpath:
    """Clients A and B bound (without a rate limit, so binding costs them no credit), the
    relay known, then the rate limit switched on with empty buckets."""
    fastpath = Fastpath(program, renewal_log)
    for mac in (A, B):
        fastpath.bind(mac)
    fastpath.know_relay(RELAY)
    fastpath.sync.configure(fastpath.config, SERVER_MAC, RATE, BURST, RELAY_RATE)
    program.table("ratelimit").clear()
    return fastpath


def test_burst_from_one_client_is_cut_at_the_bucket_size(limited: Fastpath) -> None:
    frame = discover(limited, A)
    retvals: list[int] = []
    counted = limited.counted(lambda: retvals.extend(limited.run(frame).retval for _ in range(60)))
    assert retvals[:BURST] == [XDP_TX] * BURST
    through = retvals.count(XDP_TX)
    assert BURST <= through <= BURST + SLACK
    assert set(retvals) == {XDP_TX, XDP_DROP}
    assert counted == {maps.Result.OFFER: through, maps.Result.RATE_LIMIT: 60 - through}


def test_other_client_is_not_limited(limited: Fastpath) -> None:
    a, b = discover(limited, A), discover(limited, B)
    for _ in range(BURST + SLACK + 5):
        limited.run(a)
    assert limited.run(a).retval == XDP_DROP
    assert [limited.run(b).retval for _ in range(BURST)] == [XDP_TX] * BURST
    assert limited.run(a).retval == XDP_DROP


def test_unknown_client_is_limited_before_the_lookup(limited: Fastpath) -> None:
    """A client with no entry is passed, but only at its rate: the slow path is shielded
    from one MAC's flood too. One BPF_PROG_TEST_RUN repeats the frame 100 times."""
    counted = limited.counted(lambda: limited.run(discover(limited, UNKNOWN), repeat=100))
    passed = counted.get(maps.Result.MISS, 0)
    assert BURST <= passed <= BURST + SLACK
    assert counted == {maps.Result.MISS: passed, maps.Result.RATE_LIMIT: 100 - passed}


def test_flood_of_macs_leaves_every_lease_entry(limited: Fastpath) -> None:
    """Many more MACs than the bucket table holds, one request each: every one is passed
    (a new MAC starts with a full bucket), buckets are evicted, entries are not."""
    rng = random.Random(4711)
    macs = [b"\x02" + rng.randbytes(5) for _ in range(8 * LIMITS.ratelimit_entries)]
    entries = {key: bytes(entry) for key, entry in limited.entries().items()}
    assert len(entries) == 2

    frames = [discover(limited, mac) for mac in macs]
    counted = limited.counted(lambda: [limited.run(frame) for frame in frames])
    # The link's budget for new subscribers passes a second's worth, and refills as the
    # loop runs (test_link_budget_bounds_new_subscribers_from_random_source_macs).
    passed = counted.get(maps.Result.MISS, 0)
    assert passed >= RELAY_RATE
    assert counted == {maps.Result.MISS: passed, maps.Result.LINK_BUDGET: len(macs) - passed}
    assert {key: bytes(entry) for key, entry in limited.entries().items()} == entries
    assert len(list(limited.program.table("ratelimit").keys())) <= LIMITS.ratelimit_entries
    # The bound clients' buckets were evicted: they start afresh, and are answered.
    for mac in (A, B):
        assert limited.run(discover(limited, mac)).retval == XDP_TX


def test_link_budget_bounds_new_subscribers_from_random_source_macs(limited: Fastpath) -> None:
    """A DISCOVER flood from random source MACs on the link (a fresh sender bucket each)
    passes only the link's budget of new subscribers, a relay's worth a second; known
    subscribers are still answered in the kernel, and a relay's new subscribers have their
    own budget."""
    flood = [discover(limited, mac) for mac in random_macs(4 * RELAY_RATE, 13)]
    counted = run_all(limited, flood)
    passed = counted.get(maps.Result.MISS, 0)
    assert RELAY_RATE <= passed <= RELAY_RATE + SLACK
    assert counted == {maps.Result.MISS: passed, maps.Result.LINK_BUDGET: 4 * RELAY_RATE - passed}
    for mac in (A, B):
        assert limited.run(discover(limited, mac)).retval == XDP_TX
    assert run_all(limited, [relayed(limited, UNKNOWN, None)]) == {maps.Result.MISS: 1}


def test_rate_limit_off_never_drops(program: Program, renewal_log: RenewalLog) -> None:
    fastpath = Fastpath(program, renewal_log)  # rate 0: no limit
    frame = discover(fastpath, UNKNOWN)
    assert fastpath.counted(lambda: fastpath.run(frame, repeat=3 * BURST)) == {
        maps.Result.MISS: 3 * BURST
    }
    assert list(program.table("ratelimit").keys()) == []


def random_macs(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [b"\x02" + rng.randbytes(5) for _ in range(n)]


def run_all(fastpath: Fastpath, frames: list[bytes]) -> dict[maps.Result, int]:
    return fastpath.counted(lambda: [fastpath.run(frame) for frame in frames])


def test_flood_with_a_victims_chaddr_does_not_silence_the_victim(limited: Fastpath) -> None:
    """Review finding 8a: an attacker renewing with the victim's chaddr (and lease) from
    its own MAC spends its own budget; the victim's renewals are still answered."""
    [lease] = [lease for lease in limited.server.leases() if lease.hwaddr == A]
    msg = client_message(MessageType.REQUEST, A, ciaddr=lease.address)
    payload = encode(msg)
    renewal = limited.frame(payload, mac=A, unicast_from=lease.address)
    forged = client_frame(
        payload,
        src_mac=ATTACKER,
        dst_mac=SERVER_MAC,
        src_ip=opt.format_ip(lease.address),
        dst_ip=SERVER_IP,
    )
    counted = run_all(limited, [forged] * 100)
    assert counted.get(maps.Result.RATE_LIMIT, 0) >= 100 - BURST - SLACK
    assert [limited.run(renewal).retval for _ in range(BURST)] == [XDP_TX] * BURST


def test_chaddr_rotating_flood_from_one_mac_is_limited(limited: Fastpath) -> None:
    """Review finding 8b: a fresh chaddr per request buys no fresh bucket."""
    frames = [
        client_frame(encode(client_message(MessageType.DISCOVER, mac)), src_mac=ATTACKER)
        for mac in random_macs(100, 8)
    ]
    counted = run_all(limited, frames)
    passed = counted.get(maps.Result.MISS, 0)
    assert BURST <= passed <= BURST + SLACK
    assert counted == {maps.Result.MISS: passed, maps.Result.RATE_LIMIT: 100 - passed}
    # The flood's sender is limited; the client whose MAC it is not, is not.
    assert limited.run(discover(limited, A)).retval == XDP_TX


@pytest.mark.parametrize("defect", ["a byte after the datagram", "htype 6 (IEEE 802)"])
def test_malformed_frames_are_limited_and_dropped(limited: Fastpath, defect: str) -> None:
    """Review finding 8b: frames the program judges malformed never reach the slow path
    (which refuses them too), and they spend their sender's budget like any request."""
    frame = MALFORMED_FRAMES[defect](discover(limited, A))
    retvals: list[int] = []
    counted = limited.counted(lambda: retvals.extend(limited.run(frame).retval for _ in range(60)))
    assert set(retvals) == {XDP_DROP}
    dropped = counted.get(maps.Result.MALFORMED, 0)
    assert BURST <= dropped <= BURST + SLACK
    assert counted == {maps.Result.MALFORMED: dropped, maps.Result.RATE_LIMIT: 60 - dropped}
    assert limited.run(discover(limited, A)).retval == XDP_DROP  # A's budget is spent
    assert limited.run(discover(limited, B)).retval == XDP_TX


def relayed(fastpath: Fastpath, chaddr: bytes, circuit: bytes | None) -> bytes:
    extra = {} if circuit is None else {OptionCode.RELAY_AGENT_INFO: relay_info(circuit)}
    msg = client_message(MessageType.DISCOVER, chaddr, giaddr=RELAY, extra=extra)
    return fastpath.frame(encode(msg), mac=chaddr, relay=True)


def relay_info(circuit: bytes) -> bytes:
    return opt.build_relay_agent_info([(1, circuit)])


def test_access_line_cannot_spend_its_relays_budget(limited: Fastpath) -> None:
    """Relayed requests are charged to their relay (its MAC and giaddr), one access line
    (circuit-id) first to a bucket of its own at a client's rate: a line flooding with
    rotating chaddrs gets BURST through, and the relay's other lines still get theirs."""
    flood = [relayed(limited, mac, b"line-1") for mac in random_macs(200, 9)]
    counted = run_all(limited, flood)
    passed = counted.get(maps.Result.MISS, 0)
    assert BURST <= passed <= BURST + SLACK
    assert counted == {maps.Result.MISS: passed, maps.Result.RATE_LIMIT: 200 - passed}
    other_line = [relayed(limited, mac, b"line-2") for mac in random_macs(BURST, 10)]
    assert run_all(limited, other_line) == {maps.Result.MISS: BURST}


def test_relay_without_circuit_id_is_limited_as_a_whole(limited: Fastpath) -> None:
    """Without a circuit-id nothing tells the relay's clients apart: they share its
    budget, `relay_rate_limit` a second, which a chaddr-rotating flood cannot escape."""
    flood = [relayed(limited, mac, None) for mac in random_macs(200, 11)]
    counted = run_all(limited, flood)
    passed = counted.get(maps.Result.MISS, 0)
    assert RELAY_RATE <= passed <= RELAY_RATE + SLACK
    assert counted == {maps.Result.MISS: passed, maps.Result.RATE_LIMIT: 200 - passed}
    # Another relay on the same link has its own budget.
    other = client_message(MessageType.DISCOVER, UNKNOWN, giaddr=RELAY + 1)
    frame = limited.frame(encode(other), mac=UNKNOWN, relay=True)
    assert frame[6:12] == RELAY_MAC
    # Not rate limited: passed, for the slow path to answer (and the daemon to learn).
    assert limited.results_of(frame) == {maps.Result.RELAY: 1}


def test_routed_renewals_from_one_router_are_charged_per_subscriber(
    limited: Fastpath,
) -> None:
    """Unicast renewals of subscribers behind a router all come from the router's MAC,
    each from its own address: each subscriber has its own bucket, so a burst from one
    does not silence the others."""
    router = bytes.fromhex("02b7000004fe")
    subscribers = [limited.bind(bytes.fromhex(f"02b70000050{n}")) for n in range(4)]

    def renewal(lease_mac: bytes, address: int) -> bytes:
        msg = client_message(MessageType.REQUEST, lease_mac, ciaddr=address)
        return client_frame(
            encode(msg),
            src_mac=router,
            dst_mac=SERVER_MAC,
            src_ip=opt.format_ip(address),
            dst_ip=SERVER_IP,
        )

    first = renewal(subscribers[0].hwaddr, subscribers[0].address)
    for _ in range(BURST + SLACK + 5):
        limited.run(first)
    assert limited.run(first).retval == XDP_DROP
    for lease in subscribers[1:]:
        frame = renewal(lease.hwaddr, lease.address)
        assert [limited.run(frame).retval for _ in range(BURST)] == [XDP_TX] * BURST


def test_bucket_stamped_later_by_another_cpu_is_not_refilled(limited: Fastpath) -> None:
    """Review finding 17 (last point): a bucket whose stamp is later than this CPU's clock
    (another CPU updated it after this one read the time) is empty, not full: the
    difference must not wrap around."""
    key = maps.RateKey()
    key.mac[:] = A
    later = maps.Bucket(last_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME) + 10 * NS)
    limited.program.table("ratelimit")[key] = later
    counted = limited.results_of(discover(limited, A))
    assert counted == {maps.Result.RATE_LIMIT: 1}


def test_relay_rate_off_leaves_relays_to_their_lines(limited: Fastpath) -> None:
    limited.sync.configure(limited.config, SERVER_MAC, RATE, BURST, 0)
    flood = [relayed(limited, mac, None) for mac in random_macs(3 * RELAY_RATE, 12)]
    assert run_all(limited, flood) == {maps.Result.MISS: 3 * RELAY_RATE}
    assert limited.run(discover(limited, A)).retval == XDP_TX
