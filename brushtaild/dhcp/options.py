"""Typed encoders and decoders for option values, sub-options (option 82, RFC 3046; option
43, RFC 2132 8.4), and the encodings of domain search (119, RFC 3397) and classless static
routes (121, RFC 3442).

Decoders raise `MalformedPacket(BAD_OPTION)` because their input comes off the wire; encoders
raise `ValueError`/`OverflowError` because their input comes from our own code and config.
"""

import socket
from collections.abc import Iterable

from brushtaild.dhcp.reasons import DropReason, MalformedPacket

_MAX_SUB_OPTION_LEN = 255
_MAX_LABEL_LEN = 63  # RFC 1035 2.3.4
_POINTER = 0xC000  # RFC 1035 4.1.4: two bytes, the top two bits set, then the offset
_MAX_POINTER = 0x3FFF


def ip(value: int) -> bytes:
    return value.to_bytes(4, "big")


def ips(values: Iterable[int]) -> bytes:
    return b"".join(value.to_bytes(4, "big") for value in values)


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _fixed(raw: bytes, size: int, what: str) -> int:
    if len(raw) != size:
        raise MalformedPacket(DropReason.BAD_OPTION, f"{what} of {len(raw)} bytes")
    return int.from_bytes(raw, "big")


def decode_ip(raw: bytes) -> int:
    return _fixed(raw, 4, "address")


def decode_u32(raw: bytes) -> int:
    return _fixed(raw, 4, "32-bit value")


def decode_u16(raw: bytes) -> int:
    return _fixed(raw, 2, "16-bit value")


def decode_ip_list(raw: bytes) -> list[int]:
    """An address list option: RFC 2132 gives every one a minimum of one address."""
    if not raw or len(raw) % 4:
        raise MalformedPacket(DropReason.BAD_OPTION, f"address list of {len(raw)} bytes")
    return [int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw), 4)]


def parse_relay_agent_info(raw: bytes) -> list[tuple[int, bytes]]:
    """Option 82 as (sub-option code, value) in wire order; it has no pad or end."""
    subs: list[tuple[int, bytes]] = []
    pos = 0
    end = len(raw)
    while pos < end:
        if pos + 1 >= end:
            raise MalformedPacket(DropReason.BAD_OPTION, f"sub-option {raw[pos]} has no length")
        value_end = pos + 2 + raw[pos + 1]
        if value_end > end:
            raise MalformedPacket(
                DropReason.BAD_OPTION,
                f"sub-option {raw[pos]} length {raw[pos + 1]} runs past option 82",
            )
        subs.append((raw[pos], raw[pos + 2 : value_end]))
        pos = value_end
    return subs


def build_sub_options(subs: Iterable[tuple[int, bytes]]) -> bytes:
    """Code, length, value for each: option 82's sub-options and option 43's encapsulated
    vendor options are both written this way, with no pad or end."""
    out = bytearray()
    for code, value in subs:
        if len(value) > _MAX_SUB_OPTION_LEN:
            raise ValueError(f"sub-option {code} value of {len(value)} bytes")
        out.append(code)
        out.append(len(value))
        out += value
    return bytes(out)


build_relay_agent_info = build_sub_options


def dns_name(name: str) -> list[bytes]:
    """A domain name's labels, each with its length byte (RFC 1035 3.1), root excluded."""
    labels = name.rstrip(".").split(".")
    out = []
    for label in labels:
        raw = label.encode("ascii")
        if not 0 < len(raw) <= _MAX_LABEL_LEN:
            raise ValueError(f"label {label!r} of {name!r} is not 1-{_MAX_LABEL_LEN} bytes")
        out.append(bytes((len(raw),)) + raw)
    return out


def domain_search(names: Iterable[str]) -> bytes:
    """Option 119's value (RFC 3397): the names one after another in RFC 1035 wire form,
    each suffix already written replaced by a pointer to it. Offsets count from the start
    of the (concatenated) option value, as RFC 3397 section 2 says."""
    out = bytearray()
    written: dict[tuple[bytes, ...], int] = {}  # suffix (labels, lower case) -> offset
    for name in names:
        labels = dns_name(name)
        for i in range(len(labels)):
            suffix = tuple(label.lower() for label in labels[i:])
            offset = written.get(suffix)
            if offset is not None:
                out += (_POINTER | offset).to_bytes(2, "big")
                break
            if len(out) <= _MAX_POINTER:
                written[suffix] = len(out)
            out += labels[i]
        else:
            out.append(0)
    return bytes(out)


def classless_routes(routes: Iterable[tuple[int, int, int]]) -> bytes:
    """Option 121's value (RFC 3442) from (destination, prefix length, router): the length,
    the destination's significant octets only, then the router."""
    out = bytearray()
    for destination, length, router in routes:
        if not 0 <= length <= 32:
            raise ValueError(f"prefix length {length}")
        significant = (length + 7) // 8
        out.append(length)
        out += destination.to_bytes(4, "big")[:significant]
        out += router.to_bytes(4, "big")
    return bytes(out)


def decode_classless_routes(raw: bytes) -> list[tuple[int, int, int]]:
    """Option 121 as (destination, prefix length, router): `classless_routes` inverted."""
    routes = []
    pos = 0
    while pos < len(raw):
        length = raw[pos]
        significant = (length + 7) // 8
        end = pos + 1 + significant + 4
        if length > 32 or end > len(raw):
            raise MalformedPacket(DropReason.BAD_OPTION, f"route of /{length} at byte {pos}")
        destination = int.from_bytes(raw[pos + 1 : pos + 1 + significant].ljust(4, b"\0"), "big")
        routes.append((destination, length, int.from_bytes(raw[end - 4 : end], "big")))
        pos = end
    return routes


def format_ip(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 0xFF}.{(n >> 8) & 0xFF}.{n & 0xFF}"


def parse_ip(s: str) -> int:
    """A dotted quad to a host-order int; strict, unlike inet_aton's "10.1" shorthands."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, s), "big")
    except OSError as exc:
        raise ValueError(f"not an IPv4 address: {s!r}") from exc


def format_mac(b: bytes) -> str:
    return b.hex(":")
