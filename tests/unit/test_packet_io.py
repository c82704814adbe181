"""The pure parts of brushtaild/net/packet_io.py: the frame parser, the checksum residue
and the classic-BPF assembler. (PacketIO on a veth: tests/e2e/test_packet_io.py.)

Frames are built here with a deliberately plain word-loop checksum, independent of the
residue arithmetic in packet_io, so the two cross-check each other.
"""

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.decisions import Ingress
from brushtaild.net import packet_io
from tests.bpf.frames import (
    MALFORMED_FRAMES,
    NOT_WELL_FORMED,
    as_received,
    client_frame,
    filtered,
    refusal,
    run_filter,
)

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


DISCOVER = discover(MAC)


@pytest.mark.parametrize(
    ("frame", "pkttype", "taken"),
    [
        pytest.param(client_frame(DISCOVER, src_mac=MAC), 1, True, id="untagged"),
        pytest.param(client_frame(DISCOVER, src_mac=MAC, vlans=(100,)), 1, True, id="802.1q"),
        pytest.param(client_frame(DISCOVER, src_mac=MAC, vlans=(100, 7)), 1, True, id="qinq"),
        pytest.param(client_frame(DISCOVER, src_mac=MAC, vlans=(0,)), 1, True, id="priority"),
        pytest.param(client_frame(DISCOVER, src_mac=MAC), 0, True, id="unicast-to-us"),
        pytest.param(client_frame(DISCOVER, src_mac=MAC), 3, False, id="to-another-host"),
        pytest.param(
            client_frame(DISCOVER, src_mac=MAC, vlans=(1, 2, 3)), 1, False, id="three-tags"
        ),
        pytest.param(
            client_frame(DISCOVER, src_mac=MAC, vlans=(100,), frag=0x0010), 1, False,
            id="tagged-later-fragment",
        ),
        pytest.param(
            client_frame(DISCOVER, src_mac=MAC, vlans=(100,), sport=67)[:-len(DISCOVER)],
            1, True, id="tagged-cut-short",
        ),
    ],
)  # fmt: skip
def test_filter_takes_ipv4_udp_to_67_with_up_to_two_tags(
    frame: bytes, pkttype: int, taken: bool
) -> None:
    assert filtered(frame, pkttype) is taken


def test_filter_refuses_an_inner_tag_without_an_outer_one() -> None:
    """The kernel always takes the outer tag off: a tag left in a frame that had none taken
    off would be a third one, or a tag the kernel did not recognise."""
    frame = client_frame(DISCOVER, src_mac=MAC, vlans=(100,))
    assert not run_filter(packet_io.DHCP_SERVER_FILTER, frame, pkttype=1, tag_present=False)


def test_filter_refuses_other_ports_when_tagged() -> None:
    frame = bytearray(client_frame(DISCOVER, src_mac=MAC, vlans=(100, 7)))
    struct.pack_into("!H", frame, 22 + 20 + 2, 68)  # two tags, IPv4, the UDP dport
    assert not filtered(bytes(frame), 1)


def test_parse_frame_accepts_ip_options() -> None:
    payload = discover(MAC)
    frame = udp_frame(MAC, BROADCAST_MAC, 0, BROADCAST_IP, payload, options=b"\x94\x04\x00\x00")
    assert parsed(frame, 7) == (payload, Ingress(7, MAC, 0, BROADCAST_IP))


def parsed_as_received(frame: bytes) -> tuple[bytes, Ingress] | None:
    received, outer = as_received(frame)
    buf = bytearray(packet_io.SNAPLEN)
    buf[: len(received)] = received
    return packet_io.parse_frame(buf, len(received), 1, outer)


@pytest.mark.parametrize(
    ("tcis", "vlans"),
    [
        pytest.param((100,), (100,), id="802.1q"),
        pytest.param((0x6000 | 100,), (100,), id="802.1q-with-priority-bits"),
        pytest.param((100, 7), (100, 7), id="qinq"),
        pytest.param((0,), (), id="priority-tag"),
        pytest.param((0x2000,), (), id="priority-tag-pcp-1"),
        pytest.param((0, 7), (7,), id="priority-outer-then-vlan"),
        pytest.param((100, 0), (100,), id="vlan-then-priority-inner"),
    ],
)
def test_parse_frame_reads_both_tags(tcis: tuple[int, ...], vlans: tuple[int, ...]) -> None:
    """VLAN ids are the tags' nonzero VIDs, outer first (bpf/parsing.h keys them so); the
    tags themselves, priority bits and TPIDs included, are kept for the reply."""
    frame = client_frame(DISCOVER, src_mac=MAC, vlans=tcis)
    result = parsed_as_received(frame)
    assert result is not None
    payload, ingress = result
    assert payload == DISCOVER
    assert ingress.vlans == vlans
    assert ingress.tags == frame[12 : 12 + 4 * len(tcis)]


