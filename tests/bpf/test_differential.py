"""Differential test: the kernel program against the slow path on generated requests and
lease states. For every request the program either passes it (or drops it) or sends
exactly the reply the slow path sends: same message type, same payload bytes, same
destination."""

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from brushtaild.config.model import Config, VlanRange
from brushtaild.daemon import clock
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode, parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.server import wire_client_id
from brushtaild.xdp import maps
from brushtaild.xdp.loader import Program
from tests.bpf.frames import client_frame, decode_reply
from tests.bpf.harness import (
    SERVER_IP,
    SERVER_MAC,
    XDP_PASS,
    XDP_TX,
    Fastpath,
    RenewalLog,
    Sites,
    assert_same_reply,
    client_message,
    default_config,
    frame_payload,
    options_in_order,
)
from tests.engine_helpers import make_pool

MAC = bytes.fromhex("02b700000301")
OTHER_MAC = bytes.fromhex("02b700000302")
LEASE_TIME = 3600  # tests.engine_helpers.make_pool

ip = opt.parse_ip
POOL_A_FIRST = ip("198.18.1.0")
RELAY_A = ip("198.18.2.2")  # a trusted relay on 198.18/16, the server's own subnet
RELAY_B = ip("198.19.0.1")  # a relay on 198.19/16, the second pool; its 118 and 82/5 ignored
RELAY_NOWHERE = ip("10.9.9.9")  # no pool
LINK_A = ip("198.18.3.1")
LINK_B = ip("198.19.3.1")
OTHER_SERVER = ip("198.18.0.2")

UDHCPC_PRL = bytes([1, 3, 6, 12, 15, 28, 42])
DHCLIENT_PRL = bytes([1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42])
PRLS: dict[str, bytes | None] = {
    "none": None,
    "empty": b"",
    "udhcpc": UDHCPC_PRL,
    "dhclient": DHCLIENT_PRL,
    "long": bytes(range(1, 65)),  # PRL_MAX: the longest the program compares
    "too long": bytes(range(1, 66)),  # the program passes it; no entry for such a lease
}
IDENTITIES: dict[str, bytes | None] = {
    "hardware": None,  # no option 61: htype 1 + chaddr
    "explicit hardware": b"\x01" + MAC,
    "named": b"\x00cpe-4711",
    "longest": b"\x00" + bytes(range(31)),  # MAX_CLIENT_ID
    "too long": b"\x00" + bytes(range(32)),  # no entry
}


# Tags (TCIs, outer first) a lease is made on or a request comes with: a priority tag (VID 0)
# names no VLAN, whatever its priority bits; the reply keeps the tags as received.
VLANS: dict[str, tuple[int, ...]] = {
    "none": (),
    "802.1Q": (100,),
    "802.1Q PCP 5": (0xA000 | 100,),
    "QinQ": (100, 4094),
    "priority": (0x2000,),
    "priority, 802.1Q": (0, 100),
    "other VLAN": (101,),
    "other inner": (100, 4093),
}


def relay_info(*subs: tuple[int, bytes]) -> bytes:
    return opt.build_relay_agent_info(subs)


CIRCUIT = (1, b"btcap-rd")
RELAY_INFOS: dict[str, bytes | None] = {
    "none": None,
    "circuit id": relay_info(CIRCUIT),
    "link selection A": relay_info(CIRCUIT, (5, opt.ip(LINK_A))),
    "link selection B": relay_info(CIRCUIT, (5, opt.ip(LINK_B))),
    "link selection 0.0.0.0": relay_info((5, bytes(4)), CIRCUIT),
    "two link selections": relay_info((5, opt.ip(LINK_B)), (5, opt.ip(LINK_A))),
    "link selection 3 bytes": relay_info((5, b"\xc6\x12\x03")),
    "sub-option overrun": relay_info(CIRCUIT)[:-1] + b"\x02\x09abc",
    "250 bytes": relay_info((1, bytes(248))),
    # RFC 5107: the reply's option 54 must be the relay's address, which no template holds.
    "server id override": relay_info(CIRCUIT, (11, opt.ip(RELAY_A))),
    # RFC 5010 flags (unicast) and sub-options nobody here knows: echoed as they are.
    "flags, unknown": relay_info(CIRCUIT, (10, b"\x80"), (151, b""), (9, b"\0\0\x0d\xe9x")),
}
SUBNET_SELECTIONS: dict[str, bytes | None] = {
    "none": None,
    "A": opt.ip(LINK_A),
    "B": opt.ip(LINK_B),
    "0.0.0.0": bytes(4),
    "3 bytes": b"\xc6\x13\x03",
}
MAX_SIZES: dict[str, bytes | None] = {
    "none": None,
    "0": opt.u16(0),
    "300": opt.u16(300),
    "576": opt.u16(576),
    "1500": opt.u16(1500),
    "65535": opt.u16(0xFFFF),
    "1 byte": b"\x02",
}


