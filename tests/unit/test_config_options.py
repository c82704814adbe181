"""Configuration of DHCP options (`options:` of a pool): every name, `code-N`, the keys
that stand for three of them, the precedence merge, and every refusal with its key path."""

from typing import Any

import pytest

from brushtaild.config.load import OPTION_NAMES, OWNED_CODES, parse_config
from brushtaild.config.model import OptionSet, merge_options, option_set
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import OptionCode
from tests.unit.test_config import EXAMPLES, errors_of, example, ip

SUB_256 = "is 256 bytes; a sub-option holds 255"
HEX = "expected hex bytes such as '0a0b' or '0a:0b', got "


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if key and not key.startswith("[") else where + key


def with_options(options: object, **pool_keys: Any) -> dict[str, Any]:
    raw = example()
    raw["pools"][0]["options"] = options
    raw["pools"][0].update(pool_keys)
    return raw


def pool_options(options: object, **pool_keys: Any) -> dict[int, bytes]:
    return parse_config(with_options(options, **pool_keys)).pools[0].options.as_dict()


def test_every_option_by_name() -> None:
    options = pool_options(
        {
            "domain-search": ["isp.example", "example.net"],
            "ntp-servers": ["198.18.0.1", "198.18.0.2"],
            "interface-mtu": 1492,
            "classless-static-routes": ["0.0.0.0/0 via 198.18.0.1", "10.0.0.0/8 via 198.18.0.3"],
            "vendor-specific": {1: "c6120001", 2: "ab:cd"},
        }
    )
    assert options == {
        OptionCode.INTERFACE_MTU: b"\x05\xd4",
        OptionCode.NTP_SERVERS: opt.ips([ip("198.18.0.1"), ip("198.18.0.2")]),
        OptionCode.VENDOR_SPECIFIC: b"\x01\x04\xc6\x12\x00\x01\x02\x02\xab\xcd",
        OptionCode.DOMAIN_SEARCH: b"\x03isp\x07example\x00\x07example\x03net\x00",
        OptionCode.CLASSLESS_STATIC_ROUTE: b"\x00\xc6\x12\x00\x01\x08\x0a\xc6\x12\x00\x03",
    }
    assert list(options) == sorted(options)  # ascending codes: the reply's order


def test_option_by_code_and_vendor_specific_as_hex() -> None:
    options = pool_options({"code-224": "0a0b", "code-12": "6370652d31", "vendor-specific": "01"})
    assert options == {224: b"\x0a\x0b", 12: b"cpe-1", OptionCode.VENDOR_SPECIFIC: b"\x01"}


@pytest.mark.parametrize(
    ("name", "key", "value", "field_value"),
    [
        ("routers", "routers", ["198.18.0.1"], (0xC6120001,)),
        ("dns-servers", "dns_servers", ["198.18.0.9"], (0xC6120009,)),
        ("domain-name", "domain", "isp.example", "isp.example"),
    ],
)
def test_pool_keys_and_options_name_the_same_option(
    name: str, key: str, value: object, field_value: object
) -> None:
    """`routers`, `dns_servers` and `domain` are the pool's own keys for three options:
    written under `options:` instead, they land in the same place; written in both, the
    pool is refused."""
    raw = example()
    raw["pools"][0].pop(key, None)
    raw["pools"][0]["options"] = {name: value}
    pool = parse_config(raw).pools[0]
    assert getattr(pool, key) == field_value
    assert pool.options == OptionSet()
    raw["pools"][0][key] = value
    assert errors_of(raw) == [
        (f"pools[0].options.{name}", f"also given as pools[0].{key}; give one of them")
    ]


def test_routers_under_options_are_checked_as_routers() -> None:
    raw = example()
    raw["pools"][0].pop("routers", None)
    raw["pools"][0]["options"] = {"routers": ["10.0.0.1"]}
    assert errors_of(raw) == [
        ("pools[0].options.routers[0]", "10.0.0.1 is not inside subnet 198.18.0.0/16")
    ]


