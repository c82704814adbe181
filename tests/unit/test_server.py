"""The server engine, driven message by message with an explicit clock."""

from dataclasses import replace
from ipaddress import IPv4Network

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType, OptionCode, RelayAgentSubOption
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.decisions import DestKind, LeaseEventKind, NakReason
from brushtaild.engine.leases import LeaseState
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
FIRST = opt.parse_ip("198.18.1.0")


def dora(server: Server, n: int, now: float = 0.0) -> int:
    offer = only_reply(server.handle(request(D, n), INGRESS, now))
    ack = server.handle(request(R, n, requested=offer.yiaddr, server_id=SERVER), INGRESS, now)
    assert reply_type(ack) is MessageType.ACK
    return offer.yiaddr


def test_discover_offers_and_holds_an_address() -> None:
    server = Server(make_config(), [], 0.0)
    decision = server.handle(request(D, 1), INGRESS, 0.0)
    offer = only_reply(decision)
    assert offer.message_type is MessageType.OFFER
    assert offer.yiaddr == FIRST
    assert offer.options[OptionCode.SERVER_ID] == opt.ip(SERVER)
    assert opt.decode_u32(offer.options[OptionCode.LEASE_TIME]) == 3600
    assert opt.decode_u32(offer.options[OptionCode.RENEWAL_TIME]) == 1800
    assert opt.decode_u32(offer.options[OptionCode.REBINDING_TIME]) == 3150
    assert offer.options[OptionCode.SUBNET_MASK] == opt.ip(opt.parse_ip("255.255.0.0"))
    assert decision.lease_writes == []  # an offer is never written
    dest = decision.replies[0].dest
    assert dest.kind is DestKind.LINK_UNICAST and dest.ip == FIRST and dest.mac == mac(1)
    # A second client, at the same instant, gets another address.
    assert only_reply(server.handle(request(D, 2), INGRESS, 0.0)).yiaddr == FIRST + 1


def test_request_selecting_acks_and_writes_the_lease() -> None:
    server = Server(make_config(), [], 100.0)
    offer = only_reply(server.handle(request(D, 1), INGRESS, 100.0))
    decision = server.handle(
        request(R, 1, requested=offer.yiaddr, server_id=SERVER), INGRESS, 100.0
    )
    ack = only_reply(decision)
    assert ack.message_type is MessageType.ACK and ack.yiaddr == offer.yiaddr
    [lease] = decision.lease_writes
    assert lease.address == offer.yiaddr and lease.state is LeaseState.BOUND
    assert lease.expires == 3700.0 and lease.client_id == b"\x01" + mac(1)
    assert [e.kind for e in decision.events] == [LeaseEventKind.ACK]


def test_request_for_another_server_is_silent_and_frees_the_offer() -> None:
    server = Server(make_config(make_pool(last="198.18.1.0")), [], 0.0)
    offer = only_reply(server.handle(request(D, 1), INGRESS, 0.0))
    other = opt.parse_ip("198.18.0.99")
    decision = server.handle(request(R, 1, requested=offer.yiaddr, server_id=other), INGRESS, 0.0)
    assert decision.drop is DropReason.OTHER_SERVER and not decision.replies
    # The one address of the pool is free again for someone else.
    assert only_reply(server.handle(request(D, 2), INGRESS, 0.0)).yiaddr == offer.yiaddr


def test_pool_exhaustion_means_no_offer_and_nak_for_a_taken_address() -> None:
    server = Server(make_config(make_pool(last="198.18.1.1")), [], 0.0)
    a, b = dora(server, 1), dora(server, 2)
    assert {a, b} == {FIRST, FIRST + 1}
    assert server.handle(request(D, 3), INGRESS, 0.0).drop is DropReason.POOL_EXHAUSTED
    nak = only_reply(server.handle(request(R, 3, requested=a, server_id=SERVER), INGRESS, 0.0))
    assert nak.message_type is MessageType.NAK


