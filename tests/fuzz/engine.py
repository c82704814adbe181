"""The engine under fuzzing: one input is a sequence of requests from a few clients, each
parsed by the codec and handled by a fresh `Server`, and every decision checked.

`run(data)` reads the input as choices (tests.fuzz.mutate.Draw): per step, how far the
clock moves (sometimes a jump past every lease), then a request, built field by field,
taken from the capture corpus (tests/vectors) and mutated, or raw bytes; then where it came
from (Ingress). State builds up within an input: addresses the server offered or acked are
what later requests name. Checked on every step:

- only `MalformedPacket` leaves the codec, and nothing leaves `Server.handle`; a drop for an
  internal error counts as a crash too;
- every reply parses back and keeps RFC 2131's rules (op, xid, chaddr, giaddr; 53, 54, 51
  and a pool address in OFFER and ACK; no 51 and yiaddr 0 in an INFORM's ACK; yiaddr and
  ciaddr 0 and no 51 in a NAK), echoes option 61 (RFC 6842) and a relayed request's option
  82 verbatim and last in the options field (RFC 3046 2.2), and fits the client's maximum
  message size;
- no address is active for two clients: by the replies themselves (an address acked to one
  client is neither offered nor acked to another until it expires or is given back) and
  by the server's leases (each such address is the client's active lease there).
"""

from dataclasses import dataclass, field
from functools import cache
from ipaddress import IPv4Network

from brushtaild.config.model import Config, Pool
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode, parse
from brushtaild.dhcp.constants import (
    IP_UDP_HEADERS,
    MIN_IP_DATAGRAM,
    MessageType,
    Op,
    OptionCode,
    Overload,
)
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.reasons import DropReason, MalformedPacket
from brushtaild.engine.decisions import Decision, Ingress
from brushtaild.engine.server import Server
from tests.engine_helpers import SERVER, mac, make_config, make_pool
from tests.fuzz.mutate import Draw, mutate, option_bounds
from tests.vectors import CAPTURED, load_vector

ip = opt.parse_ip
START = 1_800_000_000.0
MAX_STEPS = 24
CLIENTS = 4
MAX_DATAGRAM = 1500  # the engine's ceiling on any reply, whatever option 57 says

POOLS = (
    make_pool("a1", "198.18.0.0/16", "198.18.1.0", "198.18.1.5", lease_time=300),
    make_pool("a2", "198.18.0.0/16", "198.18.5.0", "198.18.5.3", lease_time=120),
    make_pool("b", "198.19.0.0/16", "198.19.1.0", "198.19.1.5", lease_time=600),
)
RELAY_A = ip("198.18.2.2")  # on the server's subnet (pools a1, a2); trusted with 118 and 82/5
RELAY_B = ip("198.19.0.1")  # on pool b's subnet
RELAY_NOWHERE = ip("192.0.2.9")  # on no configured subnet
OTHER_SERVER = ip("198.18.0.2")
CONFIG: Config = make_config(
    *POOLS, offer_hold=30, decline_hold=200, trusted_relays=(IPv4Network(RELAY_A),)
)
RELAY_MAC = bytes.fromhex("02b7000000aa")
PRLS = (
    None,
    b"",
    bytes([1, 3, 6, 12, 15, 28, 42]),
    bytes([1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42]),
    bytes(range(1, 80)),
)
MAX_SIZES = (None, opt.u16(576), opt.u16(1500), opt.u16(300), opt.u16(0xFFFF), b"\x02", b"")
MESSAGE_TYPES = (1, 1, 3, 3, 3, 3, 4, 7, 8, 2, 5, 6, 0, 9)
# The replies RFC 2131 allows to each request (table 3 and section 4.3).
ANSWERS: dict[int, tuple[MessageType, ...]] = {
    MessageType.DISCOVER: (MessageType.OFFER,),
    MessageType.REQUEST: (MessageType.ACK, MessageType.NAK),
    MessageType.INFORM: (MessageType.ACK,),
}


def _relay_info(draw: Draw) -> bytes | None:
    kind = draw.below(8)
    if kind == 0:
        return None
    circuit = opt.build_relay_agent_info([(1, b"port-%d" % draw.below(4))])
    if kind == 1:
        return circuit
    if kind == 2:
        return circuit + opt.build_relay_agent_info([(5, opt.ip(draw.pick((RELAY_A, RELAY_B))))])
    if kind == 3:
        return opt.build_relay_agent_info([(1, bytes(248))])  # fills option 82's 255 bytes
    if kind == 4:
        return draw.raw(255) * 2  # 82 twice (RFC 3396)
    return draw.raw(draw.below(40))  # well formed or not


