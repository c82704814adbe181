"""The captured clients (tests/vectors) against the kernel program: every OFFER and ACK it
sends is checked byte for byte against the engine's reply to the same request, and its
addressing against RFC 2131 section 4.1."""

import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache

import pytest

from brushtaild.config.model import VlanRange
from brushtaild.daemon import clock
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.leases import Lease
from brushtaild.xdp import maps, stats
from brushtaild.xdp.loader import Program
from tests.bpf.frames import decode_reply
from tests.bpf.harness import (
    BROADCAST_FLAG,
    GIADDR_OFFSET,
    NS,
    SERVER_IP,
    SERVER_MAC,
    TICK_MAX_NS,
    XDP_PASS,
    XDP_TX,
    Fastpath,
    RenewalLog,
    assert_same_reply,
    default_config,
    expected_destination,
    frame_payload,
    options_in_order,
    with_fields,
    with_option,
    without_option,
)
from tests.engine_helpers import make_pool
from tests.vectors import CLIENTS, load_vector


@cache
def vector(name: str) -> bytes:
    return load_vector(name)


@dataclass(frozen=True, slots=True)
class Client:
    """A captured client, given a MAC of its own (dhclient's and udhcpc's captures share
    one)."""

    name: str
    mac: bytes

    @property
    def relayed(self) -> bool:
        return vector(f"{self.name}_discover")[GIADDR_OFFSET : GIADDR_OFFSET + 4] != bytes(4)

    def payload(self, kind: str) -> bytes:
        return with_fields(vector(f"{self.name}_{kind}"), chaddr=self.mac)

    def frame(
        self,
        fastpath: Fastpath,
        payload: bytes,
        *,
        unicast_from: int = 0,
        vlans: tuple[int, ...] = (),
        ip_options: bytes = b"",
    ) -> bytes:
        return fastpath.frame(
            payload,
            mac=self.mac,
            relay=self.relayed,
            unicast_from=unicast_from,
            vlans=vlans,
            ip_options=ip_options,
        )


CAPTURED_CLIENTS = tuple(
    Client(name, bytes.fromhex(f"02b70000010{i}")) for i, name in enumerate(CLIENTS)
)
DIRECT = tuple(c for c in CAPTURED_CLIENTS if not c.relayed)
RELAYED = tuple(c for c in CAPTURED_CLIENTS if c.relayed)


def by_name(name: str) -> Client:
    return next(c for c in CAPTURED_CLIENTS if c.name == name)


def ids(clients: tuple[Client, ...]) -> list[str]:
    return [c.name for c in clients]


def bind(fastpath: Fastpath, client: Client, vlans: tuple[int, ...] = ()) -> Lease:
    """The client's captured exchange on `vlans`, through the kernel (which has no entry
    yet, and no next hop for a relay it has not seen answered, and passes both) to the
    engine; the ACK installs the client's entry, keyed with the VLANs."""
    discover = client.frame(fastpath, client.payload("discover"), vlans=vlans)
    unknown = maps.Result.RELAY if client.relayed else maps.Result.MISS
    assert fastpath.results_of(discover) == {unknown: 1}
    offer = fastpath.slow_path(discover)
    assert offer is not None and offer.replies, offer
    yiaddr = offer.replies[0].message.yiaddr
    request = client.frame(
        fastpath,
        with_option(client.payload("request"), OptionCode.REQUESTED_ADDRESS, opt.ip(yiaddr)),
        vlans=vlans,
    )
    assert fastpath.run(request).retval == XDP_PASS
    ack = fastpath.slow_path(request)
    assert ack is not None and [r.message.message_type for r in ack.replies] == [MessageType.ACK]
    [lease] = ack.lease_writes
    assert lease.vlans == tuple(vid & 0xFFF for vid in vlans if vid & 0xFFF)
    assert fastpath.entry(maps.Key(client.mac, *lease.vlans)) is not None
    return lease


