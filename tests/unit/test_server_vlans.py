"""Subscribers on VLANs in the engine: pools chosen by `vlans`, leases that remember their
VLANs, and which leases the fast path may answer for (docs/CONFIG.md, `vlans`)."""

from dataclasses import replace

from brushtaild.config.model import Pool, VlanRange
from brushtaild.daemon.journal import lease_entry
from brushtaild.daemon.lease_log import format_event
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.decisions import Ingress
from brushtaild.engine.identity import subscriber_identity
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.server import Server, wire_client_id
from tests.engine_helpers import (
    INGRESS,
    SERVER,
    mac,
    make_config,
    make_pool,
    only_reply,
    request,
)

NOW = 1_000_000.0
ip = opt.parse_ip


def on(*vlans: int) -> Ingress:
    return replace(
        INGRESS, vlans=vlans, tags=b"".join(b"\x81\x00" + v.to_bytes(2, "big") for v in vlans)
    )


def vlan_pool(name: str, subnet: str, first: str, last: str, *ranges: VlanRange) -> Pool:
    return replace(make_pool(name, subnet, first, last), vlans=ranges)


# The link's own pool; 1:1 subscriber VLANs 100-199 sharing one pool; a service VLAN (N:1)
# carried in S-VLAN 300 (QinQ, any inner tag) and the single C-VLAN 4000.
LINK = make_pool()
SUBSCRIBERS = vlan_pool(
    "subscribers", "100.64.0.0/16", "100.64.1.0", "100.64.1.9", VlanRange(100, 199)
)
QINQ_300 = VlanRange(300, 300, 1, 4094)
SERVICE = vlan_pool(
    "iptv", "100.65.0.0/16", "100.65.1.0", "100.65.1.9", QINQ_300, VlanRange(4000, 4000)
)
CONFIG = make_config(LINK, SUBSCRIBERS, SERVICE)


def offer_pool(server: Server, n: int, ingress: Ingress) -> str | None:
    decision = server.handle(request(MessageType.DISCOVER, n), ingress, NOW)
    if decision.drop is not None:
        return None
    yiaddr = only_reply(decision).yiaddr
    return next(
        p.name
        for p in server.config.pools
        if ip(str(p.subnet.network_address)) <= yiaddr <= int(p.subnet.broadcast_address)
    )


def test_pools_are_chosen_by_the_vlans_the_request_came_on() -> None:
    server = Server(CONFIG, [], NOW)
    assert offer_pool(server, 1, INGRESS) == "residential"
    assert offer_pool(server, 2, on(100)) == "subscribers"
    assert offer_pool(server, 3, on(199)) == "subscribers"
    assert offer_pool(server, 4, on(300, 7)) == "iptv"
    assert offer_pool(server, 5, on(4000)) == "iptv"
    # A VLAN no pool lists is the link's own, as is a single tag where only QinQ is listed.
    assert offer_pool(server, 6, on(200)) == "residential"
    assert offer_pool(server, 7, on(300)) == "residential"
    assert offer_pool(server, 8, on(100, 5)) == "residential"


def test_a_relayed_request_is_chosen_by_giaddr_whatever_its_vlans() -> None:
    server = Server(CONFIG, [], NOW)
    relayed = request(MessageType.DISCOVER, 1, giaddr=ip("100.64.0.1"))
    assert only_reply(server.handle(relayed, on(300, 7), NOW)).yiaddr == ip("100.64.1.0")


def test_no_pool_for_vlans_without_a_link_pool() -> None:
    server = Server(make_config(SUBSCRIBERS), [], NOW)
    decision = server.handle(request(MessageType.DISCOVER, 1), on(200), NOW)
    assert decision.drop is DropReason.NO_SUBNET
    decision = server.handle(request(MessageType.DISCOVER, 1), INGRESS, NOW)
    assert decision.drop is DropReason.NO_SUBNET


def bind(server: Server, n: int, ingress: Ingress) -> int:
    offer = only_reply(server.handle(request(MessageType.DISCOVER, n), ingress, NOW))
    req = request(MessageType.REQUEST, n, requested=offer.yiaddr, server_id=SERVER)
    decision = server.handle(req, ingress, NOW)
    assert only_reply(decision).message_type is MessageType.ACK
    [lease] = decision.lease_writes
    assert lease.vlans == ingress.vlans
    return offer.yiaddr


