"""Client classes: which class a request is in, what the class selects (pools, lease time,
options), what a lease tells of its class for the fast path, and the config's refusals."""

import re
from dataclasses import replace
from ipaddress import IPv4Network
from typing import Any

import pytest

from brushtaild.config.load import parse_config
from brushtaild.config.model import (
    ClassMatch,
    ClientClass,
    MatchKind,
    Reservation,
    TextMatch,
    VlanRange,
    option_set,
)
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType, OptionCode, RelayAgentSubOption
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.classes import UNDECIDED, LeaseClass, class_of_lease, classify
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.server import Server
from brushtaild.xdp import maps
from brushtaild.xdp.sync import Planner
from tests.engine_helpers import (
    INGRESS,
    SERVER,
    mac,
    make_config,
    make_pool,
    only_reply,
    request,
)
from tests.unit.test_config import errors_of, example

D, R = MessageType.DISCOVER, MessageType.REQUEST
NOW = 1_800_000_000.0  # wall clock, near what the kernel entries convert
RELAY = opt.parse_ip("198.18.0.2")  # on the pool's subnet
NTP = opt.ip(opt.parse_ip("198.18.0.123"))
DNS = opt.ip(opt.parse_ip("198.18.0.53"))
TAGGED = replace(INGRESS, vlans=(100, 7))


def exact(text: bytes) -> TextMatch:
    return TextMatch(MatchKind.EXACT, text)


def regex(pattern: bytes) -> TextMatch:
    return TextMatch(MatchKind.REGEX, pattern, re.compile(pattern))


def relayed(n: int, circuit: bytes, remote: bytes | None = None, **kw: Any) -> Any:
    subs = [(RelayAgentSubOption.CIRCUIT_ID, circuit)]
    if remote is not None:
        subs.append((RelayAgentSubOption.REMOTE_ID, remote))
    info = opt.build_relay_agent_info(subs)
    return request(D, n, giaddr=RELAY, extra={OptionCode.RELAY_AGENT_INFO: info}, **kw)


def named(*matches: ClassMatch) -> tuple[ClientClass, ...]:
    return tuple(ClientClass(f"c{i}", m) for i, m in enumerate(matches))


def class_name(classes: tuple[ClientClass, ...], msg: Any, ingress: Any = INGRESS) -> str | None:
    info = msg.options.get(OptionCode.RELAY_AGENT_INFO)
    subs = opt.parse_relay_agent_info(info) if info and msg.giaddr else []
    found = classify(classes, msg, ingress.vlans, subs, msg.giaddr)
    return None if found is None else found.name


# -- classification --------------------------------------------------------------------


def test_circuit_id_exact_prefix_and_regex() -> None:
    classes = named(
        ClassMatch(circuit_id=exact(b"olt1/1/1")),
        ClassMatch(circuit_id=TextMatch(MatchKind.PREFIX, b"olt1/")),
        ClassMatch(circuit_id=regex(rb"^olt[2-3]/.*:10\d$")),
    )
    assert class_name(classes, relayed(1, b"olt1/1/1")) == "c0"
    assert class_name(classes, relayed(1, b"olt1/1/2")) == "c1"
    assert class_name(classes, relayed(1, b"olt3/4/4:101")) == "c2"
    assert class_name(classes, relayed(1, b"olt3/4/4:111")) is None
    assert class_name(classes, relayed(1, b"xolt1/")) is None


def test_first_match_wins_in_config_order() -> None:
    classes = named(
        ClassMatch(circuit_id=TextMatch(MatchKind.PREFIX, b"olt")), ClassMatch(mac=mac(1))
    )
    assert class_name(classes, relayed(1, b"olt1")) == "c0"
    assert class_name(classes, request(D, 1)) == "c1"


def test_every_condition_given_must_hold() -> None:
    classes = named(
        ClassMatch(
            circuit_id=exact(b"line-1"),
            remote_id=exact(b"cpe-1"),
            relay=IPv4Network("198.18.0.0/24"),
        )
    )
    assert class_name(classes, relayed(1, b"line-1", b"cpe-1")) == "c0"
    assert class_name(classes, relayed(1, b"line-1", b"cpe-2")) is None
    assert class_name(classes, relayed(1, b"line-1")) is None


def test_option_82_counts_only_in_a_relayed_request() -> None:
    info = opt.build_relay_agent_info([(RelayAgentSubOption.CIRCUIT_ID, b"line-1")])
    forged = request(D, 1, extra={OptionCode.RELAY_AGENT_INFO: info})
    classes = named(ClassMatch(circuit_id=exact(b"line-1")))
    assert class_name(classes, forged) is None