def test_every_nak_says_why_in_the_decision_and_in_option_56() -> None:
    server = Server(make_config(make_pool(last="198.18.1.1")), [], 0.0)
    a = dora(server, 1)
    dora(server, 2)
    cases = [
        (request(R, 3, requested=a, server_id=SERVER), NakReason.ADDRESS_IN_USE),
        (request(R, 1, requested=opt.parse_ip("203.0.113.5")), NakReason.NOT_ON_NETWORK),
        (request(R, 1, requested=a + 5), NakReason.NOT_CLIENTS),
        (request(R, 4, server_id=SERVER), NakReason.NO_REQUESTED_ADDRESS),
        (
            request(R, 5, giaddr=opt.parse_ip("203.0.113.1"), requested=a, server_id=SERVER),
            NakReason.NO_SUBNET,
        ),
    ]
    for msg, why in cases:
        decision = server.handle(msg, INGRESS, 1.0)
        nak = only_reply(decision)
        assert nak.message_type is MessageType.NAK, why
        assert decision.nak is why
        assert nak.options[OptionCode.MESSAGE] == why.value.encode()
    assert server.handle(request(D, 6), INGRESS, 1.0).nak is None


def test_offer_hold_expires() -> None:
    server = Server(make_config(make_pool(last="198.18.1.0"), offer_hold=30), [], 0.0)
    only_reply(server.handle(request(D, 1), INGRESS, 0.0))
    assert server.handle(request(D, 2), INGRESS, 10.0).drop is DropReason.POOL_EXHAUSTED
    assert only_reply(server.handle(request(D, 2), INGRESS, 31.0)).yiaddr == FIRST


def test_init_reboot() -> None:
    server = Server(make_config(), [], 0.0)
    address = dora(server, 1)
    ok = only_reply(server.handle(request(R, 1, requested=address), INGRESS, 5.0))
    assert ok.message_type is MessageType.ACK
    wrong_net = opt.parse_ip("203.0.113.5")
    nak_decision = server.handle(request(R, 1, requested=wrong_net), INGRESS, 5.0)
    assert only_reply(nak_decision).message_type is MessageType.NAK
    assert nak_decision.replies[0].dest.kind is DestKind.BROADCAST
    wrong_addr = server.handle(request(R, 1, requested=address + 5), INGRESS, 5.0)
    assert reply_type(wrong_addr) is MessageType.NAK
    stranger = server.handle(request(R, 9, requested=address + 5), INGRESS, 5.0)
    assert stranger.drop is DropReason.NO_RECORD and not stranger.replies


def test_renewing_is_unicast_to_ciaddr_and_extends() -> None:
    server = Server(make_config(), [], 0.0)
    address = dora(server, 1)
    decision = server.handle(request(R, 1, ciaddr=address), INGRESS, 1800.0)
    ack = only_reply(decision)
    assert ack.message_type is MessageType.ACK and ack.yiaddr == address
    assert ack.ciaddr == address
    assert decision.replies[0].dest.kind is DestKind.UNICAST
    assert decision.replies[0].dest.ip == address
    assert decision.lease_writes[0].expires == 1800.0 + 3600
    # Renewing someone else's address is refused.
    other = server.handle(request(R, 2, ciaddr=address), INGRESS, 1800.0)
    assert reply_type(other) is MessageType.NAK


def test_release_then_the_same_client_gets_the_same_address() -> None:
    server = Server(make_config(), [], 0.0)
    address = dora(server, 1)
    dora(server, 2)
    decision = server.handle(request(MessageType.RELEASE, 1, ciaddr=address), INGRESS, 10.0)
    assert not decision.replies
    assert decision.lease_writes[0].state is LeaseState.RELEASED
    assert only_reply(server.handle(request(D, 1), INGRESS, 20.0)).yiaddr == address


