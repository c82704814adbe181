"""Configuration parsing: the documented examples, defaults, each class of error, and
properties over generated configurations."""

import copy
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brushtaild.config.load import (
    FASTPATH_KEYS,
    LIMITS_KEYS,
    MAX_EXCLUDED_PER_POOL,
    ONE_YEAR,
    POOL_KEYS,
    TOP_LEVEL_KEYS,
    ConfigError,
    load_config,
    parse_config,
)
from brushtaild.config.model import (
    AddressRange,
    Config,
    FastPath,
    Pool,
    Reservation,
    VlanRange,
)
from brushtaild.dhcp import options as opt

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def ip(text: str) -> int:
    return int(IPv4Address(text))


def example() -> dict[str, Any]:
    """docs/examples/brushtail.yaml as loaded, fresh for each test to modify."""
    return {
        "site": "edge-a",
        "interface": "sub0",
        "server_id": "198.18.0.1",
        "state_dir": "/var/lib/brushtail",
        "pools": [
            {
                "name": "residential",
                "subnet": "198.18.0.0/16",
                "ranges": ["198.18.1.0-198.18.255.254"],
                "routers": ["198.18.0.1"],
                "dns_servers": ["198.18.0.1"],
                "lease_time": 3600,
            }
        ],
    }


def errors_of(raw: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.errors


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "brushtail.yaml"
    path.write_text(text)
    return path


# -- accepted configurations -------------------------------------------------------------


def test_minimal_example_is_accepted_with_exact_values() -> None:
    config = load_config(EXAMPLES / "brushtail.yaml")
    assert config == Config(
        site="edge-a",
        interface="sub0",
        server_id=ip("198.18.0.1"),
        state_dir=Path("/var/lib/brushtail"),
        offer_hold=30,
        decline_hold=86400,
        metrics_listen=("127.0.0.1", 9967),
        log_level="info",
        pools=(
            Pool(
                name="residential",
                subnet=IPv4Network("198.18.0.0/16"),
                ranges=(AddressRange(ip("198.18.1.0"), ip("198.18.255.254")),),
                routers=(ip("198.18.0.1"),),
                dns_servers=(ip("198.18.0.1"),),
                domain=None,
                lease_time=3600,
                renewal_time=1800,
                rebinding_time=3150,
                exclude=frozenset(),
            ),
        ),
    )


def test_minimal_example_matches_the_dict_the_tests_use() -> None:
    assert load_config(EXAMPLES / "brushtail.yaml") == parse_config(example())


def test_full_example_is_accepted_and_sets_every_key() -> None:
    text = (EXAMPLES / "brushtail-full.yaml").read_text()
    for key in (*TOP_LEVEL_KEYS, *POOL_KEYS, *FASTPATH_KEYS, *LIMITS_KEYS):
        assert f"{key}:" in text, f"{key} is not shown in the full example"
    config = load_config(EXAMPLES / "brushtail-full.yaml")
    assert config.metrics_listen == ("::1", 9967)
    assert config.log_level == "info"
    assert (config.limits.max_leases_per_circuit, config.limits.max_leases_per_vlan) == (4, 0)
    business = next(p for p in config.pools if p.name == "business")
    assert business.domain == "biz.example.net"
    assert (business.renewal_time, business.rebinding_time) == (1800, 3150)
    assert ip("198.51.100.10") in business.exclude
    assert all(ip(f"198.51.100.{n}") in business.exclude for n in range(20, 30))
    vlans = next(p for p in config.pools if p.name == "vlan-subscribers")
    assert vlans.vlans == (VlanRange(1000, 1999), VlanRange(2000, 2000, 1, 4094))


@pytest.mark.parametrize(
    ("lease_time", "t1", "t2"),
    [(3600, 1800, 3150), (1000, 500, 875), (61, 30, 53), (86400, 43200, 75600)],
)
def test_default_timers_are_half_and_seven_eighths_of_the_lease(
    lease_time: int, t1: int, t2: int
) -> None:
    raw = example()
    raw["pools"][0]["lease_time"] = lease_time
    pool = parse_config(raw).pools[0]
    assert (pool.renewal_time, pool.rebinding_time) == (t1, t2)


def test_one_explicit_timer_keeps_the_other_default() -> None:
    raw = example()
    raw["pools"][0]["renewal_time"] = 600
    assert parse_config(raw).pools[0].rebinding_time == 3150
    raw = example()
    raw["pools"][0]["rebinding_time"] = 3500
    assert parse_config(raw).pools[0].renewal_time == 1800


def test_single_addresses_are_accepted_in_ranges_and_exclude() -> None:
    raw = example()
    pool = raw["pools"][0]
    pool["ranges"] = ["198.18.1.0-198.18.1.9", "198.18.2.1", " 198.18.3.0 - 198.18.3.1 "]
    pool["exclude"] = ["198.18.1.5", "198.18.1.7-198.18.1.8"]
    parsed = parse_config(raw).pools[0]
    assert parsed.ranges[1] == AddressRange(ip("198.18.2.1"), ip("198.18.2.1"))
    assert parsed.ranges[2] == AddressRange(ip("198.18.3.0"), ip("198.18.3.1"))
    assert parsed.exclude == {ip("198.18.1.5"), ip("198.18.1.7"), ip("198.18.1.8")}


def test_identical_subnets_form_a_shared_network() -> None:
    raw = example()
    second = copy.deepcopy(raw["pools"][0])
    raw["pools"][0]["ranges"] = ["198.18.1.0-198.18.1.255"]
    second.update(name="business", ranges=["198.18.2.0-198.18.2.255"], lease_time=86400)
    raw["pools"].append(second)
    config = parse_config(raw)
    assert [p.subnet for p in config.pools] == [IPv4Network("198.18.0.0/16")] * 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:9967", ("0.0.0.0", 9967)),
        ("[::]:80", ("::", 80)),
        ("[2001:db8::0001]:65535", ("2001:db8::1", 65535)),
    ],
)
def test_metrics_listen_forms(text: str, expected: tuple[str, int]) -> None:
    raw = example()
    raw["metrics_listen"] = text
    assert parse_config(raw).metrics_listen == expected