# -- lease states -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseSetup:
    kind: str  # none, bound, expired, released, declined
    identity: str
    prl: str
    # How the lease was obtained: direct, relay A, relay B, link B, 118 B, circuit A (relay A
    # with a circuit-id).
    network: str
    vlans: str = "none"  # the tags it was obtained with (VLANS)

    def options(self) -> dict[int, bytes]:
        options: dict[int, bytes] = {}
        identity = IDENTITIES[self.identity]
        if identity is not None:
            options[OptionCode.CLIENT_ID] = identity
        lease_prl = PRLS[self.prl]
        if lease_prl is not None:
            options[OptionCode.PARAMETER_REQUEST_LIST] = lease_prl
        if self.network == "link B":
            options[OptionCode.RELAY_AGENT_INFO] = RELAY_INFOS["link selection B"] or b""
        if self.network == "circuit A":
            options[OptionCode.RELAY_AGENT_INFO] = RELAY_INFOS["circuit id"] or b""
        if self.network == "118 B":
            options[OptionCode.SUBNET_SELECTION] = SUBNET_SELECTIONS["B"] or b""
        return options

    @property
    def giaddr(self) -> int:
        relays = {"relay A": RELAY_A, "relay B": RELAY_B, "link B": RELAY_A, "circuit A": RELAY_A}
        return relays.get(self.network, 0)


lease_states = st.builds(
    LeaseSetup,
    kind=st.sampled_from(["bound"] * 6 + ["none", "expired", "released", "declined"]),
    identity=st.sampled_from(list(IDENTITIES)),
    prl=st.sampled_from(list(PRLS)),
    network=st.sampled_from(
        ["direct", "direct", "relay A", "relay B", "link B", "118 B", "circuit A"]
    ),
    vlans=st.sampled_from(["none", "none", "802.1Q", "QinQ", "priority"]),
)


def establish(fastpath: Fastpath, state: LeaseSetup) -> Lease | None:
    """The lease `state` describes, made through the engine and synced to the maps."""
    if state.kind == "none":
        return None
    options = state.options()
    vlans = VLANS[state.vlans]
    if state.kind == "expired":
        # Bound so long ago that it ran out before the engine's `now` (and the kernel's).
        then = fastpath.now - LEASE_TIME - 5
        return fastpath.bind(MAC, options=options, giaddr=state.giaddr, now=then, vlans=vlans)
    lease = fastpath.bind(MAC, options=options, giaddr=state.giaddr, vlans=vlans)
    if state.kind in ("released", "declined"):
        mtype = MessageType.RELEASE if state.kind == "released" else MessageType.DECLINE
        extra = {**options, OptionCode.SERVER_ID: opt.ip(fastpath.config.server_id)}
        if mtype is MessageType.DECLINE:
            extra[OptionCode.REQUESTED_ADDRESS] = opt.ip(lease.address)
        msg = client_message(
            mtype,
            MAC,
            ciaddr=lease.address if mtype is MessageType.RELEASE else 0,
            giaddr=state.giaddr,
            extra=extra,
        )
        decision = fastpath.slow_path(
            fastpath.frame(encode(msg), mac=MAC, relay=bool(state.giaddr), vlans=vlans)
        )
        assert decision is not None and decision.lease_writes, decision
        assert fastpath.entry(maps.Key(MAC, *lease.vlans)) is None
    return lease


