"""Sans-IO DHCPv4 wire codec: bytes to `Message` and back (RFC 2131, RFC 2132, RFC 3396).

`parse` runs once per packet that reaches the slow path, so it does the least work that
still rejects anything unsafe: one struct unpack for the fixed header and one tight loop per
option field that only slices bytes.
"""

import struct
from typing import Final

from brushtaild.dhcp.constants import (
    ETHERNET_HLEN,
    HTYPE_ETHERNET,
    IP_UDP_HEADERS,
    MAGIC_COOKIE,
    MIN_BOOTP_LEN,
    MIN_IP_DATAGRAM,
    OPTIONS_OFFSET,
    MessageType,
    Op,
    OptionCode,
    Overload,
)
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.reasons import DropReason, MalformedPacket

# op htype hlen hops | xid | secs flags | ciaddr yiaddr siaddr giaddr | chaddr sname file | cookie
_HEADER: Final = struct.Struct("!BBBBIHHIIII16s64s128s4s")
_SNAME_OFFSET: Final = 44
_FILE_OFFSET: Final = 108
_SNAME_LEN: Final = 64
_FILE_LEN: Final = 128

# Plain ints: IntEnum members are measurably slower to compare in the per-option loop.
_PAD: Final = int(OptionCode.PAD)
_END: Final = int(OptionCode.END)
_OVERLOAD: Final = int(OptionCode.OVERLOAD)
_MESSAGE_TYPE: Final = int(OptionCode.MESSAGE_TYPE)
_MAX_OPTION_LEN: Final = 255
_MIN_MESSAGE_TYPE: Final = int(min(MessageType))
_MAX_MESSAGE_TYPE: Final = int(max(MessageType))
_OPS: Final = frozenset(int(op) for op in Op)
_OVERLOAD_VALUES: Final = frozenset(int(v) for v in Overload)

# RFC 2131 section 2: every client accepts a 576-octet datagram, so no limit goes below this.
MIN_MAX_SIZE: Final = MIN_IP_DATAGRAM - IP_UDP_HEADERS
_END_BYTE: Final = bytes((_END,))
_FORBIDDEN_CODES: Final = frozenset((_PAD, _OVERLOAD, _END))
_OVERLOAD_OPTION_LEN: Final = 3


class MessageTooLarge(Exception):
    """The options do not fit the client's limit even with sname and file overloaded."""

    def __init__(self, needed: int, limit: int) -> None:
        super().__init__(f"options need {needed} bytes, at most {limit} fit")
        self.needed = needed
        self.limit = limit


def _scan(data: bytes, pos: int, end: int, field: str, opts: dict[int, bytes]) -> None:
    """Add the options in data[pos:end] to opts, concatenating repeats (RFC 3396).

    A field that runs out without an end option is accepted: many clients pad the options
    field to its end instead of terminating it, and the length checks alone keep us safe.
    """
    while pos < end:
        code = data[pos]
        if code == _PAD:
            pos += 1
            continue
        if code == _END:
            return
        if pos + 1 >= end:
            raise MalformedPacket(
                DropReason.OPTION_OVERRUN, f"option {code} has no length in {field}"
            )
        value_end = pos + 2 + data[pos + 1]
        if value_end > end:
            raise MalformedPacket(
                DropReason.OPTION_OVERRUN,
                f"option {code} length {data[pos + 1]} runs past the end of {field}",
            )
        value = data[pos + 2 : value_end]
        previous = opts.get(code)
        opts[code] = value if previous is None else previous + value
        pos = value_end


def parse(data: bytes) -> Message:
    """Decode and validate one DHCP message from or to an Ethernet client; raise only
    `MalformedPacket`."""
    if len(data) < OPTIONS_OFFSET:
        raise MalformedPacket(DropReason.TRUNCATED, f"{len(data)} bytes")
    (
        op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        giaddr,
        chaddr,
        sname,
        file,
        cookie,
    ) = _HEADER.unpack_from(data)
    if op not in _OPS:
        raise MalformedPacket(DropReason.BAD_OP, f"op {op}")
    # Every served link is Ethernet, and the XDP program refuses any other hardware address
    # as well (docs/DESIGN.md, "Well-formed requests").
    if htype != HTYPE_ETHERNET:
        raise MalformedPacket(DropReason.BAD_HTYPE, f"htype {htype}")
    if hlen != ETHERNET_HLEN:
        raise MalformedPacket(DropReason.BAD_HLEN, f"hlen {hlen}")
    if cookie != MAGIC_COOKIE:
        raise MalformedPacket(DropReason.BAD_COOKIE, cookie.hex())

    opts: dict[int, bytes] = {}
    _scan(data, OPTIONS_OFFSET, len(data), "options", opts)
    overload = opts.pop(_OVERLOAD, None)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in _OVERLOAD_VALUES:
            raise MalformedPacket(DropReason.BAD_OPTION, f"overload {overload.hex()}")
        # RFC 2131 section 4.1: the options field first, then file, then sname.
        if overload[0] & Overload.FILE:
            _scan(data, _FILE_OFFSET, _FILE_OFFSET + _FILE_LEN, "file", opts)
        if overload[0] & Overload.SNAME:
            _scan(data, _SNAME_OFFSET, _SNAME_OFFSET + _SNAME_LEN, "sname", opts)
        if _OVERLOAD in opts:
            raise MalformedPacket(DropReason.BAD_OPTION, "overload outside the options field")

    message_type = opts.get(_MESSAGE_TYPE)
    if message_type is None:
        # A BOOTP message: RFC 2131 section 4 leaves BOOTP clients to BOOTP servers.
        raise MalformedPacket(DropReason.NO_MESSAGE_TYPE)
    if len(message_type) != 1 or not _MIN_MESSAGE_TYPE <= message_type[0] <= _MAX_MESSAGE_TYPE:
        raise MalformedPacket(DropReason.UNKNOWN_MESSAGE_TYPE, message_type.hex())

    return Message(
        op,
        xid,
        htype,
        hlen,
        hops,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        giaddr,
        chaddr,
        sname,
        file,
        opts,
    )


