"""Differential cases for shared networks of different subnets and host reservations: the
kernel program answers exactly as the slow path does, or passes the request to it.

A lease in the second subnet of a shared network carries that subnet in its kernel entry.
A renewal whose network address (giaddr) lies in the first subnet does not match it, so the
program passes it (result `network`) and the slow path, which knows the shared network,
answers; a unicast renewal from the lease's own address is answered in the kernel."""

from dataclasses import replace

from brushtaild.config.model import Config, Reservation, VlanRange, option_set
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.engine.decisions import NakReason
from brushtaild.xdp import maps
from brushtaild.xdp.loader import Program
from tests.bpf.harness import (
    XDP_PASS,
    XDP_TX,
    Fastpath,
    RenewalLog,
    assert_same_reply,
    client_message,
)
from tests.engine_helpers import make_config, make_pool

ip = opt.parse_ip
MAC = bytes.fromhex("02b700000401")
FIRST_MAC = bytes.fromhex("02b700000402")
HOST_MAC = bytes.fromhex("02b700000403")
GIADDR_A = ip("198.19.0.1")  # the relay, on the shared network's first subnet
LINE_A = make_pool("line-a", "198.19.0.0/24", "198.19.0.10", "198.19.0.10", shared_network="l")
LINE_B = make_pool("line-b", "198.19.1.0/24", "198.19.1.10", "198.19.1.19", shared_network="l")
FIXED = ip("198.18.0.50")  # in the server's own subnet, outside its ranges
PRL = bytes([1, 3, 6, 15, 28])


def shared_config(*reservations: Reservation) -> Config:
    return make_config(make_pool(), LINE_A, LINE_B, reservations=reservations)


def renewal(fastpath: Fastpath, mac: bytes, address: int, giaddr: int = 0) -> bytes:
    """A RENEWING REQUEST: relayed from `giaddr`, or unicast from the lease's address."""
    msg = client_message(
        MessageType.REQUEST,
        mac,
        ciaddr=address,
        giaddr=giaddr,
        extra={OptionCode.PARAMETER_REQUEST_LIST: PRL},
    )
    return fastpath.frame(
        encode(msg, 1500), mac=mac, relay=bool(giaddr), unicast_from=0 if giaddr else address
    )


def assert_answered_alike(fastpath: Fastpath, frame: bytes) -> None:
    run = fastpath.run(frame)
    assert run.retval == XDP_TX
    assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False))


def second_subnet_lease(fastpath: Fastpath) -> int:
    fastpath.know_relay(GIADDR_A)
    first = fastpath.bind(FIRST_MAC, giaddr=GIADDR_A)
    assert first.address == ip("198.19.0.10")  # the first pool, now exhausted
    lease = fastpath.bind(MAC, giaddr=GIADDR_A, options={OptionCode.PARAMETER_REQUEST_LIST: PRL})
    assert lease.address == ip("198.19.1.10") and lease.pool == "line-b"
    assert fastpath.entry(maps.Key(MAC)) is not None
    return lease.address


def test_relayed_renewal_from_the_first_subnet_is_left_to_the_slow_path(
    program: Program, renewal_log: RenewalLog
) -> None:
    fastpath = Fastpath(program, renewal_log, shared_config())
    address = second_subnet_lease(fastpath)
    frame = renewal(fastpath, MAC, address, giaddr=GIADDR_A)
    assert fastpath.results_of(frame) == {maps.Result.NETWORK: 1}
    assert fastpath.run(frame).retval == XDP_PASS
    decision = fastpath.slow_path(frame, apply=False)
    assert decision is not None and len(decision.replies) == 1
    ack = decision.replies[0].message
    assert ack.message_type is MessageType.ACK and ack.yiaddr == address
    # The mask and broadcast of the lease's own subnet, not the relay's.
    assert ack.options[OptionCode.BROADCAST_ADDRESS] == opt.ip(ip("198.19.1.255"))


def test_unicast_renewal_in_the_second_subnet_is_answered_as_the_slow_path(
    program: Program, renewal_log: RenewalLog
) -> None:
    fastpath = Fastpath(program, renewal_log, shared_config())
    address = second_subnet_lease(fastpath)
    assert_answered_alike(fastpath, renewal(fastpath, MAC, address))


def test_a_reserved_host_is_answered_as_the_slow_path(
    program: Program, renewal_log: RenewalLog
) -> None:
    config = shared_config(Reservation(FIXED, mac=HOST_MAC))
    fastpath = Fastpath(program, renewal_log, config)
    lease = fastpath.bind(HOST_MAC, options={OptionCode.PARAMETER_REQUEST_LIST: PRL})
    assert lease.address == FIXED
    assert_answered_alike(fastpath, renewal(fastpath, HOST_MAC, FIXED))


