"""Ethernet frames around DHCP payloads, and their checked decoding, for XDP tests."""

import struct
from dataclasses import dataclass

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
