"""Regression tests for the engine's findings of the December 2026 review
(../shared/notes/review-correctness.md, numbered as there) and the RFC 2131 conformance
points of the hardening issue. Each failed before its fix."""

from dataclasses import replace
from ipaddress import IPv4Network

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import OPTIONS_OFFSET, parse
from brushtaild.dhcp.constants import MessageType, OptionCode, RelayAgentSubOption
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.allocator import PoolAllocator
from brushtaild.engine.lease_table import MIN_OFFERS_PER_LINK
from brushtaild.engine.leases import Lease, LeaseState
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
RELAY = opt.parse_ip("198.19.0.1")
POOL = make_pool()  # 198.18.1.0-9 in 198.18.0.0/16, the server's own link
REMOTE = make_pool("remote", "198.19.0.0/16", "198.19.1.0", "198.19.1.9")
NOW = 10_000.0


def bound(server: Server, n: int, now: float = NOW, **kw: int) -> int:
    offer = only_reply(server.handle(request(D, n, **kw), INGRESS, now))
    ack = server.handle(request(R, n, requested=offer.yiaddr, server_id=SERVER, **kw), INGRESS, now)
    assert reply_type(ack) is MessageType.ACK
    return offer.yiaddr


def stored(address: int, n: int, expires: float) -> Lease:
    return Lease(address, bytes((1,)) + mac(n), mac(n), POOL.name, LeaseState.BOUND, expires, 0)


# 1: after a restart, a lease the kernel renewed while the daemon was down -------------------


def test_kernel_renewal_after_restart_takes_the_address_back() -> None:
    # Stored expiry 5000 passed while no daemon ran; the kernel renewed the client to 9000.
    server = Server(make_config(), [stored(FIRST, 1, 5000.0)], 6000.0)
    decision = server.kernel_renewal(mac(1), FIRST, 9000.0, 6000.0)
    assert decision.drop is None and decision.lease_writes[0].expires == 9000.0
    # Another client asking for that address gets neither an OFFER of it nor an ACK.
    offer = only_reply(server.handle(request(D, 2, requested=FIRST), INGRESS, 6000.0))
    assert offer.yiaddr != FIRST
    nak = server.handle(request(R, 2, requested=FIRST, server_id=SERVER), INGRESS, 6000.0)
    assert reply_type(nak) is MessageType.NAK
    server.table.check()


def test_kernel_renewal_refused_once_the_address_went_to_someone_else() -> None:
    server = Server(make_config(), [stored(FIRST, 1, 5000.0)], 6000.0)
    select = request(R, 2, requested=FIRST, server_id=SERVER)
    assert only_reply(server.handle(select, INGRESS, 6000.0)).yiaddr == FIRST
    decision = server.kernel_renewal(mac(1), FIRST, 9000.0, 6000.0)
    assert decision.drop is DropReason.STALE_RENEWAL and not decision.lease_writes


def test_kernel_renewal_withdraws_another_clients_offer() -> None:
    server = Server(make_config(), [stored(FIRST, 1, 5000.0)], 6000.0)
    assert only_reply(server.handle(request(D, 2, requested=FIRST), INGRESS, 6000.0)).yiaddr
    assert server.kernel_renewal(mac(1), FIRST, 9000.0, 6000.0).drop is None
    nak = server.handle(request(R, 2, requested=FIRST, server_id=SERVER), INGRESS, 6000.0)
    assert reply_type(nak) is MessageType.NAK
    server.table.check()


# 2: option 82 twice, 255 bytes each, no option 57 ------------------------------------------


def test_option_82_longer_than_255_bytes_is_dropped_not_raised() -> None:
    relay_info = {
        OptionCode.RELAY_AGENT_INFO: (
            opt.build_relay_agent_info([(1, b"A" * 253)])
            + opt.build_relay_agent_info([(2, b"B" * 253)])
        )
    }
    server = Server(make_config(), [], NOW)
    for mtype in (D, R, MessageType.INFORM):
        decision = server.handle(request(mtype, 1, ciaddr=FIRST, extra=relay_info), INGRESS, NOW)
        assert decision.drop is DropReason.BAD_OPTION and not decision.replies


