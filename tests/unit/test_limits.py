"""Bounds on the leases of one access line (config `limits`), in the engine."""

from dataclasses import replace

from brushtaild.config.model import Config, Limits, VlanRange
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType, OptionCode, RelayAgentSubOption
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.server import Server
from tests.engine_helpers import (
    INGRESS,
    SERVER,
    make_config,
    make_pool,
    only_reply,
    reply_type,
    request,
)

D, R = MessageType.DISCOVER, MessageType.REQUEST
RELAY = opt.parse_ip("198.19.0.1")
REMOTE = make_pool("remote", "198.19.0.0/16", "198.19.1.0", "198.19.1.9")
NOW = 10_000.0


def limited(**bounds: int) -> Config:
    return replace(make_config(REMOTE), limits=Limits(**bounds))


def line(circuit: bytes, remote: bytes | None = None) -> dict[int, bytes]:
    subs = [(RelayAgentSubOption.CIRCUIT_ID, circuit)]
    if remote is not None:
        subs.append((RelayAgentSubOption.REMOTE_ID, remote))
    return {OptionCode.RELAY_AGENT_INFO: opt.build_relay_agent_info(subs)}


def discover(server: Server, n: int, extra: dict[int, bytes]) -> DropReason | None:
    return server.handle(request(D, n, giaddr=RELAY, extra=extra), INGRESS, NOW).drop


def select(server: Server, n: int, address: int, extra: dict[int, bytes]) -> object:
    msg = request(R, n, giaddr=RELAY, requested=address, server_id=SERVER, extra=extra)
    decision = server.handle(msg, INGRESS, NOW)
    return decision.drop or reply_type(decision)


def dora(server: Server, n: int, extra: dict[int, bytes]) -> int:
    offer = only_reply(server.handle(request(D, n, giaddr=RELAY, extra=extra), INGRESS, NOW))
    assert select(server, n, offer.yiaddr, extra) is MessageType.ACK
    return offer.yiaddr


def test_a_circuit_at_its_bound_gets_no_new_lease_and_keeps_its_own() -> None:
    server = Server(limited(max_leases_per_circuit=1), [], NOW)
    address = dora(server, 1, line(b"port-1"))
    assert discover(server, 2, line(b"port-1")) is DropReason.LEASE_LIMIT
    assert discover(server, 3, line(b"port-2")) is None
    # The client holding the line's lease is served as before, relayed or unicast.
    assert discover(server, 1, line(b"port-1")) is None
    renewal = server.handle(request(R, 1, ciaddr=address), INGRESS, NOW + 1800)
    assert reply_type(renewal) is MessageType.ACK
    # Its release frees the line.
    release = request(MessageType.RELEASE, 1, ciaddr=address, server_id=SERVER)
    assert server.handle(release, INGRESS, NOW + 1900).drop is None
    assert discover(server, 2, line(b"port-1")) is None


def test_the_bound_holds_at_bind_when_two_clients_were_offered() -> None:
    server = Server(limited(max_leases_per_circuit=1), [], NOW)
    offers = [
        only_reply(server.handle(request(D, n, giaddr=RELAY, extra=line(b"p")), INGRESS, NOW))
        for n in (1, 2)
    ]
    assert select(server, 1, offers[0].yiaddr, line(b"p")) is MessageType.ACK
    assert select(server, 2, offers[1].yiaddr, line(b"p")) is DropReason.LEASE_LIMIT


def test_remote_id_bound_counts_across_circuits() -> None:
    server = Server(limited(max_leases_per_remote_id=2), [], NOW)
    dora(server, 1, line(b"port-1", b"cpe-7"))
    dora(server, 2, line(b"port-2", b"cpe-7"))
    assert discover(server, 3, line(b"port-3", b"cpe-7")) is DropReason.LEASE_LIMIT
    assert discover(server, 3, line(b"port-3", b"cpe-8")) is None


def test_vlan_bound_counts_clients_on_our_own_link() -> None:
    pool = replace(make_pool(), vlans=(VlanRange(100, 199),))
    config = replace(make_config(pool), limits=Limits(max_leases_per_vlan=1))
    server = Server(config, [], NOW)
    on_100, on_101 = replace(INGRESS, vlans=(100,)), replace(INGRESS, vlans=(101,))
    offer = only_reply(server.handle(request(D, 1), on_100, NOW))
    ack = server.handle(request(R, 1, requested=offer.yiaddr, server_id=SERVER), on_100, NOW)
    assert reply_type(ack) is MessageType.ACK
    assert server.handle(request(D, 2), on_100, NOW).drop is DropReason.LEASE_LIMIT
    assert server.handle(request(D, 2), on_101, NOW).drop is None


def test_a_reload_lowering_a_bound_ends_no_lease() -> None:
    server = Server(limited(), [], NOW)
    held = [dora(server, n, line(b"port-1")) for n in (1, 2, 3)]
    server = server.reconfigured(limited(max_leases_per_circuit=1), NOW)
    for n, address in zip((1, 2, 3), held, strict=True):
        renewal = request(R, n, ciaddr=address, giaddr=RELAY, extra=line(b"port-1"))
        assert reply_type(server.handle(renewal, INGRESS, NOW + 100)) is MessageType.ACK
    assert discover(server, 4, line(b"port-1")) is DropReason.LEASE_LIMIT
    server.table.check()