# Where a roaming client's limit is (docs/STATE.md, rule 2), in seconds after the kernel's
# clock: already past, under the second the engine needs, short of a full lease, room for
# one, room for several.
ROAMING_LIMITS = [-100.0, 0.5, 30.0, LEASE_TIME - 600.0, LEASE_TIME + 60.0, 10.0 * LEASE_TIME]


def _sites(sites: Sites, roam: float | None) -> Sites | None:
    return sites if roam is not None else None


def roaming(fastpath: Fastpath, sites: Sites, roam: float | None) -> None:
    """With `roam`, the lease just made is a roaming client's: its address becomes another
    site's block whose owner lets it run to `roam` seconds past the kernel's clock (which
    runs ENGINE_LAG ahead of the engine's), and its entry is rewritten as after the
    handover."""
    if roam is None:
        return
    sites.owned = False
    sites.limit = clock.wall() + roam
    fastpath.sync.reconcile(fastpath.now)


# -- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A request relative to the lease: by default what a client holding it sends in
    `state` (RFC 2131 4.3.2), through the network it got it from; each other field value
    is a deviation from that."""

    mtype: int
    state: str  # selecting, init-reboot, renewing, rebinding (REQUEST only)
    xid: int
    own_mac: bool = True
    client_id: str = "lease"  # or absent, hardware, other, empty
    prl: str = "lease"  # or lease changed, or a PRLS name
    requested: str = "state"  # or absent, lease, lease+1, other pool, zero
    server_id: str = "state"  # or absent, ours, other
    ciaddr: str = "state"  # or zero, lease, lease+1
    giaddr: str = "lease"  # or zero, A, B, nowhere
    relay: str = "lease"  # or a RELAY_INFOS name
    subnet_selection: str = "lease"  # or a SUBNET_SELECTIONS name
    flags: int = 0
    max_size: str = "none"
    framing: str = "state"  # or broadcast, to server, to other ip
    ip_options: bool = False
    no_end: bool = False  # options run to the payload's end without an end option
    junk: str = "none"  # a BOOTP field the reply must not copy (see JUNK)
    vlans: str = "lease"  # or a VLANS name


DEVIATIONS: dict[str, list[object]] = {
    "own_mac": [False],
    "client_id": ["absent", "hardware", "other", "empty"],
    "prl": ["lease changed", *PRLS],
    "requested": ["absent", "lease", "lease+1", "other pool", "zero"],
    "server_id": ["absent", "ours", "other"],
    "ciaddr": ["zero", "lease", "lease+1"],
    "giaddr": ["zero", "A", "B", "nowhere"],
    "relay": list(RELAY_INFOS),
    "subnet_selection": list(SUBNET_SELECTIONS),
    "flags": [0x8000, 0x0001, 0x8001],
    "max_size": list(MAX_SIZES),
    "framing": ["broadcast", "to server", "to other ip"],
    "ip_options": [True],
    "no_end": [True],
    "junk": ["sname", "file", "secs", "hops", "yiaddr", "siaddr", "chaddr padding", "all"],
    "vlans": list(VLANS),
}
# Request fields a reply sets itself (zero, or the lease's address): a kernel that builds
# the reply in the request's frame must overwrite every one of them.
JUNK: dict[str, dict[str, object]] = {
    "none": {},
    "sname": {"sname": b"server.example".ljust(64, b"\0")},
    "file": {"file": b"pxelinux.0".ljust(128, b"\0")},
    "secs": {"secs": 0x1234},
    "hops": {"hops": 3},
    "yiaddr": {"yiaddr": ip("198.18.1.7")},
    "siaddr": {"siaddr": ip("198.18.0.9")},
    "chaddr padding": {},  # chaddr beyond hlen: copied, not cleared (the codec does)
}
JUNK["all"] = {k: v for fields in JUNK.values() for k, v in fields.items()}
MESSAGE_TYPES = [1, 1, 1, 3, 3, 3, 3, 3, 3, 4, 7, 8, 2, 5, 6, 9]
STATES = ["selecting", "init-reboot", "renewing", "rebinding"]


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """Half the requests are exactly what the lease's client sends; the others deviate in
    one to three fields."""
    deviations = draw(
        st.one_of(st.just([]), st.lists(st.sampled_from(list(DEVIATIONS)), min_size=1, max_size=3))
    )
    changed = {name: draw(st.sampled_from(DEVIATIONS[name])) for name in deviations}
    return Request(
        mtype=draw(st.sampled_from(MESSAGE_TYPES)),
        state=draw(st.sampled_from(STATES)),
        xid=draw(st.integers(0, 0xFFFFFFFF)),
        **changed,  # type: ignore[arg-type]
    )


def _by_state(r: Request) -> tuple[str, str, str, str]:
    """requested, server_id, ciaddr, framing as a client in r.state sends them."""
    if r.mtype != MessageType.REQUEST:
        return "absent", "absent", "zero", "broadcast"
    return {
        "selecting": ("lease", "ours", "zero", "broadcast"),
        "init-reboot": ("lease", "absent", "zero", "broadcast"),
        "renewing": ("absent", "absent", "lease", "to server"),
        "rebinding": ("absent", "absent", "lease", "broadcast"),
    }[r.state]


def request_frame(fastpath: Fastpath, state: LeaseSetup, lease: Lease | None, r: Request) -> bytes:
    address = lease.address if lease is not None else POOL_A_FIRST
    mac = MAC if r.own_mac else OTHER_MAC
    by_state = dict(zip(("requested", "server_id", "ciaddr", "framing"), _by_state(r), strict=True))
    choice = {
        name: by_state[name] if getattr(r, name) == "state" else getattr(r, name)
        for name in by_state
    }
    lease_options = state.options()
    options: dict[int, bytes] = {}
    identity = lease_options.get(OptionCode.CLIENT_ID)
    client_id = {
        "lease": identity,
        "absent": None,
        "hardware": b"\x01" + mac,
        "other": b"\x00someone-else",
        "empty": b"",
    }[r.client_id]
    if client_id is not None:
        options[OptionCode.CLIENT_ID] = client_id
    lease_prl = PRLS[state.prl]
    if r.prl == "lease":
        prl = lease_prl
    elif r.prl == "lease changed":
        prl = (lease_prl or b"\x03")[:-1] + b"\x79"
    else:
        prl = PRLS[r.prl]
    if prl is not None:
        options[OptionCode.PARAMETER_REQUEST_LIST] = prl
    requested = {
        "absent": None,
        "lease": address,
        "lease+1": address + 1,
        "other pool": ip("198.19.1.0"),
        "zero": 0,
    }[choice["requested"]]
    if requested is not None:
        options[OptionCode.REQUESTED_ADDRESS] = opt.ip(requested)
    server_id = {"absent": None, "ours": fastpath.config.server_id, "other": OTHER_SERVER}[
        choice["server_id"]
    ]
    if server_id is not None:
        options[OptionCode.SERVER_ID] = opt.ip(server_id)
    subnet_selection = (
        lease_options.get(OptionCode.SUBNET_SELECTION)
        if r.subnet_selection == "lease"
        else SUBNET_SELECTIONS[r.subnet_selection]
    )
    relay = (
        lease_options.get(OptionCode.RELAY_AGENT_INFO)
        if r.relay == "lease"
        else RELAY_INFOS[r.relay]
    )
    for code, value in (
        (OptionCode.MAX_MESSAGE_SIZE, MAX_SIZES[r.max_size]),
        (OptionCode.SUBNET_SELECTION, subnet_selection),
        (OptionCode.RELAY_AGENT_INFO, relay),  # relays append it last
    ):
        if value is not None:
            options[code] = value
    ciaddr = {"zero": 0, "lease": address, "lease+1": address + 1}[choice["ciaddr"]]
    giaddr = (
        state.giaddr
        if r.giaddr == "lease"
        else {"zero": 0, "A": RELAY_A, "B": RELAY_B, "nowhere": RELAY_NOWHERE}[r.giaddr]
    )
    msg = client_message(
        MessageType.DISCOVER,
        mac,
        xid=r.xid,
        ciaddr=ciaddr,
        giaddr=giaddr,
        flags=r.flags,
        extra=options,
    )
    msg.options[OptionCode.MESSAGE_TYPE] = bytes((r.mtype,))
    for name, field_value in JUNK[r.junk].items():
        setattr(msg, name, field_value)
    if r.junk in ("chaddr padding", "all"):
        msg.chaddr = mac + bytes(range(0xA0, 0xAA))
    payload = encode(msg, 1500)
    if r.no_end:  # many clients end the options field without an end option
        payload = payload.rstrip(b"\0")
        assert payload.endswith(b"\xff")
        payload = payload[:-1]
    ip_options = bytes.fromhex("94040000") if r.ip_options else b""
    vlans = VLANS[state.vlans if r.vlans == "lease" else r.vlans]
    if giaddr or choice["framing"] == "broadcast":
        return fastpath.frame(
            payload, mac=mac, relay=bool(giaddr), ip_options=ip_options, vlans=vlans
        )
    return client_frame(
        payload,
        src_mac=mac,
        dst_mac=SERVER_MAC,
        src_ip=opt.format_ip(ciaddr or address),
        dst_ip=SERVER_IP if choice["framing"] == "to server" else "198.18.0.77",
        ip_options=ip_options,
        vlans=vlans,
    )


def mismatches_lease(payload: bytes, lease: Lease | None, server_id: int) -> bool:
    """A REQUEST whose 50, 54 or ciaddr names another address or server than the lease."""
    msg = parse(payload)
    if lease is None:
        return True
    requested = msg.options.get(OptionCode.REQUESTED_ADDRESS)
    sid = msg.options.get(OptionCode.SERVER_ID)
    return (
        (requested is not None and requested != opt.ip(lease.address))
        or (sid is not None and sid != opt.ip(server_id))
        or (msg.ciaddr != 0 and msg.ciaddr != lease.address)
    )


def check(
    program: Program,
    renewal_log: RenewalLog,
    state: LeaseSetup,
    request: Request,
    note: Callable[[str], object] = lambda _: None,
    config: Config | None = None,
    roam: float | None = None,
) -> int:
    """Runs `request` against a fresh engine holding `state`; returns the kernel's verdict
    after checking it against the slow path. `note` hears what happened. With `roam`, the
    lease is a roaming client's once made (see `roaming`)."""
    sites = Sites()
    fastpath = Fastpath(program, renewal_log, config, replication=_sites(sites, roam))
    for relay in (RELAY_A, RELAY_B, RELAY_NOWHERE):
        # As if each had been answered before: the kernel knows their next hops.
        fastpath.know_relay(relay)
    lease = establish(fastpath, state)
    roaming(fastpath, sites, roam)
    frame = request_frame(fastpath, state, lease, request)
    run = fastpath.run(frame)
    if request.mtype not in (MessageType.DISCOVER, MessageType.REQUEST):
        # RELEASE, DECLINE, INFORM and the server's own types: the slow path's, always.
        assert run.retval == XDP_PASS
    if run.retval != XDP_TX:
        note(f"passed ({state.kind} lease)")
        return run.retval
    if request.mtype == MessageType.REQUEST:
        assert not mismatches_lease(frame_payload(frame), lease, fastpath.config.server_id)
    reply = assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False))
    note(f"answered: {reply.message.message_type}")
    return run.retval