def test_a_reply_that_cannot_fit_is_dropped_not_raised() -> None:
    # A 600-byte client identifier is echoed verbatim (RFC 6842) and cannot fit 548 bytes.
    server = Server(make_config(), [], NOW)
    msg = request(D, 1, extra={OptionCode.CLIENT_ID: b"x" * 600})
    decision = server.handle(msg, INGRESS, NOW)
    assert decision.drop is DropReason.REPLY_TOO_LARGE and not decision.replies


# 7: exclusions and renumbering reach the fast path's decisions ------------------------------


def test_reload_that_excludes_a_bound_address_ends_it_at_the_next_renewal() -> None:
    server = Server(make_config(), [], NOW)
    address = bound(server, 1)
    lease = server.lease_at(address)
    assert lease is not None and server.renewable(lease, NOW)
    server = server.reconfigured(make_config(replace(POOL, exclude=frozenset({address}))), NOW)
    lease = server.lease_at(address)
    assert lease is not None and not server.renewable(lease, NOW)
    refused = server.kernel_renewal(mac(1), address, NOW + 3600, NOW)
    assert refused.drop is DropReason.STALE_RENEWAL
    nak = server.handle(request(R, 1, ciaddr=address), INGRESS, NOW)
    assert reply_type(nak) is MessageType.NAK


def test_reload_that_renumbers_a_pool_ends_its_leases() -> None:
    server = Server(make_config(REMOTE), [], NOW)
    address = bound(server, 1, giaddr=RELAY)
    renumbered = make_pool("remote", "198.20.0.0/16", "198.20.1.0", "198.20.1.9")
    server = server.reconfigured(make_config(renumbered), NOW)
    lease = server.lease_at(address)
    assert lease is not None and not server.renewable(lease, NOW)


# 9: silence for another server's clients ---------------------------------------------------


def test_init_reboot_outside_our_ranges_but_on_the_network_is_silent() -> None:
    server = Server(make_config(), [], NOW)
    other = opt.parse_ip("198.18.2.150")  # in 198.18.0.0/16, outside 198.18.1.0-9
    decision = server.handle(request(R, 1, requested=other), INGRESS, NOW)
    assert decision.drop is DropReason.NO_RECORD and not decision.replies
    rebinding = request(R, 1, ciaddr=other, flags=0x8000)
    decision = server.handle(rebinding, INGRESS, NOW)
    assert decision.drop is DropReason.NO_RECORD and not decision.replies


def test_init_reboot_on_the_wrong_network_is_nakked() -> None:
    server = Server(make_config(), [], NOW)
    wrong = opt.parse_ip("203.0.113.7")
    assert reply_type(server.handle(request(R, 1, requested=wrong), INGRESS, NOW)) is (
        MessageType.NAK
    )


# 10: memory and floods -----------------------------------------------------------------------


def test_renewals_do_not_grow_the_timers() -> None:
    server = Server(make_config(), [], NOW)
    address = bound(server, 1)
    for n in range(10_000):
        now = NOW + n
        if n % 2:
            assert server.kernel_renewal(mac(1), address, now + 3600, now).drop is None
        else:
            renew = server.handle(request(R, 1, ciaddr=address), INGRESS, now)
            assert reply_type(renew) is MessageType.ACK
    assert server.table.timer_entries() <= 4


