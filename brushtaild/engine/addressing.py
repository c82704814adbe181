"""Where a reply goes: RFC 2131 section 4.1, as a pure function."""

from brushtaild.dhcp.constants import CLIENT_PORT, SERVER_PORT, MessageType
from brushtaild.dhcp.message import Message
from brushtaild.engine.decisions import Destination, DestKind

BROADCAST_IP = 0xFFFFFFFF
BROADCAST_MAC = b"\xff" * 6
_BROADCAST = Destination(DestKind.BROADCAST, BROADCAST_IP, CLIENT_PORT, BROADCAST_MAC)


def reply_destination(request: Message, reply_type: MessageType, yiaddr: int) -> Destination:
    """RFC 2131 section 4.1, in its order: a relay gets everything; a NAK is broadcast;
    a client with an address (ciaddr) gets unicast; the broadcast flag asks for broadcast;
    otherwise unicast to yiaddr at chaddr, since the client cannot answer ARP yet."""
    if request.giaddr:
        return Destination(DestKind.RELAY, request.giaddr, SERVER_PORT)
    if reply_type is MessageType.NAK:
        return _BROADCAST
    if request.ciaddr:
        return Destination(DestKind.UNICAST, request.ciaddr, CLIENT_PORT)
    if request.broadcast or not yiaddr or request.hlen != 6:
        # Without a 6-byte Ethernet chaddr there is no link address to unicast to.
        return _BROADCAST
    return Destination(DestKind.LINK_UNICAST, yiaddr, CLIENT_PORT, request.chaddr[:6])