def request_in_state(client: Client, fastpath: Fastpath, state: str, address: int) -> bytes:
    """The client's captured REQUEST as RFC 2131 4.3.2 has it in `state`."""
    payload = client.payload("request")
    if state == "selecting":  # option 54 is ours in every capture
        return client.frame(
            fastpath, with_option(payload, OptionCode.REQUESTED_ADDRESS, opt.ip(address))
        )
    if state == "init-reboot":
        payload = with_option(payload, OptionCode.REQUESTED_ADDRESS, opt.ip(address))
        return client.frame(fastpath, without_option(payload, OptionCode.SERVER_ID))
    payload = without_option(payload, OptionCode.REQUESTED_ADDRESS)
    payload = with_fields(without_option(payload, OptionCode.SERVER_ID), ciaddr=address)
    if state == "renewing":  # unicast to the server (a relayed client: through its relay)
        return client.frame(fastpath, payload, unicast_from=address)
    assert state == "rebinding"  # broadcast
    return client.frame(fastpath, payload)


def check_reply(fastpath: Fastpath, frame: bytes, mtype: MessageType, lease: Lease) -> None:
    """Runs `frame` through the kernel and checks its reply against the engine's and RFC
    2131 4.1, and that exactly one counter rose, for the reply's type."""
    result = maps.Result.OFFER if mtype is MessageType.OFFER else maps.Result.ACK
    runs = []
    assert fastpath.counted(lambda: runs.append(fastpath.run(frame))) == {result: 1}
    [fast] = runs
    assert fast.retval == XDP_TX
    assert_same_reply(fast, frame, fastpath.slow_path(frame, apply=False))
    got = decode_reply(fast.data)
    reply = parse(got.payload)
    assert reply.message_type is mtype and reply.yiaddr == lease.address
    want = expected_destination(frame, lease.address)
    assert (got.dst_ip, got.dport, got.dst_mac) == (want.ip, want.port, want.mac)
    assert (got.src_mac, got.src_ip, got.sport) == (SERVER_MAC, SERVER_IP, 67)
    # The reply keeps the request's link-layer header: its tags, in order, TPIDs included.
    assert fast.data[12 : 12 + 4 * len(got.vlans)] == frame[12 : 12 + 4 * len(got.vlans)]
    assert got.vlans == tuple(
        int.from_bytes(frame[14 + 4 * i : 16 + 4 * i], "big") & 0xFFF for i in range(len(got.vlans))
    )
    relay_info = parse(frame_payload(frame)).options.get(OptionCode.RELAY_AGENT_INFO)
    if relay_info is not None:  # RFC 3046 2.2: echoed verbatim, last
        assert reply.options[OptionCode.RELAY_AGENT_INFO] == relay_info
        assert options_in_order(got.payload)[-1] == OptionCode.RELAY_AGENT_INFO


@pytest.mark.parametrize("client", CAPTURED_CLIENTS, ids=ids(CAPTURED_CLIENTS))
def test_discover_is_offered_the_lease(fastpath: Fastpath, client: Client) -> None:
    lease = bind(fastpath, client)
    discover = client.frame(fastpath, client.payload("discover"))
    check_reply(fastpath, discover, MessageType.OFFER, lease)
    # An OFFER changes nothing: no renewal, no new expiry.
    assert fastpath.renewals() == []


STATES = ("selecting", "init-reboot", "renewing", "rebinding")


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("client", CAPTURED_CLIENTS, ids=ids(CAPTURED_CLIENTS))
def test_request_is_acked_and_renewal_reported(
    fastpath: Fastpath, client: Client, state: str
) -> None:
    lease = bind(fastpath, client)
    key = maps.Key(client.mac)
    before = fastpath.entry(key)
    assert before is not None
    assert fastpath.renewals() == []
    request = request_in_state(client, fastpath, state, lease.address)
    started = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    check_reply(fastpath, request, MessageType.ACK, lease)
    finished = time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    after = fastpath.entry(key)
    assert after is not None
    [event] = fastpath.renewals()
    assert maps.Key.from_ctype(event.key) == key
    assert maps.host32(event.address) == lease.address
    assert event.expires_ns == after.expires_ns > before.expires_ns
    lease_time = after.lease_time * NS
    # The program's clock is coarse (bpf/clock.h): the new expiry is never earlier than the
    # exact clock's, and at most one tick bound later.
    assert started <= after.expires_ns - lease_time <= finished + TICK_MAX_NS
    # Nothing else in the entry moved.
    after.expires_ns = before.expires_ns
    assert bytes(after) == bytes(before)