def _option_items(options: dict[int, bytes]) -> list[bytes]:
    """Each option as code, length, value; 53 first; long values split (RFC 3396)."""
    items: list[bytes] = []
    message_type = options.get(_MESSAGE_TYPE)
    if message_type is not None:
        items.append(bytes((_MESSAGE_TYPE, len(message_type))) + message_type)
    for code, value in options.items():
        if code == _MESSAGE_TYPE:
            continue
        if code in _FORBIDDEN_CODES:
            raise ValueError(f"option {code} is written by the codec, not the caller")
        if len(value) <= _MAX_OPTION_LEN:
            items.append(bytes((code, len(value))) + value)
            continue
        for start in range(0, len(value), _MAX_OPTION_LEN):
            chunk = value[start : start + _MAX_OPTION_LEN]
            items.append(bytes((code, len(chunk))) + chunk)
    return items


def _fill_fields(items: list[bytes], capacities: list[int]) -> list[list[bytes]]:
    """Place each item in the first field, in wire order, with room for it (first fit).

    Options of different codes may change order, which has no meaning, to pack the fields
    tighter. Pieces of one split option keep theirs, as RFC 3396 concatenation needs: every
    piece but the last is 257 bytes, which only the options field can hold.
    """
    fields: list[list[bytes]] = [[] for _ in capacities]
    rooms = list(capacities)
    for item in items:
        index = next((i for i, room in enumerate(rooms) if len(item) <= room), None)
        if index is None:
            raise MessageTooLarge(sum(map(len, items)), sum(capacities))
        fields[index].append(item)
        rooms[index] -= len(item)
    return fields


def _terminated(items: list[bytes], size: int) -> bytes:
    """An overloaded sname or file field: its options, end, zero padding."""
    body = b"".join(items) + _END_BYTE
    return body + bytes(size - len(body))


def encode_options(options: dict[int, bytes]) -> bytes:
    """The options as they appear in the options field (53 first, long ones split), with
    no end option: what `encode` writes when they fit without overload."""
    return b"".join(_option_items(options))


def encode(
    msg: Message,
    max_size: int = MIN_MAX_SIZE,
    options_wire: bytes | None = None,
    last: tuple[int, ...] = (),
) -> bytes:
    """The wire form of msg, at most max_size bytes (never taken below 548).

    `options_wire`, if given, must be `encode_options(msg.options)`, computed earlier: a
    server reusing the same options for many replies then only packs the fixed fields.
    The options named in `last` (echoed ones: 61, then 82) must come last in msg.options;
    they stay at the end of the options field even when others overflow into `file` and
    `sname`, since a relay looks for its option 82 there (RFC 3046 2.2).
    Raises `MessageTooLarge` when the options do not fit even with sname and file carrying
    options, so the caller can drop optional ones and retry.
    """
    # struct would silently cut a too-long boot file name from the configuration.
    if len(msg.sname) > _SNAME_LEN or len(msg.file) > _FILE_LEN:
        raise ValueError(
            f"sname/file are {len(msg.sname)}/{len(msg.file)} bytes, "
            f"the fields hold {_SNAME_LEN}/{_FILE_LEN}"
        )
    limit = max(max_size, MIN_MAX_SIZE)
    options_room = limit - OPTIONS_OFFSET - len(_END_BYTE)
    sname = msg.sname
    file = msg.file

    if options_wire is None:
        options_wire = encode_options(msg.options)
    if len(options_wire) <= options_room:
        body = options_wire
    else:
        head = {code: value for code, value in msg.options.items() if code not in last}
        tail = b"".join(
            _option_items({code: msg.options[code] for code in last if code in msg.options})
        )
        if len(tail) > options_room - _OVERLOAD_OPTION_LEN:
            raise MessageTooLarge(len(options_wire), options_room)
        options_items, file_items, sname_items = _fill_fields(
            _option_items(head),
            [
                options_room - _OVERLOAD_OPTION_LEN - len(tail),
                _FILE_LEN - len(_END_BYTE),
                _SNAME_LEN - len(_END_BYTE),
            ],
        )
        overload = 0
        if file_items:
            overload |= Overload.FILE
            file = _terminated(file_items, _FILE_LEN)
        if sname_items:
            overload |= Overload.SNAME
            sname = _terminated(sname_items, _SNAME_LEN)
        body = bytes((_OVERLOAD, 1, overload)) + b"".join(options_items) + tail

    header = _HEADER.pack(
        msg.op,
        msg.htype,
        msg.hlen,
        msg.hops,
        msg.xid,
        msg.secs,
        msg.flags,
        msg.ciaddr,
        msg.yiaddr,
        msg.siaddr,
        msg.giaddr,
        msg.chaddr,
        sname,
        file,
        MAGIC_COOKIE,
    )
    wire = header + body + _END_BYTE
    if len(wire) < MIN_BOOTP_LEN:
        wire += bytes(MIN_BOOTP_LEN - len(wire))
    return wire