def test_vendor_class_mac_oui_vlans_and_relay() -> None:
    vendor = {OptionCode.VENDOR_CLASS_ID: b"IPTV-STB-42"}
    classes = named(
        ClassMatch(vendor_class=TextMatch(MatchKind.PREFIX, b"IPTV-STB")),
        ClassMatch(mac=mac(2)),
        ClassMatch(oui=mac(3)[:3], vlans=(VlanRange(100, 100, 1, 4094),)),
        ClassMatch(relay=IPv4Network("198.18.0.2/32")),
    )
    assert class_name(classes, request(D, 9, extra=vendor)) == "c0"
    assert class_name(classes, request(D, 2)) == "c1"
    assert class_name(classes, request(D, 3), TAGGED) == "c2"
    assert class_name(classes, request(D, 3)) is None  # untagged: the VLANs do not match
    assert class_name(classes, request(D, 4, giaddr=RELAY)) == "c3"


def test_an_empty_match_takes_every_client() -> None:
    assert class_name(named(ClassMatch()), request(D, 5)) == "c0"


def lease_of(
    n: int, vlans: tuple[int, ...] = (), circuit: bytes | None = None, relay: int = 0
) -> Lease:
    info = b"" if circuit is None else circuit_info(circuit)
    return Lease(
        opt.parse_ip("198.18.1.1"),
        b"\x01" + mac(n),
        mac(n),
        "residential",
        LeaseState.BOUND,
        NOW + 3600,
        NOW,
        vlans=vlans,
        relay_info=info,
        relay=relay or (RELAY if circuit is not None else 0),
    )


def circuit_info(circuit: bytes) -> bytes:
    return opt.build_relay_agent_info([(RelayAgentSubOption.CIRCUIT_ID, circuit)])


def test_a_lease_tells_its_class_from_its_mac_vlans_and_stashed_option_82() -> None:
    by_mac = ClientClass("by-mac", ClassMatch(mac=mac(1)))
    by_circuit = ClientClass("by-circuit", ClassMatch(circuit_id=exact(b"line")))
    by_vlan = ClientClass("by-vlan", ClassMatch(vlans=(VlanRange(100, 100, 7, 7),)))
    by_relay = ClientClass("by-relay", ClassMatch(relay=IPv4Network("198.18.0.0/24")))
    by_vendor = ClientClass("by-vendor", ClassMatch(vendor_class=exact(b"stb")))
    assert class_of_lease((by_mac, by_circuit), lease_of(1)) == LeaseClass(by_mac, False)
    # A class on option 82 weighed before: the lease's stash told it, for unicast renewals.
    assert class_of_lease((by_circuit, by_mac), lease_of(1)) == LeaseClass(by_mac, True)
    assert class_of_lease((by_circuit, by_mac), lease_of(1, circuit=b"line")) == LeaseClass(
        by_circuit, True
    )
    assert class_of_lease((by_relay,), lease_of(2, relay=RELAY)) == LeaseClass(by_relay, True)
    assert class_of_lease((by_relay,), lease_of(2)) == LeaseClass(None, True)
    assert class_of_lease((by_vlan, by_circuit), lease_of(1, (100, 7))) == LeaseClass(
        by_vlan, False
    )
    assert class_of_lease((by_mac,), lease_of(2)) == LeaseClass(None, False)
    # A class that needs a MAC it cannot have is not weighed, whatever else it needs.
    narrow = ClientClass("narrow", ClassMatch(mac=mac(9), circuit_id=exact(b"line")))
    assert class_of_lease((narrow, by_mac), lease_of(1)) == LeaseClass(by_mac, False)
    # Option 60 is sent with every request but not kept: the lease cannot tell.
    assert class_of_lease((by_vendor, by_mac), lease_of(1)) is UNDECIDED
    assert class_of_lease((by_mac, by_vendor), lease_of(1)) == LeaseClass(by_mac, False)


# -- what a class selects ----------------------------------------------------------------


def profile(server: Server, lease: Lease) -> str:
    answer = server.kernel_answer(lease, NOW)
    assert answer is not None
    return answer.profile


def two_pools() -> tuple[Any, Any]:
    return (
        make_pool("first", first="198.18.1.0", last="198.18.1.9"),
        make_pool("second", first="198.18.2.0", last="198.18.2.9"),
    )


