"""brushtaild.dhcp.options: value encoders/decoders and option 82 sub-options."""

from collections.abc import Callable

import pytest

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import RelayAgentSubOption
from brushtaild.dhcp.reasons import DropReason, MalformedPacket
from tests.vectors import load_vector


def test_encoders() -> None:
    assert opt.ip(0xC6120001) == bytes([198, 18, 0, 1])
    assert opt.ips([0x01020304, 0x05060708]) == bytes(range(1, 9))
    assert opt.ips([]) == b""
    assert opt.u32(600) == b"\x00\x00\x02\x58"
    assert opt.u16(576) == b"\x02\x40"


@pytest.mark.parametrize("encoder", [opt.ip, opt.u32, opt.u16])
def test_encoders_refuse_out_of_range(encoder: Callable[[int], bytes]) -> None:
    with pytest.raises(OverflowError):
        encoder(-1)
    with pytest.raises(OverflowError):
        encoder(2**32)


def test_decoders() -> None:
    assert opt.decode_ip(bytes([198, 18, 0, 1])) == 0xC6120001
    assert opt.decode_u32(b"\x00\x00\x02\x58") == 600
    assert opt.decode_u16(b"\x02\x40") == 576
    assert opt.decode_ip_list(bytes(range(1, 9))) == [0x01020304, 0x05060708]


def test_decoders_invert_encoders() -> None:
    assert opt.decode_ip(opt.ip(0xFFFFFFFF)) == 0xFFFFFFFF
    assert opt.decode_u16(opt.u16(65535)) == 65535
    assert opt.decode_ip_list(opt.ips([1, 2, 3])) == [1, 2, 3]


@pytest.mark.parametrize(
    ("decoder", "raw"),
    [
        (opt.decode_ip, b""),
        (opt.decode_ip, b"\x01\x02\x03"),
        (opt.decode_ip, b"\x01\x02\x03\x04\x05"),
        (opt.decode_u32, b"\x01\x02"),
        (opt.decode_u16, b"\x02"),
        (opt.decode_u16, b"\x02\x40\x00"),
        (opt.decode_ip_list, b""),
        (opt.decode_ip_list, bytes(6)),
    ],
)
def test_decoders_reject_bad_length(decoder: Callable[[bytes], object], raw: bytes) -> None:
    with pytest.raises(MalformedPacket) as caught:
        decoder(raw)
    assert caught.value.reason is DropReason.BAD_OPTION


def test_udhcpc_max_size_decodes() -> None:
    assert opt.decode_u16(parse(load_vector("udhcpc_discover")).options[57]) == 576


# -- option 82 -----------------------------------------------------------------------------


def test_relay_agent_info_from_dhcrelay() -> None:
    raw = parse(load_vector("dhcrelay_udhcpc_discover")).options[82]
    subs = opt.parse_relay_agent_info(raw)
    assert subs == [
        (RelayAgentSubOption.CIRCUIT_ID, b"btcap-rd"),
        (RelayAgentSubOption.LINK_SELECTION, bytes([198, 18, 3, 1])),
    ]
    assert opt.decode_ip(subs[1][1]) == opt.parse_ip("198.18.3.1")
    assert opt.build_relay_agent_info(subs) == raw


def test_relay_agent_info_rfc_layout() -> None:
    raw = load_vector("relay_agent_info")
    subs = opt.parse_relay_agent_info(raw)
    assert subs == [
        (1, bytes.fromhex("000400640105")),
        (2, bytes.fromhex("00060200c6120002")),
        (5, bytes([198, 18, 3, 0])),
    ]
    assert opt.build_relay_agent_info(subs) == raw


def test_relay_agent_info_edge_cases() -> None:
    assert opt.parse_relay_agent_info(b"") == []
    assert opt.parse_relay_agent_info(b"\x01\x00") == [(1, b"")]
    assert opt.build_relay_agent_info([]) == b""
    assert opt.build_relay_agent_info([(2, b"x" * 255)]) == b"\x02\xff" + b"x" * 255


@pytest.mark.parametrize("raw", [b"\x01", b"\x01\x03ab", b"\x01\x01a\x02", b"\x01\x01a\x02\x05"])
def test_relay_agent_info_overrun(raw: bytes) -> None:
    with pytest.raises(MalformedPacket) as caught:
        opt.parse_relay_agent_info(raw)
    assert caught.value.reason is DropReason.BAD_OPTION


