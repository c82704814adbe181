"""The per-MAC token bucket: a burst from one client gets `burst` requests through and the
rest dropped, other clients are unaffected, and a flood of MACs (more than the bucket table
holds) evicts only buckets, never a lease entry.

Only counts are asserted. A bucket refills one request per 1/rate seconds (100 ms here),
and a whole burst takes a few milliseconds, so a slow machine may see one or two more
requests through, never fewer."""

import random

import pytest

from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType
from brushtaild.xdp import maps
from brushtaild.xdp.loader import Program
from tests.bpf.conftest import LIMITS
from tests.bpf.harness import (
    SERVER_MAC,
    XDP_DROP,
    XDP_TX,
    Fastpath,
    RenewalLog,
    client_message,
)

RATE = 10  # requests per second, per MAC
BURST = 20
SLACK = 2  # refills a slow machine might see during one burst
A = bytes.fromhex("02b700000401")
B = bytes.fromhex("02b700000402")
UNKNOWN = bytes.fromhex("02b7000004ff")


def discover(fastpath: Fastpath, mac: bytes) -> bytes:
    return fastpath.frame(encode(client_message(MessageType.DISCOVER, mac)), mac=mac)


@pytest.fixture
def limited(program: Program, renewal_log: RenewalLog) -> Fastpath:
    """Clients A and B bound (without a rate limit, so binding costs them no credit), then
    the rate limit switched on with empty buckets."""
    fastpath = Fastpath(program, renewal_log)
    for mac in (A, B):
        fastpath.bind(mac)
    fastpath.sync.configure(fastpath.config, SERVER_MAC, RATE, BURST)
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
    assert counted == {maps.Result.MISS: len(macs)}
    assert {key: bytes(entry) for key, entry in limited.entries().items()} == entries
    assert len(list(limited.program.table("ratelimit").keys())) <= LIMITS.ratelimit_entries
    # The bound clients' buckets were evicted: they start afresh, and are answered.
    for mac in (A, B):
        assert limited.run(discover(limited, mac)).retval == XDP_TX


def test_rate_limit_off_never_drops(program: Program, renewal_log: RenewalLog) -> None:
    fastpath = Fastpath(program, renewal_log)  # rate 0: no limit
    frame = discover(fastpath, UNKNOWN)
    assert fastpath.counted(lambda: fastpath.run(frame, repeat=3 * BURST)) == {
        maps.Result.MISS: 3 * BURST
    }
    assert list(program.table("ratelimit").keys()) == []
