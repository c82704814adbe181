"""brushtaild/xdp/relays.py against a dict standing in for the kernel map and a table of
next hops standing in for the kernel's routing and neighbour tables."""

import ctypes
from ipaddress import IPv4Network
from typing import Any

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.engine.decisions import Destination, DestKind, Ingress, Reply
from brushtaild.xdp import maps
from brushtaild.xdp.relays import MAX_PENDING, REFRESH_INTERVAL, RETRY_INTERVAL, Relays
from tests.engine_helpers import INGRESS, make_config

ip = opt.parse_ip
RELAY = ip("198.18.2.2")
OTHER = ip("198.18.2.3")
HOP = bytes.fromhex("02b7000000aa")
NEW_HOP = bytes.fromhex("02b7000000bb")


class Map(dict[tuple[int, int, int], tuple[bytes, int]]):
    """The `relays` map as BCC presents it, keyed and valued by plain tuples here."""

    max_entries = 4

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(
            (key.giaddr, key.outer_vlan, key.inner_vlan), (bytes(value.next_hop), value.trusted)
        )

    def __delitem__(self, key: Any) -> None:
        super().__delitem__((key.giaddr, key.outer_vlan, key.inner_vlan))

    def __iter__(self) -> Any:
        return iter(maps.RelayKey(*k) for k in list(self.keys()))


class Tables:
    def __init__(self) -> None:
        self.relays = Map()

    def table(self, name: str) -> Map:
        assert name == "relays"
        return self.relays


def entry(giaddr: int, outer: int = 0, inner: int = 0) -> tuple[int, int, int]:
    return (maps.net32(giaddr), outer, inner)


class World:
    def __init__(self, trusted: tuple[IPv4Network, ...] = ()) -> None:
        self.tables = Tables()
        self.hops: dict[int, bytes] = {}
        self.asked: list[int] = []
        self.relays = Relays(self.tables, self.resolve, make_config(trusted_relays=trusted))

    def resolve(self, giaddr: int) -> bytes | None:
        self.asked.append(giaddr)
        return self.hops.get(giaddr)

    @property
    def map(self) -> Map:
        return self.tables.relays


def reply_message(mtype: MessageType) -> Message:
    return Message(op=2, xid=1, options={OptionCode.MESSAGE_TYPE: bytes((mtype,))})


def relayed(mtype: MessageType, giaddr: int = RELAY, vlans: tuple[int, ...] = ()) -> Reply:
    ingress = Ingress(INGRESS.ifindex, INGRESS.src_mac, giaddr, 0, vlans)
    return Reply(reply_message(mtype), b"", Destination(DestKind.RELAY, giaddr, 67), ingress)


def test_a_relay_answered_by_the_slow_path_gets_its_next_hop_and_trust() -> None:
    world = World(trusted=(IPv4Network(RELAY),))
    world.hops = {RELAY: HOP, OTHER: NEW_HOP}
    world.relays.answered(relayed(MessageType.OFFER))
    world.relays.answered(relayed(MessageType.ACK, OTHER, vlans=(100, 7)))
    world.relays.refresh(0.0)
    assert world.map == {entry(RELAY): (HOP, 1), entry(OTHER, 100, 7): (NEW_HOP, 0)}
    assert world.relays.entries == 2


def test_only_offers_and_acks_through_a_relay_teach_a_relay() -> None:
    world = World()
    world.hops = {RELAY: HOP}
    world.relays.answered(relayed(MessageType.NAK))  # a relay on no known network, maybe
    direct = Reply(
        reply_message(MessageType.ACK), b"", Destination(DestKind.UNICAST, RELAY, 68), INGRESS
    )
    world.relays.answered(direct)
    world.relays.refresh(0.0)
    assert world.map == {} and world.asked == []


def test_an_unresolved_relay_is_retried_then_given_up() -> None:
    world = World()
    world.relays.refresh(0.0)  # the first full refresh
    world.relays.learn(RELAY)
    world.relays.refresh(0.5)
    assert world.asked == []  # not before RETRY_INTERVAL
    world.relays.refresh(RETRY_INTERVAL)
    assert world.asked == [RELAY]
    world.hops[RELAY] = HOP  # the neighbour answered ARP
    world.relays.refresh(2 * RETRY_INTERVAL)
    assert world.map == {entry(RELAY): (HOP, 0)}
    # One that never resolves is forgotten at the next full refresh.
    world.relays.learn(OTHER)
    world.relays.refresh(REFRESH_INTERVAL)
    world.asked.clear()
    world.relays.refresh(REFRESH_INTERVAL + RETRY_INTERVAL)
    assert world.asked == []


def test_a_full_refresh_follows_the_neighbour_and_forgets_what_is_gone() -> None:
    world = World()
    world.hops = {RELAY: HOP, OTHER: HOP}
    for giaddr in (RELAY, OTHER):
        world.relays.learn(giaddr)
    world.relays.refresh(0.0)
    world.hops = {RELAY: NEW_HOP}  # the relay's MAC changed; OTHER is no longer routed here
    world.relays.refresh(REFRESH_INTERVAL / 2)
    assert world.map[entry(RELAY)] == (HOP, 0)  # not checked before the interval
    world.relays.refresh(REFRESH_INTERVAL)
    assert world.map == {entry(RELAY): (NEW_HOP, 0)}


def test_a_reload_rewrites_trust_at_the_next_refresh() -> None:
    world = World()
    world.hops = {RELAY: HOP}
    world.relays.learn(RELAY)
    world.relays.refresh(0.0)
    assert world.map == {entry(RELAY): (HOP, 0)}
    world.relays.reconfigured(make_config(trusted_relays=(IPv4Network("198.18.2.0/24"),)))
    world.relays.refresh(1.0)
    assert world.map == {entry(RELAY): (HOP, 1)}


def test_entries_left_by_an_earlier_daemon_are_checked_at_the_first_refresh() -> None:
    tables = Tables()
    tables.relays[maps.RelayKey(*entry(RELAY))] = maps.Relay((ctypes.c_uint8 * 6)(*HOP), 0, 0)
    tables.relays[maps.RelayKey(*entry(OTHER))] = maps.Relay((ctypes.c_uint8 * 6)(*HOP), 0, 0)
    relays = Relays(tables, {RELAY: NEW_HOP}.get, make_config())
    assert relays.entries == 2
    relays.refresh(0.0)
    assert tables.relays == {entry(RELAY): (NEW_HOP, 0)}


def test_pending_and_entries_are_bounded() -> None:
    world = World()
    world.relays.refresh(0.0)
    for n in range(MAX_PENDING + 10):
        world.relays.learn(ip("198.18.8.0") + n)
    world.relays.refresh(RETRY_INTERVAL)
    assert len(world.asked) == MAX_PENDING
    world.relays.refresh(REFRESH_INTERVAL)  # gives up on them all
    world.hops = {ip("198.18.9.0") + n: HOP for n in range(Map.max_entries + 2)}
    for giaddr in world.hops:
        world.relays.learn(giaddr)
    world.relays.refresh(REFRESH_INTERVAL + RETRY_INTERVAL)
    assert len(world.map) == Map.max_entries == world.relays.entries