def test_class_pools_narrow_and_order_the_networks_pools() -> None:
    iptv = ClientClass("iptv", ClassMatch(mac=mac(1)), pools=("second",))
    server = Server(make_config(*two_pools(), classes=(iptv,)), [], NOW)
    assert only_reply(server.handle(request(D, 1), INGRESS, NOW)).yiaddr == opt.parse_ip(
        "198.18.2.0"
    )
    assert only_reply(server.handle(request(D, 2), INGRESS, NOW)).yiaddr == opt.parse_ip(
        "198.18.1.0"
    )


def test_a_class_naming_none_of_the_networks_pools_is_dropped_and_counted() -> None:
    other = make_pool("elsewhere", subnet="198.20.0.0/16", first="198.20.1.0", last="198.20.1.9")
    walled = ClientClass("walled", ClassMatch(mac=mac(1)), pools=("elsewhere",))
    server = Server(make_config(make_pool(), other, classes=(walled,)), [], NOW)
    for msg in (request(D, 1), request(R, 1, requested=opt.parse_ip("198.18.1.0"))):
        decision = server.handle(msg, INGRESS, NOW)
        assert decision.drop is DropReason.NO_CLASS_POOL and not decision.replies


def test_a_reserved_host_keeps_its_pool_whatever_its_class_names() -> None:
    reserved = opt.parse_ip("198.18.1.5")
    cls = ClientClass("c", ClassMatch(mac=mac(1)), pools=("second",))
    config = make_config(
        *two_pools(), classes=(cls,), reservations=(Reservation(reserved, mac(1)),)
    )
    offer = only_reply(Server(config, [], NOW).handle(request(D, 1), INGRESS, NOW))
    assert offer.yiaddr == reserved


def dora(server: Server, n: int) -> int:
    offer = only_reply(server.handle(request(D, n), INGRESS, NOW))
    ack = only_reply(
        server.handle(request(R, n, requested=offer.yiaddr, server_id=SERVER), INGRESS, NOW)
    )
    assert ack.message_type is MessageType.ACK
    return ack.yiaddr


def test_class_lease_time_in_the_reply_and_the_lease() -> None:
    short = ClientClass(
        "short", ClassMatch(mac=mac(1)), lease_time=600, renewal_time=300, rebinding_time=525
    )
    server = Server(make_config(classes=(short,)), [], NOW)
    offer = only_reply(server.handle(request(D, 1), INGRESS, NOW))
    assert offer.options[OptionCode.LEASE_TIME] == opt.u32(600)
    assert offer.options[OptionCode.RENEWAL_TIME] == opt.u32(300)
    assert offer.options[OptionCode.REBINDING_TIME] == opt.u32(525)
    lease = server.lease_at(dora(server, 1))
    assert lease is not None and lease.expires == NOW + 600
    other = server.lease_at(dora(server, 2))
    assert other is not None and other.expires == NOW + 3600


def test_options_precedence_pool_class_reservation() -> None:
    host_address = opt.parse_ip("198.18.0.50")
    cls = ClientClass(
        "business",
        ClassMatch(oui=mac(1)[:3]),
        options=option_set({OptionCode.DNS_SERVERS: DNS, OptionCode.NTP_SERVERS: DNS}),
    )
    host = Reservation(host_address, mac(1), options=option_set({OptionCode.NTP_SERVERS: NTP}))
    server = Server(make_config(classes=(cls,), reservations=(host,)), [], NOW)
    reserved = only_reply(server.handle(request(D, 1), INGRESS, NOW)).options
    assert (reserved[OptionCode.DNS_SERVERS], reserved[OptionCode.NTP_SERVERS]) == (DNS, NTP)
    classified = only_reply(server.handle(request(D, 2), INGRESS, NOW)).options
    assert (classified[OptionCode.DNS_SERVERS], classified[OptionCode.NTP_SERVERS]) == (DNS, DNS)
    assert classified[OptionCode.ROUTERS] == opt.ip(SERVER)  # the pool's, left alone
    lease = server.lease_at(dora(server, 1))
    assert lease is not None and profile(server, lease) == "residential+business/198.18.0.50"
    lease = server.lease_at(dora(server, 2))
    assert lease is not None and profile(server, lease) == "residential+business"


def test_a_class_selecting_only_pools_renders_with_the_pools_profile() -> None:
    cls = ClientClass("c", ClassMatch(mac=mac(1)), pools=("residential",))
    server = Server(make_config(classes=(cls,)), [], NOW)
    lease = server.lease_at(dora(server, 1))
    assert lease is not None and profile(server, lease) == "residential"


