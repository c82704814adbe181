"""The decoded DHCP message: BOOTP fixed fields plus options (RFC 2131 section 2)."""

from dataclasses import dataclass, field

from brushtaild.dhcp.constants import BROADCAST_FLAG, MessageType, OptionCode

_MESSAGE_TYPE_CODE = int(OptionCode.MESSAGE_TYPE)
_MESSAGE_TYPES = {bytes((t,)): t for t in MessageType}


@dataclass(slots=True)
class Message:
    """One BOOTP/DHCP message.

    Addresses are host-order integers (cheap to compare and to do pool arithmetic on).
    `options` holds each option once, in wire order, with RFC 3396 split options already
    concatenated and option overload (52) already resolved; pad, end and 52 itself are
    never present. `sname` and `file` are the raw fields as received, or as to be sent when
    they are not used for overloaded options.
    """

    op: int
    xid: int
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: int = 0
    yiaddr: int = 0
    siaddr: int = 0
    giaddr: int = 0
    chaddr: bytes = bytes(16)
    sname: bytes = bytes(64)
    file: bytes = bytes(128)
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> MessageType | None:
        # A dict lookup by raw bytes: calling MessageType(n) costs more than the rest of
        # this property, and it runs several times per packet.
        return _MESSAGE_TYPES.get(self.options.get(_MESSAGE_TYPE_CODE, b""))

    @property
    def hwaddr(self) -> bytes:
        """The client hardware address, chaddr cut to hlen."""
        return self.chaddr[: self.hlen]

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)
