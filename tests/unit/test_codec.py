"""brushtaild.dhcp.codec against captured client packets, hand-computed layouts and a
malformed corpus."""

import struct
from dataclasses import replace
from typing import Any

import pytest

from brushtaild.dhcp.codec import MessageTooLarge, encode, parse
from brushtaild.dhcp.constants import MAGIC_COOKIE, MIN_BOOTP_LEN, MessageType
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.reasons import DropReason, MalformedPacket
from tests.vectors import CAPTURED, load_vector

CLIENT_MAC = bytes.fromhex("0200c6120002")
DHCLIENT_PRL = bytes([1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42])
UDHCPC_PRL = bytes([1, 3, 6, 12, 15, 28, 42])
PERFDHCP_PRL = bytes([1, 28, 2, 3, 15, 6, 12])


def packet(
    options: bytes, *, op: int = 1, hlen: int = 6, sname: bytes = b"", file: bytes = b""
) -> bytes:
    """A BOOTP header with the given fields, the cookie, then options verbatim."""
    header = struct.pack(
        "!BBBBIHHIIII16s64s128s", op, 1, hlen, 0, 0xCAFE, 0, 0, 0, 0, 0, 0, CLIENT_MAC, sname, file
    )
    return header + MAGIC_COOKIE + options


DISCOVER_53 = b"\x35\x01\x01"


# -- captured clients ----------------------------------------------------------------------


def test_dhclient_discover_fields() -> None:
    msg = parse(load_vector("dhclient_discover"))
    assert msg.op == 1
    assert msg.xid == 0xBC6C0A17
    assert msg.hwaddr == CLIENT_MAC
    assert msg.chaddr == CLIENT_MAC + bytes(10)
    assert msg.message_type is MessageType.DISCOVER
    assert not msg.broadcast
    assert msg.options[55] == DHCLIENT_PRL
    assert msg.options[12] == b"btcap-client"
    # Debian's default dhclient.conf sends neither a client identifier nor a size limit.
    assert 61 not in msg.options
    assert 57 not in msg.options


def test_dhclient_request_fields() -> None:
    msg = parse(load_vector("dhclient_request"))
    assert msg.xid == 0xBC6C0A17
    assert msg.message_type is MessageType.REQUEST
    assert msg.ciaddr == 0
    assert msg.options[50] == bytes([198, 18, 0, 100])
    assert msg.options[54] == bytes([198, 18, 0, 1])
    assert list(msg.options) == [53, 54, 50, 12, 55]


@pytest.mark.parametrize("name", ["udhcpc_discover", "udhcpc_request"])
def test_udhcpc_fields(name: str) -> None:
    msg = parse(load_vector(name))
    assert msg.xid == 0xADCD2D4C
    assert msg.hwaddr == CLIENT_MAC
    assert not msg.broadcast
    assert msg.options[55] == UDHCPC_PRL
    assert msg.options[57] == (576).to_bytes(2, "big")
    assert msg.options[60] == b"udhcp 1.35.0"
    assert msg.options[61] == b"\x01" + CLIENT_MAC


def test_perfdhcp_poses_as_relay() -> None:
    discover = parse(load_vector("perfdhcp_discover"))
    request = parse(load_vector("perfdhcp_request"))
    for msg in (discover, request):
        assert msg.xid == 0
        assert msg.hops == 1
        assert msg.giaddr == 0xC6120002
        assert msg.hwaddr == bytes.fromhex("000c01020304")
        assert msg.options[55] == PERFDHCP_PRL
        assert msg.options[61] == bytes.fromhex("01000c01020304")
    assert discover.message_type is MessageType.DISCOVER
    assert request.message_type is MessageType.REQUEST


def test_relayed_udhcpc_carries_option_82() -> None:
    msg = parse(load_vector("dhcrelay_udhcpc_request"))
    assert msg.giaddr == 0xC6120202
    assert msg.hops == 1
    assert msg.hwaddr == bytes.fromhex("0200c6120302")
    assert list(msg.options)[-1] == 82
    assert msg.options[82] == b"\x01\x08btcap-rd\x05\x04" + bytes([198, 18, 3, 1])


@pytest.mark.parametrize("name", CAPTURED)
def test_reencode_reproduces_captured_bytes(name: str) -> None:
    raw = load_vector(name)
    # perfdhcp sends fewer than 300 bytes; we always pad to the BOOTP minimum.
    assert encode(parse(raw)) == raw.ljust(MIN_BOOTP_LEN, b"\0")


# -- parse ---------------------------------------------------------------------------------