def test_a_discover_flood_on_one_link_cannot_drain_a_shared_pool() -> None:
    # Two relays on one subnet share its pool: a random-MAC flood through the first ties
    # up at most its share of offers, and a client behind the second still gets one.
    pool = make_pool("shared", "198.19.0.0/16", "198.19.1.0", "198.19.1.199")
    server = Server(make_config(pool), [], NOW)
    for n in range(5000):
        server.handle(request(D, 1000 + n, giaddr=RELAY), INGRESS, NOW)
    usage = server.pool_usage()["shared"]
    assert usage.assigned <= max(MIN_OFFERS_PER_LINK, usage.total // 4)
    other_relay = opt.parse_ip("198.19.0.2")
    assert bound(server, 1, giaddr=other_relay)
    # The flooded link still gets offers too (its oldest ones are withdrawn).
    assert only_reply(server.handle(request(D, 2, giaddr=RELAY), INGRESS, NOW)).yiaddr


def test_decline_floods_cannot_quarantine_a_whole_pool() -> None:
    server = Server(make_config(decline_hold=86400), [], NOW)
    for n in range(40):
        try:
            address = bound(server, 100 + n)
        except AssertionError:
            break
        decline = request(MessageType.DECLINE, 100 + n, requested=address, server_id=SERVER)
        server.handle(decline, INGRESS, NOW)
    quarantined = [lease for lease in server.leases() if lease.state is LeaseState.DECLINED]
    usage = server.pool_usage()[POOL.name]
    assert len(quarantined) <= max(1, usage.total // 4)
    assert usage.declined == len(quarantined)
    assert bound(server, 1)


# 12 and 13: what is echoed, and where -------------------------------------------------------


def test_client_id_is_echoed_in_offer_ack_and_nak() -> None:
    client_id = {OptionCode.CLIENT_ID: b"\xffsubscriber-7"}
    server = Server(make_config(), [], NOW)
    offer = only_reply(server.handle(request(D, 1, extra=client_id), INGRESS, NOW))
    assert offer.options[OptionCode.CLIENT_ID] == b"\xffsubscriber-7"
    select = request(R, 1, requested=offer.yiaddr, server_id=SERVER, extra=client_id)
    assert only_reply(server.handle(select, INGRESS, NOW)).options[OptionCode.CLIENT_ID]
    wrong = request(R, 1, requested=opt.parse_ip("203.0.113.1"), extra=client_id)
    nak = only_reply(server.handle(wrong, INGRESS, NOW))
    assert nak.message_type is MessageType.NAK and OptionCode.CLIENT_ID in nak.options


def test_subnet_selection_is_honoured_and_echoed_from_trusted_relays_only() -> None:
    selection = {OptionCode.SUBNET_SELECTION: opt.ip(opt.parse_ip("198.19.0.0"))}
    trusted = IPv4Network("198.18.0.8/30")
    server = Server(make_config(POOL, REMOTE, trusted_relays=(trusted,)), [], NOW)
    relayed = only_reply(
        server.handle(
            request(D, 1, giaddr=opt.parse_ip("198.18.0.9"), extra=selection), INGRESS, NOW
        )
    )
    assert relayed.yiaddr in range(opt.parse_ip("198.19.1.0"), opt.parse_ip("198.19.1.10"))
    assert relayed.options[OptionCode.SUBNET_SELECTION] == selection[OptionCode.SUBNET_SELECTION]
    # From a client on our own link, or a host that writes a giaddr we do not trust, it
    # picks nothing (review 15) and is not echoed: giaddr (or the link) chooses.
    direct = only_reply(server.handle(request(D, 2, extra=selection), INGRESS, NOW))
    untrusted = only_reply(
        server.handle(
            request(D, 3, giaddr=opt.parse_ip("198.18.0.12"), extra=selection), INGRESS, NOW
        )
    )
    for reply in (direct, untrusted):
        assert reply.yiaddr in range(FIRST, FIRST + 10)
        assert OptionCode.SUBNET_SELECTION not in reply.options


def test_link_selection_is_honoured_from_trusted_relays_only() -> None:
    link = opt.build_relay_agent_info(
        [(RelayAgentSubOption.LINK_SELECTION, opt.ip(opt.parse_ip("198.19.0.0")))]
    )
    giaddr = opt.parse_ip("198.18.0.254")
    discover = request(D, 1, giaddr=giaddr, extra={OptionCode.RELAY_AGENT_INFO: link})
    trusting = Server(make_config(POOL, REMOTE, trusted_relays=(IPv4Network(giaddr),)), [], NOW)
    remote = only_reply(trusting.handle(discover, INGRESS, NOW)).yiaddr
    assert remote in range(opt.parse_ip("198.19.1.0"), opt.parse_ip("198.19.1.10"))
    wary = Server(make_config(POOL, REMOTE), [], NOW)
    assert only_reply(wary.handle(discover, INGRESS, NOW)).yiaddr in range(FIRST, FIRST + 10)


def test_link_selection_from_a_client_on_our_link_is_ignored() -> None:
    link = opt.build_relay_agent_info(
        [(RelayAgentSubOption.LINK_SELECTION, opt.ip(opt.parse_ip("198.19.0.0")))]
    )
    server = Server(make_config(POOL, REMOTE), [], NOW)
    offer = only_reply(
        server.handle(request(D, 1, extra={OptionCode.RELAY_AGENT_INFO: link}), INGRESS, NOW)
    )
    assert offer.yiaddr in range(FIRST, FIRST + 10)
    # Still echoed: a DHCP-snooping switch adds option 82 without setting giaddr.
    assert offer.options[OptionCode.RELAY_AGENT_INFO] == link


def test_option_82_stays_last_in_the_options_field_under_overload() -> None:
    long_domain = make_pool()
    long_domain = replace(
        long_domain,
        domain="a" * 60 + "." + "b" * 40,
        dns_servers=tuple(range(SERVER, SERVER + 40)),
    )
    server = Server(make_config(long_domain), [], NOW)
    relay_info = opt.build_relay_agent_info([(1, b"circuit-7")])
    msg = request(
        D,
        1,
        giaddr=opt.parse_ip("198.18.0.9"),
        extra={OptionCode.CLIENT_ID: b"\x01" + mac(1), OptionCode.RELAY_AGENT_INFO: relay_info},
    )
    payload = server.handle(msg, INGRESS, NOW).replies[0].payload
    assert payload[OPTIONS_OFFSET : OPTIONS_OFFSET + 3] == bytes((52, 1, 1))  # overloaded into file
    codes, pos = [], OPTIONS_OFFSET
    while payload[pos] != 255:
        codes.append(payload[pos])
        pos += 2 + payload[pos + 1]
    assert codes[-2:] == [OptionCode.CLIENT_ID, OptionCode.RELAY_AGENT_INFO]
    assert parse(payload).options[OptionCode.RELAY_AGENT_INFO] == relay_info


# 15: adoption of an address by a client we have no record of -------------------------------


def test_a_local_host_cannot_adopt_an_address_of_a_relayed_subnet() -> None:
    server = Server(make_config(POOL, REMOTE), [], NOW)
    claim = request(R, 1, ciaddr=opt.parse_ip("198.19.1.3"))
    decision = server.handle(claim, INGRESS, NOW)
    assert decision.drop is DropReason.NO_RECORD and not decision.lease_writes
    # On our own link, a client renewing a free address we lost the record of keeps it.
    assert reply_type(server.handle(request(R, 2, ciaddr=FIRST + 3), INGRESS, NOW)) is (
        MessageType.ACK
    )


# 17: rows and lists that only grew -----------------------------------------------------------


def test_quarantines_that_ended_while_down_are_deleted_from_the_store() -> None:
    dead = replace(stored(FIRST, 1, 5000.0), client_id=b"", state=LeaseState.DECLINED)
    server = Server(make_config(), [dead], 6000.0)
    assert server.tick(6000.0).lease_deletes == [FIRST]
    assert server.tick(6001.0).lease_deletes == []


def test_free_list_never_holds_an_address_twice() -> None:
    alloc = PoolAllocator(POOL, SERVER)
    address = alloc.allocate()
    assert address is not None
    for _ in range(100):
        alloc.release(address)
        assert alloc.take(address)
    assert alloc.queued == 1


# RFC 2131 conformance points found by an independent suite ----------------------------------


def test_discover_with_a_bogus_ciaddr_is_offered_an_address_of_its_link() -> None:
    server = Server(make_config(), [], NOW)
    offer = only_reply(server.handle(request(D, 1, ciaddr=0xFFFFFFFF), INGRESS, NOW))
    assert offer.message_type is MessageType.OFFER and offer.yiaddr == FIRST


def test_request_naming_us_with_a_bogus_ciaddr_is_nakked() -> None:
    server = Server(make_config(), [], NOW)
    msg = request(R, 1, ciaddr=0xFFFFFFFF, requested=FIRST, server_id=SERVER)
    assert reply_type(server.handle(msg, INGRESS, NOW)) is MessageType.NAK


def test_request_naming_us_from_a_relay_on_no_known_network_is_nakked() -> None:
    server = Server(make_config(), [], NOW)
    msg = request(R, 1, giaddr=opt.parse_ip("203.0.113.1"), requested=FIRST, server_id=SERVER)
    nak = server.handle(msg, INGRESS, NOW)
    assert reply_type(nak) is MessageType.NAK


def test_inform_without_ciaddr_is_dropped() -> None:
    server = Server(make_config(), [], NOW)
    decision = server.handle(request(MessageType.INFORM, 1), INGRESS, NOW)
    assert decision.drop is DropReason.NO_CLIENT_ADDRESS and not decision.replies


def test_renewal_naming_the_server_is_still_a_renewal() -> None:
    # Some clients put option 54 in RENEWING requests; the kernel ACKs those, so must we.
    server = Server(make_config(), [], NOW)
    address = bound(server, 1)
    renew = request(R, 1, ciaddr=address, server_id=SERVER)
    assert reply_type(server.handle(renew, INGRESS, NOW + 10)) is MessageType.ACK


def test_a_bug_in_a_handler_drops_the_request_and_keeps_the_table_changes() -> None:
    server = Server(make_config(), [], NOW)
    address = bound(server, 1)

    def broken(*_: object) -> None:
        raise RuntimeError("bug")

    server._handlers[D] = broken
    # Past the lease: the expiry the request ran into still reaches the store and the maps.
    decision = server.handle(request(D, 2), INGRESS, NOW + 7200)
    assert decision.drop is DropReason.INTERNAL_ERROR and not decision.replies
    assert isinstance(decision.error, RuntimeError)
    assert [event.address for event in decision.events] == [address]


def test_a_malformed_option_57_is_refused_before_the_lease_moves() -> None:
    # Found by the engine fuzzer: the size limit was decoded after the bind, so a REQUEST
    # dropped for a one-byte option 57 had already moved the client off its acked address.
    server = Server(make_config(), [], NOW)
    address = bound(server, 1)
    other = request(R, 1, requested=address + 1, server_id=SERVER, extra={57: b"\x02"})
    decision = server.handle(other, INGRESS, NOW)
    assert decision.drop is DropReason.BAD_OPTION and not decision.lease_writes
    lease = server.lease_at(address)
    assert lease is not None and lease.active(NOW) and lease.client_id == bytes((1,)) + mac(1)


def test_a_kernel_renewal_in_the_leases_last_instant_is_kept_when_absorbed_after_it() -> None:
    # Found by the crash test's churn clients (the kernel ACKs up to its entry's expiry;
    # the daemon absorbs the renewal a moment later, past the lease's end, before its
    # expiry is processed): refused then, so the client's ACK was never recorded and the
    # address went to the next client.
    server = Server(make_config(), [], NOW)
    address = bound(server, 1)
    lease = server.lease_at(address)
    assert lease is not None
    end = lease.expires
    renewed = server.kernel_renewal(mac(1), address, end - 0.001 + 3600, end + 0.5)
    assert renewed.drop is None and renewed.lease_writes[0].expires > end + 3000
    other = server.handle(request(D, 2, requested=address), INGRESS, end + 1)
    assert only_reply(other).yiaddr != address
    server.table.check()