# -- the fast path -------------------------------------------------------------------------


def test_the_kernel_entry_renews_for_the_class_lease_time_with_its_templates() -> None:
    cls = ClientClass(
        "short", ClassMatch(mac=mac(1)), lease_time=600, renewal_time=300, rebinding_time=525
    )
    server = Server(make_config(classes=(cls,)), [], NOW)
    lease = server.lease_at(dora(server, 1))
    assert lease is not None
    rendered = profile(server, lease)
    assert server.profile_pool(rendered).lease_time == 600
    ack = server.template(rendered, MessageType.ACK, None).options
    assert ack[OptionCode.LEASE_TIME] == opt.u32(600)
    assert Planner().entry(server, lease, NOW) is not None


def relayed_dora(server: Server, n: int, circuit: bytes) -> Lease:
    offer = only_reply(server.handle(relayed(n, circuit), INGRESS, NOW))
    ack = server.handle(
        request(
            R,
            n,
            giaddr=RELAY,
            requested=offer.yiaddr,
            server_id=SERVER,
            extra={OptionCode.RELAY_AGENT_INFO: circuit_info(circuit)},
        ),
        INGRESS,
        NOW,
    )
    lease = server.lease_at(only_reply(ack).yiaddr)
    assert lease is not None
    return lease


def test_a_unicast_renewal_keeps_the_class_its_relays_option_82_told() -> None:
    line = ClientClass(
        "line", ClassMatch(circuit_id=exact(b"line-1")), options=option_set({42: NTP})
    )
    server = Server(make_config(classes=(line,)), [], NOW)
    lease = relayed_dora(server, 1, b"line-1")
    renewal = request(R, 1, ciaddr=lease.address)  # unicast, straight to us: no option 82
    ack = only_reply(server.handle(renewal, INGRESS, NOW + 1800))
    assert ack.message_type is MessageType.ACK
    assert ack.options[OptionCode.NTP_SERVERS] == NTP
    renewed = server.lease_at(lease.address)
    assert renewed is not None and renewed.relay == RELAY and renewed.relay_info == lease.relay_info


def test_a_lease_classed_by_option_82_is_answered_in_the_kernel_for_unicast_only() -> None:
    """The program sees no option 82 in a unicast renewal and the slow path classifies it
    by the stash, so both answer alike; a relayed request brings its own option 82, which
    may tell another class: the entry sends it to the slow path."""
    line = ClientClass(
        "line", ClassMatch(circuit_id=exact(b"line-1")), options=option_set({42: NTP})
    )
    server = Server(make_config(classes=(line,)), [], NOW)
    lease = relayed_dora(server, 1, b"line-1")
    answer = server.kernel_answer(lease, NOW)
    assert answer is not None and answer.unicast_only and not answer.by_vlan
    assert answer.profile == "residential+line"
    entry = Planner().entry(server, lease, NOW)
    assert entry is not None
    assert maps.LeaseEntry.from_buffer_copy(entry[1]).flags & maps.LEASE_UNICAST_ONLY
    # On another line the same client is in no class, and its reply says so.
    other = only_reply(server.handle(relayed(1, b"line-2"), INGRESS, NOW))
    assert OptionCode.NTP_SERVERS not in other.options


def test_a_lease_classed_by_option_60_is_the_slow_paths() -> None:
    stb = ClientClass("stb", ClassMatch(vendor_class=exact(b"stb")), options=option_set({42: NTP}))
    server = Server(make_config(classes=(stb,)), [], NOW)
    lease = server.lease_at(dora(server, 1))
    assert lease is not None and server.kernel_answer(lease, NOW) is None
    assert Planner().entry(server, lease, NOW) is None


def test_a_mac_class_lease_keeps_its_entry_across_a_restart() -> None:
    cls = ClientClass("m", ClassMatch(mac=mac(1)), options=option_set({42: NTP}))
    config = make_config(classes=(cls,))
    server = Server(config, [], NOW)
    lease = server.lease_at(dora(server, 1))
    assert lease is not None
    restarted = Server(config, server.leases(), NOW)
    assert restarted.renewable(lease, NOW) and profile(restarted, lease) == "residential+m"


