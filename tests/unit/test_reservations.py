"""Host reservations and shared networks of different subnets, in the engine."""

from dataclasses import replace

import pytest

from brushtaild.config.model import Reservation, VlanRange, option_set
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType, OptionCode, RelayAgentSubOption
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.decisions import Ingress, NakReason
from brushtaild.engine.server import Server
from tests.engine_helpers import (
    INGRESS,
    SERVER,
    mac,
    make_config,
    make_pool,
    only_reply,
    reply_type,
    request,
)

D, R = MessageType.DISCOVER, MessageType.REQUEST
NOW = 10_000.0
FIRST = opt.parse_ip("198.18.1.0")  # make_pool(): 198.18.1.0-9 in 198.18.0.0/16
OUTSIDE = opt.parse_ip("198.18.0.50")  # in the subnet, outside the ranges
RELAY = opt.parse_ip("198.19.0.1")


def dora(server: Server, n: int, now: float = NOW, **kw: int) -> int:
    offer = only_reply(server.handle(request(D, n, **kw), INGRESS, now))
    ack = server.handle(request(R, n, requested=offer.yiaddr, server_id=SERVER, **kw), INGRESS, now)
    assert reply_type(ack) is MessageType.ACK, ack
    return offer.yiaddr


def renew(server: Server, n: int, address: int, now: float = NOW) -> MessageType | None:
    return reply_type(server.handle(request(R, n, ciaddr=address), INGRESS, now))


def by_mac(n: int, address: int) -> Reservation:
    return Reservation(address, mac=mac(n))


def agent_info(circuit: bytes, remote: bytes | None = None) -> bytes:
    subs = [(RelayAgentSubOption.CIRCUIT_ID, circuit)]
    if remote is not None:
        subs.append((RelayAgentSubOption.REMOTE_ID, remote))
    return opt.build_relay_agent_info(subs)


def test_a_reserved_host_gets_its_address_outside_the_ranges_and_keeps_it() -> None:
    server = Server(make_config(reservations=(by_mac(1, OUTSIDE),)), [], NOW)
    assert dora(server, 1) == OUTSIDE
    assert renew(server, 1, OUTSIDE, NOW + 1800) is MessageType.ACK
    lease = server.lease_at(OUTSIDE)
    assert lease is not None and server.renewable(lease, NOW + 1800)
    assert lease.pool == "residential"


def test_a_reserved_address_inside_the_ranges_is_never_handed_to_others() -> None:
    # The pool has ten addresses; FIRST is reserved for client 99, who never comes.
    server = Server(make_config(reservations=(by_mac(99, FIRST),)), [], NOW)
    got = {dora(server, n) for n in range(1, 10)}
    assert FIRST not in got and len(got) == 9
    assert server.handle(request(D, 10), INGRESS, NOW).drop is DropReason.POOL_EXHAUSTED
    # Asking for it, by DISCOVER or by REQUEST, does not help.
    asked = server.handle(request(D, 11, requested=FIRST), INGRESS, NOW)
    assert asked.drop is DropReason.POOL_EXHAUSTED
    nak = server.handle(request(R, 11, requested=FIRST, server_id=SERVER), INGRESS, NOW)
    assert nak.nak is NakReason.RESERVED
    assert dora(server, 99) == FIRST
    assert server.pool_usage()["residential"].total == 10


def test_client_id_reservation_matches_option_61() -> None:
    client_id = b"\xff" + b"subscriber-7"
    server = Server(make_config(reservations=(Reservation(OUTSIDE, client_id=client_id),)), [], NOW)
    assert dora(server, 3, extra={OptionCode.CLIENT_ID: client_id}) == OUTSIDE


def test_circuit_id_reservation_through_a_relay_and_its_unicast_renewal() -> None:
    remote = make_pool("remote", "198.19.0.0/16", "198.19.1.0", "198.19.1.9")
    fixed = opt.parse_ip("198.19.7.7")
    reservations = (
        Reservation(fixed, circuit_id=b"olt1/1/3:101", remote_id=b"cpe-1"),
        Reservation(fixed + 1, circuit_id=b"olt1/1/3:101"),
    )
    server = Server(make_config(remote, reservations=reservations), [], NOW)
    exact = {OptionCode.RELAY_AGENT_INFO: agent_info(b"olt1/1/3:101", b"cpe-1")}
    loose = {OptionCode.RELAY_AGENT_INFO: agent_info(b"olt1/1/3:101", b"cpe-2")}
    assert dora(server, 1, giaddr=RELAY, extra=exact) == fixed
    assert dora(server, 2, giaddr=RELAY, extra=loose) == fixed + 1
    # Renewals come unicast, without option 82: the client holding it keeps it.
    assert renew(server, 1, fixed) is MessageType.ACK