# -- one test per class of error ---------------------------------------------------------


def test_missing_required_key() -> None:
    raw = example()
    del raw["site"]
    assert errors_of(raw) == [("site", "required key missing")]


def test_bad_address_names_the_list_item() -> None:
    raw = example()
    raw["pools"][0]["routers"] = ["198.18.0.1", "198.18.0.256"]
    assert errors_of(raw) == [("pools[0].routers[1]", "'198.18.0.256' is not a valid IPv4 address")]


def test_range_outside_subnet() -> None:
    raw = example()
    raw["pools"][0]["ranges"] = ["198.18.1.0-198.18.1.9", "198.19.0.1-198.19.0.9"]
    assert errors_of(raw) == [
        ("pools[0].ranges[1]", "198.19.0.1-198.19.0.9 is not inside subnet 198.18.0.0/16")
    ]


def test_range_start_after_end() -> None:
    raw = example()
    raw["pools"][0]["ranges"] = ["198.18.1.0-198.18.1.9", "198.18.2.0-198.18.1.0"]
    assert errors_of(raw) == [("pools[0].ranges[1]", "start 198.18.2.0 is after end 198.18.1.0")]
    assert str(ConfigError(errors_of(raw))) == (
        "pools[0].ranges[1]: start 198.18.2.0 is after end 198.18.1.0"
    )


def test_overlapping_ranges_across_pools() -> None:
    raw = example()
    raw["pools"].append(
        {
            "name": "business",
            "subnet": "198.18.0.0/16",
            "ranges": ["198.18.0.10-198.18.0.20", "198.18.7.7"],
        }
    )
    assert errors_of(raw) == [
        (
            "pools[1].ranges[1]",
            "198.18.7.7 overlaps pools[0].ranges[0] (198.18.1.0-198.18.255.254)",
        )
    ]


def test_overlapping_ranges_in_one_pool() -> None:
    raw = example()
    raw["pools"][0]["ranges"] = ["198.18.1.0-198.18.1.99", "198.18.1.50-198.18.1.60"]
    assert errors_of(raw) == [
        (
            "pools[0].ranges[1]",
            "198.18.1.50-198.18.1.60 overlaps pools[0].ranges[0] (198.18.1.0-198.18.1.99)",
        )
    ]


def test_renewal_time_not_below_rebinding_time() -> None:
    raw = example()
    raw["pools"][0].update(renewal_time=3000, rebinding_time=3000)
    assert errors_of(raw) == [
        (
            "pools[0].renewal_time",
            "renewal_time (T1) 3000 must be less than rebinding_time (T2) 3000",
        )
    ]


def test_renewal_time_against_default_rebinding_time() -> None:
    raw = example()
    raw["pools"][0]["renewal_time"] = 3200
    assert errors_of(raw) == [
        (
            "pools[0].renewal_time",
            "renewal_time (T1) 3200 must be less than rebinding_time (T2) 3150"
            " (default, 87.5% of lease_time)",
        )
    ]


def test_rebinding_time_against_default_renewal_time() -> None:
    raw = example()
    raw["pools"][0]["rebinding_time"] = 1800
    assert errors_of(raw) == [
        (
            "pools[0].rebinding_time",
            "rebinding_time (T2) 1800 must be greater than renewal_time (T1) 1800"
            " (default, 50% of lease_time)",
        )
    ]


def test_rebinding_time_not_below_lease_time() -> None:
    raw = example()
    raw["pools"][0]["rebinding_time"] = 3600
    assert errors_of(raw) == [
        ("pools[0].rebinding_time", "rebinding_time (T2) 3600 must be less than lease_time 3600")
    ]