BOUND = LeaseSetup("bound", "hardware", "udhcpc", "direct")
# Found by the generated cases once (a subnet selection of 0.0.0.0 was taken for none).
REGRESSIONS = [
    (BOUND, Request(mtype=1, state="selecting", xid=0, relay="link selection 0.0.0.0")),
    (BOUND, Request(mtype=3, state="selecting", xid=0, relay="link selection 0.0.0.0")),
    (BOUND, Request(mtype=1, state="selecting", xid=0, subnet_selection="0.0.0.0")),
    (
        LeaseSetup("bound", "named", "dhclient", "118 B"),
        Request(mtype=3, state="renewing", xid=0, subnet_selection="0.0.0.0"),
    ),
]


def with_regressions(test: Callable[..., None]) -> Callable[..., None]:
    for state, request in REGRESSIONS:
        test = example(state=state, request=request)(test)
    return test


NETWORKS = ["direct", "relay A", "relay B", "link B"]  # "118 B": see test_option_118_...
KINDS = {"discover": (MessageType.DISCOVER, "selecting")} | {
    state: (MessageType.REQUEST, state) for state in STATES
}


@pytest.mark.parametrize("vlans", ["none", "802.1Q PCP 5", "QinQ", "priority", "priority, 802.1Q"])
@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
@pytest.mark.parametrize("network", NETWORKS)
def test_client_holding_a_lease_is_answered(
    program: Program, renewal_log: RenewalLog, network: str, kind: tuple[int, str], vlans: str
) -> None:
    """The generated cases' starting point: what a client holding a lease sends, in each
    RFC 2131 state, on each way of reaching the server, untagged or on the VLANs it got
    the lease on, is answered by the kernel (with its tags, as the slow path would)."""
    mtype, rfc_state = kind
    state = LeaseSetup("bound", "named", "dhclient", network, vlans)
    assert check(program, renewal_log, state, Request(mtype, rfc_state, xid=7)) == XDP_TX


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_option_118_is_left_to_the_slow_path(
    program: Program, renewal_log: RenewalLog, kind: tuple[int, str]
) -> None:
    """RFC 3011: a reply to a request with option 118 must echo it, which the templates
    cannot; the kernel passes every such request (result `selector`)."""
    mtype, rfc_state = kind
    state = LeaseSetup("bound", "named", "dhclient", "118 B")
    fastpath = Fastpath(program, renewal_log)
    lease = establish(fastpath, state)
    frame = request_frame(fastpath, state, lease, Request(mtype, rfc_state, xid=7))
    assert fastpath.results_of(frame) == {maps.Result.SELECTOR: 1}
    assert fastpath.run(frame).retval == XDP_PASS


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_a_server_identifier_override_is_left_to_the_slow_path(
    program: Program, renewal_log: RenewalLog, kind: tuple[int, str]
) -> None:
    """RFC 5107: the reply to a relayed request with sub-option 11 names the relay as
    option 54, which the templates cannot; the kernel passes it (result `selector`)."""
    mtype, rfc_state = kind
    state = LeaseSetup("bound", "named", "dhclient", "relay A")
    fastpath = Fastpath(program, renewal_log)
    lease = establish(fastpath, state)
    request = Request(mtype, rfc_state, xid=7, relay="server id override")
    frame = request_frame(fastpath, state, lease, request)
    assert fastpath.results_of(frame) == {maps.Result.SELECTOR: 1}
    assert fastpath.run(frame).retval == XDP_PASS


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_relay_flags_and_unknown_sub_options_are_answered_and_echoed(
    program: Program, renewal_log: RenewalLog, kind: tuple[int, str]
) -> None:
    """Sub-options that change nothing in the reply (RFC 5010 flags, ones we do not know)
    leave a relayed client to the kernel, which echoes option 82 as the slow path does."""
    mtype, rfc_state = kind
    state = LeaseSetup("bound", "named", "dhclient", "relay A")
    request = Request(mtype, rfc_state, xid=7, relay="flags, unknown")
    assert check(program, renewal_log, state, request) == XDP_TX


