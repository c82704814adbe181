"""Typed encoders and decoders for option values, and option 82 sub-options (RFC 3046).

Decoders raise `MalformedPacket(BAD_OPTION)` because their input comes off the wire; encoders
raise `ValueError`/`OverflowError` because their input comes from our own code and config.
"""

import socket
from collections.abc import Iterable

from brushtaild.dhcp.reasons import DropReason, MalformedPacket

_MAX_SUB_OPTION_LEN = 255


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


def build_relay_agent_info(subs: Iterable[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for code, value in subs:
        if len(value) > _MAX_SUB_OPTION_LEN:
            raise ValueError(f"sub-option {code} value of {len(value)} bytes")
        out.append(code)
        out.append(len(value))
        out += value
    return bytes(out)


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