def test_unknown_key_is_named_with_a_suggestion() -> None:
    raw = example()
    raw["pools"][0]["lease_tme"] = 7200
    assert errors_of(raw) == [("pools[0].lease_tme", "unknown key; did you mean 'lease_time'?")]


def test_unknown_key_without_a_close_match() -> None:
    raw = example()
    raw["colour"] = "blue"
    assert errors_of(raw) == [("colour", "unknown key")]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("offer_hold", "30s", "expected integer (seconds), got string"),
        ("offer_hold", True, "expected integer (seconds), got boolean"),
        ("decline_hold", 1.5, "expected integer (seconds), got float"),
        ("interface", False, "expected string, got boolean; quote the value"),
        ("site", 1234, "expected string, got integer; quote the value"),
        ("site", None, "expected string, got null"),
        ("pools", {"name": "x"}, "expected list, got mapping"),
    ],
)
def test_wrong_type_names_the_expected_type(key: str, value: object, reason: str) -> None:
    raw = example()
    raw[key] = value
    assert errors_of(raw) == [(key, reason)]


def test_wrong_type_inside_a_pool() -> None:
    raw = example()
    raw["pools"][0]["routers"] = "198.18.0.1"
    raw["pools"][0]["ranges"] = [3]
    assert errors_of(raw) == [
        (
            "pools[0].ranges[0]",
            'expected string "a.b.c.d-e.f.g.h" or "a.b.c.d", got integer; quote the value',
        ),
        ("pools[0].routers", "expected list, got string"),
    ]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "site: edge-a\ninterface: sub0\n  server_id: 198.18.0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        ("line 3, column 12", "invalid YAML: mapping values are not allowed here")
    ]


def test_yaml_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    text = (EXAMPLES / "brushtail.yaml").read_text() + "site: edge-b\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.errors == [
        ("line 12, column 1", "invalid YAML: duplicate key 'site' (first on line 1)")
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", ("<top level>", "the configuration is empty")),
        ("# nothing\n", ("<top level>", "the configuration is empty")),
        ("- site\n", ("<top level>", "expected mapping, got list")),
        ("when: 2024-13-40\n", ("<file>", "invalid YAML value: month must be in 1..12")),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, error: tuple[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.errors == [error]


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"site: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [("<file>", "not UTF-8 text (byte 9)")]


def test_missing_file_is_an_os_error_not_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("site", "Edge_A", "'Edge_A' must be 1-63 characters of a-z, 0-9 and '-'"),
        ("site", "a" * 64, f"'{'a' * 64}' must be 1-63 characters of a-z, 0-9 and '-'"),
        ("interface", "", "'' must be 1-15 bytes long"),
        ("interface", "a" * 16, f"'{'a' * 16}' must be 1-15 bytes long"),
        (
            "interface",
            "eth0:1",
            "'eth0:1' is not a valid interface name (no '/', ':', whitespace, '.' or '..')",
        ),
        (
            "interface",
            "a/b",
            "'a/b' is not a valid interface name (no '/', ':', whitespace, '.' or '..')",
        ),
        (
            "interface",
            "sub\ud800",
            "'sub\\ud800' is not a valid interface name (no '/', ':', whitespace, '.' or '..')",
        ),
        (
            "interface",
            "sub 0",
            "'sub 0' is not a valid interface name (no '/', ':', whitespace, '.' or '..')",
        ),
        ("server_id", "224.0.0.1", "224.0.0.1 is not a unicast address clients can reach"),
        ("server_id", "0.0.0.0", "0.0.0.0 is not a unicast address clients can reach"),
        ("state_dir", "var/lib/brushtail", "'var/lib/brushtail' is not an absolute path"),
        ("offer_hold", 0, "0 is out of range 1..3600"),
        ("offer_hold", 3601, "3601 is out of range 1..3600"),
        ("decline_hold", ONE_YEAR + 1, f"{ONE_YEAR + 1} is out of range 1..{ONE_YEAR}"),
        (
            "metrics_listen",
            "localhost:9967",
            "'localhost:9967' is not 'a.b.c.d:port' or '[ipv6]:port' (port 1-65535)",
        ),
        (
            "metrics_listen",
            "::1:9967",
            "'::1:9967' is not 'a.b.c.d:port' or '[ipv6]:port' (port 1-65535)",
        ),
        (
            "metrics_listen",
            "127.0.0.1:0",
            "'127.0.0.1:0' is not 'a.b.c.d:port' or '[ipv6]:port' (port 1-65535)",
        ),
        ("control_socket", "run/control.sock", "'run/control.sock' is not an absolute path"),
        (
            "control_socket",
            "/run/" + "x" * 103,
            f"'/run/{'x' * 103}' is longer than 107 bytes",
        ),
        ("log_level", "INFO", "'INFO' is not one of debug, info, warning, error"),
        ("pools", [], "must not be empty"),
    ],
)
def test_top_level_value_rules(key: str, value: object, reason: str) -> None:
    raw = example()
    raw[key] = value
    assert errors_of(raw) == [(key, reason)]