@pytest.mark.parametrize("relay", ["circuit id", "link selection A"])
@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_option_82_from_a_client_is_left_to_the_slow_path(
    program: Program, renewal_log: RenewalLog, kind: tuple[int, str], relay: str
) -> None:
    """Relay information in a request without giaddr comes from the client itself, which
    cannot be trusted with it: the slow path ignores it, and the kernel passes the
    request (result `selector`) rather than echo it or select a subnet by it."""
    mtype, rfc_state = kind
    fastpath = Fastpath(program, renewal_log)
    lease = establish(fastpath, BOUND)
    frame = request_frame(fastpath, BOUND, lease, Request(mtype, rfc_state, xid=7, relay=relay))
    assert fastpath.results_of(frame) == {maps.Result.SELECTOR: 1}


@pytest.mark.parametrize("identity", list(IDENTITIES)[:-1])
@pytest.mark.parametrize("relay", ["none", "circuit id"])
def test_client_id_is_echoed_between_the_template_and_option_82(
    program: Program, renewal_log: RenewalLog, identity: str, relay: str
) -> None:
    """RFC 6842: option 61 comes back verbatim when the request carried it, after the
    template's options and before option 82 (which RFC 3046 wants last)."""
    state = LeaseSetup("bound", identity, "dhclient", "relay A")
    fastpath = Fastpath(program, renewal_log)
    lease = establish(fastpath, state)
    frame = request_frame(fastpath, state, lease, Request(3, "renewing", xid=7, relay=relay))
    run = fastpath.run(frame)
    assert run.retval == XDP_TX
    payload = decode_reply(run.data).payload
    order = options_in_order(payload)
    sent = IDENTITIES[identity]
    echoed = [OptionCode.CLIENT_ID] if sent is not None else []
    relayed = [OptionCode.RELAY_AGENT_INFO] if relay != "none" else []
    tail = echoed + relayed
    assert order[len(order) - len(tail) :] == tail
    assert order.count(OptionCode.CLIENT_ID) == len(echoed)
    assert parse(payload).options.get(OptionCode.CLIENT_ID) == sent


