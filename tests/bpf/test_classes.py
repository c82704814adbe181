"""Differential cases for client classes: a classified client's renewal is answered by the
kernel program with the slow path's bytes (its class's options and lease time, from
templates of the class's own profile), and a request whose class the kernel cannot tell is
left to the slow path."""

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, given, settings

from brushtaild.config.model import (
    ClassMatch,
    ClientClass,
    Config,
    MatchKind,
    TextMatch,
    option_set,
)
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType, OptionCode, RelayAgentSubOption
from brushtaild.xdp import maps
from brushtaild.xdp.loader import Program
from tests.bpf import test_differential as differential
from tests.bpf.harness import (
    XDP_PASS,
    XDP_TX,
    Fastpath,
    RenewalLog,
    assert_same_reply,
    client_message,
)
from tests.engine_helpers import make_config, make_pool

ip = opt.parse_ip
STB_MAC = bytes.fromhex("001a2b000501")
PLAIN_MAC = bytes.fromhex("02b700000502")
LINE_MAC = bytes.fromhex("02b700000503")
GIADDR = ip("198.19.0.1")
LINES = make_pool("lines", "198.19.0.0/24", "198.19.0.10", "198.19.0.19")
PRL = bytes([1, 3, 6, 15, 28, 42])
NTP = opt.ip(ip("198.18.0.123"))
AGENT = opt.build_relay_agent_info([(RelayAgentSubOption.CIRCUIT_ID, b"olt1/1/1:7")])
IPTV = ClientClass(
    "iptv-stb",
    ClassMatch(oui=STB_MAC[:3]),
    lease_time=86400,
    renewal_time=43200,
    rebinding_time=75600,
    options=option_set({OptionCode.NTP_SERVERS: NTP, OptionCode.DNS_SERVERS: NTP}),
)
BUSINESS = ClientClass(
    "business",
    ClassMatch(circuit_id=TextMatch(MatchKind.PREFIX, b"olt1/")),
    options=option_set({OptionCode.NTP_SERVERS: NTP}),
)


def classes_config(*classes: ClientClass) -> Config:
    return make_config(make_pool(), LINES, classes=classes)


def renewal(fastpath: Fastpath, mac: bytes, address: int, giaddr: int = 0) -> bytes:
    extra = {OptionCode.PARAMETER_REQUEST_LIST: PRL}
    if giaddr:
        extra[OptionCode.RELAY_AGENT_INFO] = AGENT
    msg = client_message(MessageType.REQUEST, mac, ciaddr=address, giaddr=giaddr, extra=extra)
    return fastpath.frame(
        encode(msg, 1500), mac=mac, relay=bool(giaddr), unicast_from=0 if giaddr else address
    )


def answered_alike(fastpath: Fastpath, frame: bytes) -> dict[int, bytes]:
    run = fastpath.run(frame)
    assert run.retval == XDP_TX
    return assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False)).message.options


def test_a_classified_clients_renewal_is_answered_as_the_slow_path(
    program: Program, renewal_log: RenewalLog
) -> None:
    """By OUI (a class the lease itself tells): the class's options and lease time, while a
    neighbour in the same pool keeps the pool's."""
    fastpath = Fastpath(program, renewal_log, classes_config(IPTV))
    prl = {OptionCode.PARAMETER_REQUEST_LIST: PRL}
    stb = fastpath.bind(STB_MAC, options=prl)
    plain = fastpath.bind(PLAIN_MAC, options=prl)
    assert stb.expires == fastpath.now + 86400
    stb_ack = answered_alike(fastpath, renewal(fastpath, STB_MAC, stb.address))
    assert stb_ack[OptionCode.LEASE_TIME] == opt.u32(86400)
    assert stb_ack[OptionCode.NTP_SERVERS] == NTP == stb_ack[OptionCode.DNS_SERVERS]
    plain_ack = answered_alike(fastpath, renewal(fastpath, PLAIN_MAC, plain.address))
    assert plain_ack[OptionCode.LEASE_TIME] == opt.u32(3600)
    assert OptionCode.NTP_SERVERS not in plain_ack
    entry = fastpath.entry(maps.Key(STB_MAC))
    assert entry is not None and entry.lease_time == 86400