@pytest.mark.parametrize("client", CAPTURED_CLIENTS, ids=ids(CAPTURED_CLIENTS))
def test_lease_that_just_ran_out_is_passed(fastpath: Fastpath, client: Client) -> None:
    """The program reads the clock once a tick (bpf/clock.h): a lease whose end came after
    that read, a moment ago, is still the slow path's, never answered late."""
    bind(fastpath, client)
    key = maps.Key(client.mac)
    discover = client.frame(fastpath, client.payload("discover"))
    assert fastpath.run(discover).retval == XDP_TX  # this CPU's clock is read now
    entry = fastpath.entry(key)
    assert entry is not None
    entry.expires_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    fastpath.put_entry(key, entry)
    assert fastpath.results_of(discover) == {maps.Result.EXPIRED: 1}


@pytest.mark.parametrize("client", DIRECT, ids=ids(DIRECT))
@pytest.mark.parametrize("kind", ["discover", "request"])
def test_broadcast_flag_gets_a_broadcast_reply(
    fastpath: Fastpath, client: Client, kind: str
) -> None:
    lease = bind(fastpath, client)
    payload = with_fields(client.payload(kind), flags=BROADCAST_FLAG)
    if kind == "request":
        payload = with_option(payload, OptionCode.REQUESTED_ADDRESS, opt.ip(lease.address))
    mtype = MessageType.OFFER if kind == "discover" else MessageType.ACK
    check_reply(fastpath, client.frame(fastpath, payload), mtype, lease)


VLAN_TAGS = {"802.1Q": (100,), "QinQ": (100, 4094)}


@pytest.mark.parametrize("tags", VLAN_TAGS.values(), ids=VLAN_TAGS.keys())
@pytest.mark.parametrize(
    "client", [by_name("udhcpc"), by_name("dhcrelay_udhcpc")], ids=["udhcpc", "dhcrelay"]
)
def test_vlan_tags_select_the_entry_and_are_kept(
    fastpath: Fastpath, client: Client, tags: tuple[int, ...]
) -> None:
    """A client leased on its VLANs by the slow path is answered on them, with its tags,
    as the slow path answers it; on other tags or none it is another key."""
    lease = bind(fastpath, client, tags)
    tagged = maps.Key(client.mac, *tags)
    for kind, mtype in (("discover", MessageType.OFFER), ("request", MessageType.ACK)):
        payload = client.payload(kind)
        if kind == "request":
            payload = with_option(payload, OptionCode.REQUESTED_ADDRESS, opt.ip(lease.address))
        frame = client.frame(fastpath, payload, vlans=tags)
        check_reply(fastpath, frame, mtype, lease)
        for other in ((), (101,), (100, 4093) if len(tags) == 2 else (100, 1)):
            frame = client.frame(fastpath, payload, vlans=other)
            # A relay, too, is known on its VLANs only.
            unknown = maps.Result.RELAY if client.relayed else maps.Result.MISS
            assert fastpath.results_of(frame) == {unknown: 1}
    [event] = fastpath.renewals()
    assert maps.Key.from_ctype(event.key) == tagged
    # The engine takes the renewal for the lease on those VLANs, and no other.
    expires = clock.from_boot_ns(event.expires_ns)
    renew = fastpath.server.kernel_renewal
    stale = renew(client.mac, lease.address, expires, fastpath.now, ())
    assert stale.drop is DropReason.STALE_RENEWAL
    assert renew(client.mac, lease.address, expires, fastpath.now, lease.vlans).drop is None