@pytest.mark.parametrize(
    ("key", "value", "where", "reason"),
    [
        ("name", "two words", "name", "'two words' must be 1-63 characters of A-Z, a-z, 0-9, "
         "'.', '_', '-'"),
        ("subnet", "198.18.0.1/16", "subnet",
         "'198.18.0.1/16' has host bits set; did you mean 198.18.0.0/16?"),
        ("subnet", "198.18.0.0", "subnet",
         "'198.18.0.0' needs a prefix length, as in 198.18.0.0/16"),
        ("subnet", "198.18.0.0/31", "subnet",
         "198.18.0.0/31 leaves no addresses to lease; use /30 or shorter"),
        ("ranges", [], "ranges", "must not be empty"),
        ("ranges", ["198.18.1.0-198.18.1.5-198.18.1.9"], "ranges[0]",
         "'198.18.1.0-198.18.1.5-198.18.1.9' is not a range a.b.c.d-e.f.g.h"),
        ("routers", ["198.18.255.255"], "routers[0]",
         "198.18.255.255 is the network or broadcast address"),
        ("routers", ["10.0.0.1"], "routers[0]", "10.0.0.1 is not inside subnet 198.18.0.0/16"),
        ("dns_servers", ["dns.example"], "dns_servers[0]",
         "'dns.example' is not a valid IPv4 address"),
        ("domain", "-bad.example", "domain", "'-bad.example' is not a valid DNS name"),
        ("domain", "a..b", "domain", "'a..b' is not a valid DNS name"),
        ("lease_time", 59, "lease_time", f"59 is out of range 60..{ONE_YEAR}"),
        ("exclude", ["198.19.0.1"], "exclude[0]", "198.19.0.1 is not inside subnet 198.18.0.0/16"),
    ],
)  # fmt: skip
def test_pool_value_rules(key: str, value: object, where: str, reason: str) -> None:
    raw = example()
    raw["pools"][0][key] = value
    assert errors_of(raw) == [(f"pools[0].{where}", reason)]


def test_exclude_is_bounded() -> None:
    raw = example()
    raw["pools"][0].update(subnet="198.18.0.0/15", exclude=["198.18.0.0-198.19.0.0"])
    assert errors_of(raw) == [
        (
            "pools[0].exclude",
            f"excludes more than {MAX_EXCLUDED_PER_POOL} addresses; shrink ranges instead",
        )
    ]


def test_duplicate_pool_names() -> None:
    raw = example()
    raw["pools"].append({"name": "residential", "subnet": "10.0.0.0/24", "ranges": ["10.0.0.9"]})
    assert errors_of(raw) == [
        ("pools[1].name", "duplicate pool name 'residential', already used by pools[0]")
    ]


def test_partly_overlapping_subnets() -> None:
    raw = example()
    raw["pools"].append({"name": "business", "subnet": "198.18.0.0/24", "ranges": ["198.18.0.100"]})
    assert errors_of(raw) == [
        (
            "pools[1].subnet",
            "198.18.0.0/24 overlaps 198.18.0.0/16 of pools[0]; "
            "pool subnets must be identical or disjoint",
        )
    ]


def test_every_error_is_reported_at_once() -> None:
    raw = example()
    del raw["interface"]
    raw["server_id"] = "nope"
    raw["pools"][0].update(lease_tme=1, subnet="198.18.0.0/33")
    raw["pools"].append("residential")
    assert errors_of(raw) == [
        ("interface", "required key missing"),
        ("server_id", "'nope' is not a valid IPv4 address"),
        ("pools[0].lease_tme", "unknown key; did you mean 'lease_time'?"),
        (
            "pools[0].subnet",
            "'198.18.0.0/33' is not a valid IPv4 prefix ('33' is not a valid netmask)",
        ),
        ("pools[1]", "expected mapping, got string"),
    ]


# -- properties --------------------------------------------------------------------------

DNS_NAMES = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True
)
IPV4 = st.integers(0, 2**32 - 1)