def test_expired_lease_returns_to_its_client_while_free() -> None:
    server = Server(make_config(make_pool(lease_time=60)), [], 0.0)
    address = dora(server, 1)
    tick = server.tick(61.0)
    assert [e.kind for e in tick.events] == [LeaseEventKind.EXPIRE]
    assert server.pool_usage()["residential"].assigned == 0
    dora(server, 2, now=62.0)  # a newcomer gets a never-used address first
    assert only_reply(server.handle(request(D, 1), INGRESS, 63.0)).yiaddr == address


def test_decline_quarantines_the_address() -> None:
    server = Server(make_config(make_pool(last="198.18.1.0"), decline_hold=600), [], 0.0)
    address = dora(server, 1)
    decline = request(MessageType.DECLINE, 1, requested=address, server_id=SERVER)
    decision = server.handle(decline, INGRESS, 1.0)
    assert not decision.replies
    assert decision.lease_writes[0].state is LeaseState.DECLINED
    assert decision.events[0].kind is LeaseEventKind.DECLINE
    assert server.handle(request(D, 1), INGRESS, 2.0).drop is DropReason.POOL_EXHAUSTED
    later = server.tick(601.0)
    assert later.lease_deletes == [address]
    assert only_reply(server.handle(request(D, 2), INGRESS, 602.0)).yiaddr == address


def test_revoke_naks_the_clients_next_request_and_keeps_the_address_until_the_old_end() -> None:
    server = Server(make_config(make_pool(last="198.18.1.0", lease_time=100)), [], 0.0)
    address = dora(server, 1)
    revoked = server.revoke(address, 10.0)
    assert revoked.drop is None
    assert [lease.state for lease in revoked.lease_writes] == [LeaseState.REVOKED]
    assert [e.kind for e in revoked.events] == [LeaseEventKind.REVOKE]
    assert not server.renewable(revoked.lease_writes[0], 10.0)
    # Renewing, rebinding and rebooting with the old address are NAKed, not ignored.
    for msg in (request(R, 1, ciaddr=address), request(R, 1, requested=address)):
        nak = only_reply(server.handle(msg, INGRESS, 20.0))
        assert nak.message_type is MessageType.NAK
        assert nak.options[OptionCode.MESSAGE] == b"lease revoked by the operator"
    # The client may still use it until it hears that: nobody else is given it...
    assert server.handle(request(D, 2), INGRESS, 30.0).drop is DropReason.POOL_EXHAUSTED
    # ...but its own DISCOVER starts over, on the same address.
    assert dora(server, 1, now=40.0) == address
    assert reply_type(server.handle(request(R, 1, ciaddr=address), INGRESS, 50.0)) is (
        MessageType.ACK
    )


def test_a_revoked_lease_ends_at_its_old_end_and_survives_a_restart() -> None:
    server = Server(make_config(make_pool(last="198.18.1.0", lease_time=100)), [], 0.0)
    address = dora(server, 1)
    server.revoke(address, 10.0)
    restarted = Server(
        make_config(make_pool(last="198.18.1.0", lease_time=100)), server.leases(), 20.0
    )
    assert reply_type(restarted.handle(request(R, 1, ciaddr=address), INGRESS, 20.0)) is (
        MessageType.NAK
    )
    assert [e.kind for e in restarted.tick(100.0).events] == [LeaseEventKind.EXPIRE]
    assert only_reply(restarted.handle(request(D, 2), INGRESS, 101.0)).yiaddr == address


def test_revoke_refuses_what_is_not_a_bound_lease_and_a_racing_kernel_renewal() -> None:
    server = Server(make_config(), [], 0.0)
    address = dora(server, 1)
    assert server.revoke(address + 1, 1.0).drop is DropReason.NO_MATCHING_LEASE
    server.revoke(address, 1.0)
    assert server.revoke(address, 2.0).drop is DropReason.NO_MATCHING_LEASE
    renewal = server.kernel_renewal(mac(1), address, 5000.0, 3.0)
    assert renewal.drop is DropReason.STALE_RENEWAL