def test_a_reload_moving_the_class_off_the_leases_pool_withdraws_its_entry() -> None:
    pools = two_pools()
    server = Server(make_config(*pools), [], NOW)
    lease = server.lease_at(dora(server, 1))
    assert lease is not None and lease.pool == "first"
    moved = ClientClass("m", ClassMatch(mac=mac(1)), pools=("second",))
    reloaded = server.reconfigured(make_config(*pools, classes=(moved,)), NOW)
    assert not reloaded.renewable(lease, NOW)


# -- configuration -----------------------------------------------------------------------


def with_classes(classes: object) -> dict[str, Any]:
    raw = example()
    raw["classes"] = classes
    return raw


def test_config_reads_a_class() -> None:
    pool = example()["pools"][0]["name"]
    config = parse_config(
        with_classes(
            [
                {
                    "name": "iptv",
                    "match": {
                        "vendor_class": {"prefix": "IPTV"},
                        "remote_id": {"exact": "0x0a0b"},
                        "circuit_id": {"regex": "^olt"},
                        "oui": "00:1A:2b",
                        "mac": "52:54:00:00:00:01",
                        "vlans": [100, "200.*"],
                        "relay": "198.19.0.0/16",
                    },
                    "pools": [pool],
                    "lease_time": 600,
                    "options": {"ntp-servers": ["198.18.0.123"]},
                }
            ]
        )
    )
    [cls] = config.classes
    m = cls.match
    assert m.vendor_class == TextMatch(MatchKind.PREFIX, b"IPTV")
    assert m.remote_id == exact(b"\x0a\x0b")
    assert m.circuit_id is not None and m.circuit_id.matches(b"olt1")
    assert (m.oui, m.mac) == (b"\x00\x1a\x2b", bytes.fromhex("525400000001"))
    assert m.vlans == (VlanRange(100, 100), VlanRange(200, 200, 1, 4094))
    assert m.relay == IPv4Network("198.19.0.0/16")
    assert (cls.pools, cls.lease_time, cls.renewal_time, cls.rebinding_time) == (
        (pool,),
        600,
        300,
        525,
    )
    assert cls.options.as_dict() == {OptionCode.NTP_SERVERS: NTP}


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (
            [{"name": "a", "pools": ["nope"]}],
            ("classes[0].pools[0]", "no pool is named 'nope'"),
        ),
        (
            [{"name": "a"}, {"name": "a"}],
            ("classes[1].name", "duplicate class name 'a', already used by classes[0]"),
        ),
        ([{"match": {}}], ("classes[0].name", "required key missing")),
        (
            [{"name": "a", "match": {"circuit_id": {"regex": "("}}}],
            ("classes[0].match.circuit_id.regex", "'(' is not a regular expression"),
        ),
        (
            [{"name": "a", "match": {"remote_id": {"exact": "x", "prefix": "y"}}}],
            ("classes[0].match.remote_id", "needs exactly one of exact, prefix, regex"),
        ),
        (
            [{"name": "a", "match": {"vendor_class": {"glob": "x"}}}],
            ("classes[0].match.vendor_class.glob", "unknown key"),
        ),
        (
            [{"name": "a", "match": {"oui": "00:1a"}}],
            ("classes[0].match.oui", "'00:1a' is not an OUI aa:bb:cc"),
        ),
        (
            [{"name": "a", "match": {"vlans": [5000]}}],
            ("classes[0].match.vlans[0]", "'5000': VLAN ids are 1-4094"),
        ),
        (
            [{"name": "a", "match": {"relay": "198.19.0.1/8"}}],
            ("classes[0].match.relay", "'198.19.0.1/8' has host bits set"),
        ),
        (
            [{"name": "a", "renewal_time": 100}],
            ("classes[0].renewal_time", "needs the class's lease_time"),
        ),
        (
            [{"name": "a", "lease_time": 600, "rebinding_time": 700}],
            ("classes[0].rebinding_time", "rebinding_time (T2) 700 must be less than"),
        ),
        (
            [{"name": "a", "options": {"ntp-server": ["198.18.0.1"]}}],
            ("classes[0].options.ntp-server", "unknown option name"),
        ),
        (
            [{"name": "a", "match": {"mac": "zz"}}],
            ("classes[0].match.mac", "'zz' is not a MAC address"),
        ),
        ([{"name": "a", "pools": []}], ("classes[0].pools", "must not be empty")),
    ],
)
def test_config_refuses(classes: object, expected: tuple[str, str]) -> None:
    errors = errors_of(with_classes(classes))
    where, reason = expected
    assert any(w == where and r.startswith(reason) for w, r in errors), errors