@st.composite
def valid_configs(draw: st.DrawFn) -> tuple[dict[str, Any], Config]:
    """A raw config dict written the way an operator might, and the Config it must give."""
    raw: dict[str, Any] = {}
    expected: dict[str, Any] = {}

    raw["site"] = expected["site"] = draw(st.from_regex(r"[a-z0-9-]{1,63}", fullmatch=True))
    raw["interface"] = expected["interface"] = draw(
        st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/:"),
                min_size=1, max_size=15).filter(lambda s: s not in (".", ".."))
    )  # fmt: skip
    server_id = draw(st.integers(1 << 24, (224 << 24) - 1).filter(lambda a: a >> 24 != 127))
    raw["server_id"], expected["server_id"] = str(IPv4Address(server_id)), server_id
    if draw(st.booleans()):
        segments = draw(st.lists(st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True), max_size=4))
        raw["state_dir"] = "/" + "/".join(segments)
        expected["state_dir"] = Path(raw["state_dir"])
    if draw(st.booleans()):
        raw["offer_hold"] = expected["offer_hold"] = draw(st.integers(1, 3600))
    if draw(st.booleans()):
        raw["decline_hold"] = expected["decline_hold"] = draw(st.integers(1, ONE_YEAR))
    if draw(st.booleans()):
        port = draw(st.integers(1, 65535))
        host = draw(st.ip_addresses(v=4) | st.ip_addresses(v=6))
        raw["metrics_listen"] = f"[{host}]:{port}" if host.version == 6 else f"{host}:{port}"
        expected["metrics_listen"] = (str(host), port)
    if draw(st.booleans()):
        raw["log_level"] = expected["log_level"] = draw(
            st.sampled_from(["debug", "info", "warning", "error"])
        )

    raw["pools"] = []
    pools: list[Pool] = []
    second_octets = draw(st.lists(st.integers(0, 255), min_size=1, max_size=3, unique=True))
    for octet in second_octets:
        subnet = IPv4Network((ip(f"10.{octet}.0.0"), draw(st.integers(16, 30))))
        base, size = int(subnet.network_address), subnet.num_addresses
        # Disjoint ranges: consecutive pairs of sorted distinct offsets; a lone last one
        # becomes a single-address range.
        cuts = sorted(draw(st.sets(st.integers(0, size - 1), min_size=1, max_size=8)))
        ends = [*cuts, cuts[-1]] if len(cuts) % 2 else cuts
        spans = [(base + ends[i], base + ends[i + 1]) for i in range(0, len(ends), 2)]
        pools_here = draw(st.integers(1, min(2, len(spans))))
        for share in range(pools_here):
            raw_pool, pool = draw(pool_on(subnet, spans[share::pools_here], len(pools)))
            raw["pools"].append(raw_pool)
            pools.append(pool)
    expected["pools"] = tuple(pools)
    return raw, Config(**expected)


@st.composite
def pool_on(
    draw: st.DrawFn, subnet: IPv4Network, spans: list[tuple[int, int]], index: int
) -> tuple[dict[str, Any], Pool]:
    base, size = int(subnet.network_address), subnet.num_addresses

    def span_text(first: int, last: int) -> str:
        if first == last and draw(st.booleans()):
            return str(IPv4Address(first))
        return f"{IPv4Address(first)}-{IPv4Address(last)}"

    name = f"pool{index}"
    raw: dict[str, Any] = {
        "name": name,
        "subnet": str(subnet),
        "ranges": [span_text(*s) for s in spans],
    }
    expected: dict[str, Any] = {
        "name": name,
        "subnet": subnet,
        "ranges": tuple(AddressRange(*s) for s in spans),
    }
    if draw(st.booleans()):
        routers = draw(st.lists(st.integers(base + 1, base + size - 2), max_size=3))
        raw["routers"] = [str(IPv4Address(r)) for r in routers]
        expected["routers"] = tuple(routers)
    if draw(st.booleans()):
        dns = draw(st.lists(IPV4, max_size=3))
        raw["dns_servers"] = [str(IPv4Address(a)) for a in dns]
        expected["dns_servers"] = tuple(dns)
    if draw(st.booleans()):
        raw["domain"] = expected["domain"] = draw(DNS_NAMES)
    lease = draw(st.integers(60, ONE_YEAR))
    if draw(st.booleans()) or lease != 3600:
        raw["lease_time"] = lease
    t1, t2 = lease // 2, lease * 7 // 8
    timers = draw(st.sampled_from(["default", "t1", "t2", "both"]))
    if timers == "t1":
        raw["renewal_time"] = t1 = draw(st.integers(1, t2 - 1))
    elif timers == "t2":
        raw["rebinding_time"] = t2 = draw(st.integers(t1 + 1, lease - 1))
    elif timers == "both":
        raw["renewal_time"] = t1 = draw(st.integers(1, lease - 2))
        raw["rebinding_time"] = t2 = draw(st.integers(t1 + 1, lease - 1))
    expected.update(lease_time=lease, renewal_time=t1, rebinding_time=t2)
    if draw(st.booleans()):
        excluded: set[int] = set()
        raw["exclude"] = []
        for _ in range(draw(st.integers(0, 3))):
            first = draw(st.integers(base, base + size - 1))
            last = draw(st.integers(first, min(first + 64, base + size - 1)))
            raw["exclude"].append(span_text(first, last))
            excluded.update(range(first, last + 1))
        expected["exclude"] = frozenset(excluded)
    return raw, Pool(**expected)


