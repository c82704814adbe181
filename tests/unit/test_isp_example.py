"""docs/examples/isp.yaml stays valid, and its classes keep the order docs/CONFIG.md ("A
complete ISP example") explains: the subscribers whose class the MAC and VLANs decide are
the kernel's, the set-top boxes (option 60) the slow path's. Served end to end by
tests/e2e/test_isp_example.py."""

from pathlib import Path
from typing import Any

import pytest

from brushtaild.cli import main
from brushtaild.config.load import load_config
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType, OptionCode, RelayAgentSubOption
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.options import decode_u32
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.classes import UNDECIDED, class_of_lease
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.server import Server
from tests.engine_helpers import INGRESS, SERVER, only_reply, request

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "isp.yaml"
NOW = 1_000_000.0
D, R = MessageType.DISCOVER, MessageType.REQUEST


def test_check_config_accepts_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    # native 14 * 256 - 1, residential 126 * 256, walled garden 245, business and
    # business-2 241 each, and the reserved address outside every range (198.19.129.5).
    assert capsys.readouterr() == (f"{EXAMPLE}: OK (5 pools, 36567 addresses)\n", "")


@pytest.mark.parametrize(
    ("mac", "vlans", "expected"),
    [
        ("02:00:00:00:01:01", (100,), "residential"),
        ("02:00:00:00:01:01", (300, 17), "residential"),
        ("02:0b:ad:00:00:01", (100,), "quarantine"),
        ("02:1a:2b:00:00:01", (), UNDECIDED),
    ],
    ids=["N:1", "QinQ", "quarantine", "set-top box"],
)
def test_the_lease_alone_tells_the_class_of_the_kernel_s_subscribers(
    mac: str, vlans: tuple[int, ...], expected: object
) -> None:
    classes = load_config(EXAMPLE).classes
    hwaddr = bytes.fromhex(mac.replace(":", ""))
    lease = Lease(1, b"\x01" + hwaddr, hwaddr, "any", LeaseState.BOUND, NOW, NOW, vlans=vlans)
    told = class_of_lease(classes, lease)
    if told is UNDECIDED:
        assert expected is UNDECIDED
    else:
        assert told.cls is not None and told.cls.name == expected and not told.by_relay


RELAY = opt.parse_ip("198.19.128.1")


def relayed(mtype: MessageType, n: int, **kw: Any) -> Message:
    """A request of client `n` as ISC dhcrelay -a relays it from port biz-0017."""
    info = opt.build_relay_agent_info([(RelayAgentSubOption.CIRCUIT_ID, b"biz-0017")])
    return request(mtype, n, giaddr=RELAY, extra={OptionCode.RELAY_AGENT_INFO: info}, **kw)


def bind_relayed(server: Server, n: int) -> Message:
    """DISCOVER and REQUEST of client `n` through the relay: the ACK."""
    offer = only_reply(server.handle(relayed(D, n), INGRESS, NOW))
    chosen = relayed(R, n, requested=offer.yiaddr, server_id=SERVER)
    ack = only_reply(server.handle(chosen, INGRESS, NOW))
    assert ack.message_type is MessageType.ACK
    return ack


def test_a_business_lease_keeps_its_class_at_its_unicast_renewal() -> None:
    """Bound through the relay by circuit-id, renewed by unicast without option 82: the
    slow path gives it its class's lease time and options, from the stashed option 82."""
    server = Server(load_config(EXAMPLE), [], NOW)
    bound = bind_relayed(server, 7)
    assert decode_u32(bound.options[OptionCode.LEASE_TIME]) == 28800
    renewing = request(R, 7, ciaddr=bound.yiaddr)
    renewed = only_reply(server.handle(renewing, INGRESS, NOW + 60))
    assert renewed.message_type is MessageType.ACK
    assert decode_u32(renewed.options[OptionCode.LEASE_TIME]) == 28800
    assert renewed.options[OptionCode.DNS_SERVERS] == bound.options[OptionCode.DNS_SERVERS]


def test_a_business_port_gets_at_most_two_leases() -> None:
    """`limits.max_leases_per_circuit: 2`: a third client behind one access port is not
    offered an address."""
    server = Server(load_config(EXAMPLE), [], NOW)
    for n in (1, 2):
        bind_relayed(server, n)
    third = server.handle(relayed(D, 3), INGRESS, NOW)
    assert (third.drop, third.replies) == (DropReason.LEASE_LIMIT, [])