def test_inform_acks_without_address_or_lease_time() -> None:
    server = Server(make_config(), [], 0.0)
    client_ip = opt.parse_ip("198.18.7.7")
    decision = server.handle(request(MessageType.INFORM, 1, ciaddr=client_ip), INGRESS, 0.0)
    ack = only_reply(decision)
    assert ack.message_type is MessageType.ACK and ack.yiaddr == 0 and ack.ciaddr == client_ip
    assert OptionCode.LEASE_TIME not in ack.options
    assert decision.replies[0].dest.kind is DestKind.UNICAST
    assert decision.lease_writes == []


def test_relayed_request_selects_by_giaddr_and_echoes_option_82() -> None:
    relay_pool = make_pool("business", "198.19.0.0/24", "198.19.0.10", "198.19.0.20")
    server = Server(make_config(make_pool(), relay_pool), [], 0.0)
    relay_info = opt.build_relay_agent_info(
        [(RelayAgentSubOption.CIRCUIT_ID, b"port-7"), (RelayAgentSubOption.REMOTE_ID, b"cpe")]
    )
    msg = request(
        D,
        1,
        giaddr=opt.parse_ip("198.19.0.1"),
        extra={OptionCode.RELAY_AGENT_INFO: relay_info},
    )
    decision = server.handle(msg, INGRESS, 0.0)
    offer = only_reply(decision)
    assert offer.yiaddr == opt.parse_ip("198.19.0.10")
    assert offer.options[OptionCode.RELAY_AGENT_INFO] == relay_info
    assert list(offer.options)[-1] == OptionCode.RELAY_AGENT_INFO
    dest = decision.replies[0].dest
    assert dest.kind is DestKind.RELAY and dest.ip == msg.giaddr and dest.port == 67


def test_link_selection_overrides_giaddr() -> None:
    relay_pool = make_pool("business", "198.19.0.0/24", "198.19.0.10", "198.19.0.20")
    trusted = (IPv4Network("198.18.0.254/32"),)
    server = Server(make_config(make_pool(), relay_pool, trusted_relays=trusted), [], 0.0)
    link = opt.build_relay_agent_info(
        [(RelayAgentSubOption.LINK_SELECTION, opt.ip(opt.parse_ip("198.19.0.0")))]
    )
    msg = request(
        D, 1, giaddr=opt.parse_ip("198.18.0.254"), extra={OptionCode.RELAY_AGENT_INFO: link}
    )
    assert only_reply(server.handle(msg, INGRESS, 0.0)).yiaddr == opt.parse_ip("198.19.0.10")


def test_unknown_relay_network_is_dropped() -> None:
    server = Server(make_config(), [], 0.0)
    msg = request(D, 1, giaddr=opt.parse_ip("203.0.113.1"))
    assert server.handle(msg, INGRESS, 0.0).drop is DropReason.NO_SUBNET


def test_nak_through_a_relay_sets_the_broadcast_bit() -> None:
    server = Server(make_config(), [], 0.0)
    giaddr = opt.parse_ip("198.18.0.2")
    server.handle(request(D, 2, giaddr=giaddr), INGRESS, 0.0)
    decision = server.handle(
        request(R, 2, requested=FIRST, server_id=SERVER, giaddr=giaddr), INGRESS, 0.0
    )
    assert reply_type(decision) is MessageType.ACK
    nak = server.handle(request(R, 1, requested=FIRST, server_id=SERVER, giaddr=giaddr), INGRESS, 0)
    assert reply_type(nak) is MessageType.NAK
    assert only_reply(nak).flags & 0x8000
    assert nak.replies[0].dest.kind is DestKind.RELAY