# (TCIs sent, VLAN ids they name): a VID-0 tag names no VLAN, priority bits or not.
PRIORITY_TAGS = {
    "802.1p": ((0,), ()),
    "802.1p PCP 5": ((0xA000,), ()),
    "QinQ 0/0": ((0, 0), ()),
    "QinQ 100/0": ((100, 0), (100,)),
    "QinQ 0/100": ((0, 100), (100,)),
}


@pytest.mark.parametrize(("tags", "vlans"), PRIORITY_TAGS.values(), ids=PRIORITY_TAGS.keys())
def test_priority_tags_name_no_vlan(
    fastpath: Fastpath, tags: tuple[int, ...], vlans: tuple[int, ...]
) -> None:
    """Review finding 14b, settled: a VID-0 tag is "untagged" for the client's key, on both
    paths, and the reply keeps it as received (check_reply compares the tags)."""
    client = by_name("udhcpc")
    lease = bind(fastpath, client, vlans)
    frame = client.frame(fastpath, client.payload("discover"), vlans=tags)
    check_reply(fastpath, frame, MessageType.OFFER, lease)


IP_OPTIONS = {
    "router alert": bytes.fromhex("94040000"),
    "nop, record route": bytes.fromhex("01070b04") + bytes(8),
    "40 bytes of nop": b"\x01" * 39 + b"\x00",
}


@pytest.mark.parametrize("ip_options", IP_OPTIONS.values(), ids=IP_OPTIONS.keys())
@pytest.mark.parametrize("client", CAPTURED_CLIENTS, ids=ids(CAPTURED_CLIENTS))
def test_ip_options_are_parsed_and_not_copied(
    fastpath: Fastpath, client: Client, ip_options: bytes
) -> None:
    lease = bind(fastpath, client)
    discover = client.frame(fastpath, client.payload("discover"), ip_options=ip_options)
    check_reply(fastpath, discover, MessageType.OFFER, lease)  # decode_reply: IHL 5
    request = request_in_state(client, fastpath, "selecting", lease.address)
    request_payload = frame_payload(request)
    request = client.frame(fastpath, request_payload, ip_options=ip_options)
    check_reply(fastpath, request, MessageType.ACK, lease)


def test_relay_agent_information_is_echoed_last(fastpath: Fastpath) -> None:
    client = by_name("dhcrelay_udhcpc")
    lease = bind(fastpath, client)
    discover = client.frame(fastpath, client.payload("discover"))
    fast = fastpath.run(discover)
    assert fast.retval == XDP_TX
    reply = decode_reply(fast.data).payload
    relay_info = parse(client.payload("discover")).options[OptionCode.RELAY_AGENT_INFO]
    assert options_in_order(reply)[-1] == OptionCode.RELAY_AGENT_INFO
    assert parse(reply).options[OptionCode.RELAY_AGENT_INFO] == relay_info
    assert parse(reply).yiaddr == lease.address


Edit = Callable[[bytes, int], bytes]
MISMATCHES: dict[str, Edit] = {
    "50 not the lease": lambda p, a: with_option(p, OptionCode.REQUESTED_ADDRESS, opt.ip(a + 1)),
    "54 another server": lambda p, a: with_option(
        with_option(p, OptionCode.REQUESTED_ADDRESS, opt.ip(a)),
        OptionCode.SERVER_ID,
        opt.ip(opt.parse_ip("198.18.0.2")),
    ),
    "ciaddr not the lease": lambda p, a: with_fields(
        without_option(without_option(p, OptionCode.REQUESTED_ADDRESS), OptionCode.SERVER_ID),
        ciaddr=a + 1,
    ),
    "ciaddr right, 50 wrong": lambda p, a: with_fields(
        without_option(
            with_option(p, OptionCode.REQUESTED_ADDRESS, opt.ip(a + 1)), OptionCode.SERVER_ID
        ),
        ciaddr=a,
    ),
    "neither 50 nor ciaddr": lambda p, a: without_option(p, OptionCode.REQUESTED_ADDRESS),
}