def test_option_82_without_a_relay_matches_no_circuit_id() -> None:
    # A DHCP-snooping switch may add option 82 on our own link; it names no relay's circuit.
    reservation = Reservation(OUTSIDE, circuit_id=b"port-1")
    server = Server(make_config(reservations=(reservation,)), [], NOW)
    extra = {OptionCode.RELAY_AGENT_INFO: agent_info(b"port-1")}
    assert only_reply(server.handle(request(D, 1, extra=extra), INGRESS, NOW)).yiaddr == FIRST


def test_reservation_on_another_network_does_not_follow_the_client() -> None:
    remote = make_pool("remote", "198.19.0.0/16", "198.19.1.0", "198.19.1.9")
    config = make_config(make_pool(), remote, reservations=(by_mac(1, OUTSIDE),))
    server = Server(config, [], NOW)
    assert dora(server, 1, giaddr=RELAY) in range(
        opt.parse_ip("198.19.1.0"), opt.parse_ip("198.19.1.10")
    )


def test_reload_reserving_a_held_address_naks_the_holder_and_moves_the_host() -> None:
    server = Server(make_config(), [], NOW)
    taken = dora(server, 1)
    server = server.reconfigured(make_config(reservations=(by_mac(2, taken),)), NOW)
    lease = server.lease_at(taken)
    assert lease is not None and not server.renewable(lease, NOW)  # kernel entry withdrawn
    assert server.kernel_renewal(mac(1), taken, NOW + 3600, NOW).drop is DropReason.STALE_RENEWAL
    # The host is given another address meanwhile: the reserved one is still held.
    meanwhile = dora(server, 2)
    assert meanwhile != taken
    # The holder's renewal is NAKed; it starts over elsewhere.
    nak = server.handle(request(R, 1, ciaddr=taken), INGRESS, NOW + 10)
    assert nak.nak is NakReason.RESERVED
    assert dora(server, 1, NOW + 20) not in {taken, meanwhile}
    # Its new binding gave the reserved address back: the host's renewal is NAKed, and
    # its next DISCOVER gets the reservation.
    held = server.lease_at(meanwhile)
    assert held is not None and not server.renewable(held, NOW + 20)
    moved = server.handle(request(R, 2, ciaddr=meanwhile), INGRESS, NOW + 30)
    assert moved.nak is NakReason.RESERVATION
    assert dora(server, 2, NOW + 40) == taken


def test_reload_removing_a_reservation_frees_its_address_for_everyone() -> None:
    config = make_config(make_pool(last="198.18.1.0"), reservations=(by_mac(9, FIRST),))
    server = Server(config, [], NOW)
    assert server.handle(request(D, 1), INGRESS, NOW).drop is DropReason.POOL_EXHAUSTED
    server = server.reconfigured(make_config(make_pool(last="198.18.1.0")), NOW)
    assert dora(server, 1) == FIRST


def test_reload_removing_a_reservation_outside_the_ranges_ends_the_hosts_lease() -> None:
    server = Server(make_config(reservations=(by_mac(1, OUTSIDE),)), [], NOW)
    assert dora(server, 1) == OUTSIDE
    server = server.reconfigured(make_config(), NOW)
    lease = server.lease_at(OUTSIDE)
    assert lease is not None and not server.renewable(lease, NOW)
    nak = server.handle(request(R, 1, ciaddr=OUTSIDE), INGRESS, NOW)
    assert nak.nak is NakReason.NOT_ON_NETWORK
    assert dora(server, 1, NOW + 1) == FIRST


def test_a_stored_lease_of_the_host_survives_a_restart_at_its_reservation() -> None:
    config = make_config(reservations=(by_mac(1, OUTSIDE),))
    server = Server(config, [], NOW)
    dora(server, 1)
    server = Server(config, server.leases(), NOW + 5)
    assert renew(server, 1, OUTSIDE, NOW + 10) is MessageType.ACK
    assert dora(server, 2, NOW + 10) != OUTSIDE


# Shared networks of different subnets ------------------------------------------------------


A = make_pool("line-a", "198.19.0.0/24", "198.19.0.10", "198.19.0.11", shared_network="line")
B = make_pool("line-b", "198.19.1.0/24", "198.19.1.10", "198.19.1.19", shared_network="line")
GIADDR_A = opt.parse_ip("198.19.0.1")