@dataclass
class Run:
    """One input's state: the server, the clock, and what the clients were told."""

    server: Server
    now: float = START
    seen: list[int] = field(default_factory=lambda: [ip("198.18.1.0")])
    # address -> (client identity, expiry) for every address ACKed and not given back
    acked: dict[int, tuple[bytes, float]] = field(default_factory=dict)


class RuleBroken(AssertionError):
    """A reply or the server's state broke a rule; the message says which."""


def identity(msg: Message) -> bytes:
    """Who a client is: option 61 when present, else htype and chaddr (RFC 2132 9.14)."""
    client_id = msg.options.get(OptionCode.CLIENT_ID)
    return client_id if client_id else bytes((msg.htype,)) + msg.hwaddr


def _address(draw: Draw, run: Run) -> int:
    kind = draw.below(6)
    if kind <= 2:
        return draw.pick(run.seen)
    if kind == 3:
        return 0
    if kind == 4:
        return draw.pick((ip("198.18.1.3"), ip("198.19.1.1"), ip("198.18.5.3"), 0xFFFFFFFF))
    return int.from_bytes(draw.raw(4), "big")


def built(draw: Draw, run: Run) -> bytes:
    """A request built field by field from the choices, in the clients' vocabulary."""
    client = draw.below(CLIENTS)
    # Only Ethernet (htype 1, hlen 6) reaches the engine: the codec refuses other lengths.
    hlen = draw.pick((6, 6, 6, 6, 6, 0))
    options: dict[int, bytes] = {OptionCode.MESSAGE_TYPE: bytes((draw.pick(MESSAGE_TYPES),))}
    client_id = draw.pick((None, None, b"\x01" + mac(client), b"\x00cpe-%d" % client, b""))
    if client_id is not None:
        options[OptionCode.CLIENT_ID] = client_id
    if draw.chance(2):
        options[OptionCode.REQUESTED_ADDRESS] = opt.ip(_address(draw, run))
    server_id = draw.pick((None, None, SERVER, SERVER, OTHER_SERVER))
    if server_id is not None:
        options[OptionCode.SERVER_ID] = opt.ip(server_id)
    for code, value in (
        (OptionCode.PARAMETER_REQUEST_LIST, draw.pick(PRLS)),
        (OptionCode.MAX_MESSAGE_SIZE, draw.pick(MAX_SIZES)),
        (OptionCode.HOST_NAME, b"h" * draw.below(64) if draw.chance(4) else None),
        (OptionCode.SUBNET_SELECTION, opt.ip(_address(draw, run)) if draw.chance(6) else None),
        (OptionCode.RELAY_AGENT_INFO, _relay_info(draw)),
    ):
        if value is not None:
            options[code] = value
    giaddr = draw.pick((0, 0, 0, RELAY_A, RELAY_B, RELAY_NOWHERE))
    msg = Message(
        op=1,
        xid=draw.below(4),
        hlen=hlen,
        hops=1 if giaddr else 0,
        flags=draw.pick((0, 0, 0x8000, draw.below(65536))),
        ciaddr=_address(draw, run) if draw.chance(2) else 0,
        giaddr=giaddr,
        chaddr=(mac(client) + bytes(10)),
        options=options,
    )
    return encode(msg, 65535)


@cache
def corpus() -> tuple[bytes, ...]:
    return tuple(load_vector(name) for name in CAPTURED)


def from_corpus(draw: Draw, run: Run) -> bytes:
    """A captured request given one of the clients' MACs, with what the server said
    earlier as its requested address, then mutated."""
    payload = bytearray(draw.pick(corpus()))
    payload[28:34] = mac(draw.below(CLIENTS))
    for start, end in option_bounds(payload):
        if payload[start] == OptionCode.REQUESTED_ADDRESS and end - start == 6:
            payload[start + 2 : end] = opt.ip(_address(draw, run))
    return mutate(bytes(payload), draw) if not draw.chance(4) else bytes(payload)