def test_overload_vector_reads_options_then_file_then_sname() -> None:
    msg = parse(load_vector("overload_offer"))
    assert msg.op == 2
    assert msg.xid == 0x12345678
    assert msg.broadcast
    assert msg.yiaddr == 0xC6120064
    assert list(msg.options.items()) == [
        (53, b"\x02"),
        (54, bytes([198, 18, 0, 1])),
        (51, (600).to_bytes(4, "big")),
        (6, bytes([198, 18, 0, 52, 198, 18, 0, 53])),
        (3, bytes([198, 18, 0, 1])),
        (15, b"example.test"),
    ]
    # The fields stay as received: they held options, not names.
    assert msg.sname.startswith(b"\x0f\x0cexample.test\xff")


def test_overload_vector_survives_reencoding() -> None:
    msg = parse(load_vector("overload_offer"))
    again = parse(encode(msg))
    assert list(again.options.items()) == list(msg.options.items())


def test_missing_end_is_tolerated() -> None:
    assert parse(packet(DISCOVER_53 + b"\x0c\x01x")).options == {53: b"\x01", 12: b"x"}


def test_pad_and_bytes_after_end_are_ignored() -> None:
    msg = parse(packet(b"\x00\x00" + DISCOVER_53 + b"\x00\xff\x0c\x09garbage"))
    assert msg.options == {53: b"\x01"}


def test_repeated_option_is_concatenated_in_order() -> None:
    msg = parse(packet(b"\x0c\x02ab" + DISCOVER_53 + b"\x0c\x01c\x0c\x00\x0c\x02de\xff"))
    assert list(msg.options.items()) == [(12, b"abcde"), (53, b"\x01")]


def test_zero_length_option_is_kept() -> None:
    assert parse(packet(DISCOVER_53 + b"\x50\x00\xff")).options[80] == b""


def test_overload_file_only_leaves_sname_alone() -> None:
    msg = parse(
        packet(DISCOVER_53 + b"\x34\x01\x01\xff", file=b"\x0c\x01f\xff", sname=b"\x0f\x01s\xff")
    )
    assert msg.options == {53: b"\x01", 12: b"f"}


def test_overload_sname_only_leaves_file_alone() -> None:
    msg = parse(
        packet(DISCOVER_53 + b"\x34\x01\x02\xff", file=b"\x0c\x01f\xff", sname=b"\x0f\x01s\xff")
    )
    assert msg.options == {53: b"\x01", 15: b"s"}


def test_sname_and_file_are_not_options_without_overload() -> None:
    msg = parse(packet(DISCOVER_53 + b"\xff", sname=b"\x0c\x01x\xff", file=b"\x35\x01\x05\xff"))
    assert msg.options == {53: b"\x01"}
    assert msg.sname == b"\x0c\x01x\xff".ljust(64, b"\0")


def test_message_type_may_arrive_through_overload() -> None:
    assert parse(packet(b"\x34\x01\x01\xff", file=DISCOVER_53 + b"\xff")).message_type == 1


def test_bootreply_is_parsed() -> None:
    assert parse(packet(b"\x35\x01\x05\xff", op=2)).message_type is MessageType.ACK


# -- malformed corpus ----------------------------------------------------------------------


def _mutate(offset: int, value: int) -> bytes:
    raw = bytearray(load_vector("udhcpc_discover"))
    raw[offset] = value
    return bytes(raw)