def test_leases_an_option_82_class_could_take_are_answered_in_the_kernel_for_unicast_only(
    program: Program, renewal_log: RenewalLog
) -> None:
    """A unicast renewal carries no option 82 and the slow path classifies it by what the
    lease stashed, as the kernel answers it. A relayed request carries the relay's option
    82 now, which may tell another class: the kernel leaves it to the slow path, for a
    lease of the option 82 class or of any client it could take (not claimed by a MAC, OUI
    or VLAN class before it)."""
    fastpath = Fastpath(program, renewal_log, classes_config(IPTV, BUSINESS))
    fastpath.know_relay(GIADDR)
    prl = {OptionCode.PARAMETER_REQUEST_LIST: PRL}
    lease = fastpath.bind(
        LINE_MAC, giaddr=GIADDR, options={**prl, OptionCode.RELAY_AGENT_INFO: AGENT}
    )
    plain = fastpath.bind(PLAIN_MAC, options=prl)
    stb = fastpath.bind(STB_MAC, options=prl)
    assert lease.pool == "lines"
    for mac in (LINE_MAC, PLAIN_MAC):
        entry = fastpath.entry(maps.Key(mac))
        assert entry is not None and entry.flags & maps.LEASE_UNICAST_ONLY
    assert (
        answered_alike(fastpath, renewal(fastpath, LINE_MAC, lease.address))[OptionCode.NTP_SERVERS]
        == NTP
    )
    assert OptionCode.NTP_SERVERS not in answered_alike(
        fastpath, renewal(fastpath, PLAIN_MAC, plain.address)
    )
    frame = renewal(fastpath, LINE_MAC, lease.address, GIADDR)
    assert fastpath.run(frame).retval == XDP_PASS
    decision = fastpath.slow_path(frame)
    assert decision is not None
    assert decision.replies[0].message.options[OptionCode.NTP_SERVERS] == NTP
    # The class before the option 82 one still decides its clients, relayed or not.
    stb_entry = fastpath.entry(maps.Key(STB_MAC))
    assert stb_entry is not None and not stb_entry.flags & maps.LEASE_UNICAST_ONLY
    answered_alike(fastpath, renewal(fastpath, STB_MAC, stb.address))


# The differential test's client (its MAC) in a class of its own, with options and a lease
# time; a class on the circuit-id its relayed requests carry, before or after it.
CPE = ClientClass(
    "cpe",
    ClassMatch(mac=differential.MAC),
    lease_time=7200,
    options=option_set({OptionCode.NTP_SERVERS: NTP, OptionCode.INTERFACE_MTU: opt.u16(1400)}),
)
CIRCUIT = ClientClass(
    "circuit",
    ClassMatch(circuit_id=TextMatch(MatchKind.EXACT, differential.CIRCUIT[1])),
    lease_time=900,
    options=option_set({OptionCode.NTP_SERVERS: opt.ip(ip("198.18.0.124"))}),
)
CLASS_CONFIGS = {
    "mac class first": (CPE, CIRCUIT),
    "circuit class first": (CIRCUIT, CPE),
}


@settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(state=differential.lease_states, request=differential.requests())
@pytest.mark.parametrize("classes", CLASS_CONFIGS.values(), ids=CLASS_CONFIGS.keys())
def test_kernel_passes_or_answers_as_the_slow_path_with_classes(
    program: Program,
    renewal_log: RenewalLog,
    classes: tuple[ClientClass, ...],
    state: differential.LeaseSetup,
    request: differential.Request,
) -> None:
    config = replace(differential.default_config(), classes=classes)
    differential.check(program, renewal_log, state, request, event, config)


@pytest.mark.parametrize("kind", differential.KINDS.values(), ids=differential.KINDS.keys())
def test_a_mac_classed_client_is_answered_in_the_kernel_in_every_state(
    program: Program, renewal_log: RenewalLog, kind: tuple[int, str]
) -> None:
    mtype, rfc_state = kind
    state = differential.LeaseSetup("bound", "named", "dhclient", "relay A")
    request = differential.Request(mtype, rfc_state, xid=7, relay="circuit id")
    config = replace(differential.default_config(), classes=CLASS_CONFIGS["mac class first"])
    assert differential.check(program, renewal_log, state, request, config=config) == XDP_TX


@pytest.mark.parametrize("kind", differential.KINDS.values(), ids=differential.KINDS.keys())
def test_a_circuit_classed_clients_relayed_requests_are_the_slow_paths(
    program: Program, renewal_log: RenewalLog, kind: tuple[int, str]
) -> None:
    """Its lease stashed the relay's circuit-id; whatever comes through the relay brings an
    option 82 of its own, which may tell another class: the slow path answers."""
    mtype, rfc_state = kind
    state = differential.LeaseSetup("bound", "named", "dhclient", "circuit A")
    request = differential.Request(mtype, rfc_state, xid=7)
    config = replace(differential.default_config(), classes=CLASS_CONFIGS["circuit class first"])
    assert differential.check(program, renewal_log, state, request, config=config) == XDP_PASS


def test_a_circuit_classed_clients_unicast_renewal_is_answered_in_the_kernel(
    program: Program, renewal_log: RenewalLog
) -> None:
    """Straight to us, without option 82: classified by the lease's stash on both paths."""
    state = differential.LeaseSetup("bound", "named", "dhclient", "circuit A")
    request = differential.Request(
        MessageType.REQUEST, "renewing", xid=7, giaddr="zero", relay="none"
    )
    config = replace(differential.default_config(), classes=CLASS_CONFIGS["circuit class first"])
    assert differential.check(program, renewal_log, state, request, config=config) == XDP_TX