@pytest.mark.parametrize("mismatch", MISMATCHES.values(), ids=MISMATCHES.keys())
def test_request_not_matching_the_lease_is_passed(fastpath: Fastpath, mismatch: Edit) -> None:
    client = by_name("udhcpc")
    lease = bind(fastpath, client)
    frame = client.frame(fastpath, mismatch(client.payload("request"), lease.address))
    assert fastpath.results_of(frame) == {maps.Result.REQUEST_MISMATCH: 1}
    assert fastpath.run(frame).retval == XDP_PASS
    assert fastpath.renewals() == []


def test_entry_pointing_at_an_unused_template_slot_is_passed(fastpath: Fastpath) -> None:
    """Template slots are an array: one no entry uses is all zeros (MapSync zeroes a slot
    it frees). An entry pointing at one must not be answered with an empty option list."""
    client = by_name("udhcpc")
    bind(fastpath, client)
    key = maps.Key(client.mac)
    entry = fastpath.entry(key)
    assert entry is not None
    templates = fastpath.program.table("templates")
    unused = next(
        slot
        for slot in range(maps.TEMPLATE_SLOTS - 1, 0, -1)
        if templates[ctypes.c_uint32(slot)].len == 0
    )
    entry.offer_template = unused
    fastpath.put_entry(key, entry)
    discover = client.frame(fastpath, client.payload("discover"))
    assert fastpath.results_of(discover) == {maps.Result.NO_TEMPLATE: 1}


@pytest.mark.parametrize("ip_options", IP_OPTIONS.values(), ids=IP_OPTIONS.keys())
@pytest.mark.parametrize("tags", VLAN_TAGS.values(), ids=VLAN_TAGS.keys())
def test_ip_options_behind_vlan_tags(
    fastpath: Fastpath, tags: tuple[int, ...], ip_options: bytes
) -> None:
    """Stripping IP options moves the link-layer header: every tag must move with it."""
    client = by_name("dhcrelay_udhcpc")
    lease = bind(fastpath, client, tags)
    for kind, mtype in (("discover", MessageType.OFFER), ("request", MessageType.ACK)):
        payload = client.payload(kind)
        if kind == "request":
            payload = with_option(payload, OptionCode.REQUESTED_ADDRESS, opt.ip(lease.address))
        frame = client.frame(fastpath, payload, vlans=tags, ip_options=ip_options)
        check_reply(fastpath, frame, mtype, lease)


def test_latency_is_sampled(fastpath: Fastpath) -> None:
    """One reply in 16 per CPU has its latency recorded: 16 replies per CPU record one at
    least, wherever the runs land."""
    client = by_name("udhcpc")
    bind(fastpath, client)
    discover = client.frame(fastpath, client.payload("discover"))
    before = sum(stats.read(fastpath.program).latency)
    runs = 16 * (os.cpu_count() or 1)
    assert [fastpath.run(discover).retval for _ in range(runs)] == [XDP_TX] * runs
    sampled = sum(stats.read(fastpath.program).latency) - before
    assert 1 <= sampled <= runs // 16 + (os.cpu_count() or 1)


def test_the_same_mac_on_two_listed_vlans_is_two_subscribers_in_the_kernel(
    program: Program, renewal_log: RenewalLog
) -> None:
    """In a pool that lists VLANs a client is its identifier on its VLANs: two leases,
    two entries keyed with the VLANs, each holding the identifier as the client sends it,
    so the kernel answers each subscriber with its own address, as the slow path does."""
    config = replace(default_config(), pools=(replace(make_pool(), vlans=(VlanRange(100, 101),)),))
    fastpath = Fastpath(program, renewal_log, config)
    client = by_name("udhcpc")
    leases = [bind(fastpath, client, (vid,)) for vid in (100, 101)]
    assert leases[0].address != leases[1].address
    for lease in leases:
        for kind, mtype in (("discover", MessageType.OFFER), ("request", MessageType.ACK)):
            payload = client.payload(kind)
            if kind == "request":
                payload = with_option(payload, OptionCode.REQUESTED_ADDRESS, opt.ip(lease.address))
            check_reply(fastpath, client.frame(fastpath, payload, vlans=lease.vlans), mtype, lease)
