"""Ethernet frames around DHCP payloads, and their checked decoding, for XDP tests."""

import struct
from collections.abc import Callable
from dataclasses import dataclass

from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import Op
from brushtaild.dhcp.reasons import DropReason, MalformedPacket
from brushtaild.net import packet_io
from brushtaild.net.packet_io import parse_frame

ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
BROADCAST_MAC = b"\xff" * 6


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _ip_checksum(header: bytes) -> int:
    return 0xFFFF - _sum16(header)


def udp_checksum(src: bytes, dst: bytes, udp: bytes) -> int:
    pseudo = src + dst + struct.pack("!BBH", 0, 17, len(udp))
    return 0xFFFF - _sum16(pseudo + udp)


def client_frame(
    payload: bytes,
    *,
    src_mac: bytes,
    dst_mac: bytes = BROADCAST_MAC,
    src_ip: str = "0.0.0.0",
    dst_ip: str = "255.255.255.255",
    sport: int = 68,
    vlans: tuple[int, ...] = (),
    ip_options: bytes = b"",
    frag: int = 0,
) -> bytes:
    """The frame a client (or relay) sends: Ethernet, optional VLAN tags, IPv4, UDP."""
    src = bytes(map(int, src_ip.split(".")))
    dst = bytes(map(int, dst_ip.split(".")))
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", sport, 67, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", udp_checksum(src, dst, udp) or 0xFFFF) + udp[8:]
    ihl = 5 + len(ip_options) // 4
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + udp_len, 1, frag, 64, 17, 0, src, dst
    )
    ip += ip_options
    ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
    eth = dst_mac + src_mac
    # 802.1ad service tags outside, one 802.1Q customer tag innermost (QinQ); more than two
    # tags only make malformed frames.
    tpids = (ETH_P_8021AD,) * (len(vlans) - 1) + (ETH_P_8021Q,)
    for tpid, vid in zip(tpids, vlans, strict=False):
        eth += struct.pack("!HH", tpid, vid)
    return eth + struct.pack("!H", ETH_P_IP) + ip + udp


def as_received(frame: bytes) -> tuple[bytes, bytes]:
    """`frame` as a packet socket reads it, and the tag the kernel took off (TPID and TCI, as
    PACKET_AUXDATA gives it; empty for an untagged frame): the outer tag, if any, is gone
    from the frame, and any inner one stays."""
    if struct.unpack_from("!H", frame, 12)[0] not in (ETH_P_8021Q, ETH_P_8021AD):
        return frame, b""
    return frame[:12] + frame[16:], frame[12:16]