MALFORMED = {
    "empty": (b"", DropReason.TRUNCATED),
    "header only": (load_vector("udhcpc_discover")[:236], DropReason.TRUNCATED),
    "cookie cut short": (load_vector("udhcpc_discover")[:239], DropReason.TRUNCATED),
    "op 0": (_mutate(0, 0), DropReason.BAD_OP),
    "op 3": (_mutate(0, 3), DropReason.BAD_OP),
    "htype 6 (IEEE 802)": (_mutate(1, 6), DropReason.BAD_HTYPE),
    "hlen 0": (_mutate(2, 0), DropReason.BAD_HLEN),
    "hlen 16": (_mutate(2, 16), DropReason.BAD_HLEN),
    "hlen 17": (_mutate(2, 17), DropReason.BAD_HLEN),
    "hlen 255": (_mutate(2, 255), DropReason.BAD_HLEN),
    "bad cookie": (_mutate(239, 0x64), DropReason.BAD_COOKIE),
    "zero cookie": (packet(b"")[:236] + bytes(4) + DISCOVER_53, DropReason.BAD_COOKIE),
    "length past end": (packet(DISCOVER_53 + b"\x0c\x05abc"), DropReason.OPTION_OVERRUN),
    "code without length": (packet(DISCOVER_53 + b"\x0c"), DropReason.OPTION_OVERRUN),
    # The options field runs to the end of the packet, so udhcpc's padding is no shelter.
    "length past padding": (_mutate(244, 200), DropReason.OPTION_OVERRUN),
    "overrun in file": (
        packet(DISCOVER_53 + b"\x34\x01\x01\xff", file=b"\x00" * 126 + b"\x0c\x05"),
        DropReason.OPTION_OVERRUN,
    ),
    "code without length in sname": (
        packet(DISCOVER_53 + b"\x34\x01\x02\xff", sname=b"\x00" * 63 + b"\x0c"),
        DropReason.OPTION_OVERRUN,
    ),
    "no options": (packet(b""), DropReason.NO_MESSAGE_TYPE),
    "BOOTP request": (packet(b"\x0c\x01x\xff"), DropReason.NO_MESSAGE_TYPE),
    "53 after end": (packet(b"\xff" + DISCOVER_53), DropReason.NO_MESSAGE_TYPE),
    "53 only in sname, no overload": (
        packet(b"\xff", sname=DISCOVER_53 + b"\xff"),
        DropReason.NO_MESSAGE_TYPE,
    ),
    "53 = 99": (packet(b"\x35\x01\x63\xff"), DropReason.UNKNOWN_MESSAGE_TYPE),
    "53 = 0": (packet(b"\x35\x01\x00\xff"), DropReason.UNKNOWN_MESSAGE_TYPE),
    "53 = 9": (packet(b"\x35\x01\x09\xff"), DropReason.UNKNOWN_MESSAGE_TYPE),
    "53 empty": (packet(b"\x35\x00\xff"), DropReason.UNKNOWN_MESSAGE_TYPE),
    "53 twice": (packet(DISCOVER_53 + DISCOVER_53 + b"\xff"), DropReason.UNKNOWN_MESSAGE_TYPE),
    "52 = 0": (packet(DISCOVER_53 + b"\x34\x01\x00\xff"), DropReason.BAD_OPTION),
    "52 = 4": (packet(DISCOVER_53 + b"\x34\x01\x04\xff"), DropReason.BAD_OPTION),
    "52 too long": (packet(DISCOVER_53 + b"\x34\x02\x01\x01\xff"), DropReason.BAD_OPTION),
    "52 empty": (packet(DISCOVER_53 + b"\x34\x00\xff"), DropReason.BAD_OPTION),
    "52 inside file": (
        packet(DISCOVER_53 + b"\x34\x01\x01\xff", file=b"\x34\x01\x02\xff"),
        DropReason.BAD_OPTION,
    ),
}