@given(valid_configs())
def test_valid_configs_round_trip(case: tuple[dict[str, Any], Config]) -> None:
    raw, expected = case
    assert parse_config(raw) == expected


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.text(st.characters(exclude_categories=()), max_size=4)  # lone surrogates too
    | st.sampled_from(
        ["198.18.0.1", "198.18.0.0/16", "198.18.1.0-198.18.1.9", "[::1]:1", "sub0", "edge-a"]
    )
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from((*TOP_LEVEL_KEYS, *POOL_KEYS)) | st.text(max_size=8) | st.integers(),
            inner,
            max_size=6,
        )
    ),
    max_leaves=30,
)


def rejects_only_with_config_error(raw: object) -> None:
    try:
        parse_config(raw)
    except ConfigError as exc:
        assert exc.errors, "a ConfigError must say what is wrong"
        assert all(where and reason for where, reason in exc.errors)


@given(JUNK)
def test_junk_raises_only_config_error(raw: object) -> None:
    rejects_only_with_config_error(raw)


@given(valid_configs(), st.data())
def test_one_corrupted_value_raises_only_config_error(
    case: tuple[dict[str, Any], Config], data: st.DataObject
) -> None:
    raw = case[0]
    target = data.draw(st.sampled_from([raw, *raw["pools"]]))
    keys = TOP_LEVEL_KEYS if target is raw else POOL_KEYS
    target[data.draw(st.sampled_from(keys))] = data.draw(JUNK)
    rejects_only_with_config_error(raw)


YAMLISH = st.lists(
    st.sampled_from(
        ["site", "pools", ":", ": ", "- ", "\n", "  ", "[", "]", "{", "}", ",", "'", '"',
         "&a ", "*a", "<<: ", "!!python/object:os.system ", "2024-13-40", "\t", "# c", "?",
         "198.18.0.1", "---\n", "\x00", "\ufeff", "é"]
    ),
    max_size=30,
).map("".join)  # fmt: skip


@given(YAMLISH | st.text(max_size=60))
def test_junk_yaml_raises_only_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("junk") / "brushtail.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.errors


def test_config_error_str_has_one_line_per_error() -> None:
    error = ConfigError([("site", "required key missing"), ("pools[0].name", "bad")])
    assert str(error) == "site: required key missing\npools[0].name: bad"


def test_ipv6_metrics_host_is_normalised() -> None:
    raw = example()
    raw["metrics_listen"] = "[2001:DB8:0:0::1]:9967"
    assert parse_config(raw).metrics_listen == (str(IPv6Address("2001:db8::1")), 9967)


def test_fastpath_defaults_and_every_key() -> None:
    assert parse_config(example()).fastpath == FastPath()
    raw = example()
    raw["fastpath"] = {
        "enabled": False,
        "xdp_mode": "generic",
        "pin_dir": "/sys/fs/bpf/edge-a",
        "max_subscribers": 2_000_000,
        "rate_limit": 0,
        "rate_burst": 5,
        "rate_limit_clients": 4096,
        "relay_rate_limit": 0,
    }
    assert parse_config(raw).fastpath == FastPath(
        False, "generic", Path("/sys/fs/bpf/edge-a"), 2_000_000, 0, 5, 4096, 0
    )


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("enabled", "yes", "expected true or false, got str"),
        ("xdp_mode", "offload", "'offload' is not one of auto, native, generic"),
        ("pin_dir", "/var/lib/brushtail", "is not a directory under /sys/fs/bpf/ (bpffs)"),
        ("pin_dir", "/sys/fs/bpf/../x", "is not a directory under /sys/fs/bpf/ (bpffs)"),
        ("max_subscribers", 10, "10 is out of range 1024..16777216"),
        ("rate_limit", -1, "-1 is out of range 0..1000000"),
        ("rate_burst", 0, "0 is out of range 1..1000000"),
        ("relay_rate_limit", 1_000_001, "1000001 is out of range 0..1000000"),
    ],
)
def test_fastpath_errors_name_the_key(key: str, value: object, reason: str) -> None:
    raw = example()
    raw["fastpath"] = {key: value}
    [(where, got)] = errors_of(raw)
    assert where == f"fastpath.{key}"
    assert reason in got


def test_fastpath_unknown_key() -> None:
    raw = example()
    raw["fastpath"] = {"ratelimit": 5}
    [(where, reason)] = errors_of(raw)
    assert where == "fastpath.ratelimit"
    assert "did you mean 'rate_limit'" in reason