def run_filter(program: tuple[packet_io.Insn, ...], frame: bytes, *, pkttype: int = 0,
               tag_present: bool = False) -> int:  # fmt: skip
    """What the kernel's classic-BPF interpreter returns for `frame` (the snap length, 0 to
    drop): the instructions packet_io emits, decoded from their assembled bytes."""
    meta = {packet_io._SKF_AD_PKTTYPE: pkttype,
            packet_io._SKF_AD_VLAN_TAG_PRESENT: int(tag_present)}  # fmt: skip
    insns = list(struct.iter_unpack("=HBBI", packet_io.assemble(program)))
    a = x = pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code & 0x07 == 0x06:  # ret
            return k
        if code & 0x07 == 0x05:  # jmp, against k
            taken = {0x10: a == k, 0x20: a > k, 0x40: bool(a & k)}[code & 0xF0]
            pc += jt if taken else jf
            continue
        if code == 0xB1:  # ldx msh
            x = (frame[k] & 0x0F) * 4
            continue
        if k >= 1 << 31:  # ancillary load
            a = meta[k - (1 << 32) - packet_io._SKF_AD_OFF]
            continue
        offset = k + (x if code & 0xE0 == 0x40 else 0)
        size = {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
        if offset + size > len(frame):
            return 0
        a = int.from_bytes(frame[offset : offset + size], "big")


def filtered(frame: bytes, pkttype: int = 0) -> bool:
    """Whether the socket's filter takes `frame` as the kernel hands it over; `pkttype` as
    the kernel classifies it (0 to this host, 1 broadcast, 3 to another host)."""
    received, outer = as_received(frame)
    program = packet_io.DHCP_SERVER_FILTER
    return bool(run_filter(program, received, pkttype=pkttype, tag_present=bool(outer)))


def ip_offset(frame: bytes) -> int:
    """Where the IPv4 header starts: after the Ethernet header and any VLAN tags."""
    pos = 12
    while struct.unpack_from("!H", frame, pos)[0] in (ETH_P_8021Q, ETH_P_8021AD):
        pos += 4
    return pos + 2


def with_ip_header(
    frame: bytes,
    *,
    ihl: int | None = None,
    tot_len: int | None = None,
    frag: int | None = None,
    udp_len: int | None = None,
    checksum: bool = True,
) -> bytes:
    """`frame` with IPv4/UDP header fields overwritten; the IPv4 header checksum is made
    valid again (over the header length the new IHL claims) unless `checksum` is false,
    so only the edited field is wrong."""
    out = bytearray(frame)
    ip = ip_offset(frame)
    old_ihl = (frame[ip] & 0x0F) * 4
    if udp_len is not None:
        struct.pack_into("!H", out, ip + old_ihl + 4, udp_len)
    if ihl is not None:
        out[ip] = 0x40 | ihl
    if tot_len is not None:
        struct.pack_into("!H", out, ip + 2, tot_len)
    if frag is not None:
        struct.pack_into("!H", out, ip + 6, frag)
    if checksum:
        size = max((out[ip] & 0x0F) * 4, 20)
        header = bytes(out[ip : ip + 10]) + b"\0\0" + bytes(out[ip + 12 : ip + size])
        struct.pack_into("!H", out, ip + 10, _ip_checksum(header))
    return bytes(out)


def bootp_offset(frame: bytes) -> int:
    """Where the BOOTP message starts: after the IPv4 header (and its options) and UDP."""
    ip = ip_offset(frame)
    return ip + (frame[ip] & 0x0F) * 4 + 8


def _ip_len(frame: bytes) -> int:
    return len(frame) - ip_offset(frame)


def _udp_len(frame: bytes) -> int:
    return len(frame) - bootp_offset(frame) + 8


def _bootp_byte(offset: int, value: int) -> Callable[[bytes], bytes]:
    def edit(frame: bytes) -> bytes:
        at = bootp_offset(frame) + offset
        return frame[:at] + bytes((value,)) + frame[at + 1 :]

    return edit


def _bad_ip_checksum(frame: bytes) -> bytes:
    at = ip_offset(frame) + 10
    return frame[:at] + bytes((frame[at] ^ 0x01,)) + frame[at + 1 :]


def _cut_to(bootp_len: int) -> Callable[[bytes], bytes]:
    """The message cut to `bootp_len` bytes, with IPv4 and UDP lengths that say so."""

    def edit(frame: bytes) -> bytes:
        cut = frame[: bootp_offset(frame) + bootp_len]
        return with_ip_header(cut, tot_len=_ip_len(cut), udp_len=_udp_len(cut))

    return edit


# Frames that are not well-formed requests (docs/DESIGN.md, "Well-formed requests"), each
# made from a well-formed request frame with one defect. Both paths refuse every one: the
# kernel drops it (result `malformed`) and the slow path counts it under one of
# NOT_WELL_FORMED (tests/bpf/test_malformed.py and tests/unit/test_packet_io.py run the
# same table).
MALFORMED_FRAMES: dict[str, Callable[[bytes], bytes]] = {
    "a byte after the datagram": lambda f: f + b"\0",
    "18 bytes after the datagram": lambda f: f + bytes(18),
    "IPv4 total length one short": lambda f: with_ip_header(f, tot_len=_ip_len(f) - 1),
    "IPv4 total length past the frame": lambda f: with_ip_header(f, tot_len=_ip_len(f) + 1),
    "IPv4 total length below its headers": lambda f: with_ip_header(f, tot_len=27),
    "IPv4 header checksum": _bad_ip_checksum,
    "first fragment": lambda f: with_ip_header(f, frag=0x2000),
    "UDP length one short of the IPv4 payload": lambda f: with_ip_header(
        f, udp_len=_udp_len(f) - 1
    ),
    "UDP length past the IPv4 payload": lambda f: with_ip_header(f, udp_len=_udp_len(f) + 1),
    "UDP length below its header": lambda f: with_ip_header(f, udp_len=7),
    "BOOTP header cut short": _cut_to(239),
    "no magic cookie": _cut_to(236),
    "BOOTREPLY": _bootp_byte(0, 2),
    "op 0": _bootp_byte(0, 0),
    "htype 6 (IEEE 802)": _bootp_byte(1, 6),
    "hlen 0": _bootp_byte(2, 0),
    "hlen 16": _bootp_byte(2, 16),
    "magic cookie": _bootp_byte(236, 0x64),
}


# What the slow path counts a frame that is not a well-formed request as: parse_frame's
# bad_frame (below UDP), the codec's reasons for the BOOTP header, and the engine's for a
# BOOTREPLY. The kernel counts every one of them as `malformed`.
NOT_WELL_FORMED = frozenset(
    {
        DropReason.BAD_FRAME,
        DropReason.TRUNCATED,
        DropReason.BAD_OP,
        DropReason.BAD_HTYPE,
        DropReason.BAD_HLEN,
        DropReason.BAD_COOKIE,
        DropReason.NOT_FROM_CLIENT,
    }
)


def refusal(frame: bytes) -> DropReason | None:
    """Why the daemon drops `frame` (after its socket filter) before the engine decides on
    it, as the daemon checks it: parse_frame, the codec, the engine's first check (a
    BOOTREPLY); None if it gets that far."""
    received, outer = as_received(frame)
    parsed = parse_frame(bytearray(received), len(received), 1, outer)
    if parsed is None:
        return DropReason.BAD_FRAME
    try:
        msg = parse(parsed[0])
    except MalformedPacket as exc:
        return exc.reason
    return DropReason.NOT_FROM_CLIENT if msg.op != Op.BOOTREQUEST else None


@dataclass(frozen=True, slots=True)
class ReplyFrame:
    dst_mac: bytes
    src_mac: bytes
    vlans: tuple[int, ...]
    src_ip: str
    dst_ip: str
    sport: int
    dport: int
    ttl: int
    payload: bytes


def decode_reply(frame: bytes) -> ReplyFrame:
    """Decodes a reply frame, asserting every length and checksum on the way."""
    dst_mac, src_mac = frame[0:6], frame[6:12]
    pos, vlans = 12, []
    (proto,) = struct.unpack_from("!H", frame, pos)
    while proto in (ETH_P_8021Q, ETH_P_8021AD):
        vlans.append(struct.unpack_from("!H", frame, pos + 2)[0] & 0x0FFF)
        pos += 4
        (proto,) = struct.unpack_from("!H", frame, pos)
    assert proto == ETH_P_IP
    ip = frame[pos + 2 :]
    assert ip[0] == 0x45, "a reply never carries IP options"
    total = struct.unpack_from("!H", ip, 2)[0]
    assert total == len(ip), f"IP total length {total} but {len(ip)} bytes follow"
    assert _ip_checksum(ip[:10] + b"\0\0" + ip[12:20]) == struct.unpack_from("!H", ip, 10)[0]
    udp = ip[20:total]
    sport, dport, udp_len, csum = struct.unpack_from("!HHHH", udp)
    assert udp_len == len(udp)
    zeroed = udp[:6] + b"\0\0" + udp[8:]
    assert csum == (udp_checksum(ip[12:16], ip[16:20], zeroed) or 0xFFFF), "UDP checksum"
    return ReplyFrame(
        dst_mac,
        src_mac,
        tuple(vlans),
        ".".join(map(str, ip[12:16])),
        ".".join(map(str, ip[16:20])),
        sport,
        dport,
        ip[8],
        udp[8:],
    )