@pytest.mark.parametrize("junk", [j for j in JUNK if j != "none"])
@pytest.mark.parametrize("mtype", [MessageType.DISCOVER, MessageType.REQUEST])
def test_request_fields_the_reply_sets_are_not_copied(
    program: Program, renewal_log: RenewalLog, junk: str, mtype: int
) -> None:
    request = Request(mtype, "selecting", xid=7, junk=junk)
    assert check(program, renewal_log, BOUND, request) == XDP_TX


@settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(state=lease_states, request=requests())
@with_regressions
def test_kernel_passes_or_answers_as_the_slow_path(
    program: Program, renewal_log: RenewalLog, state: LeaseSetup, request: Request
) -> None:
    check(program, renewal_log, state, request, event)


@settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Half the draws leave room for a full lease: those the kernel may answer.
@given(
    state=lease_states,
    request=requests(),
    roam=st.sampled_from(ROAMING_LIMITS + ROAMING_LIMITS[-2:] * 2),
)
def test_kernel_passes_or_answers_as_the_slow_path_for_a_roaming_client(
    program: Program, renewal_log: RenewalLog, state: LeaseSetup, request: Request, roam: float
) -> None:
    """The slow path runs ENGINE_LAG behind the kernel: it gives a full lease wherever
    the kernel may, so every kernel answer is checked; where the cap stops the kernel,
    tests/bpf/test_roaming.py checks the slow path at the kernel's time."""
    check(program, renewal_log, state, request, event, roam=roam)