@pytest.mark.parametrize(
    ("written", "parsed"),
    [
        (100, VlanRange(100, 100)),
        ("100", VlanRange(100, 100)),
        ("100-199", VlanRange(100, 199)),
        ("100.7", VlanRange(100, 100, 7, 7)),
        ("100.7-9", VlanRange(100, 100, 7, 9)),
        ("100.*", VlanRange(100, 100, 1, 4094)),
        ("1-4094.*", VlanRange(1, 4094, 1, 4094)),
    ],
)
def test_pool_vlans_take_ids_ranges_and_qinq(written: object, parsed: VlanRange) -> None:
    raw = example()
    raw["pools"][0]["vlans"] = [written]
    assert parse_config(raw).pools[0].vlans == (parsed,)


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (0, "VLAN ids are 1-4094 (0 tags priority, no VLAN)"),
        ("4095", "VLAN ids are 1-4094"),
        ("100.0", "VLAN ids are 1-4094"),
        ("200-100", "VLAN range starts after it ends"),
        ("100.7.1", "is not a VLAN id or range"),
        ("vlan100", "is not a VLAN id or range"),
        (True, "expected VLAN id or range"),
    ],
)
def test_pool_vlans_refuse_what_names_no_vlan(written: object, message: str) -> None:
    raw = example()
    raw["pools"][0]["vlans"] = [written]
    errors = errors_of(raw)
    assert [where for where, _ in errors] == ["pools[0].vlans[0]"]
    assert message in errors[0][1]


def test_one_vlan_in_pools_on_two_subnets_is_refused_naming_both() -> None:
    raw = example()
    other = {**raw["pools"][0], "name": "other", "subnet": "198.19.0.0/16",
             "ranges": ["198.19.1.0-198.19.1.9"], "routers": [], "dns_servers": []}  # fmt: skip
    raw["pools"][0]["vlans"] = ["100-199", "300.*"]
    raw["pools"].append({**other, "vlans": [99, "150", "300.7"]})
    errors = errors_of(raw)
    assert errors == [
        (
            "pools[1].vlans[1]",
            "overlaps pools[0].vlans[0] (VLANs 100-199), a pool of another network",
        ),
        (
            "pools[1].vlans[2]",
            "overlaps pools[0].vlans[1] (VLANs 300.*), a pool of another network",
        ),
    ]
    # On one subnet the two pools are a shared network, VLANs and all.
    raw["pools"][0]["ranges"] = ["198.18.1.0-198.18.1.255"]
    raw["pools"][1] = {**raw["pools"][0], "name": "overflow", "ranges": ["198.18.2.0-198.18.2.9"],
                       "vlans": ["150"]}  # fmt: skip
    assert [p.name for p in parse_config(raw).pools] == ["residential", "overflow"]