def ingress(draw: Draw, msg_bytes: bytes) -> Ingress:
    relayed = len(msg_bytes) >= 28 and any(msg_bytes[24:28])
    src_mac = RELAY_MAC if relayed else mac(draw.below(CLIENTS))
    return Ingress(
        ifindex=draw.pick((2, 2, 3)),
        src_mac=src_mac,
        src_ip=int.from_bytes(msg_bytes[24:28], "big") if relayed else 0,
        dst_ip=draw.pick((0xFFFFFFFF, SERVER)),
        vlans=draw.pick(((), (), (100,), (100, 200))),
    )


def advance(draw: Draw, run: Run) -> None:
    kind = draw.below(16)
    if kind < 12:
        run.now += draw.below(4)
    elif kind < 15:
        run.now += draw.below(256)
    else:  # a jump past every lease, hold and quarantine
        run.now += 600 + draw.below(65536)


def run(data: bytes) -> dict[str, int]:
    """Runs one input; returns what happened, counted (requests, replies by type, drops
    by reason). Raises RuleBroken when a rule breaks, anything else is a crash."""
    draw = Draw(data)
    state = Run(Server(CONFIG, [], START))
    counts: dict[str, int] = {}
    for _ in range(MAX_STEPS):
        if draw.exhausted:
            break
        advance(draw, state)
        source = draw.below(8)
        if source < 5:
            payload = built(draw, state)
            if draw.chance(4):
                payload = mutate(payload, draw)
        elif source < 7:
            payload = from_corpus(draw, state)
        else:
            payload = draw.raw(draw.below(600))
        step(state, payload, ingress(draw, payload), counts)
    return counts


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def step(state: Run, payload: bytes, where: Ingress, counts: dict[str, int]) -> None:
    _count(counts, "requests")
    try:
        msg = parse(payload)
    except MalformedPacket as exc:
        _count(counts, f"malformed:{exc.reason.label}")
        return
    decision = state.server.handle(msg, where, state.now)
    if decision.drop is DropReason.INTERNAL_ERROR:
        raise RuntimeError("the engine dropped a request for an internal error")
    if decision.drop is not None:
        _count(counts, f"drop:{decision.drop.label}")
        if decision.replies:
            raise RuleBroken(f"dropped ({decision.drop.label}) and answered")
    else:
        for reply in decision.replies:
            checked = check_reply(msg, reply.payload)
            _count(counts, f"reply:{MessageType(checked.message_type or 0).name.lower()}")
            record(state, msg, checked)
        after_decision(state, msg, decision)
    # A dropped request changes nothing a client was told either.
    check_leases(state)


def _pool_of(address: int) -> Pool | None:
    for pool in CONFIG.pools:
        if address in pool.exclude or address == CONFIG.server_id:
            continue
        if any(r.first <= address <= r.last for r in pool.ranges):
            return pool
    return None


def max_reply_size(request: Message) -> int:
    """RFC 2131 2 and RFC 2132 9.10: the client's option 57, never below 576; the engine's
    ceiling of one Ethernet frame."""
    raw = request.options.get(OptionCode.MAX_MESSAGE_SIZE)
    datagram = int.from_bytes(raw, "big") if raw is not None and len(raw) == 2 else 0
    return min(max(datagram, MIN_IP_DATAGRAM), MAX_DATAGRAM) - IP_UDP_HEADERS


def _options_field_codes(payload: bytes) -> list[int]:
    return [payload[start] for start, _ in option_bounds(payload)]


def _overloaded_codes(reply: Message, payload: bytes) -> list[int]:
    """Option codes the reply carries in its sname and file fields (option 52)."""
    overload = next((payload[s + 2] for s, e in option_bounds(payload) if payload[s] == 52), 0)
    codes: list[int] = []
    for flag, raw in ((Overload.FILE, reply.file), (Overload.SNAME, reply.sname)):
        if overload & flag:
            fake = bytes(240) + raw  # walk the field as if it were the options field
            codes += _options_field_codes(fake)
    return codes


