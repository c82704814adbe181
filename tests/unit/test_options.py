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