def test_relay_agent_sub_option_too_long() -> None:
    with pytest.raises(ValueError, match="sub-option 1"):
        opt.build_relay_agent_info([(1, b"x" * 256)])


# -- text forms ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.0.0.0", 0), ("198.18.0.1", 0xC6120001), ("255.255.255.255", 0xFFFFFFFF)],
)
def test_ip_text_round_trip(text: str, value: int) -> None:
    assert opt.parse_ip(text) == value
    assert opt.format_ip(value) == text


@pytest.mark.parametrize(
    "text", ["", "10.1", "10.0.0", "256.0.0.1", "1.2.3.4.5", " 1.2.3.4", "::1", "a.b.c.d"]
)
def test_parse_ip_is_strict(text: str) -> None:
    with pytest.raises(ValueError, match="IPv4"):
        opt.parse_ip(text)


def test_format_mac() -> None:
    assert opt.format_mac(bytes.fromhex("0200c6120002")) == "02:00:c6:12:00:02"
    assert opt.format_mac(b"") == ""


# -- option values from the configuration: RFC examples byte for byte ---------------------


def test_domain_search_rfc_3397_example() -> None:
    """RFC 3397 section 3: "eng.apple.com." and "marketing.apple.com.", the second name's
    "apple.com" a pointer to offset 4 of the option's value."""
    expected = b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04"
    assert opt.domain_search(["eng.apple.com", "marketing.apple.com"]) == expected
    assert opt.domain_search(["eng.apple.com.", "marketing.apple.com."]) == expected


def test_domain_search_compression() -> None:
    # A whole name seen before is one pointer; case does not matter to DNS (RFC 4343).
    assert opt.domain_search(["example.net", "EXAMPLE.net"]) == b"\x07example\x03net\x00\xc0\x00"
    # Nothing shared: every name written out in full.
    assert opt.domain_search(["a.b", "c.d"]) == b"\x01a\x01b\x00\x01c\x01d\x00"
    assert opt.domain_search(["x.a.b", "a.b"]) == b"\x01x\x01a\x01b\x00\xc0\x02"


def test_domain_search_refuses_bad_labels() -> None:
    with pytest.raises(ValueError):
        opt.domain_search(["a" * 64 + ".net"])
    with pytest.raises(ValueError):
        opt.domain_search(["a..net"])


# RFC 3442's examples of destination descriptors (under "Classless Route Option Format"),
# each followed by router 10.0.0.1.
RFC_3442_DESCRIPTORS = [
    ("0.0.0.0", 0, bytes([0])),
    ("10.0.0.0", 8, bytes([8, 10])),
    ("10.0.0.0", 24, bytes([24, 10, 0, 0])),
    ("10.17.0.0", 16, bytes([16, 10, 17])),
    ("10.27.129.0", 24, bytes([24, 10, 27, 129])),
    ("10.229.0.128", 25, bytes([25, 10, 229, 0, 128])),
    ("10.198.122.47", 32, bytes([32, 10, 198, 122, 47])),
]


@pytest.mark.parametrize(("destination", "length", "descriptor"), RFC_3442_DESCRIPTORS)
def test_classless_routes_rfc_3442_descriptors(
    destination: str, length: int, descriptor: bytes
) -> None:
    router = opt.parse_ip("10.0.0.1")
    route = (opt.parse_ip(destination), length, router)
    raw = opt.classless_routes([route])
    assert raw == descriptor + bytes([10, 0, 0, 1])
    assert opt.decode_classless_routes(raw) == [route]


def test_classless_routes_several() -> None:
    routes = [
        (0, 0, opt.parse_ip("198.18.0.1")),
        (opt.parse_ip("203.0.113.0"), 24, opt.parse_ip("198.18.0.3")),
    ]
    raw = opt.classless_routes(routes)
    assert raw.hex() == "00c6120001" + "18cb0071c6120003"
    assert opt.decode_classless_routes(raw) == routes


@pytest.mark.parametrize("raw", [b"\x21" + bytes(8), b"\x18\x0a\x00", b"\x00\x01\x02\x03"])
def test_classless_routes_decoder_rejects_bad_descriptors(raw: bytes) -> None:
    with pytest.raises(MalformedPacket):
        opt.decode_classless_routes(raw)


def test_vendor_specific_sub_options() -> None:
    """RFC 2132 8.4: encapsulated vendor options are code, length, value, as option 82's."""
    raw = opt.build_sub_options([(1, bytes.fromhex("c6120001")), (2, b"sip")])
    assert raw == bytes.fromhex("0104c6120001") + b"\x02\x03sip"