def test_allocation_continues_in_the_next_subnet_with_its_own_mask_and_router() -> None:
    routed_b = replace(B, routers=(opt.parse_ip("198.19.1.1"),))
    server = Server(make_config(make_pool(), A, routed_b), [], NOW)
    got = [dora(server, n, giaddr=GIADDR_A) for n in range(1, 4)]
    assert got == [
        opt.parse_ip("198.19.0.10"),
        opt.parse_ip("198.19.0.11"),
        opt.parse_ip("198.19.1.10"),
    ]
    offer = only_reply(server.handle(request(D, 4, giaddr=GIADDR_A), INGRESS, NOW))
    assert offer.options[OptionCode.ROUTERS] == opt.ip(opt.parse_ip("198.19.1.1"))
    assert offer.options[OptionCode.BROADCAST_ADDRESS] == opt.ip(opt.parse_ip("198.19.1.255"))
    # Renewed through the relay on subnet A, and by unicast from subnet B.
    third = got[2]
    relayed = server.handle(request(R, 3, ciaddr=third, giaddr=GIADDR_A), INGRESS, NOW)
    assert reply_type(relayed) is MessageType.ACK
    assert renew(server, 3, third) is MessageType.ACK


def test_pools_outside_the_shared_network_are_not_used() -> None:
    other = make_pool("other", "198.19.2.0/24", "198.19.2.10", "198.19.2.19")
    server = Server(make_config(make_pool(), A, other), [], NOW)
    dora(server, 1, giaddr=GIADDR_A)
    dora(server, 2, giaddr=GIADDR_A)
    assert (
        server.handle(request(D, 3, giaddr=GIADDR_A), INGRESS, NOW).drop
        is DropReason.POOL_EXHAUSTED
    )


def test_a_reservation_in_the_second_subnet_is_served_through_the_first() -> None:
    fixed = opt.parse_ip("198.19.1.200")
    config = make_config(make_pool(), A, B, reservations=(by_mac(5, fixed),))
    server = Server(config, [], NOW)
    assert dora(server, 5, giaddr=GIADDR_A) == fixed
    lease = server.lease_at(fixed)
    assert lease is not None and lease.pool == "line-b"


def test_inform_from_the_second_subnet_gets_its_mask_and_broadcast() -> None:
    server = Server(make_config(make_pool(), A, B), [], NOW)
    inside_b = opt.parse_ip("198.19.1.77")
    ack = only_reply(
        server.handle(
            request(MessageType.INFORM, 1, ciaddr=inside_b, giaddr=GIADDR_A), INGRESS, NOW
        )
    )
    assert ack.options[OptionCode.BROADCAST_ADDRESS] == opt.ip(opt.parse_ip("198.19.1.255"))


def test_a_reserved_hosts_options_override_its_pools_for_it_alone() -> None:
    ntp = opt.ip(opt.parse_ip("198.18.0.123"))
    dns = opt.ip(opt.parse_ip("198.18.0.53"))
    host = option_set({OptionCode.DNS_SERVERS: dns, OptionCode.NTP_SERVERS: ntp})
    server = Server(
        make_config(reservations=(Reservation(OUTSIDE, mac(1), options=host),)), [], NOW
    )
    offer = only_reply(server.handle(request(D, 1), INGRESS, NOW))
    assert offer.yiaddr == OUTSIDE
    assert offer.options[OptionCode.DNS_SERVERS] == dns
    assert offer.options[OptionCode.NTP_SERVERS] == ntp
    other = only_reply(server.handle(request(D, 2), INGRESS, NOW))
    assert other.options[OptionCode.DNS_SERVERS] == opt.ip(SERVER)
    assert OptionCode.NTP_SERVERS not in other.options
    lease = server.lease_at(dora(server, 1))
    answer = server.kernel_answer(lease, NOW) if lease is not None else None
    assert answer is not None and answer.profile == "residential/198.18.0.50"


# -- reservations in pools that list VLANs ---------------------------------------------------

# 1:1 subscriber VLANs 100-199 share a pool; VLAN 200 has one of its own. Their clients are
# their identifier on their VLANs (server.subscriber_identity).
V_FIRST = opt.parse_ip("198.19.1.0")
V_FIXED = opt.parse_ip("198.19.0.50")  # in the VLAN pool's subnet, outside its ranges
VLAN_POOLS = (
    replace(
        make_pool("vlans", "198.19.0.0/16", "198.19.1.0", "198.19.1.9"),
        vlans=(VlanRange(100, 199),),
    ),
    replace(
        make_pool("vlan-200", "198.20.0.0/16", "198.20.1.0", "198.20.1.9"),
        vlans=(VlanRange(200, 200),),
    ),
)
OPTION_61 = b"\x00cpe-4711"


