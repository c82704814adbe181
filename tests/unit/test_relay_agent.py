"""Option 82 in the engine: stashed per lease (renewals come without it) and its
sub-options."""

from dataclasses import replace
from ipaddress import IPv4Network

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType, OptionCode, RelayAgentSubOption
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.leases import LeaseState
from brushtaild.engine.reservations import Reservation
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


def agent_info(circuit: bytes, *more: tuple[int, bytes]) -> bytes:
    return opt.build_relay_agent_info([(RelayAgentSubOption.CIRCUIT_ID, circuit), *more])


def relayed_dora(server: Server, n: int, info: bytes | None) -> int:
    extra = {OptionCode.RELAY_AGENT_INFO: info} if info is not None else {}
    offer = only_reply(server.handle(request(D, n, giaddr=RELAY, extra=extra), INGRESS, NOW))
    ack = server.handle(
        request(R, n, giaddr=RELAY, requested=offer.yiaddr, server_id=SERVER, extra=extra),
        INGRESS,
        NOW,
    )
    assert reply_type(ack) is MessageType.ACK, ack
    return offer.yiaddr


def stashed(server: Server, address: int) -> bytes:
    lease = server.lease_at(address)
    assert lease is not None
    return lease.relay_info


def test_the_lease_stashes_option_82_as_received_and_a_unicast_renewal_keeps_it() -> None:
    server = Server(make_config(REMOTE), [], NOW)
    info = agent_info(b"olt1/1/3:101", (RelayAgentSubOption.REMOTE_ID, b"cpe-1"), (200, b"\0"))
    address = relayed_dora(server, 1, info)
    assert stashed(server, address) == info
    renewal = server.handle(request(R, 1, ciaddr=address), INGRESS, NOW + 1800)
    assert reply_type(renewal) is MessageType.ACK
    assert renewal.lease_writes[-1].relay_info == info
    circuit = renewal.lease_writes[-1].relay_sub_option(RelayAgentSubOption.CIRCUIT_ID)
    assert circuit == b"olt1/1/3:101"


def test_a_relayed_renewal_replaces_the_stash_even_with_none() -> None:
    server = Server(make_config(REMOTE), [], NOW)
    address = relayed_dora(server, 1, agent_info(b"port-1"))
    moved = agent_info(b"port-2")
    rebind = request(R, 1, ciaddr=address, giaddr=RELAY, extra={OptionCode.RELAY_AGENT_INFO: moved})
    assert reply_type(server.handle(rebind, INGRESS, NOW + 3000)) is MessageType.ACK
    assert stashed(server, address) == moved
    bare = request(R, 1, ciaddr=address, giaddr=RELAY)
    assert reply_type(server.handle(bare, INGRESS, NOW + 3100)) is MessageType.ACK
    assert stashed(server, address) == b""


def test_a_local_client_stashes_nothing_even_from_a_snooping_switch() -> None:
    # Option 82 without giaddr is echoed, but names no relay's circuit.
    server = Server(make_config(make_pool()), [], NOW)
    extra = {OptionCode.RELAY_AGENT_INFO: agent_info(b"port-1")}
    offer = only_reply(server.handle(request(D, 1, extra=extra), INGRESS, NOW))
    ack = server.handle(
        request(R, 1, requested=offer.yiaddr, server_id=SERVER, extra=extra), INGRESS, NOW
    )
    assert reply_type(ack) is MessageType.ACK
    assert stashed(server, offer.yiaddr) == b""


def test_a_unicast_renewal_is_matched_on_the_stashed_circuit_id() -> None:
    """A reload reserves an address for the circuit of a client holding another one: its
    next renewal, unicast without option 82, is NAKed towards the reservation, as a relayed
    one would be."""
    server = Server(make_config(REMOTE), [], NOW)
    address = relayed_dora(server, 1, agent_info(b"olt1/1/3:101"))
    fixed = opt.parse_ip("198.19.7.7")
    config = make_config(REMOTE, reservations=(Reservation(fixed, circuit_id=b"olt1/1/3:101"),))
    server = server.reconfigured(config, NOW)
    renewal = server.handle(request(R, 1, ciaddr=address), INGRESS, NOW + 1800)
    assert reply_type(renewal) is MessageType.NAK
    assert relayed_dora(server, 1, agent_info(b"olt1/1/3:101")) == fixed


def test_the_stash_survives_a_reload() -> None:
    config = make_config(REMOTE, trusted_relays=(IPv4Network("198.19.0.0/16"),))
    server = Server(config, [], NOW)
    info = agent_info(b"x")
    address = relayed_dora(server, 1, info)
    assert stashed(server.reconfigured(config, NOW), address) == info


def test_a_newly_reserved_circuit_address_is_taken_back_from_another_circuits_client() -> None:
    server = Server(make_config(REMOTE), [], NOW)
    taken = relayed_dora(server, 1, agent_info(b"port-1"))
    kept = relayed_dora(server, 2, agent_info(b"port-2"))
    reservations = (
        Reservation(taken, circuit_id=b"port-9"),
        Reservation(kept, circuit_id=b"port-2"),
    )
    server = server.reconfigured(make_config(REMOTE, reservations=reservations), NOW)
    other, host = server.lease_at(taken), server.lease_at(kept)
    assert other is not None and not server.renewable(other, NOW)
    assert host is not None and server.renewable(host, NOW)
    assert reply_type(server.handle(request(R, 1, ciaddr=taken), INGRESS, NOW + 1)) is (
        MessageType.NAK
    )
    assert reply_type(server.handle(request(R, 2, ciaddr=kept), INGRESS, NOW + 1)) is (
        MessageType.ACK
    )