def test_parameter_request_list_is_honoured() -> None:
    server = Server(make_config(), [], 0.0)
    prl = bytes([OptionCode.DNS_SERVERS, OptionCode.SUBNET_MASK])
    msg = request(D, 1, extra={OptionCode.PARAMETER_REQUEST_LIST: prl})
    offer = only_reply(server.handle(msg, INGRESS, 0.0))
    assert OptionCode.DNS_SERVERS in offer.options
    assert OptionCode.ROUTERS not in offer.options and OptionCode.DOMAIN_NAME not in offer.options


def test_client_identifier_is_the_identity() -> None:
    server = Server(make_config(), [], 0.0)
    cid = {OptionCode.CLIENT_ID: b"\x00subscriber-42"}
    first = only_reply(server.handle(request(D, 1, extra=cid), INGRESS, 0.0))
    server.handle(request(R, 1, requested=first.yiaddr, server_id=SERVER, extra=cid), INGRESS, 0.0)
    # Same client id from a new NIC: same address.
    again = only_reply(server.handle(request(D, 77, extra=cid), INGRESS, 1.0))
    assert again.yiaddr == first.yiaddr


def test_restart_restores_leases() -> None:
    server = Server(make_config(), [], 0.0)
    a = dora(server, 1)
    b = dora(server, 2)
    restarted = Server(make_config(), server.leases(), 10.0)
    assert only_reply(restarted.handle(request(D, 2), INGRESS, 10.0)).yiaddr == b
    assert only_reply(restarted.handle(request(D, 3), INGRESS, 10.0)).yiaddr not in {a, b}


def test_server_messages_and_bootreplies_are_dropped() -> None:
    server = Server(make_config(), [], 0.0)
    assert server.handle(request(MessageType.OFFER, 1), INGRESS, 0).drop is (
        DropReason.UNEXPECTED_MESSAGE
    )
    reply = request(D, 1)
    reply.op = 2
    assert server.handle(reply, INGRESS, 0).drop is DropReason.NOT_FROM_CLIENT


def test_option_82_echo_does_not_leak_into_the_next_reply() -> None:
    server = Server(make_config(), [], 0.0)
    giaddr = opt.parse_ip("198.18.0.2")
    relay_info = opt.build_relay_agent_info([(RelayAgentSubOption.CIRCUIT_ID, b"port-1")])
    relayed = request(D, 1, giaddr=giaddr, extra={OptionCode.RELAY_AGENT_INFO: relay_info})
    assert OptionCode.RELAY_AGENT_INFO in only_reply(server.handle(relayed, INGRESS, 0.0)).options
    plain = only_reply(server.handle(request(D, 2, giaddr=giaddr), INGRESS, 0.0))
    assert OptionCode.RELAY_AGENT_INFO not in plain.options


def test_reply_fits_the_clients_maximum_message_size() -> None:
    many_dns = tuple(opt.parse_ip(f"198.18.0.{n}") for n in range(10, 70))  # 240 bytes
    server = Server(make_config(replace(make_pool(), dns_servers=many_dns)), [], 0.0)
    relay_info = bytes(200)  # a large option 82 from a relay, echoed in full
    prl = bytes([OptionCode.ROUTERS, OptionCode.DOMAIN_NAME, OptionCode.DNS_SERVERS])
    msg = request(
        D,
        1,
        giaddr=opt.parse_ip("198.18.0.2"),
        extra={
            OptionCode.PARAMETER_REQUEST_LIST: prl,
            OptionCode.MAX_MESSAGE_SIZE: opt.u16(576),
            OptionCode.RELAY_AGENT_INFO: relay_info,
        },
    )
    decision = server.handle(msg, INGRESS, 0.0)
    offer = only_reply(decision)
    assert len(decision.replies[0].payload) <= 576 - 28
    assert offer.options[OptionCode.RELAY_AGENT_INFO] == relay_info
    assert OptionCode.LEASE_TIME in offer.options and OptionCode.SERVER_ID in offer.options
    # The last requested option is the one given up for room.
    assert OptionCode.DNS_SERVERS not in offer.options and OptionCode.ROUTERS in offer.options