# -- outstanding offers ----------------------------------------------------------------------


def offered(server: Server, n: int, extra: dict[int, bytes], now: float = NOW) -> int:
    return only_reply(server.handle(request(D, n, giaddr=RELAY, extra=extra), INGRESS, now)).yiaddr


def test_a_circuit_at_its_offer_bound_gets_no_new_offer_until_one_ends() -> None:
    """A line cycling MACs through DISCOVER holds at most its bound of the pool in offers
    (before the bound, one line could hold the whole pool for offer_hold seconds)."""
    server = Server(limited(max_offers_per_circuit=2), [], NOW)
    first = offered(server, 1, line(b"port-1"))
    second = offered(server, 2, line(b"port-1"))
    for n in range(3, 10):
        assert discover(server, n, line(b"port-1")) is DropReason.OFFER_LIMIT
    assert server.pool_usage()["remote"].assigned == 2
    # Another line is served; the clients holding the offers are offered them again.
    assert discover(server, 3, line(b"port-2")) is None
    assert offered(server, 1, line(b"port-1")) == first
    server.table.check()
    # An offer taken up by a bind frees its place on the line...
    assert select(server, 2, second, line(b"port-1")) is MessageType.ACK
    assert discover(server, 4, line(b"port-1")) is None
    assert discover(server, 5, line(b"port-1")) is DropReason.OFFER_LIMIT
    # ... and so does one that expires (clients 1 and 4 never come back).
    later = NOW + 31
    server.tick(later)
    server.table.check()
    request_5 = request(D, 5, giaddr=RELAY, extra=line(b"port-1"))
    assert server.handle(request_5, INGRESS, later).drop is None
    server.table.check()


def test_a_client_with_a_lease_is_offered_it_at_the_offer_bound() -> None:
    server = Server(limited(max_offers_per_circuit=1), [], NOW)
    address = dora(server, 1, line(b"port-1"))
    assert discover(server, 2, line(b"port-1")) is None  # the bound lease is no offer
    assert discover(server, 3, line(b"port-1")) is DropReason.OFFER_LIMIT
    assert offered(server, 1, line(b"port-1")) == address
    # Released, its record still names the address: the client is offered it again.
    release = request(MessageType.RELEASE, 1, ciaddr=address, server_id=SERVER)
    assert server.handle(release, INGRESS, NOW).drop is None
    assert offered(server, 1, line(b"port-1")) == address
    server.table.check()


def test_the_relay_bound_counts_every_circuit_behind_it() -> None:
    server = Server(limited(max_offers_per_relay=3), [], NOW)
    for n in (1, 2, 3):
        assert discover(server, n, line(b"port-%d" % n)) is None
    assert discover(server, 4, line(b"port-4")) is DropReason.OFFER_LIMIT
    assert discover(server, 4, {}) is DropReason.OFFER_LIMIT  # no option 82: still the relay
    # A client on our own link has no relay.
    assert server.handle(request(D, 4), INGRESS, NOW).drop is not DropReason.OFFER_LIMIT
    server.table.check()


def test_the_vlan_offer_bound_counts_clients_on_our_own_link() -> None:
    pool = replace(make_pool(), vlans=(VlanRange(100, 199),))
    config = replace(make_config(pool), limits=Limits(max_offers_per_vlan=1))
    server = Server(config, [], NOW)
    on_100, on_101 = replace(INGRESS, vlans=(100,)), replace(INGRESS, vlans=(101,))
    assert server.handle(request(D, 1), on_100, NOW).drop is None
    assert server.handle(request(D, 2), on_100, NOW).drop is DropReason.OFFER_LIMIT
    assert server.handle(request(D, 2), on_101, NOW).drop is None
    # The same MAC on another VLAN is another subscriber, with no offer yet.
    assert server.handle(request(D, 1), on_101, NOW).drop is DropReason.OFFER_LIMIT
    server.table.check()


def test_a_reload_applies_the_offer_bounds_and_forgets_the_offers() -> None:
    server = Server(limited(), [], NOW)
    for n in (1, 2, 3):
        assert discover(server, n, line(b"port-1")) is None
    server = server.reconfigured(limited(max_offers_per_circuit=1), NOW)
    server.table.check()  # no offers survive a reload, so no line counts any
    assert discover(server, 4, line(b"port-1")) is None
    assert discover(server, 5, line(b"port-1")) is DropReason.OFFER_LIMIT
    server = server.reconfigured(limited(), NOW)
    assert discover(server, 5, line(b"port-1")) is None
    server.table.check()


def test_offers_withdrawn_for_the_links_share_leave_their_lines() -> None:
    """A link may hold a quarter of its pools in offers (lease_table.OFFER_SHARE), at least
    16: past it the oldest offer goes, and with it its place on its line."""
    big = make_pool("remote", "198.19.0.0/16", "198.19.1.0", "198.19.1.99")
    config = replace(make_config(big), limits=Limits(max_offers_per_circuit=26))
    server = Server(config, [], NOW)
    for n in range(1, 40):
        # Past 25 the oldest offer is withdrawn each time: the line never reaches 26.
        assert discover(server, n, line(b"port-1")) is None
        server.table.check()
    assert server.pool_usage()["remote"].assigned == 25