def test_a_tagged_client_renews_on_its_vlan_pool_without_a_relay() -> None:
    """RENEWING: ciaddr selects among the VLAN's pools; an address with no record is kept
    when the VLAN's pools hold it (the VLAN vouches, as our own link does)."""
    server = Server(CONFIG, [], NOW)
    address = bind(server, 1, on(150))
    renew = request(MessageType.REQUEST, 1, ciaddr=address)
    assert only_reply(server.handle(renew, on(150), NOW)).message_type is MessageType.ACK
    fresh = Server(CONFIG, [], NOW)  # the record was lost
    assert only_reply(fresh.handle(renew, on(150), NOW)).message_type is MessageType.ACK
    # From the untagged link, the same ciaddr is not on the client's network.
    assert fresh.handle(request(MessageType.REQUEST, 2, ciaddr=address + 1), INGRESS, NOW).drop


def test_the_fast_path_answers_only_leases_their_vlans_still_select() -> None:
    server = Server(CONFIG, [], NOW)
    tagged = server.lease_at(bind(server, 1, on(150)))
    untagged = server.lease_at(bind(server, 2, INGRESS))
    on_unlisted = server.lease_at(bind(server, 3, on(200)))
    assert tagged and untagged and on_unlisted
    assert all(server.renewable(lease, NOW) for lease in (tagged, untagged, on_unlisted))
    # A reload moves VLAN 150 out of the pool and gives VLAN 200 a pool of its own.
    moved = make_config(
        LINK,
        replace(SUBSCRIBERS, vlans=(VlanRange(100, 149), VlanRange(200, 200))),
        SERVICE,
    )
    reloaded = server.reconfigured(moved, NOW)
    assert reloaded.renewable(untagged, NOW)
    assert not reloaded.renewable(tagged, NOW)
    assert not reloaded.renewable(on_unlisted, NOW)


def test_a_kernel_renewal_on_other_vlans_is_stale() -> None:
    server = Server(CONFIG, [], NOW)
    address = bind(server, 1, on(150))
    lease = server.lease_at(address)
    assert lease is not None
    stale = server.kernel_renewal(lease.hwaddr, address, NOW + 7200, NOW, (151,))
    assert stale.drop is DropReason.STALE_RENEWAL
    assert server.kernel_renewal(lease.hwaddr, address, NOW + 7200, NOW, (150,)).drop is None


def test_the_same_mac_on_two_listed_vlans_is_two_subscribers() -> None:
    server = Server(CONFIG, [], NOW)
    first, second = bind(server, 1, on(100)), bind(server, 1, on(101))
    assert first != second
    leases = [server.lease_at(first), server.lease_at(second)]
    assert [lease.vlans for lease in leases if lease] == [(100,), (101,)]
    # The kernel compares the identifier the client sends, without the VLANs.
    assert {wire_client_id(lease) for lease in leases if lease} == {b"\x01" + mac(1)}
    # On VLANs no pool lists (and untagged) a client is its identifier alone: one lease.
    third = bind(server, 2, on(200))
    assert bind(server, 2, INGRESS) == third


def test_subscriber_identities_read_back_and_never_collide() -> None:
    pairs = [(b"\x01ab", (100,)), (b"\x01ab\x00\x64", ()), (b"\x01a", (0x6264, 100)), (b"x", ())]
    identities = {subscriber_identity(client_id, vlans) for client_id, vlans in pairs}
    assert len(identities) == len(pairs)
    for client_id, vlans in pairs:
        lease = Lease(1, subscriber_identity(client_id, vlans), b"", "p", LeaseState.BOUND, 0, 0)
        lease.vlans = vlans
        assert wire_client_id(lease) == (client_id if vlans else lease.client_id)


def test_lease_events_name_the_vlans_in_the_log_and_the_journal() -> None:
    server = Server(CONFIG, [], NOW)
    decision = server.handle(request(MessageType.DISCOVER, 1), on(300, 7), NOW)
    [event] = decision.events
    assert event.vlans == (300, 7)
    line = format_event(event, "slow")
    assert line.endswith(" path=slow vlan=300.7")
    assert b"\nLEASE_VLAN=300.7\n" in lease_entry(event, "slow")
    untagged = server.handle(request(MessageType.DISCOVER, 2), INGRESS, NOW).events[0]
    assert "vlan=" not in format_event(untagged, "slow")
    assert b"LEASE_VLAN" not in lease_entry(untagged, "slow")
