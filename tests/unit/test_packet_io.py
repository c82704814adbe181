"""The pure parts of brushtaild/net/packet_io.py: the frame parser, the checksum residue
and the classic-BPF assembler. (PacketIO on a veth: tests/e2e/test_packet_io.py.)

Frames are built here with a deliberately plain word-loop checksum, independent of the
residue arithmetic in packet_io, so the two cross-check each other.
"""

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brushtaild.engine.decisions import Ingress
from brushtaild.net import packet_io
from tests.bpf.frames import MALFORMED_FRAMES

BROADCAST_IP = 0xFFFFFFFF
BROADCAST_MAC = b"\xff" * 6
MAC = bytes.fromhex("020000000001")


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ip_header(src: int, dst: int, l4_len: int, *, frag: int = 0, options: bytes = b"",
              proto: int = 17, ihl: int | None = None,
              good_checksum: bool = True) -> bytes:  # fmt: skip
    words = ihl if ihl is not None else 5 + len(options) // 4
    hdr = struct.pack(
        "!BBHHHBBHII", 0x40 | words, 0, 20 + len(options) + l4_len, 0x1234, frag, 64, proto, 0,
        src, dst,
    ) + options  # fmt: skip
    checksum = 0xFFFF - ones_sum(hdr)
    if not good_checksum:
        checksum ^= 0x0101
    return hdr[:10] + struct.pack("!H", checksum) + hdr[12:]


def udp_frame(src_mac: bytes, dst_mac: bytes, src: int, dst: int, payload: bytes, *,
              sport: int = 68, dport: int = 67, udp_len: int | None = None, frag: int = 0,
              options: bytes = b"", proto: int = 17, ihl: int | None = None,
              good_checksum: bool = True) -> bytes:  # fmt: skip
    length = udp_len if udp_len is not None else 8 + len(payload)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    ip = ip_header(src, dst, len(udp), frag=frag, options=options, proto=proto, ihl=ihl,
                   good_checksum=good_checksum)  # fmt: skip
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def discover(mac: bytes, xid: int = 0x0BADCAFE) -> bytes:
    """A minimal DHCPDISCOVER, padded to the 300 octets BOOTP clients send."""
    fixed = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                        b"", b"", b"", b"", mac, b"", b"")  # fmt: skip
    options = b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\xff"
    return (fixed + options).ljust(300, b"\x00")


def parsed(frame: bytes, ifindex: int = 1) -> tuple[bytes, Ingress] | None:
    """parse_frame as PacketIO calls it: the frame at the start of a SNAPLEN buffer."""
    buf = bytearray(packet_io.SNAPLEN)
    buf[: len(frame)] = frame
    return packet_io.parse_frame(buf, len(frame), ifindex)


@given(st.binary(max_size=600))
def test_residue_matches_word_sum(data: bytes) -> None:
    residue = packet_io.internet_checksum_residue(data)
    assert residue == ones_sum(data) % 0xFFFF


def test_filter_jumps_resolve_to_labels() -> None:
    code = packet_io.assemble(packet_io.DHCP_SERVER_FILTER)
    insns = list(struct.iter_unpack("=HBBI", code))
    drop = len(insns) - 1
    assert insns[drop] == (0x06, 0, 0, 0)
    for pc, (opcode, jt, jf, _k) in enumerate(insns):
        if opcode & 0x07 == 0x05:  # a jump
            assert drop in (pc + 1 + jt, pc + 1 + jf)


def test_parse_frame_accepts_ip_options() -> None:
    payload = discover(MAC)
    frame = udp_frame(MAC, BROADCAST_MAC, 0, BROADCAST_IP, payload, options=b"\x94\x04\x00\x00")
    assert parsed(frame, 7) == (payload, Ingress(7, MAC, 0, BROADCAST_IP))


def _bootp(**kwargs: Any) -> bytes:
    return udp_frame(MAC, BROADCAST_MAC, 0, BROADCAST_IP, discover(MAC), **kwargs)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(_bootp(frag=0x2000), id="first-fragment"),
        pytest.param(_bootp(frag=0x0010), id="later-fragment"),
        pytest.param(_bootp(ihl=4), id="ihl-too-small"),
        pytest.param(
            udp_frame(MAC, BROADCAST_MAC, 0, BROADCAST_IP, b"", ihl=15), id="ihl-past-datagram"
        ),
        pytest.param(_bootp(good_checksum=False), id="ip-checksum"),
        pytest.param(_bootp(udp_len=7), id="udp-length-too-small"),
        pytest.param(_bootp(udp_len=400), id="udp-truncated"),
        pytest.param(_bootp(proto=6), id="tcp"),
        pytest.param(_bootp()[:41], id="runt"),
        pytest.param(_bootp() + bytes(20), id="link-padding"),
        pytest.param(udp_frame(MAC, BROADCAST_MAC, 0, BROADCAST_IP, b"request"), id="not-bootp"),
    ],
)
def test_parse_frame_rejects_malformed(frame: bytes) -> None:
    assert parsed(frame) is None


@pytest.mark.parametrize("defect", MALFORMED_FRAMES.values(), ids=MALFORMED_FRAMES.keys())
def test_parse_frame_refuses_what_the_kernel_calls_malformed(
    defect: Callable[[bytes], bytes],
) -> None:
    """The table tests/bpf/test_malformed.py runs through the XDP program as well: one
    definition of a well-formed request for both paths."""
    frame = _bootp()
    assert parsed(frame) is not None
    assert parsed(defect(frame)) is None


@given(st.binary(max_size=700))
def test_parse_frame_takes_any_bytes(frame: bytes) -> None:
    result = parsed(frame)
    if result is not None:
        payload, _ = result
        assert len(frame) == 14 + (frame[14] & 0x0F) * 4 + 8 + len(payload)