def check_reply(request: Message, payload: bytes) -> Message:
    """RFC 2131's rules on one reply to `request`; returns the reply as parsed."""
    try:
        reply = parse(payload)
    except MalformedPacket as exc:
        raise RuleBroken(f"reply does not parse: {exc}") from exc
    rtype = reply.message_type
    what = rtype.name if rtype is not None else "no type"
    rule(len(payload) <= max_reply_size(request), f"reply of {len(payload)} bytes too large")
    rule(reply.op == Op.BOOTREPLY, f"op {reply.op}")
    rule(reply.xid == request.xid, "xid not copied")
    rule(reply.chaddr == request.chaddr, "chaddr not copied")
    rule(reply.giaddr == request.giaddr, "giaddr not copied")
    rule(reply.options.get(OptionCode.SERVER_ID) == opt.ip(SERVER), "no server identifier 54")
    mtype = request.message_type
    rule(rtype in ANSWERS.get(mtype or 0, ()), f"{what} in answer to {mtype!r}")
    lease_time = reply.options.get(OptionCode.LEASE_TIME)
    if rtype is MessageType.NAK:
        rule(reply.yiaddr == 0 and reply.ciaddr == 0, "NAK with yiaddr or ciaddr")
        rule(lease_time is None, "NAK with a lease time")
    elif mtype is MessageType.INFORM:
        rule(reply.yiaddr == 0, "INFORM's ACK with a yiaddr")
        rule(lease_time is None, "INFORM's ACK with a lease time")
    else:
        rule(lease_time is not None and len(lease_time) == 4, f"{what} without lease time")
        rule(_pool_of(reply.yiaddr) is not None, f"{what} of {opt.format_ip(reply.yiaddr)}")
    client_id = request.options.get(OptionCode.CLIENT_ID)
    if client_id is not None:  # RFC 6842
        rule(reply.options.get(OptionCode.CLIENT_ID) == client_id, "61 not echoed")
    relay_info = request.options.get(OptionCode.RELAY_AGENT_INFO)
    if relay_info is not None and request.giaddr:
        rule(reply.options.get(OptionCode.RELAY_AGENT_INFO) == relay_info, "82 not echoed")
        codes = _options_field_codes(payload)
        while codes and codes[-1] == OptionCode.RELAY_AGENT_INFO:
            codes.pop()
        rule(OptionCode.RELAY_AGENT_INFO not in codes, "82 not last in the options field")
        rule(
            OptionCode.RELAY_AGENT_INFO not in _overloaded_codes(reply, payload),
            "82 in sname or file",
        )
    return reply


def rule(holds: bool, what: str) -> None:
    if not holds:
        raise RuleBroken(what)


def record(state: Run, request: Message, reply: Message) -> None:
    """What a reply tells the client, checked against what others were told."""
    address = reply.yiaddr
    if not address:
        return
    client = identity(request)
    owner = state.acked.get(address)
    if owner is not None and owner[0] != client and owner[1] > state.now:
        raise RuleBroken(
            f"{MessageType(reply.message_type or 0).name} of {opt.format_ip(address)} to "
            f"{client.hex()}, "
            f"active for {owner[0].hex()} until {owner[1] - state.now:.0f}s from now"
        )
    if address not in state.seen:
        state.seen.append(address)
    if reply.message_type is not MessageType.ACK:
        return
    for held, (who, _) in list(state.acked.items()):
        if who == client and held != address:
            del state.acked[held]  # a client holds one address: the one acked last
    lease_time = int.from_bytes(reply.options[OptionCode.LEASE_TIME], "big")
    state.acked[address] = (client, state.now + lease_time)


def after_decision(state: Run, request: Message, decision: Decision) -> None:
    """A RELEASE or DECLINE the server accepted gives the client's address back."""
    mtype = request.message_type
    if mtype is MessageType.RELEASE:
        given_back = request.ciaddr
    elif mtype is MessageType.DECLINE:
        raw = request.options.get(OptionCode.REQUESTED_ADDRESS, b"")
        given_back = int.from_bytes(raw, "big") if len(raw) == 4 else 0
    else:
        return
    owner = state.acked.get(given_back)
    if owner is not None and owner[0] == identity(request):
        del state.acked[given_back]


def check_leases(state: Run) -> None:
    """Every address a client was acked and still holds is its active lease in the server."""
    leases = {lease.address: lease for lease in state.server.leases()}
    for address, (client, expires) in state.acked.items():
        if expires <= state.now:
            continue
        lease = leases.get(address)
        rule(
            lease is not None and lease.client_id == client and lease.active(state.now),
            f"{opt.format_ip(address)} acked to {client.hex()} is {lease} in the server",
        )