def test_a_reserved_host_with_options_of_its_own_is_answered_as_the_slow_path(
    program: Program, renewal_log: RenewalLog
) -> None:
    """Its entry points at templates of its own: the pool's options overridden by the
    host's; a neighbour in the same pool keeps the pool's."""
    host_dns = option_set({OptionCode.DNS_SERVERS: opt.ip(ip("198.18.0.53"))})
    config = shared_config(Reservation(FIXED, mac=HOST_MAC, options=host_dns))
    fastpath = Fastpath(program, renewal_log, config)
    prl = {OptionCode.PARAMETER_REQUEST_LIST: PRL}
    host = fastpath.bind(HOST_MAC, options=prl)
    neighbour = fastpath.bind(MAC, options=prl)
    answers = {}
    for mac, lease in ((HOST_MAC, host), (MAC, neighbour)):
        frame = renewal(fastpath, mac, lease.address)
        run = fastpath.run(frame)
        assert run.retval == XDP_TX
        reply = assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False))
        answers[mac] = reply.message.options[OptionCode.DNS_SERVERS]
    assert answers == {HOST_MAC: opt.ip(ip("198.18.0.53")), MAC: opt.ip(ip("198.18.0.1"))}


def test_a_reload_reserving_a_held_address_withdraws_its_entry(
    program: Program, renewal_log: RenewalLog
) -> None:
    """The dynamic holder's renewal goes to the slow path, which NAKs it: the kernel
    answers no one for a reserved address but its host."""
    fastpath = Fastpath(program, renewal_log, shared_config())
    lease = fastpath.bind(MAC, options={OptionCode.PARAMETER_REQUEST_LIST: PRL})
    assert fastpath.entry(maps.Key(MAC)) is not None
    reserved = shared_config(Reservation(lease.address, mac=HOST_MAC))
    fastpath.config = reserved
    fastpath.server = fastpath.server.reconfigured(reserved, fastpath.now)
    fastpath.sync.server = fastpath.server
    fastpath.sync.reconcile(fastpath.now)
    assert fastpath.entry(maps.Key(MAC)) is None
    frame = renewal(fastpath, MAC, lease.address)
    assert fastpath.run(frame).retval == XDP_PASS
    decision = fastpath.slow_path(frame, apply=False)
    assert decision is not None and decision.nak is NakReason.RESERVED


def test_a_shared_network_lease_entry_carries_its_own_subnet(
    program: Program, renewal_log: RenewalLog
) -> None:
    fastpath = Fastpath(program, renewal_log, shared_config())
    second_subnet_lease(fastpath)
    entry = fastpath.entry(maps.Key(MAC))
    assert entry is not None
    assert maps.host32(entry.subnet) == ip("198.19.1.0")
    assert maps.host32(entry.netmask) == ip("255.255.255.0")


# Subscriber VLANs 100-199 with a pool of their own: its clients are their identifier on
# their VLANs in the engine, and the kernel compares the identifier they send.
VLAN_POOL = replace(
    make_pool("vlans", "198.19.2.0/24", "198.19.2.10", "198.19.2.19"),
    vlans=(VlanRange(100, 199),),
)
VLAN_FIXED = ip("198.19.2.50")
OPTION_61 = b"\x00cpe-4711"


def test_a_client_id_reservation_in_a_vlan_pool_is_answered_as_the_slow_path(
    program: Program, renewal_log: RenewalLog
) -> None:
    """The host gets its address (the engine matches the option 61 it sends, not its
    identity on its VLAN), its entry holds that option 61, and the kernel answers its
    renewal as the slow path does. The same option 61 on another VLAN is another
    subscriber: no entry, and the slow path offers it a dynamic address."""
    reservation = Reservation(VLAN_FIXED, client_id=OPTION_61)
    config = make_config(make_pool(), VLAN_POOL, reservations=(reservation,))
    fastpath = Fastpath(program, renewal_log, config)
    options = {OptionCode.CLIENT_ID: OPTION_61, OptionCode.PARAMETER_REQUEST_LIST: PRL}
    lease = fastpath.bind(HOST_MAC, options=options, vlans=(100,))
    assert lease.address == VLAN_FIXED
    entry = fastpath.entry(maps.Key(HOST_MAC, 100))
    assert entry is not None and bytes(entry.client_id[: entry.id_len]) == OPTION_61
    msg = client_message(MessageType.REQUEST, HOST_MAC, ciaddr=VLAN_FIXED, extra=options)
    frame = fastpath.frame(encode(msg, 1500), mac=HOST_MAC, unicast_from=VLAN_FIXED, vlans=(100,))
    assert_answered_alike(fastpath, frame)
    discover = client_message(MessageType.DISCOVER, HOST_MAC, extra=options)
    elsewhere = fastpath.frame(encode(discover, 1500), mac=HOST_MAC, vlans=(101,))
    assert fastpath.run(elsewhere).retval == XDP_PASS
    decision = fastpath.slow_path(elsewhere, apply=False)
    assert decision is not None and len(decision.replies) == 1
    assert decision.replies[0].message.yiaddr in range(ip("198.19.2.10"), ip("198.19.2.20"))