@pytest.mark.parametrize(
    ("options", "where", "reason"),
    [
        (
            {"dns-server": ["198.18.0.1"]},
            "dns-server",
            "unknown option name; one of " + ", ".join(OPTION_NAMES) + ", did you mean "
            "'dns-servers'?",
        ),
        (
            {"tftp": "x"},
            "tftp",
            f"unknown option name; one of {', '.join(OPTION_NAMES)}, or code-N for option N",
        ),
        ({"code-6": "c6120001"}, "code-6", "option 6 has a name: write it as 'dns-servers'"),
        ({"code-0": "00"}, "code-0", "option 0 cannot be configured: " + OWNED_CODES[0]),
        ({"code-255": "00"}, "code-255", "option 255 cannot be configured: " + OWNED_CODES[255]),
        ({"code-256": "00"}, "code-256", "option code 256 is out of range 1..254"),
        ({"code-224": "0a0"}, "code-224", HEX + "'0a0'"),
        ({"code-224": 10}, "code-224", HEX + "10; quote the value"),
        ({224: "0a"}, "224", "option key 224 is not a string; write code-224 for option 224"),
        ({"code-224": "00" * 256}, "code-224", "is 256 bytes encoded; one option holds 255"),
        ({"interface-mtu": 67}, "interface-mtu", "67 is out of range 68..65535"),
        ({"interface-mtu": "15"}, "interface-mtu", "expected integer, got string"),
        ({"ntp-servers": []}, "ntp-servers", "must not be empty"),
        ({"ntp-servers": ["ntp.x"]}, "ntp-servers[0]", "'ntp.x' is not a valid IPv4 address"),
        ({"domain-search": ["a..b"]}, "domain-search[0]", "'a..b' is not a valid DNS name"),
        ({"domain-name": "-bad-.b"}, "domain-name", "'-bad-.b' is not a valid DNS name"),
        (
            {"classless-static-routes": ["10.0.0.0/8 198.18.0.1"]},
            "classless-static-routes[0]",
            "'10.0.0.0/8 198.18.0.1' is not 'a.b.c.d/n via e.f.g.h'",
        ),
        (
            {"classless-static-routes": ["10.0.0.1/8 via 198.18.0.1"]},
            "classless-static-routes[0]",
            "'10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?",
        ),
        (
            {"classless-static-routes": ["0.0.0.0/0 via 192.0.2.1"]},
            "classless-static-routes[0]",
            "192.0.2.1 is not inside subnet 198.18.0.0/16",
        ),
        (
            {"classless-static-routes": ["10.0.0.0/8 via 198.18.0.1"]},
            "classless-static-routes",
            "has no default route (0.0.0.0/0), and clients given option 121 ignore routers"
            " (RFC 3442): add '0.0.0.0/0 via' the router",
        ),
        ({"vendor-specific": {}}, "vendor-specific", "must not be empty"),
        ({"vendor-specific": {0: "0a"}}, "vendor-specific[0]", "0 is out of range 1..254"),
        ({"vendor-specific": {1: "zz"}}, "vendor-specific[1]", HEX + "'zz'"),
        ({"vendor-specific": {1: "00" * 256}}, "vendor-specific[1]", SUB_256),
        (
            {"vendor-specific": {"a": "00"}},
            "vendor-specific['a']",
            "expected sub-option code 1..254, got string",
        ),
        (["routers"], "", "expected mapping, got list"),
    ],
)  # fmt: skip
def test_refusals_name_the_key(options: object, where: str, reason: str) -> None:
    assert errors_of(with_options(options)) == [(_join("pools[0].options", where), reason)]


@pytest.mark.parametrize("code", sorted(c for c in OWNED_CODES if 0 < c < 255))
def test_codes_the_server_writes_are_refused(code: int) -> None:
    [(where, reason)] = errors_of(with_options({f"code-{code}": "00"}))
    assert where == f"pools[0].options.code-{code}"
    assert reason == f"option {code} cannot be configured: {OWNED_CODES[code]}"


def test_routes_on_the_link_and_without_routers() -> None:
    """0.0.0.0 as the router: a destination on the link itself. With no routers, no
    default route is needed."""
    raw = with_options({"classless-static-routes": ["203.0.113.0/24 via 0.0.0.0"]})
    raw["pools"][0].pop("routers", None)
    pool = parse_config(raw).pools[0]
    assert pool.options.as_dict() == {121: bytes.fromhex("18cb0071") + bytes(4)}


def test_merge_precedence_later_levels_win_per_code() -> None:
    pool = option_set({6: b"pool", 42: b"pool", 224: b"pool"})
    klass = option_set({42: b"class"})
    reservation = option_set({224: b"host", 26: b"host"})
    merged = merge_options(pool, klass, reservation)
    assert merged.as_dict() == {6: b"pool", 26: b"host", 42: b"class", 224: b"host"}
    assert [code for code, _ in merged.values] == [6, 26, 42, 224]
    assert merge_options() == OptionSet()


def test_full_example_shows_every_option_name() -> None:
    text = (EXAMPLES / "brushtail-full.yaml").read_text()
    for name in OPTION_NAMES:
        assert f"{name}:" in text or name in ("routers", "dns-servers", "domain-name"), name
    assert "code-" in text
