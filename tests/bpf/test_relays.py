"""Review finding 15 in the kernel: a relay is answered at the next hop routing gives for its
giaddr (never at the frame's L2 source, which any host on the link can be), only once the
daemon has given the program that next hop, and its link selection counts only if the
config trusts it, as in the slow path."""

from ipaddress import IPv4Network

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType, OptionCode, RelayAgentSubOption
from brushtaild.xdp import maps
from brushtaild.xdp.loader import Program
from tests.bpf.frames import decode_reply
from tests.bpf.harness import (
    RELAY_MAC,
    XDP_PASS,
    XDP_TX,
    Fastpath,
    RenewalLog,
    assert_same_reply,
    client_message,
    default_config,
)
from tests.engine_helpers import make_config, make_pool

ip = opt.parse_ip
MAC = bytes.fromhex("02b700000501")
FORGER = bytes.fromhex("02b7000005ee")  # a host on the link that writes a relay's giaddr
RELAY = ip("198.18.2.2")  # trusted in default_config()
UNTRUSTED = ip("198.18.7.7")
REMOTE_LINK = ip("198.19.0.0")


def renewal(fastpath: Fastpath, address: int, giaddr: int, extra: dict[int, bytes]) -> bytes:
    """A REQUEST in RENEWING state as a relay forwards it."""
    msg = client_message(MessageType.REQUEST, MAC, ciaddr=address, giaddr=giaddr, extra=extra)
    return fastpath.frame(encode(msg), mac=MAC, relay=True)


def test_a_forged_relay_request_is_answered_at_the_relays_next_hop(fastpath: Fastpath) -> None:
    """A host on the link that copies a relay's giaddr and a victim's chaddr gets nothing:
    the ACK goes to the relay, where the slow path's own reply would go."""
    lease = fastpath.bind(MAC, giaddr=RELAY)
    frame = bytearray(renewal(fastpath, lease.address, RELAY, {}))
    frame[6:12] = FORGER
    run = fastpath.run(bytes(frame))
    assert run.retval == XDP_TX
    reply = decode_reply(run.data)
    assert reply.dst_mac == RELAY_MAC != FORGER
    assert (reply.dst_ip, reply.dport) == (opt.format_ip(RELAY), 67)


def test_a_relay_is_answered_only_once_its_next_hop_is_known(fastpath: Fastpath) -> None:
    lease = fastpath.bind(MAC, giaddr=RELAY)
    frame = renewal(fastpath, lease.address, RELAY, {})
    fastpath.program.table("relays").clear()
    assert fastpath.results_of(frame) == {maps.Result.RELAY: 1}
    # The slow path answers it, and the daemon then gives the program the next hop.
    answered = fastpath.slow_path(frame)
    assert answered is not None and answered.replies
    assert fastpath.run(frame).retval == XDP_TX


def test_a_relay_on_other_vlans_is_another_relay(fastpath: Fastpath) -> None:
    lease = fastpath.bind(MAC, giaddr=RELAY)
    payload = encode(client_message(MessageType.REQUEST, MAC, ciaddr=lease.address, giaddr=RELAY))
    tagged = fastpath.frame(payload, mac=MAC, relay=True, vlans=(100,))
    assert fastpath.results_of(tagged) == {maps.Result.RELAY: 1}


def link_selection(address: int) -> dict[int, bytes]:
    return {
        OptionCode.RELAY_AGENT_INFO: opt.build_relay_agent_info(
            [(RelayAgentSubOption.LINK_SELECTION, opt.ip(address))]
        )
    }


def test_link_selection_counts_only_from_a_trusted_relay(
    program: Program, renewal_log: RenewalLog
) -> None:
    """Both paths ignore an untrusted relay's link selection: the lease comes from giaddr's
    subnet, and the kernel renews it there, with the slow path's very bytes."""
    remote = make_pool(name="remote", subnet="198.19.0.0/16", first="198.19.1.0", last="198.19.1.9")
    for trusted, pool in (((), "residential"), ((IPv4Network(UNTRUSTED),), "remote")):
        config = make_config(make_pool(), remote, trusted_relays=trusted)
        fastpath = Fastpath(program, renewal_log, config)
        extra = link_selection(REMOTE_LINK)
        lease = fastpath.bind(MAC, options=extra, giaddr=UNTRUSTED)
        assert lease.pool == pool
        frame = renewal(fastpath, lease.address, UNTRUSTED, extra)
        run = fastpath.run(frame)
        assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False))


def test_reload_rewrites_the_trust_of_known_relays(fastpath: Fastpath) -> None:
    extra = link_selection(REMOTE_LINK)
    lease = fastpath.bind(MAC, options=extra, giaddr=RELAY)
    assert lease.pool == "other"  # chosen by the trusted relay's link selection
    frame = renewal(fastpath, lease.address, RELAY, extra)
    assert fastpath.run(frame).retval == XDP_TX
    # Trust withdrawn: the kernel now selects by giaddr, whose subnet is not the lease's.
    fastpath.relays.reconfigured(
        make_config(*default_config().pools)  # no trusted relays
    )
    fastpath.refresh_relays()
    assert fastpath.run(frame).retval == XDP_PASS
    assert fastpath.results_of(frame) == {maps.Result.NETWORK: 1}