# The QinQ lines of S-VLAN 100 with C-VLAN 4094 have a pool of their own, on a subnet that
# does not hold the server's address: their leases are made there, and those clients are
# identified by their VLANs (the engine's subscriber_identity).
VLAN_CONFIG = replace(
    default_config(),
    pools=(
        *default_config().pools,
        replace(
            make_pool(name="qinq", subnet="192.0.2.0/24", first="192.0.2.10", last="192.0.2.19"),
            vlans=(VlanRange(100, 100, 4094, 4094),),
        ),
    ),
)


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_a_vlan_pools_client_is_answered_in_every_state(
    program: Program, renewal_log: RenewalLog, kind: tuple[int, str]
) -> None:
    """The QinQ pool's subnet does not hold the server's address: its clients' VLANs, not
    server_id, chose it, and the kernel answers them as the slow path does (entry flag
    BY_VLAN), DISCOVER and INIT-REBOOT included."""
    mtype, rfc_state = kind
    state = LeaseSetup("bound", "named", "dhclient", "direct", "QinQ")
    request = Request(mtype, rfc_state, xid=7)
    assert check(program, renewal_log, state, request, config=VLAN_CONFIG) == XDP_TX


@settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(state=lease_states, request=requests())
def test_kernel_passes_or_answers_as_the_slow_path_with_a_vlan_pool(
    program: Program, renewal_log: RenewalLog, state: LeaseSetup, request: Request
) -> None:
    check(program, renewal_log, state, request, event, VLAN_CONFIG)