def on(vlan: int) -> Ingress:
    return replace(INGRESS, vlans=(vlan,))


def vlan_dora(server: Server, n: int, vlan: int, client_id: bytes | None = None) -> int:
    extra = {OptionCode.CLIENT_ID: client_id} if client_id is not None else {}
    offer = only_reply(server.handle(request(D, n, extra=extra), on(vlan), NOW))
    selecting = request(R, n, requested=offer.yiaddr, server_id=SERVER, extra=extra)
    ack = server.handle(selecting, on(vlan), NOW)
    assert reply_type(ack) is MessageType.ACK, ack
    return offer.yiaddr


@pytest.mark.parametrize("reserved", ["option 61", "01 + MAC", "MAC"])
def test_a_reservation_in_a_vlan_pool_matches_what_the_client_sends(reserved: str) -> None:
    """The regression: a client-id reservation was compared with the client's identity on
    its VLANs, so in a VLAN pool its host never got it (nor could renew it)."""
    client_id, reservation = {
        "option 61": (OPTION_61, Reservation(V_FIXED, client_id=OPTION_61)),
        "01 + MAC": (None, Reservation(V_FIXED, client_id=b"\x01" + mac(1))),
        "MAC": (None, by_mac(1, V_FIXED)),
    }[reserved]
    server = Server(make_config(*VLAN_POOLS, reservations=(reservation,)), [], NOW)
    assert vlan_dora(server, 1, 100, client_id) == V_FIXED
    extra = {OptionCode.CLIENT_ID: client_id} if client_id is not None else {}
    renewal = request(R, 1, ciaddr=V_FIXED, extra=extra)
    assert reply_type(server.handle(renewal, on(100), NOW + 1800)) is MessageType.ACK
    lease = server.lease_at(V_FIXED)
    assert lease is not None and server.renewable(lease, NOW + 1800)  # the fast path's too
    assert server.kernel_renewal(mac(1), V_FIXED, NOW + 7200, NOW + 1800, (100,)).drop is None
    server.table.check()


def test_a_reserved_address_in_a_vlan_pools_ranges_goes_to_its_host_alone() -> None:
    server = Server(make_config(*VLAN_POOLS, reservations=(by_mac(9, V_FIRST),)), [], NOW)
    assert vlan_dora(server, 1, 100) != V_FIRST
    nak = server.handle(request(R, 2, requested=V_FIRST, server_id=SERVER), on(101), NOW)
    assert nak.nak is NakReason.RESERVED
    assert vlan_dora(server, 9, 101) == V_FIRST


def test_one_client_id_on_two_vlans_is_one_host_whoever_comes_first() -> None:
    """A reservation names the identifier alone, not its VLAN: the subscriber sending it on
    any VLAN its address's pool serves is the host; while one holds the address, the same
    identifier on another VLAN is another subscriber, served from the ranges."""
    reservation = Reservation(V_FIXED, client_id=OPTION_61)
    server = Server(make_config(*VLAN_POOLS, reservations=(reservation,)), [], NOW)
    assert vlan_dora(server, 1, 100, OPTION_61) == V_FIXED
    other = vlan_dora(server, 2, 101, OPTION_61)
    assert other != V_FIXED and V_FIRST <= other <= V_FIRST + 9
    taken = request(
        R, 2, requested=V_FIXED, server_id=SERVER, extra={OptionCode.CLIENT_ID: OPTION_61}
    )
    assert server.handle(taken, on(101), NOW).nak is NakReason.ADDRESS_IN_USE
    # On VLAN 200, whose pool the address is not in, the reservation does not follow it.
    assert vlan_dora(server, 3, 200, OPTION_61) in range(
        opt.parse_ip("198.20.1.0"), opt.parse_ip("198.20.1.10")
    )
    # Once the first host lets it go, the host on VLAN 101 is moved to it.
    release = request(
        MessageType.RELEASE,
        1,
        ciaddr=V_FIXED,
        server_id=SERVER,
        extra={OptionCode.CLIENT_ID: OPTION_61},
    )
    assert server.handle(release, on(100), NOW).drop is None
    renewal = request(R, 2, ciaddr=other, extra={OptionCode.CLIENT_ID: OPTION_61})
    assert server.handle(renewal, on(101), NOW + 10).nak is NakReason.RESERVATION
    assert vlan_dora(server, 2, 101, OPTION_61) == V_FIXED
    server.table.check()
