"""Builders for engine tests: a small config, client messages, and reply decoding."""

from ipaddress import IPv4Network
from pathlib import Path

from brushtaild.config.model import (
    AddressRange,
    ClientClass,
    Config,
    OptionSet,
    Pool,
    Reservation,
    option_set,
)
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.engine.decisions import Decision, Ingress

SERVER = opt.parse_ip("198.18.0.1")
INGRESS = Ingress(ifindex=2, src_mac=b"\x02" * 6, src_ip=0, dst_ip=0xFFFFFFFF)


def make_pool(
    name: str = "residential",
    subnet: str = "198.18.0.0/16",
    first: str = "198.18.1.0",
    last: str = "198.18.1.9",
    lease_time: int = 3600,
    shared_network: str | None = None,
) -> Pool:
    return Pool(
        name=name,
        subnet=IPv4Network(subnet),
        ranges=(AddressRange(opt.parse_ip(first), opt.parse_ip(last)),),
        routers=(SERVER,),
        dns_servers=(SERVER,),
        domain="example.net",
        lease_time=lease_time,
        renewal_time=lease_time // 2,
        rebinding_time=lease_time * 7 // 8,
        shared_network=shared_network,
    )


def make_config(
    *pools: Pool,
    offer_hold: int = 30,
    decline_hold: int = 600,
    trusted_relays: tuple[IPv4Network, ...] = (),
    reservations: tuple[Reservation, ...] = (),
    classes: tuple[ClientClass, ...] = (),
) -> Config:
    return Config(
        site="edge-a",
        interface="sub0",
        server_id=SERVER,
        pools=pools or (make_pool(),),
        state_dir=Path("/nonexistent"),
        offer_hold=offer_hold,
        decline_hold=decline_hold,
        trusted_relays=trusted_relays,
        reservations=reservations,
        classes=classes,
    )


def mac(n: int) -> bytes:
    return b"\x02\x00" + n.to_bytes(4, "big")


def request(
    mtype: MessageType,
    n: int,
    *,
    xid: int = 0x1234,
    ciaddr: int = 0,
    giaddr: int = 0,
    flags: int = 0,
    requested: int | None = None,
    server_id: int | None = None,
    extra: dict[int, bytes] | None = None,
) -> Message:
    options: dict[int, bytes] = {OptionCode.MESSAGE_TYPE: bytes((mtype,))}
    if requested is not None:
        options[OptionCode.REQUESTED_ADDRESS] = opt.ip(requested)
    if server_id is not None:
        options[OptionCode.SERVER_ID] = opt.ip(server_id)
    options.update(extra or {})
    return Message(
        op=1,
        xid=xid,
        flags=flags,
        ciaddr=ciaddr,
        giaddr=giaddr,
        hops=1 if giaddr else 0,
        chaddr=mac(n) + bytes(10),
        options=options,
    )


def only_reply(decision: Decision) -> Message:
    assert decision.drop is None, decision.drop
    assert len(decision.replies) == 1, decision
    reply = decision.replies[0]
    parsed = parse(reply.payload)
    assert parsed.options == reply.message.options
    return parsed


def reply_type(decision: Decision) -> MessageType | None:
    return only_reply(decision).message_type


def every_option() -> OptionSet:
    """One of each option `options:` names, plus one by code: what a pool, class or
    reservation may give beyond the pool's own keys (docs/CONFIG.md, Options)."""
    return option_set(
        {
            OptionCode.INTERFACE_MTU: opt.u16(1492),
            OptionCode.NTP_SERVERS: opt.ips([SERVER, SERVER + 1]),
            OptionCode.VENDOR_SPECIFIC: opt.build_sub_options([(1, opt.ip(SERVER)), (2, b"sip")]),
            OptionCode.DOMAIN_SEARCH: opt.domain_search(["isp.example", "example.net"]),
            OptionCode.CLASSLESS_STATIC_ROUTE: opt.classless_routes(
                [(0, 0, SERVER), (opt.parse_ip("203.0.113.0"), 24, SERVER + 2)]
            ),
            224: bytes.fromhex("0a0b"),
        }
    )