def test_parse_frame_takes_no_inner_tag_without_an_outer_one() -> None:
    frame = client_frame(DISCOVER, src_mac=MAC, vlans=(100,))
    assert parsed(frame) is None


def test_parse_frame_refuses_three_tags() -> None:
    assert parsed_as_received(client_frame(DISCOVER, src_mac=MAC, vlans=(1, 2, 3))) is None


def auxdata(status: int, tci: int, tpid: int) -> list[tuple[int, int, bytes]]:
    data = struct.pack("=IIIHHHH", status, 342, 342, 2, 16, tci, tpid)
    return [(packet_io.SOL_PACKET, packet_io.PACKET_AUXDATA, data)]


@pytest.mark.parametrize(
    ("ancillary", "tag"),
    [
        pytest.param([], b"", id="no-auxdata"),
        pytest.param(auxdata(0x01, 0, 0), b"", id="untagged"),
        pytest.param(auxdata(0x51, 0x2064, 0x88A8), bytes.fromhex("88a82064"), id="802.1ad"),
        pytest.param(auxdata(0x11, 0x0064, 0), bytes.fromhex("81000064"), id="tpid-unknown"),
        pytest.param(auxdata(0x50, 0x0000, 0x8100), bytes.fromhex("81000000"), id="priority"),
    ],
)
def test_outer_tag_from_auxdata(ancillary: list[tuple[int, int, bytes]], tag: bytes) -> None:
    assert packet_io.outer_tag(ancillary) == tag


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
    ],
)
def test_parse_frame_rejects_malformed(frame: bytes) -> None:
    assert parsed(frame) is None


def test_parse_frame_leaves_the_payload_to_the_codec() -> None:
    """Whatever the UDP datagram holds is the codec's to judge, which counts it by its own
    reason (here `truncated`), not as a bad frame."""
    frame = udp_frame(MAC, BROADCAST_MAC, 0, BROADCAST_IP, b"request")
    assert parsed(frame) == (b"request", Ingress(1, MAC, 0, BROADCAST_IP))
    assert refusal(frame) is DropReason.TRUNCATED


# The reason the daemon counts each of MALFORMED_FRAMES under: the most specific one.
MALFORMED_REASONS = {
    "a byte after the datagram": DropReason.BAD_FRAME,
    "18 bytes after the datagram": DropReason.BAD_FRAME,
    "IPv4 total length one short": DropReason.BAD_FRAME,
    "IPv4 total length past the frame": DropReason.BAD_FRAME,
    "IPv4 total length below its headers": DropReason.BAD_FRAME,
    "IPv4 header checksum": DropReason.BAD_FRAME,
    "first fragment": DropReason.BAD_FRAME,
    "UDP length one short of the IPv4 payload": DropReason.BAD_FRAME,
    "UDP length past the IPv4 payload": DropReason.BAD_FRAME,
    "UDP length below its header": DropReason.BAD_FRAME,
    "BOOTP header cut short": DropReason.TRUNCATED,
    "no magic cookie": DropReason.TRUNCATED,
    "BOOTREPLY": DropReason.NOT_FROM_CLIENT,
    "op 0": DropReason.BAD_OP,
    "htype 6 (IEEE 802)": DropReason.BAD_HTYPE,
    "hlen 0": DropReason.BAD_HLEN,
    "hlen 16": DropReason.BAD_HLEN,
    "magic cookie": DropReason.BAD_COOKIE,
}


def test_every_malformed_frame_has_its_reason() -> None:
    assert MALFORMED_REASONS.keys() == MALFORMED_FRAMES.keys()
    assert set(MALFORMED_REASONS.values()) == NOT_WELL_FORMED


@pytest.mark.parametrize("name", MALFORMED_FRAMES)
def test_the_slow_path_refuses_what_the_kernel_calls_malformed(name: str) -> None:
    """The table tests/bpf/test_malformed.py runs through the XDP program as well: one
    definition of a well-formed request for both paths, each defect counted once, under
    its own reason."""
    frame = _bootp()
    assert refusal(frame) is None
    assert refusal(MALFORMED_FRAMES[name](frame)) is MALFORMED_REASONS[name]


@given(st.binary(max_size=700))
def test_parse_frame_takes_any_bytes(frame: bytes) -> None:
    result = parsed(frame)
    if result is not None:
        payload, _ = result
        assert len(frame) == 14 + (frame[14] & 0x0F) * 4 + 8 + len(payload)