# Sub-options -----------------------------------------------------------------------------

OVERRIDE = opt.parse_ip("198.19.0.1")  # the relay's own address, as RFC 5107 intends


def overriding(*more: tuple[int, bytes]) -> bytes:
    return agent_info(b"port-1", (RelayAgentSubOption.SERVER_ID_OVERRIDE, opt.ip(OVERRIDE)), *more)


def test_server_identifier_override_names_the_relay_in_every_reply() -> None:
    """RFC 5107: option 54 of the OFFER, ACK and NAK is the override; a REQUEST naming it
    is for us; option 82 is echoed as received."""
    server = Server(make_config(REMOTE), [], NOW)
    info = overriding()
    extra = {OptionCode.RELAY_AGENT_INFO: info}
    offer = only_reply(server.handle(request(D, 1, giaddr=RELAY, extra=extra), INGRESS, NOW))
    assert offer.options[OptionCode.SERVER_ID] == opt.ip(OVERRIDE)
    assert offer.options[OptionCode.RELAY_AGENT_INFO] == info
    select = request(R, 1, giaddr=RELAY, requested=offer.yiaddr, server_id=OVERRIDE, extra=extra)
    ack = server.handle(select, INGRESS, NOW)
    assert reply_type(ack) is MessageType.ACK
    assert only_reply(ack).options[OptionCode.SERVER_ID] == opt.ip(OVERRIDE)
    elsewhere = replace(
        select, options={**select.options, OptionCode.REQUESTED_ADDRESS: opt.ip(SERVER)}
    )
    nak = server.handle(elsewhere, INGRESS, NOW)
    assert reply_type(nak) is MessageType.NAK
    assert only_reply(nak).options[OptionCode.SERVER_ID] == opt.ip(OVERRIDE)
    # Our own server_id still names us; any other address is another server's.
    assert reply_type(server.handle(replace_sid(select, SERVER), INGRESS, NOW)) is MessageType.ACK
    other = server.handle(replace_sid(select, OVERRIDE + 1), INGRESS, NOW)
    assert other.drop is DropReason.OTHER_SERVER


def replace_sid(msg: Message, server_id: int) -> Message:
    return replace(msg, options={**msg.options, OptionCode.SERVER_ID: opt.ip(server_id)})


def test_release_naming_the_override_is_for_us() -> None:
    server = Server(make_config(REMOTE), [], NOW)
    address = relayed_dora(server, 1, overriding())
    extra = {OptionCode.RELAY_AGENT_INFO: overriding()}
    release = request(MessageType.RELEASE, 1, ciaddr=address, server_id=OVERRIDE, extra=extra)
    assert server.handle(replace(release, giaddr=RELAY), INGRESS, NOW).drop is None
    lease = server.lease_at(address)
    assert lease is not None and lease.state is LeaseState.RELEASED


def test_an_override_from_a_client_on_our_link_is_ignored() -> None:
    server = Server(make_config(make_pool()), [], NOW)
    offer = server.handle(
        request(D, 1, extra={OptionCode.RELAY_AGENT_INFO: overriding()}), INGRESS, NOW
    )
    assert only_reply(offer).options[OptionCode.SERVER_ID] == opt.ip(SERVER)


def test_a_malformed_override_is_dropped() -> None:
    server = Server(make_config(REMOTE), [], NOW)
    bad = agent_info(b"port-1", (RelayAgentSubOption.SERVER_ID_OVERRIDE, b"\xc6\x13\x00"))
    decision = server.handle(
        request(D, 1, giaddr=RELAY, extra={OptionCode.RELAY_AGENT_INFO: bad}), INGRESS, NOW
    )
    assert decision.drop is DropReason.BAD_OPTION and not decision.replies


def test_relay_flags_and_unknown_sub_options_are_echoed_byte_for_byte_and_stashed() -> None:
    """RFC 5010's flags (the relay got the request unicast) change no answer: RENEWING and
    REBINDING are answered alike. They and sub-options we do not know go back untouched."""
    server = Server(make_config(REMOTE), [], NOW)
    info = agent_info(
        b"port-1",
        (RelayAgentSubOption.RELAY_AGENT_FLAGS, b"\x80"),
        (151, b""),
        (9, bytes(range(40))),
        (RelayAgentSubOption.SUBSCRIBER_ID, b"sub 1"),
    )
    address = relayed_dora(server, 1, info)
    assert stashed(server, address) == info
    flagged = request(R, 1, ciaddr=address, giaddr=RELAY, extra={OptionCode.RELAY_AGENT_INFO: info})
    decision = server.handle(flagged, INGRESS, NOW + 1800)
    assert reply_type(decision) is MessageType.ACK
    payload = decision.replies[0].payload
    assert payload.find(bytes((OptionCode.RELAY_AGENT_INFO, len(info))) + info) > 0
    plain = agent_info(b"port-1", (RelayAgentSubOption.RELAY_AGENT_FLAGS, b"\x00"))
    unflagged = replace(flagged, options={**flagged.options, OptionCode.RELAY_AGENT_INFO: plain})
    again = server.handle(unflagged, INGRESS, NOW + 1900)
    assert reply_type(again) is MessageType.ACK and only_reply(again).yiaddr == address