@pytest.mark.parametrize(("raw", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_packet_is_dropped_with_reason(raw: bytes, reason: DropReason) -> None:
    with pytest.raises(MalformedPacket) as caught:
        parse(raw)
    assert caught.value.reason is reason


# -- encode --------------------------------------------------------------------------------


def offer(options: dict[int, bytes], **fields: Any) -> Message:
    msg = Message(op=2, xid=0x01020304, chaddr=CLIENT_MAC.ljust(16, b"\0"), options=options)
    return replace(msg, **fields)


def test_encode_puts_53_first_and_pads_to_bootp_minimum() -> None:
    wire = encode(offer({54: bytes(4), 53: b"\x02", 1: b"\xff\xff\xff\x00"}))
    assert len(wire) == MIN_BOOTP_LEN
    assert wire[236:240] == MAGIC_COOKIE
    assert wire[240:] == (
        b"\x35\x01\x02" + b"\x36\x04" + bytes(4) + b"\x01\x04\xff\xff\xff\x00" + b"\xff"
    ).ljust(MIN_BOOTP_LEN - 240, b"\0")


def test_encode_header_layout() -> None:
    msg = offer(
        {53: b"\x02"},
        hops=2,
        secs=0x0A0B,
        flags=0x8000,
        ciaddr=0x0A000001,
        yiaddr=0x0A000002,
        siaddr=0x0A000003,
        giaddr=0x0A000004,
        sname=b"tftp",
        file=b"pxelinux.0",
    )
    wire = encode(msg)
    assert wire[:12] == bytes([2, 1, 6, 2, 1, 2, 3, 4, 0x0A, 0x0B, 0x80, 0x00])
    assert wire[12:28] == bytes([10, 0, 0, 1, 10, 0, 0, 2, 10, 0, 0, 3, 10, 0, 0, 4])
    assert wire[28:44] == CLIENT_MAC + bytes(10)
    assert wire[44:108] == b"tftp".ljust(64, b"\0")
    assert wire[108:236] == b"pxelinux.0".ljust(128, b"\0")
    assert parse(wire) == replace(
        msg, sname=b"tftp".ljust(64, b"\0"), file=b"pxelinux.0".ljust(128, b"\0")
    )


def test_long_option_is_split_into_255_byte_pieces() -> None:
    value = bytes(range(256)) * 2 + b"tail"  # 516 bytes
    wire = encode(offer({53: b"\x02", 43: value}), max_size=1500)
    expected = (
        b"\x35\x01\x02"
        + b"\x2b\xff" + value[:255]
        + b"\x2b\xff" + value[255:510]
        + b"\x2b\x06" + value[510:]
        + b"\xff"
    )  # fmt: skip
    assert wire[240:] == expected
    assert parse(wire).options[43] == value


def test_option_of_exactly_255_bytes_is_not_split() -> None:
    wire = encode(offer({53: b"\x02", 43: b"v" * 255}))
    assert wire[243:245] == b"\x2b\xff"
    assert wire[245 + 255] == 0xFF


def test_zero_length_option_is_encoded() -> None:
    assert encode(offer({53: b"\x05", 80: b""}))[240:246] == b"\x35\x01\x05\x50\x00\xff"


def test_limit_is_never_below_548() -> None:
    msg = offer({53: b"\x02", 43: b"v" * 300})
    assert encode(msg, max_size=300) == encode(msg, max_size=548)


def test_exact_fit_does_not_overload() -> None:
    # 240 fixed + 3 (53) + 2 + 255 + 2 + 45 (43) + 1 (end) = 548.
    wire = encode(offer({53: b"\x02", 43: b"v" * 300}))
    assert len(wire) == 548
    assert wire[240] == 53
    assert wire[-1] == 0xFF


def test_overload_into_file_by_hand() -> None:
    option_43 = b"a" * 300  # pieces of 257 and 47 bytes on the wire
    option_12 = b"h" * 60  # 62 bytes on the wire
    msg = offer({53: b"\x02", 43: option_43, 12: option_12}, sname=b"server")
    wire = encode(msg)
    # Options field capacity: 548 - 240 - 3 (52) - 1 (end) = 304. 53 and the first piece of
    # 43 take 260; the second piece (47) and 12 (62) no longer fit, so both go to file.
    expected_options = b"\x34\x01\x01" + b"\x35\x01\x02" + b"\x2b\xff" + option_43[:255] + b"\xff"
    expected_file = b"\x2b\x2d" + option_43[255:] + b"\x0c\x3c" + option_12 + b"\xff"
    assert wire[240:] == expected_options
    assert wire[108:236] == expected_file.ljust(128, b"\0")
    assert wire[44:108] == b"server".ljust(64, b"\0")  # not used, so copied
    assert len(wire) == 240 + len(expected_options)
    assert parse(wire).options == msg.options


def test_overload_into_file_and_sname_by_hand() -> None:
    option_43 = b"a" * 300
    option_12 = b"h" * 60
    option_15 = b"d" * 50  # 52 bytes: 44 left in options, 18 in file, so it goes to sname
    option_3 = b"r" * 8  # fits in the 44 bytes left in the options field: first fit
    msg = offer({53: b"\x02", 43: option_43, 12: option_12, 15: option_15, 3: option_3})
    wire = encode(msg)
    assert wire[240:246] == b"\x34\x01\x03\x35\x01\x02"
    assert wire[246 + 257 :] == b"\x03\x08" + option_3 + b"\xff"
    assert wire[44:108] == (b"\x0f\x32" + option_15 + b"\xff").ljust(64, b"\0")
    decoded = parse(wire)
    assert decoded.options == msg.options
    assert list(decoded.options) == [53, 43, 3, 12, 15]


def test_larger_limit_avoids_overload() -> None:
    msg = offer({53: b"\x02", 43: b"a" * 300, 12: b"h" * 60})
    wire = encode(msg, max_size=1500 - 28)
    assert wire[240] == 53
    assert wire[108:236] == bytes(128)


def test_too_large_raises() -> None:
    msg = offer({53: b"\x02", 43: b"a" * 1000})
    with pytest.raises(MessageTooLarge) as caught:
        encode(msg)
    assert caught.value.limit == 304 + 127 + 63
    assert caught.value.needed == 3 + 4 * 2 + 1000
    assert len(encode(msg, max_size=1500)) == 240 + 3 + 4 * 2 + 1000 + 1


@pytest.mark.parametrize("code", [0, 52, 255])
def test_codec_owned_codes_are_refused(code: int) -> None:
    with pytest.raises(ValueError, match=f"option {code}"):
        encode(offer({53: b"\x02", code: b"\x01"}))


@pytest.mark.parametrize(("field", "size"), [("sname", 65), ("file", 129)])
def test_oversized_sname_or_file_is_refused(field: str, size: int) -> None:
    with pytest.raises(ValueError, match=field):
        encode(offer({53: b"\x02"}, **{field: b"x" * size}))