def current_lease(fastpath: Fastpath, first: Lease | None) -> Lease | None:
    """The client's bound lease now (the slow path may have moved it), else the first."""
    bound = [
        lease
        for lease in fastpath.server.leases()
        if lease.hwaddr == MAC and lease.state is LeaseState.BOUND
    ]
    return bound[-1] if bound else first


def assert_entries_are_engine_leases(fastpath: Fastpath) -> None:
    """Every entry the kernel could still answer with is a bound lease the engine holds:
    same client, same address, same identity."""
    boot_now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    for key, entry in fastpath.entries().items():
        if entry.expires_ns <= boot_now:
            continue  # the kernel no longer answers with it
        lease = fastpath.server.lease_at(maps.host32(entry.address))
        assert lease is not None and lease.active(fastpath.now), (key, lease)
        assert (lease.hwaddr, lease.vlans) == (key.mac, key.vlans)
        assert bytes(entry.client_id[: entry.id_len]) == wire_client_id(lease)


@settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    state=lease_states,
    sequence=st.lists(requests(), min_size=2, max_size=4),
    roam=st.sampled_from([None, None, *ROAMING_LIMITS]),
)
@pytest.mark.parametrize("config", [None, VLAN_CONFIG], ids=["link pools", "a VLAN pool"])
def test_exchanges_stay_in_agreement_as_the_daemon_runs_them(
    program: Program,
    renewal_log: RenewalLog,
    state: LeaseSetup,
    sequence: list[Request],
    config: Config | None,
    roam: float | None,
) -> None:
    """Several requests in a row, handled as the daemon does: a request the kernel passes
    goes to the engine (its decision synced to the maps); a kernel ACK's renewal is
    absorbed by the engine. At each step the kernel's answer is the slow path's, and every
    entry stays one of the engine's leases; no renewal of a roaming client's goes past its
    cap."""
    sites = Sites()
    fastpath = Fastpath(program, renewal_log, config, replication=_sites(sites, roam))
    first = establish(fastpath, state)
    roaming(fastpath, sites, roam)
    for request in sequence:
        frame = request_frame(fastpath, state, current_lease(fastpath, first), request)
        run = fastpath.run(frame)
        if run.retval == XDP_TX:
            reply = assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False))
            renewals = fastpath.absorb_renewals()
            assert renewals == int(reply.message.message_type is MessageType.ACK)
            event(f"answered: {reply.message.message_type}")
        else:
            fastpath.slow_path(frame)
        assert_entries_are_engine_leases(fastpath)
    assert fastpath.server.renewals_past_cap == 0


@pytest.mark.parametrize("max_size", list(MAX_SIZES))
def test_long_relay_information_against_the_clients_limit(
    program: Program, renewal_log: RenewalLog, max_size: str
) -> None:
    """A 250-byte option 82 echoed into a reply: it fits 576 bytes only without the
    lease's options, so the kernel answers only when option 57 allows it, as the slow path
    does (which could also trim or overload, and the kernel then passes)."""
    state = LeaseSetup("bound", "named", "dhclient", "relay A")
    request = Request(MessageType.REQUEST, "selecting", xid=7, relay="250 bytes", max_size=max_size)
    verdict = check(program, renewal_log, state, request)
    if max_size in ("1500", "65535"):
        assert verdict == XDP_TX
