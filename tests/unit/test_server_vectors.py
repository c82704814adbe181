"""The engine fed the packets real clients sent (tests/vectors), byte for byte."""

import pytest

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.engine.decisions import DestKind
from brushtaild.engine.server import Server
from tests.engine_helpers import INGRESS, SERVER, make_config, make_pool
from tests.vectors import CLIENTS, load_vector

# Every capture's network (its giaddr, link selection or the server's link) is in 198.18/16.
POOLS = (make_pool(),)


@pytest.mark.parametrize("client", CLIENTS)
def test_captured_discover_gets_a_fitting_offer(client: str) -> None:
    request = parse(load_vector(f"{client}_discover"))
    server = Server(make_config(*POOLS), [], 0.0)
    decision = server.handle(request, INGRESS, 0.0)
    assert decision.drop is None, decision.drop
    [reply] = decision.replies
    offer = parse(reply.payload)
    assert offer.message_type is MessageType.OFFER
    assert offer.xid == request.xid and offer.chaddr == request.chaddr
    assert offer.options[OptionCode.SERVER_ID] == opt.ip(SERVER)
    # Every option the client asked for and we have is there, in the client's order.
    prl = request.options.get(OptionCode.PARAMETER_REQUEST_LIST, b"")
    wanted = [c for c in prl if c in (OptionCode.ROUTERS, OptionCode.DNS_SERVERS)]
    assert [c for c in offer.options if c in wanted] == wanted
    limit = opt.decode_u16(request.options.get(OptionCode.MAX_MESSAGE_SIZE, opt.u16(576)))
    assert len(reply.payload) <= max(limit, 576) - 28
    if request.giaddr:
        assert reply.dest.kind is DestKind.RELAY and reply.dest.ip == request.giaddr
    else:
        assert reply.dest.kind is DestKind.LINK_UNICAST and reply.dest.mac == request.hwaddr
    relay_info = request.options.get(OptionCode.RELAY_AGENT_INFO)
    if relay_info is not None:
        assert offer.options[OptionCode.RELAY_AGENT_INFO] == relay_info


@pytest.mark.parametrize("client", CLIENTS)
def test_captured_exchange_is_acked(client: str) -> None:
    """Each capture's REQUEST selects 198.18.0.100 from server 198.18.0.1 (our address):
    with a pool of just that address, its DISCOVER is offered it and its REQUEST ACKed."""
    wanted = opt.parse_ip("198.18.0.100")
    pool = make_pool(first="198.18.0.100", last="198.18.0.100")
    server = Server(make_config(pool), [], 0.0)
    offer = server.handle(parse(load_vector(f"{client}_discover")), INGRESS, 0.0)
    assert [parse(r.payload).yiaddr for r in offer.replies] == [wanted]
    request = parse(load_vector(f"{client}_request"))
    decision = server.handle(request, INGRESS, 1.0)
    [reply] = decision.replies
    ack = parse(reply.payload)
    assert ack.message_type is MessageType.ACK and ack.yiaddr == wanted
    [lease] = decision.lease_writes
    assert lease.address == wanted and lease.hwaddr == request.hwaddr