def test_trusted_relays_take_addresses_and_prefixes() -> None:
    raw = {**example(), "trusted_relays": ["198.19.0.1", "198.19.8.0/22"]}
    config = parse_config(raw)
    assert config.trusted_relays == (IPv4Network("198.19.0.1/32"), IPv4Network("198.19.8.0/22"))
    assert config.trusts_relay(opt.parse_ip("198.19.11.200"))
    assert not config.trusts_relay(opt.parse_ip("198.19.0.2"))
    assert not parse_config(example()).trusts_relay(opt.parse_ip("198.19.0.1"))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("198.19.8.1/22", "'198.19.8.1/22' has host bits set; did you mean 198.19.8.0/22?"),
        ("198.19.0.256", "'198.19.0.256' is not a valid IPv4 address"),
        (7, "expected string, got integer; quote the value"),
    ],
)
def test_a_bad_trusted_relay_is_refused_by_its_key(value: object, reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({**example(), "trusted_relays": ["198.19.0.1", value]})
    assert refused.value.errors == [("trusted_relays[1]", reason)]


# -- reservations and shared networks ------------------------------------------------------


def with_reservations(*items: dict[str, Any]) -> dict[str, Any]:
    raw = example()
    raw["reservations"] = list(items)
    return raw


def test_reservations_parse_each_identifier() -> None:
    config = parse_config(
        with_reservations(
            {"mac": "52:54:00:AB:cd:ef", "address": "198.18.0.10"},
            {"client_id": "01:52:54:00:00:00:01", "address": "198.18.1.5"},
            {"client_id": "ff00", "address": "198.18.1.6"},
            {"circuit_id": "olt1/1/3:101", "remote_id": "0x0a0b", "address": "198.18.1.7"},
        )
    )
    assert config.reservations == (
        Reservation(ip("198.18.0.10"), mac=bytes.fromhex("525400abcdef")),
        Reservation(ip("198.18.1.5"), client_id=bytes.fromhex("01525400000001")),
        Reservation(ip("198.18.1.6"), client_id=b"\xff\x00"),
        Reservation(ip("198.18.1.7"), circuit_id=b"olt1/1/3:101", remote_id=b"\x0a\x0b"),
    )


def test_a_reservation_carries_options_of_its_own() -> None:
    config = parse_config(
        with_reservations(
            {
                "mac": "52:54:00:00:00:01",
                "address": "198.18.1.5",
                "options": {"ntp-servers": ["198.18.0.123"], "domain-name": "cpe.example.net"},
            }
        )
    )
    [reservation] = config.reservations
    assert reservation.options.as_dict() == {
        15: b"cpe.example.net",
        42: bytes([198, 18, 0, 123]),
    }
    errors = errors_of(
        with_reservations(
            {"mac": "52:54:00:00:00:01", "address": "198.18.1.5", "options": {"ntp": ["x"]}}
        )
    )
    assert [where for where, _ in errors] == ["reservations[0].options.ntp"]


def test_reservation_outside_every_subnet_is_refused() -> None:
    errors = errors_of(with_reservations({"mac": "52:54:00:00:00:01", "address": "203.0.113.9"}))
    assert errors == [
        ("reservations[0].address", "203.0.113.9 is not inside the subnet of any pool")
    ]


@pytest.mark.parametrize(
    ("address", "what"),
    [
        ("198.18.0.0", "the network address of 198.18.0.0/16"),
        ("198.18.255.255", "the broadcast address of 198.18.0.0/16"),
        ("198.18.0.1", "server_id"),
        ("198.18.0.2", "a router of pools[0]"),
    ],
)
def test_reservation_of_an_unusable_address_is_refused(address: str, what: str) -> None:
    raw = with_reservations({"mac": "52:54:00:00:00:01", "address": address})
    raw["pools"][0]["routers"] = ["198.18.0.2"]
    errors = errors_of(raw)
    assert errors == [("reservations[0].address", f"{address} is {what}, which is never leased")]


def test_duplicate_reservations_name_both_places() -> None:
    errors = errors_of(
        with_reservations(
            {"mac": "52:54:00:00:00:01", "address": "198.18.1.5"},
            {"mac": "52:54:00:00:00:01", "address": "198.18.1.6"},
            {"circuit_id": "c1", "address": "198.18.1.5"},
            {"circuit_id": "c1", "remote_id": "r", "address": "198.18.1.7"},
            {"circuit_id": "c1", "address": "198.18.1.8"},
        )
    )
    assert errors == [
        ("reservations[1].mac", "already reserved by reservations[0]"),
        ("reservations[2].address", "already reserved by reservations[0]"),
        ("reservations[4].circuit_id", "already reserved by reservations[2]"),
    ]


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        (
            {"address": "198.18.1.5"},
            ("reservations[0]", "needs exactly one of mac, client_id, circuit_id"),
        ),
        (
            {"mac": "52:54:00:00:00:01", "client_id": "01", "address": "198.18.1.5"},
            (
                "reservations[0]",
                "needs exactly one of mac, client_id, circuit_id, not mac and client_id",
            ),
        ),
        (
            {"mac": "52:54:00:00:00:01", "remote_id": "r", "address": "198.18.1.5"},
            ("reservations[0].remote_id", "only narrows a circuit_id; add circuit_id"),
        ),
        (
            {"mac": "52:54:00:00:01", "address": "198.18.1.5"},
            ("reservations[0].mac", "'52:54:00:00:01' is not a MAC address aa:bb:cc:dd:ee:ff"),
        ),
        (
            {"client_id": "0x1", "address": "198.18.1.5"},
            (
                "reservations[0].client_id",
                "'0x1' is not 1-255 bytes of hex, as in 01:aa:bb:cc:dd:ee:ff",
            ),
        ),
        (
            {"mac": "52:54:00:00:00:01"},
            ("reservations[0].address", "required key missing"),
        ),
        (
            {"mac": "52:54:00:00:00:01", "address": "198.18.1.5", "pool": "x"},
            ("reservations[0].pool", "unknown key"),
        ),
    ],
)
def test_malformed_reservations_name_the_key(entry: dict[str, Any], error: tuple[str, str]) -> None:
    assert errors_of(with_reservations(entry)) == [error]


def test_shared_network_of_different_subnets_is_accepted() -> None:
    raw = example()
    second = {
        "name": "second",
        "subnet": "198.19.0.0/24",
        "ranges": ["198.19.0.10-198.19.0.20"],
        "shared_network": "line-1",
    }
    raw["pools"][0]["shared_network"] = "line-1"
    raw["pools"].append(second)
    config = parse_config(raw)
    assert [p.shared_network for p in config.pools] == ["line-1", "line-1"]


def test_pools_of_one_subnet_in_two_shared_networks_are_refused() -> None:
    raw = example()
    raw["pools"][0]["ranges"] = ["198.18.1.0-198.18.1.255"]
    raw["pools"].append(
        {
            "name": "second",
            "subnet": "198.18.0.0/16",
            "ranges": ["198.18.2.0-198.18.2.255"],
            "shared_network": "a",
        }
    )
    assert errors_of(raw) == [
        (
            "pools[1].shared_network",
            "pools[0] has the same subnet 198.18.0.0/16 and shared_network None; "
            "pools of one subnet share one network",
        )
    ]


def test_a_vlan_id_in_other_digits_is_refused_not_a_crash() -> None:
    raw = example()
    raw["pools"][0]["vlans"] = ["1²"]
    assert [where for where, _ in errors_of(raw)] == ["pools[0].vlans[0]"]
