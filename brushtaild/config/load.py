"""Reading and validating the configuration file: YAML in, a `Config` (model.py) out.

`parse_config` checks everything it can before giving up, so an operator sees every problem
in one run of `brushtail check-config` instead of fixing them one restart at a time. The
daemon's start-up and SIGHUP reload use the same functions, so a file that passes the check
is a file the daemon accepts.
"""

import difflib
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path
from typing import Any, TypeVar

import yaml

from brushtaild.config.model import (
    NO_OPTIONS,
    SITE_NAME_RE,
    AddressRange,
    ClassMatch,
    ClientClass,
    Config,
    FastPath,
    Limits,
    LogLevel,
    MatchKind,
    OptionSet,
    Peer,
    Pool,
    Replication,
    ReplicationTuning,
    Reservation,
    TextMatch,
    VlanRange,
    XdpMode,
    option_set,
)
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import OptionCode

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

# Where brushtaild and brushtail read the configuration when not given --config.
DEFAULT_CONFIG = Path("/etc/brushtail/brushtail.yaml")


class ConfigError(Exception):
    """Every problem found in one configuration file.

    `errors` holds (where, reason) pairs. `where` is a key path such as
    `pools[0].ranges[1]`; for problems found before keys are known (YAML syntax) it is
    `line N, column M`, and `<file>` or `<top level>` when there is nothing more precise.
    """

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__(errors)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(f"{where}: {reason}" for where, reason in self.errors)


# Every key the file may hold is a field of the model, and only those.
TOP_LEVEL_KEYS = tuple(f.name for f in fields(Config))
POOL_KEYS = tuple(f.name for f in fields(Pool))
FASTPATH_KEYS = tuple(f.name for f in fields(FastPath))
LIMITS_KEYS = tuple(f.name for f in fields(Limits))
RESERVATION_KEYS = tuple(f.name for f in fields(Reservation))
CLASS_KEYS = tuple(f.name for f in fields(ClientClass))
MATCH_KEYS = tuple(f.name for f in fields(ClassMatch))
REPLICATION_KEYS = tuple(f.name for f in fields(Replication))
PEER_KEYS = tuple(f.name for f in fields(Peer))
TUNING_KEYS = tuple(f.name for f in fields(ReplicationTuning))
# What identifies a reserved host; exactly one per reservation (remote_id only narrows).
_IDENTIFIERS = ("mac", "client_id", "circuit_id")
BPFFS = "/sys/fs/bpf/"

ONE_YEAR = 365 * 86400
MAX_SOCKET_PATH = 107
# Exclusions are stored expanded, one int per address; a bound keeps a typo such as a
# /8-sized exclude from costing gigabytes. Shrinking `ranges` is the way to carve big holes.
MAX_EXCLUDED_PER_POOL = 65536
MAX_VID = 4094  # 4095 is reserved; 0 tags priority only (802.1p)
# /31 and /32 have no addresses left once network and broadcast are taken out.
LONGEST_PREFIX = 30

_TOP = "<top level>"  # where-label for problems with the document as a whole
_POOL_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,63}")
_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}")
_OUI_RE = re.compile(r"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){2}")
# Characters the kernel's dev_valid_name() refuses in an interface name, besides whitespace.
_IFNAME_FORBIDDEN = frozenset("/:")
_IFNAMSIZ = 16  # including the terminating NUL

# Options by name (`options:`), with their codes.
OPTION_NAMES: dict[str, int] = {
    "routers": OptionCode.ROUTERS,
    "dns-servers": OptionCode.DNS_SERVERS,
    "domain-name": OptionCode.DOMAIN_NAME,
    "interface-mtu": OptionCode.INTERFACE_MTU,
    "ntp-servers": OptionCode.NTP_SERVERS,
    "vendor-specific": OptionCode.VENDOR_SPECIFIC,
    "domain-search": OptionCode.DOMAIN_SEARCH,
    "classless-static-routes": OptionCode.CLASSLESS_STATIC_ROUTE,
}
# Options a pool also gives with keys of its own, written before `options:` existed: the
# option's name -> the pool key (and Pool field).
POOL_OPTION_KEYS = {"routers": "routers", "dns-servers": "dns_servers", "domain-name": "domain"}
# Codes `code-N` may not give, and why: the server writes them from other keys or from the
# request, and a second value would contradict it.
OWNED_CODES: dict[int, str] = {
    OptionCode.PAD: "padding, not an option",
    OptionCode.SUBNET_MASK: "the server sends it from the pool's subnet",
    OptionCode.BROADCAST_ADDRESS: "the server sends it from the pool's subnet",
    OptionCode.REQUESTED_ADDRESS: "only a client sends it",
    OptionCode.LEASE_TIME: "the server sends it from lease_time",
    OptionCode.OVERLOAD: "the server's encoder writes it when options overflow",
    OptionCode.MESSAGE_TYPE: "the server writes the message type",
    OptionCode.SERVER_ID: "the server sends it from server_id",
    OptionCode.PARAMETER_REQUEST_LIST: "only a client sends it",
    OptionCode.MESSAGE: "the server writes it in its NAKs",
    OptionCode.MAX_MESSAGE_SIZE: "only a client sends it",
    OptionCode.RENEWAL_TIME: "the server sends it from renewal_time",
    OptionCode.REBINDING_TIME: "the server sends it from rebinding_time",
    OptionCode.CLIENT_ID: "the server echoes the client's (RFC 6842)",
    OptionCode.RAPID_COMMIT: "the server does no rapid commit (RFC 4039)",
    OptionCode.CLIENT_FQDN: "its answer depends on each client's (RFC 4702)",
    OptionCode.RELAY_AGENT_INFO: "the server echoes the relay's (RFC 3046)",
    OptionCode.SUBNET_SELECTION: "the server echoes the relay's (RFC 3011)",
    OptionCode.END: "the end of the options, not an option",
}
# One option's value: longer ones would be split in two (RFC 3396), which not every
# client joins again.
MAX_OPTION_LEN = 255
_OPTION_CODE_RE = re.compile(r"code-([0-9]{1,3})")
_HEX_RE = re.compile(r"[0-9A-Fa-f]{2}(?::?[0-9A-Fa-f]{2})*")
_ROUTE_RE = re.compile(r"(\S+)\s+via\s+(\S+)")


def _type_name(value: object) -> str:
    """The YAML spelling of a value's type, which is what an operator wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _printable(text: str) -> str:
    """A key as it can appear in a one-line key path."""
    return text if text and text.isprintable() else repr(text)


def _ip(value: int) -> str:
    return str(IPv4Address(value))


def _span_text(first: int, last: int) -> str:
    return _ip(first) if first == last else f"{_ip(first)}-{_ip(last)}"


def _vlans_overlap(a: VlanRange, b: VlanRange) -> bool:
    return (
        a.outer_first <= b.outer_last
        and b.outer_first <= a.outer_last
        and a.inner_first <= b.inner_last
        and b.inner_first <= a.inner_last
    )


def _vlan_text(r: VlanRange) -> str:
    def span(first: int, last: int) -> str:
        return str(first) if first == last else f"{first}-{last}"

    outer = span(r.outer_first, r.outer_last)
    if not r.inner_last:
        return outer
    inner = (
        "*" if (r.inner_first, r.inner_last) == (1, MAX_VID) else span(r.inner_first, r.inner_last)
    )
    return f"{outer}.{inner}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _default(
    cls: type[Config] | type[Pool] | type[FastPath] | type[Replication] | type[Peer], name: str
) -> Any:
    """A dataclass field's default; slotted dataclasses do not keep it as a class attribute."""
    return next(f.default for f in fields(cls) if f.name == name)


@dataclass(slots=True)
class _Span:
    """A parsed lease range, remembered for the overlap check that spans pools."""

    first: int
    last: int
    where: str
    order: int  # position in the file, so the later of two clashing entries is blamed


@dataclass(slots=True)
class _Parser:
    errors: list[tuple[str, str]] = field(default_factory=list)
    ranges: list[_Span] = field(default_factory=list)
    pool_names: dict[str, str] = field(default_factory=dict)
    subnets: list[tuple[IPv4Network, str]] = field(default_factory=list)
    vlan_ranges: list[tuple[VlanRange, IPv4Network | str | None, str]] = field(default_factory=list)
    class_names: dict[str, str] = field(default_factory=dict)
    peer_names: dict[str, str] = field(default_factory=dict)
    peer_endpoints: dict[tuple[IPv4Address, int], str] = field(default_factory=dict)

    def fail(self, where: str, reason: str) -> None:
        self.errors.append((where, reason))

    def wrong_type(self, where: str, expected: str, value: object) -> None:
        got = _type_name(value)
        # YAML turns unquoted yes/no/on/off, numbers and dates into non-strings.
        hint = "; quote the value" if expected.startswith("string") and value is not None else ""
        self.fail(where, f"expected {expected}, got {got}{hint}")

    # -- structure ---------------------------------------------------------------------

    def mapping(self, value: object, where: str, known: tuple[str, ...]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.wrong_type(where or _TOP, "mapping", value)
            return None
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.fail(where or _TOP, f"key {key!r} is not a string")
            elif key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.fail(_join(where, _printable(key)), f"unknown key{hint}")
            else:
                out[key] = item
        return out

    def required(
        self,
        m: Mapping[str, object],
        where: str,
        key: str,
        parse: Callable[[object, str], T | None],
    ) -> T | None:
        path = _join(where, key)
        if key not in m:
            self.fail(path, "required key missing")
            return None
        return parse(m[key], path)

    def optional(
        self,
        m: Mapping[str, object],
        where: str,
        key: str,
        parse: Callable[[object, str], T | None],
        default: T,
    ) -> T | None:
        if key not in m:
            return default
        return parse(m[key], _join(where, key))

    def list_of(
        self, item: Callable[[object, str], T | None], *, non_empty: bool = False
    ) -> Callable[[object, str], tuple[T, ...] | None]:
        def parse(value: object, where: str) -> tuple[T, ...] | None:
            if not isinstance(value, list):
                self.wrong_type(where, "list", value)
                return None
            if non_empty and not value:
                self.fail(where, "must not be empty")
                return None
            items = [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
            parsed = [v for v in items if v is not None]
            return tuple(parsed) if len(parsed) == len(items) else None

        return parse

    # -- scalars -----------------------------------------------------------------------

    def string(self, value: object, where: str) -> str | None:
        if not isinstance(value, str):
            self.wrong_type(where, "string", value)
            return None
        return value

    def integer(
        self, lo: int, hi: int, expected: str = "integer (seconds)"
    ) -> Callable[[object, str], int | None]:
        def parse(value: object, where: str) -> int | None:
            # bool is an int in Python, but `offer_hold: yes` is a mistake, not 1 second.
            if not isinstance(value, int) or isinstance(value, bool):
                self.wrong_type(where, expected, value)
                return None
            if not lo <= value <= hi:
                self.fail(where, f"{value} is out of range {lo}..{hi}")
                return None
            return value

        return parse

    def ipv4(self, value: object, where: str) -> int | None:
        text = self.string(value, where)
        return None if text is None else self._address(text, where)

    def _address(self, text: str, where: str) -> int | None:
        try:
            return int(IPv4Address(text))
        except ValueError:
            self.fail(where, f"{text!r} is not a valid IPv4 address")
            return None

    def address_span(self, value: object, where: str) -> tuple[int, int] | None:
        """`a.b.c.d-e.f.g.h` or a single `a.b.c.d`, as an inclusive (first, last)."""
        if not isinstance(value, str):
            self.wrong_type(where, 'string "a.b.c.d-e.f.g.h" or "a.b.c.d"', value)
            return None
        parts = [p.strip() for p in value.split("-")]
        if len(parts) > 2:
            self.fail(where, f"{value!r} is not a range a.b.c.d-e.f.g.h")
            return None
        ends: list[int] = []
        for part in parts:
            address = self._address(part, where)
            if address is None:
                return None
            ends.append(address)
        first, last = ends[0], ends[-1]
        if first > last:
            self.fail(where, f"start {_ip(first)} is after end {_ip(last)}")
            return None
        return first, last

    # -- top-level keys ----------------------------------------------------------------

    def relay(self, value: object, where: str) -> IPv4Network | None:
        """A relay's address (`a.b.c.d`) or a prefix of them (`a.b.c.d/n`)."""
        text = self.string(value, where)
        if text is None:
            return None
        if "/" in text:
            return self.prefix(text, where)
        address = self._address(text, where)
        return None if address is None else IPv4Network(address)

    def site(self, value: object, where: str) -> str | None:
        text = self.string(value, where)
        if text is not None and not SITE_NAME_RE.fullmatch(text):
            self.fail(where, f"{text!r} must be 1-63 characters of a-z, 0-9 and '-'")
            return None
        return text

    def interface(self, value: object, where: str) -> str | None:
        text = self.string(value, where)
        if text is None:
            return None
        # Non-printable characters (control codes, lone surrogates from YAML escapes) are
        # refused as well: the kernel would take some, but no operator means them.
        if (
            not text.isprintable()
            or text in (".", "..")
            or any(c in _IFNAME_FORBIDDEN or c.isspace() for c in text)
        ):
            self.fail(
                where,
                f"{text!r} is not a valid interface name (no '/', ':', whitespace, '.' or '..')",
            )
        elif not 0 < len(text.encode()) < _IFNAMSIZ:
            self.fail(where, f"{text!r} must be 1-{_IFNAMSIZ - 1} bytes long")
        else:
            return text
        return None

    def server_id(self, value: object, where: str) -> int | None:
        address = self.ipv4(value, where)
        if address is None:
            return None
        ip = IPv4Address(address)
        if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_reserved:
            self.fail(where, f"{ip} is not a unicast address clients can reach")
            return None
        return address

    def state_dir(self, value: object, where: str) -> Path | None:
        text = self.string(value, where)
        if text is None:
            return None
        if "\0" in text or not text.startswith("/"):
            self.fail(where, f"{text!r} is not an absolute path")
            return None
        return Path(text)

    def metrics_listen(self, value: object, where: str) -> tuple[str, int] | None:
        text = self.string(value, where)
        if text is None:
            return None
        host, sep, port = text.rpartition(":")
        address: IPv4Address | IPv6Address | None = None
        try:
            if host.startswith("[") and host.endswith("]"):
                address = IPv6Address(host[1:-1])
            elif sep:
                address = IPv4Address(host)
        except ValueError:
            address = None
        if address is None or not _PORT_RE.fullmatch(port) or not 0 < int(port) < 65536:
            self.fail(
                where,
                f"{text!r} is not 'a.b.c.d:port' or '[ipv6]:port' (port 1-65535)",
            )
            return None
        return str(address), int(port)

    def control_socket(self, value: object, where: str) -> Path | None:
        path = self.state_dir(value, where)
        if path is None:
            return None
        # sun_path holds 108 bytes with the terminating NUL: a longer path cannot be bound.
        if len(str(path).encode()) > MAX_SOCKET_PATH:
            self.fail(where, f"{str(path)!r} is longer than {MAX_SOCKET_PATH} bytes")
            return None
        return path

    def boolean(self, value: object, where: str) -> bool | None:
        if not isinstance(value, bool):
            self.wrong_type(where, "true or false", value)
            return None
        return value

    def fastpath(self, value: object, where: str) -> FastPath | None:
        m = self.mapping(value, where, FASTPATH_KEYS)
        if m is None:
            return None

        def get(key: str, parse: Callable[[object, str], T | None]) -> T | None:
            return self.optional(m, where, key, parse, _default(FastPath, key))

        values = {
            "enabled": get("enabled", self.boolean),
            "xdp_mode": get("xdp_mode", self.xdp_mode),
            "pin_dir": get("pin_dir", self.pin_dir),
            "max_subscribers": get("max_subscribers", self.count(1024, 16_777_216)),
            "rate_limit": get("rate_limit", self.count(0, 1_000_000)),
            "rate_burst": get("rate_burst", self.count(1, 1_000_000)),
            "rate_limit_clients": get("rate_limit_clients", self.count(1024, 16_777_216)),
            "relay_rate_limit": get("relay_rate_limit", self.count(0, 1_000_000)),
        }
        if any(v is None for v in values.values()):
            return None
        return FastPath(**values)  # type: ignore[arg-type]

    def limits(self, value: object, where: str) -> Limits | None:
        m = self.mapping(value, where, LIMITS_KEYS)
        if m is None:
            return None
        values = {
            key: self.optional(m, where, key, self.count(0, 16_777_216), 0) for key in LIMITS_KEYS
        }
        if any(v is None for v in values.values()):
            return None
        return Limits(**values)  # type: ignore[arg-type]

    def count(self, lo: int, hi: int) -> Callable[[object, str], int | None]:
        return self.integer(lo, hi, "integer")

    def xdp_mode(self, value: object, where: str) -> XdpMode | None:
        return self.choice(XdpMode, value, where)

    def pin_dir(self, value: object, where: str) -> Path | None:
        path = self.state_dir(value, where)
        if path is None:
            return None
        if not str(path).startswith(BPFFS) or ".." in path.parts:
            self.fail(where, f"{str(path)!r} is not a directory under {BPFFS} (bpffs)")
            return None
        return path

    def log_level(self, value: object, where: str) -> LogLevel | None:
        return self.choice(LogLevel, value, where)

    def choice(self, kind: type[E], value: object, where: str) -> E | None:
        text = self.string(value, where)
        if text is None:
            return None
        try:
            return kind(text)
        except ValueError:
            self.fail(where, f"{text!r} is not one of {', '.join(kind)}")
            return None

    def config(self, raw: object) -> Config | None:
        if raw is None:  # what YAML makes of an empty or all-comment file
            self.fail(_TOP, "the configuration is empty")
            return None
        m = self.mapping(raw, "", TOP_LEVEL_KEYS)
        if m is None:
            return None
        site = self.required(m, "", "site", self.site)
        interface = self.required(m, "", "interface", self.interface)
        server_id = self.required(m, "", "server_id", self.server_id)
        state_dir = self.optional(m, "", "state_dir", self.state_dir, _default(Config, "state_dir"))
        offer_hold = self.optional(
            m, "", "offer_hold", self.integer(1, 3600), _default(Config, "offer_hold")
        )
        decline_hold = self.optional(
            m, "", "decline_hold", self.integer(1, ONE_YEAR), _default(Config, "decline_hold")
        )
        metrics_listen = self.optional(
            m, "", "metrics_listen", self.metrics_listen, _default(Config, "metrics_listen")
        )
        control_socket = self.optional(
            m, "", "control_socket", self.control_socket, _default(Config, "control_socket")
        )
        log_level = self.optional(m, "", "log_level", self.log_level, _default(Config, "log_level"))
        fastpath = self.optional(m, "", "fastpath", self.fastpath, FastPath())
        pools = self.required(m, "", "pools", self.list_of(self.pool, non_empty=True))
        trusted_relays = self.optional(
            m, "", "trusted_relays", self.list_of(self.relay), _default(Config, "trusted_relays")
        )
        reservations = self.optional(
            m, "", "reservations", self.list_of(self.reservation), _default(Config, "reservations")
        )
        limits = self.optional(m, "", "limits", self.limits, Limits())
        self.check_across_pools()
        if pools is not None:
            self.check_shared_networks(pools)
            if reservations is not None and server_id is not None:
                self.check_reservations(pools, reservations, server_id)
        self.check_vlans_across_pools()
        classes = self.optional(
            m, "", "classes", self.list_of(self.client_class), _default(Config, "classes")
        )
        replication = self.optional(
            m, "", "replication", lambda v, w: self.replication(v, w, site), None
        )
        if (
            site is None
            or interface is None
            or server_id is None
            or state_dir is None
            or offer_hold is None
            or decline_hold is None
            or metrics_listen is None
            or control_socket is None
            or log_level is None
            or fastpath is None
            or pools is None
            or trusted_relays is None
            or reservations is None
            or classes is None
            or limits is None
        ):
            return None
        return Config(
            site=site,
            interface=interface,
            server_id=server_id,
            pools=pools,
            state_dir=state_dir,
            offer_hold=offer_hold,
            decline_hold=decline_hold,
            metrics_listen=metrics_listen,
            control_socket=control_socket,
            log_level=log_level,
            fastpath=fastpath,
            trusted_relays=trusted_relays,
            reservations=reservations,
            classes=classes,
            limits=limits,
            replication=replication,
        )

    # -- replication -------------------------------------------------------------------

    def replication(self, value: object, where: str, site: str | None) -> Replication | None:
        m = self.mapping(value, where, REPLICATION_KEYS)
        if m is None:
            return None
        reported = len(self.errors)

        def get(key: str, parse: Callable[[object, str], T | None]) -> T | None:
            return self.optional(m, where, key, parse, _default(Replication, key))

        peers = self.required(
            m, where, "peers", self.list_of(lambda v, w: self.peer(v, w, site), non_empty=True)
        )
        listen = get("listen", self.endpoint)
        ca, certificate, key = (get(name, self.state_dir) for name in ("ca", "certificate", "key"))
        crl = get("crl", self.state_dir)
        tuning = self.optional(m, where, "tuning", self.tuning, ReplicationTuning())
        if (
            len(self.errors) > reported
            or peers is None
            or listen is None
            or ca is None
            or certificate is None
            or key is None
            or tuning is None
        ):
            return None
        return Replication(peers, listen, ca, certificate, key, crl, tuning)

    def endpoint(self, value: object, where: str) -> tuple[IPv4Address, int] | None:
        """`a.b.c.d:port`, IPv4 only: one socket serves every peer."""
        text = self.string(value, where)
        if text is None:
            return None
        host, _, port = text.rpartition(":")
        try:
            address = IPv4Address(host)
        except ValueError:
            address = None
        if address is None or not _PORT_RE.fullmatch(port) or not 0 < int(port) < 65536:
            self.fail(where, f"{text!r} is not 'a.b.c.d:port' (port 1-65535)")
            return None
        return address, int(port)

    def peer(self, value: object, where: str, site: str | None) -> Peer | None:
        m = self.mapping(value, where, PEER_KEYS)
        if m is None:
            return None
        name = self.required(m, where, "site", self.site)
        address = self.required(m, where, "address", self.ipv4)
        port = self.optional(
            m, where, "port", self.integer(1, 65535, "integer"), _default(Peer, "port")
        )
        if name is not None:
            if name == site:
                self.fail(f"{where}.site", f"{name!r} is this site (`site`), not a peer")
                name = None
            elif name in self.peer_names:
                first = self.peer_names[name]
                self.fail(f"{where}.site", f"duplicate peer {name!r}, already used by {first}")
                name = None
            else:
                self.peer_names[name] = where
        if address is not None:
            ip = IPv4Address(address)
            if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
                self.fail(f"{where}.address", f"{ip} is not a unicast address")
                address = None
        if name is None or address is None or port is None:
            return None
        endpoint = (IPv4Address(address), port)
        if endpoint in self.peer_endpoints:
            self.fail(
                f"{where}.address",
                f"{endpoint[0]}:{port} is already {self.peer_endpoints[endpoint]}; "
                "one peer per address and port",
            )
            return None
        self.peer_endpoints[endpoint] = where
        return Peer(name, *endpoint)

    def tuning(self, value: object, where: str) -> ReplicationTuning | None:
        m = self.mapping(value, where, TUNING_KEYS)
        if m is None:
            return None
        values: dict[str, int | None] = {}
        for f in fields(ReplicationTuning):
            lo, hi = f.metadata["range"]
            parse = self.integer(lo, hi, f.metadata["unit"])
            default: int = f.default  # type: ignore[assignment]  # every field has one
            values[f.name] = self.optional(m, where, f.name, parse, default)
        if any(v is None for v in values.values()):
            return None
        return ReplicationTuning(**values)  # type: ignore[arg-type]

    # -- pools -------------------------------------------------------------------------

    def name(self, value: object, where: str) -> str | None:
        text = self.string(value, where)
        if text is not None and not _POOL_NAME_RE.fullmatch(text):
            self.fail(where, f"{text!r} must be 1-63 characters of A-Z, a-z, 0-9, '.', '_', '-'")
            return None
        return text

    def pool_name(self, value: object, where: str) -> str | None:
        return self.unique_name(value, where, "pool", self.pool_names)

    def unique_name(self, value: object, where: str, kind: str, seen: dict[str, str]) -> str | None:
        """A `name` no earlier `kind` has; `seen` maps names to where they were given."""
        text = self.name(value, where)
        if text is None:
            return None
        if text in seen:
            first = seen[text].removesuffix(".name")
            self.fail(where, f"duplicate {kind} name {text!r}, already used by {first}")
            return None
        seen[text] = where
        return text

    def prefix(self, text: str, where: str) -> IPv4Network | None:
        try:
            return IPv4Network(text, strict=True)
        except ValueError as exc:
            try:
                # Only host bits were wrong: name the prefix the operator most likely meant.
                loose = IPv4Network(text, strict=False)
                self.fail(where, f"{text!r} has host bits set; did you mean {loose}?")
            except ValueError:
                self.fail(where, f"{text!r} is not a valid IPv4 prefix ({exc})")
            return None

    def subnet(self, value: object, where: str) -> IPv4Network | None:
        text = self.string(value, where)
        if text is None:
            return None
        if "/" not in text:
            self.fail(where, f"{text!r} needs a prefix length, as in 198.18.0.0/16")
            return None
        subnet = self.prefix(text, where)
        if subnet is None:
            return None
        if subnet.prefixlen > LONGEST_PREFIX:
            self.fail(
                where,
                f"{subnet} leaves no addresses to lease; use /{LONGEST_PREFIX} or shorter",
            )
            return None
        self.subnets.append((subnet, where))
        return subnet

    def inside(self, subnet: IPv4Network | None, span: tuple[int, int], where: str) -> bool:
        if subnet is None:  # already reported; nothing to check against
            return True
        if int(subnet.network_address) <= span[0] and span[1] <= int(subnet.broadcast_address):
            return True
        self.fail(where, f"{_span_text(*span)} is not inside subnet {subnet}")
        return False

    def pool(self, value: object, where: str) -> Pool | None:
        m = self.mapping(value, where, POOL_KEYS)
        if m is None:
            return None
        name = self.required(m, where, "name", self.pool_name)
        subnet = self.required(m, where, "subnet", self.subnet)

        def in_subnet_span(value: object, item_where: str) -> AddressRange | None:
            span = self.address_span(value, item_where)
            if span is None or not self.inside(subnet, span, item_where):
                return None
            return AddressRange(*span)

        def leasable_range(value: object, item_where: str) -> AddressRange | None:
            span = in_subnet_span(value, item_where)
            if span is not None:
                self.ranges.append(_Span(span.first, span.last, item_where, len(self.ranges)))
            return span

        ranges = self.required(m, where, "ranges", self.list_of(leasable_range, non_empty=True))

        def exclusions(value: object, item_where: str) -> frozenset[int] | None:
            spans = self.list_of(in_subnet_span)(value, item_where)
            return None if spans is None else self.expand(spans, item_where)

        raw_options = m.get("options", {})
        if not isinstance(raw_options, dict):
            raw_options = {}  # reported by self.options below
        routers = self.pool_option(
            m, raw_options, where, "routers", self.list_of(self.on_link(subnet))
        )
        dns_servers = self.pool_option(
            m, raw_options, where, "dns-servers", self.list_of(self.ipv4)
        )
        domain = self.pool_option(m, raw_options, where, "domain-name", self.domain)

        def other_options(value: object, item_where: str) -> OptionSet | None:
            # The three of POOL_OPTION_KEYS are the pool's fields, read above.
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in POOL_OPTION_KEYS}
            return self.options(value, item_where, subnet, routers or ())

        options = self.optional(m, where, "options", other_options, _default(Pool, "options"))
        excluded = self.optional(m, where, "exclude", exclusions, _default(Pool, "exclude"))
        lease_time = self.optional(
            m, where, "lease_time", self.integer(60, ONE_YEAR), _default(Pool, "lease_time")
        )
        timers = self.timers(m, where, lease_time)
        shared_network = self.optional(m, where, "shared_network", self.name, None)
        vlans = self.optional(
            m, where, "vlans", self.list_of(self.vlan_range), _default(Pool, "vlans")
        )
        if vlans:
            network = shared_network or subnet
            self.vlan_ranges += [(r, network, f"{where}.vlans[{i}]") for i, r in enumerate(vlans)]
        if (
            name is None
            or subnet is None
            or ranges is None
            or routers is None
            or dns_servers is None
            or options is None
            or excluded is None
            or lease_time is None
            or timers is None
            or vlans is None
        ):
            return None
        return Pool(
            name=name,
            subnet=subnet,
            ranges=ranges,
            routers=routers,
            dns_servers=dns_servers,
            domain=domain,
            lease_time=lease_time,
            renewal_time=timers[0],
            rebinding_time=timers[1],
            exclude=excluded,
            options=options,
            shared_network=shared_network,
            vlans=vlans,
        )

    def pool_option(
        self,
        m: Mapping[str, object],
        raw_options: Mapping[object, object],
        where: str,
        name: str,
        parse: Callable[[object, str], T | None],
    ) -> T | None:
        """One of the options a pool also gives with a key of its own (POOL_OPTION_KEYS),
        from whichever of the two places names it; both is a contradiction."""
        key = POOL_OPTION_KEYS[name]
        if name not in raw_options:
            return self.optional(m, where, key, parse, _default(Pool, key))
        path = f"{where}.options.{name}"
        if key in m:
            self.fail(path, f"also given as {where}.{key}; give one of them")
            return None
        return parse(raw_options[name], path)

    # -- VLANs -------------------------------------------------------------------------

    def vlan_range(self, value: object, where: str) -> VlanRange | None:
        """`100`, `100-199`, `100.7`, `100.7-9`, `100.*` or `100-199.*`: the outer VLAN
        id(s), then for QinQ the inner one(s), `*` for any."""
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.wrong_type(where, 'VLAN id or range ("100", "100-199", "100.7", "100.*")', value)
            return None
        outer_text, dot, inner_text = value.partition(".")
        outer = self.vid_span(outer_text, value, where)
        if outer is None:
            return None
        if not dot:
            return VlanRange(*outer)
        inner = (
            (1, MAX_VID) if inner_text.strip() == "*" else self.vid_span(inner_text, value, where)
        )
        return None if inner is None else VlanRange(*outer, *inner)

    def vid_span(self, text: str, value: str, where: str) -> tuple[int, int] | None:
        parts = [p.strip() for p in text.split("-")]
        # isdigit() alone takes "²" and other digits int() refuses: ASCII only.
        if len(parts) > 2 or not all(p.isascii() and p.isdigit() for p in parts):
            self.fail(where, f"{value!r} is not a VLAN id or range (100, 100-199, 100.7, 100.*)")
            return None
        first, last = int(parts[0]), int(parts[-1])
        if not (1 <= first <= MAX_VID and 1 <= last <= MAX_VID):
            self.fail(where, f"{value!r}: VLAN ids are 1-{MAX_VID} (0 tags priority, no VLAN)")
            return None
        if first > last:
            self.fail(where, f"{value!r}: VLAN range starts after it ends")
            return None
        return first, last

    def check_vlans_across_pools(self) -> None:
        """A VLAN is one link: two pools may both list it only as one shared network (the
        same subnet or `shared_network`); otherwise the client's pool would depend on file
        order."""
        for i, (a, a_network, a_where) in enumerate(self.vlan_ranges):
            for b, b_network, b_where in self.vlan_ranges[:i]:
                if a_network == b_network or not _vlans_overlap(a, b):
                    continue
                self.fail(
                    a_where,
                    f"overlaps {b_where} (VLANs {_vlan_text(b)}), a pool of another network",
                )

    def domain(self, value: object, where: str) -> str | None:
        text = self.string(value, where)
        if text is None:
            return None
        labels = text.split(".")
        if len(text) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
            self.fail(where, f"{text!r} is not a valid DNS name")
            return None
        return text

    # -- options -----------------------------------------------------------------------

    def options(
        self,
        value: object,
        where: str,
        subnet: IPv4Network | None = None,
        routers: tuple[int, ...] = (),
    ) -> OptionSet | None:
        """An `options:` mapping: names from OPTION_NAMES and `code-N` (N of no name and
        not in OWNED_CODES). `subnet` is the link the options go to when the level has one
        (a pool): routers given there must be on it. `routers` are the level's option 3
        given elsewhere, for the check RFC 3442 calls for."""
        if not isinstance(value, dict):
            self.wrong_type(where, "mapping", value)
            return None
        encoded: dict[int, bytes] = {}
        ok = True
        for key, item in value.items():
            path = _join(where, _printable(str(key)))
            code = self.option_code(key, path)
            raw = None if code is None else self.option_value(code, item, path, subnet)
            if raw is not None and len(raw) > MAX_OPTION_LEN:
                self.fail(path, f"is {len(raw)} bytes encoded; one option holds {MAX_OPTION_LEN}")
                raw = None
            if code is None or raw is None:
                ok = False
                continue
            encoded[code] = raw
        if not ok:
            return None
        self.default_route(encoded, routers, where)
        return option_set(encoded)

    def option_code(self, key: object, where: str) -> int | None:
        if not isinstance(key, str):
            hint = f"; write code-{key} for option {key}" if isinstance(key, int) else ""
            self.fail(where, f"option key {key!r} is not a string{hint}")
            return None
        if key in OPTION_NAMES:
            return OPTION_NAMES[key]
        numbered = _OPTION_CODE_RE.fullmatch(key)
        if numbered is None:
            close = difflib.get_close_matches(key, OPTION_NAMES, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "or code-N for option N"
            self.fail(where, f"unknown option name; one of {', '.join(OPTION_NAMES)}, {hint}")
            return None
        code = int(numbered[1])
        named = next((name for name, c in OPTION_NAMES.items() if c == code), None)
        if named is not None:
            self.fail(where, f"option {code} has a name: write it as {named!r}")
        elif code in OWNED_CODES:
            self.fail(where, f"option {code} cannot be configured: {OWNED_CODES[code]}")
        elif not 0 < code < OptionCode.END:
            self.fail(where, f"option code {code} is out of range 1..254")
        else:
            return code
        return None

    def option_value(
        self, code: int, value: object, where: str, subnet: IPv4Network | None
    ) -> bytes | None:
        match code:
            case OptionCode.ROUTERS:
                routers = self.list_of(self.on_link(subnet), non_empty=True)(value, where)
                return None if routers is None else opt.ips(routers)
            case OptionCode.DNS_SERVERS | OptionCode.NTP_SERVERS:
                servers = self.list_of(self.ipv4, non_empty=True)(value, where)
                return None if servers is None else opt.ips(servers)
            case OptionCode.DOMAIN_NAME:
                name = self.domain(value, where)
                return None if name is None else name.encode("ascii")
            case OptionCode.DOMAIN_SEARCH:
                names = self.list_of(self.domain, non_empty=True)(value, where)
                return None if names is None else opt.domain_search(names)
            case OptionCode.INTERFACE_MTU:
                # RFC 2132 5.1: 68 is the smallest MTU an IPv4 link may have.
                mtu = self.integer(68, 65535, "integer")(value, where)
                return None if mtu is None else opt.u16(mtu)
            case OptionCode.CLASSLESS_STATIC_ROUTE:
                routes = self.list_of(self.route(subnet), non_empty=True)(value, where)
                return None if routes is None else opt.classless_routes(routes)
            case OptionCode.VENDOR_SPECIFIC:
                if isinstance(value, dict):
                    return self.sub_options(value, where)
                return self.hex(value, where)
        return self.hex(value, where)

    def on_link(self, subnet: IPv4Network | None) -> Callable[[object, str], int | None]:
        """An address a client reaches directly: inside `subnet`, not its network or
        broadcast address (any address when the level has no subnet)."""

        def parse(value: object, where: str) -> int | None:
            address = self.ipv4(value, where)
            if address is None or not self.inside(subnet, (address, address), where):
                return None
            if subnet is not None and address in (
                int(subnet.network_address),
                int(subnet.broadcast_address),
            ):
                self.fail(where, f"{_ip(address)} is the network or broadcast address")
                return None
            return address

        return parse

    def route(
        self, subnet: IPv4Network | None
    ) -> Callable[[object, str], tuple[int, int, int] | None]:
        """`prefix via router`, as (destination, prefix length, router): the router on the
        link, or 0.0.0.0 for a destination reached on the link itself."""
        gateway = self.on_link(subnet)

        def parse(value: object, where: str) -> tuple[int, int, int] | None:
            text = self.string(value, where)
            if text is None:
                return None
            matched = _ROUTE_RE.fullmatch(text.strip())
            if matched is None or "/" not in matched[1]:
                self.fail(where, f"{text!r} is not 'a.b.c.d/n via e.f.g.h'")
                return None
            prefix = self.prefix(matched[1], where)
            if matched[2] == "0.0.0.0":
                router: int | None = 0
            else:
                router = gateway(matched[2], where)
            if prefix is None or router is None:
                return None
            return int(prefix.network_address), prefix.prefixlen, router

        return parse

    def default_route(
        self, encoded: dict[int, bytes], routers: tuple[int, ...], where: str
    ) -> None:
        """RFC 3442: a client given option 121 ignores option 3. Routers next to routes
        without a default route would leave such clients without one."""
        routes = encoded.get(OptionCode.CLASSLESS_STATIC_ROUTE)
        has_routers = routers or OptionCode.ROUTERS in encoded
        if (
            routes is None
            or not has_routers
            or any(length == 0 for _, length, _ in opt.decode_classless_routes(routes))
        ):
            return
        self.fail(
            _join(where, "classless-static-routes"),
            "has no default route (0.0.0.0/0), and clients given option 121 ignore routers"
            " (RFC 3442): add '0.0.0.0/0 via' the router",
        )

    def hex(self, value: object, where: str) -> bytes | None:
        if not isinstance(value, str) or not _HEX_RE.fullmatch(value):
            # YAML reads unquoted 0104 as a number, and 0a0b as a string.
            hint = "; quote the value" if isinstance(value, int) else ""
            self.fail(where, f"expected hex bytes such as '0a0b' or '0a:0b', got {value!r}{hint}")
            return None
        return bytes.fromhex(value.replace(":", ""))

    def sub_options(self, value: dict[Any, Any], where: str) -> bytes | None:
        """Option 43 as sub-option code -> hex value (RFC 2132 8.4; 0 and 255 are pad and
        end there too)."""
        subs: list[tuple[int, bytes]] = []
        for key, item in value.items():
            path = f"{where}[{key!r}]"
            sub = self.integer(1, 254, "sub-option code 1..254")(key, path)
            raw = self.hex(item, path)
            if sub is not None and raw is not None:
                if len(raw) > MAX_OPTION_LEN:
                    self.fail(path, f"is {len(raw)} bytes; a sub-option holds {MAX_OPTION_LEN}")
                    return None
                subs.append((sub, raw))
        if len(subs) != len(value) or not subs:
            if not value:
                self.fail(where, "must not be empty")
            return None
        return opt.build_sub_options(subs)

    def expand(self, spans: tuple[AddressRange, ...], where: str) -> frozenset[int] | None:
        if sum(s.last - s.first + 1 for s in spans) > MAX_EXCLUDED_PER_POOL:
            self.fail(
                where,
                f"excludes more than {MAX_EXCLUDED_PER_POOL} addresses; shrink ranges instead",
            )
            return None
        return frozenset(a for s in spans for a in range(s.first, s.last + 1))

    def timers(
        self, m: Mapping[str, object], where: str, lease_time: int | None
    ) -> tuple[int, int] | None:
        """T1 and T2, explicit or derived from lease_time as RFC 2131 section 4.4.5 says."""
        t1 = self.optional(m, where, "renewal_time", self.integer(1, ONE_YEAR), None)
        t2 = self.optional(m, where, "rebinding_time", self.integer(1, ONE_YEAR), None)
        t1_set, t2_set = "renewal_time" in m, "rebinding_time" in m
        if lease_time is None or (t1_set and t1 is None) or (t2_set and t2 is None):
            return None
        if t1 is None:
            t1 = lease_time // 2
        if t2 is None:
            t2 = lease_time * 7 // 8
        if t1 >= t2:
            # Blame the value the operator wrote, and say where the other one came from.
            if t1_set:
                other = "" if t2_set else " (default, 87.5% of lease_time)"
                self.fail(
                    f"{where}.renewal_time",
                    f"renewal_time (T1) {t1} must be less than rebinding_time (T2) {t2}{other}",
                )
            else:
                self.fail(
                    f"{where}.rebinding_time",
                    f"rebinding_time (T2) {t2} must be greater than renewal_time (T1) {t1}"
                    " (default, 50% of lease_time)",
                )
            return None
        if t2 >= lease_time:
            self.fail(
                f"{where}.rebinding_time",
                f"rebinding_time (T2) {t2} must be less than lease_time {lease_time}",
            )
            return None
        return t1, t2

    # -- reservations ------------------------------------------------------------------

    def mac(self, value: object, where: str) -> bytes | None:
        text = self.string(value, where)
        if text is not None and not _MAC_RE.fullmatch(text):
            self.fail(where, f"{text!r} is not a MAC address aa:bb:cc:dd:ee:ff")
            return None
        return None if text is None else bytes.fromhex(text.replace(":", "").replace("-", ""))

    def hex_bytes(self, value: object, where: str) -> bytes | None:
        """Hex digits, in pairs optionally separated by ':' (01:aa:bb or 01aabb)."""
        text = self.string(value, where)
        if text is None:
            return None
        if not _HEX_RE.fullmatch(text) or len(text.replace(":", "")) > 2 * 255:
            self.fail(where, f"{text!r} is not 1-255 bytes of hex, as in 01:aa:bb:cc:dd:ee:ff")
            return None
        return bytes.fromhex(text.replace(":", ""))

    def agent_id(self, value: object, where: str) -> bytes | None:
        """An option 82 sub-option's value: its text, or its bytes written `0x` + hex."""
        text = self.string(value, where)
        if text is None:
            return None
        if text.startswith("0x"):
            return self.hex_bytes(text[2:], where)
        raw = text.encode()
        if not 0 < len(raw) <= 255:
            self.fail(where, f"{text!r} must be 1-255 bytes long")
            return None
        return raw

    def reservation(self, value: object, where: str) -> Reservation | None:
        m = self.mapping(value, where, RESERVATION_KEYS)
        if m is None:
            return None
        address = self.required(m, where, "address", self.ipv4)
        given = [key for key in _IDENTIFIERS if key in m]
        if len(given) != 1:
            self.fail(
                where,
                f"needs exactly one of {', '.join(_IDENTIFIERS)}"
                + (f", not {' and '.join(given)}" if given else ""),
            )
        if "remote_id" in m and "circuit_id" not in m:
            self.fail(_join(where, "remote_id"), "only narrows a circuit_id; add circuit_id")
        mac = self.optional(m, where, "mac", self.mac, None)
        client_id = self.optional(m, where, "client_id", self.hex_bytes, None)
        circuit_id = self.optional(m, where, "circuit_id", self.agent_id, None)
        remote_id = self.optional(m, where, "remote_id", self.agent_id, None)
        options = self.optional(m, where, "options", self.options, NO_OPTIONS)
        if (
            address is None
            or len(given) != 1
            or (mac or client_id or circuit_id) is None
            or options is None
        ):
            return None
        return Reservation(address, mac, client_id, circuit_id, remote_id, options)

    # -- classes -----------------------------------------------------------------------

    def client_class(self, value: object, where: str) -> ClientClass | None:
        m = self.mapping(value, where, CLASS_KEYS)
        if m is None:
            return None
        name = self.required(m, where, "name", self.class_name)
        match = self.optional(m, where, "match", self.class_match, ClassMatch())
        every_pool: tuple[str, ...] = ()
        pools = self.optional(
            m, where, "pools", self.list_of(self.pool_ref, non_empty=True), every_pool
        )
        lease_time = self.optional(m, where, "lease_time", self.integer(60, ONE_YEAR), None)
        timers: tuple[int, int] | None = (0, 0)
        if "lease_time" in m:
            timers = self.timers(m, where, lease_time)
        else:
            for key in ("renewal_time", "rebinding_time"):
                if key in m:
                    self.fail(_join(where, key), "needs the class's lease_time")
                    timers = None
        options = self.optional(m, where, "options", self.options, NO_OPTIONS)
        if name is None or match is None or pools is None or timers is None or options is None:
            return None
        return ClientClass(name, match, pools, lease_time, *timers, options)

    def class_name(self, value: object, where: str) -> str | None:
        return self.unique_name(value, where, "class", self.class_names)

    def pool_ref(self, value: object, where: str) -> str | None:
        """A pool's name; pools come before classes in the model, so they are known."""
        text = self.string(value, where)
        if text is not None and text not in self.pool_names:
            close = difflib.get_close_matches(text, self.pool_names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.fail(where, f"no pool is named {text!r}{hint}")
            return None
        return text

    def class_match(self, value: object, where: str) -> ClassMatch | None:
        m = self.mapping(value, where, MATCH_KEYS)
        if m is None:
            return None
        reported = len(self.errors)
        match = ClassMatch(
            circuit_id=self.optional(m, where, "circuit_id", self.text_match, None),
            remote_id=self.optional(m, where, "remote_id", self.text_match, None),
            vendor_class=self.optional(m, where, "vendor_class", self.text_match, None),
            mac=self.optional(m, where, "mac", self.mac, None),
            oui=self.optional(m, where, "oui", self.oui, None),
            vlans=self.optional(
                m, where, "vlans", self.list_of(self.vlan_range, non_empty=True), ()
            )
            or (),
            relay=self.optional(m, where, "relay", self.relay, None),
        )
        return None if len(self.errors) > reported else match

    def oui(self, value: object, where: str) -> bytes | None:
        text = self.string(value, where)
        if text is not None and not _OUI_RE.fullmatch(text):
            self.fail(where, f"{text!r} is not an OUI aa:bb:cc (the MAC's first 3 bytes)")
            return None
        return None if text is None else bytes.fromhex(text.replace(":", "").replace("-", ""))

    def text_match(self, value: object, where: str) -> TextMatch | None:
        """`{exact: TEXT}`, `{prefix: TEXT}` or `{regex: PATTERN}`; TEXT as a relay's
        sub-option is written in reservations (`0x` + hex for raw bytes)."""
        kinds = tuple(MatchKind)
        reported = len(self.errors)
        m = self.mapping(value, where, kinds)
        if m is None or len(self.errors) > reported:
            return None
        if len(m) != 1:
            self.fail(where, f"needs exactly one of {', '.join(kinds)}")
            return None
        [(key, item)] = m.items()
        path = _join(where, key)
        kind = MatchKind(key)
        if kind is not MatchKind.REGEX:
            raw = self.agent_id(item, path)
            return None if raw is None else TextMatch(kind, raw)
        text = self.string(item, path)
        if text is None:
            return None
        try:
            pattern = re.compile(text.encode())
        except re.error as exc:
            self.fail(path, f"{text!r} is not a regular expression ({exc})")
            return None
        return TextMatch(kind, text.encode(), pattern)

    def check_reservations(
        self, pools: tuple[Pool, ...], reservations: tuple[Reservation, ...], server_id: int
    ) -> None:
        """Each address inside some pool's subnet and leasable there; no address and no
        identifier reserved twice (the second would never be served)."""
        seen: dict[tuple[str, bytes | int | None, bytes | None], str] = {}
        for i, r in enumerate(reservations):
            where = f"reservations[{i}]"
            owners = [(j, p) for j, p in enumerate(pools) if IPv4Address(r.address) in p.subnet]
            if not owners:
                self.fail(
                    f"{where}.address",
                    f"{_ip(r.address)} is not inside the subnet of any pool",
                )
            else:
                pool = owners[0][1]
                net = pool.subnet
                unusable = {
                    **{a: f"a router of pools[{k}]" for k, p in owners for a in p.routers},
                    int(net.network_address): f"the network address of {net}",
                    int(net.broadcast_address): f"the broadcast address of {net}",
                    server_id: "server_id",
                }
                if r.address in unusable:
                    self.fail(
                        f"{where}.address",
                        f"{_ip(r.address)} is {unusable[r.address]}, which is never leased",
                    )
            keys: list[tuple[str, tuple[str, bytes | int | None, bytes | None]]] = [
                ("address", ("address", r.address, None))
            ]
            for name in _IDENTIFIERS:
                ident: bytes | None = getattr(r, name)
                if ident is not None:
                    narrow = r.remote_id if name == "circuit_id" else None
                    keys.append((name, (name, ident, narrow)))
            for name, key in keys:
                if key in seen:
                    self.fail(f"{where}.{name}", f"already reserved by {seen[key]}")
                else:
                    seen[key] = where

    def check_shared_networks(self, pools: tuple[Pool, ...]) -> None:
        """Pools with one subnet are one network: they cannot sit in two shared networks."""
        first: dict[IPv4Network, int] = {}
        for i, pool in enumerate(pools):
            j = first.setdefault(pool.subnet, i)
            if pools[j].shared_network != pool.shared_network:
                self.fail(
                    f"pools[{i}].shared_network",
                    f"pools[{j}] has the same subnet {pool.subnet} and shared_network "
                    f"{pools[j].shared_network!r}; pools of one subnet share one network",
                )

    def check_across_pools(self) -> None:
        # Partly overlapping subnets would give one address two netmasks and two broadcast
        # addresses; identical subnets are one shared network split into several pools.
        for i, (a, a_where) in enumerate(self.subnets):
            for b, b_where in self.subnets[i + 1 :]:
                if a != b and a.overlaps(b):
                    self.fail(
                        b_where,
                        f"{b} overlaps {a} of {a_where.removesuffix('.subnet')}; "
                        "pool subnets must be identical or disjoint",
                    )
        # Sorted by start, a range overlaps an earlier one exactly when it starts at or
        # before the furthest end seen so far.
        furthest: _Span | None = None
        for span in sorted(self.ranges, key=lambda s: (s.first, s.order)):
            if furthest is not None and span.first <= furthest.last:
                earlier, later = sorted((furthest, span), key=lambda s: s.order)
                self.fail(
                    later.where,
                    f"{_span_text(later.first, later.last)} overlaps {earlier.where} "
                    f"({_span_text(earlier.first, earlier.last)})",
                )
            if furthest is None or span.last > furthest.last:
                furthest = span


def parse_config(raw: object) -> Config:
    """Validate a YAML-loaded object; raises ConfigError listing every problem found."""
    parser = _Parser()
    config = parser.config(raw)
    # The None checks inside the parser only narrow types; the error list is what decides,
    # since an invalid optional value (a bad `domain`, say) can leave a plausible object.
    if parser.errors or config is None:
        raise ConfigError(parser.errors or [(_TOP, "invalid configuration")])
    return config


_YAML_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML silently resolves to the
    last one: a second `pools:` would otherwise drop every pool above it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first_seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            # Merge keys (`<<: *defaults`) are meant to be overridden; complex keys are
            # left to PyYAML, which rejects them as unhashable.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _YAML_MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            if key in first_seen:
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key_node.value!r} (first on line {first_seen[key]})",
                    problem_mark=key_node.start_mark,
                )
            first_seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _yaml_error(exc: yaml.YAMLError) -> ConfigError:
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return ConfigError([("<file>", f"invalid YAML: {exc}")])
    mark = exc.problem_mark
    reason = f"invalid YAML: {exc.problem}"
    if exc.context and exc.context_mark is not None:
        reason += f" ({exc.context} on line {exc.context_mark.line + 1})"
    return ConfigError([(f"line {mark.line + 1}, column {mark.column + 1}", reason)])


def load_config(path: Path) -> Config:
    """Read and validate a YAML file. OSError (missing, unreadable) passes through untouched
    so callers can tell "cannot read" from "read, but wrong"; anything wrong with the
    contents raises ConfigError."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([("<file>", f"not UTF-8 text (byte {exc.start})")]) from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) from None
    except ValueError as exc:
        # PyYAML's constructors raise plain ValueError for values that match a YAML type
        # but cannot exist, such as the date 2024-13-40.
        raise ConfigError([("<file>", f"invalid YAML value: {exc}")]) from None
    except RecursionError:
        raise ConfigError([("<file>", "invalid YAML: nested too deeply")]) from None
    return parse_config(raw)


def load_daemon_config(path: Path, now: datetime | None = None) -> Config:
    """`load_config`, and then the files `replication` names: present, readable, the key
    private to its owner, the certificate ours and issued by the CA (pki.check_site_files).
    What the daemon runs with, at start-up and at each reload. `brushtail check-config` and
    the commands that read a setting use load_config, which needs none of the files, so a
    file can be checked away from the site it is for.
    `now` (naive UTC) is when the certificate must be valid; default the wall clock."""
    config = load_config(path)
    replication = config.replication
    if replication is None:
        return config
    # Imported here: cryptography is needed only by a site that replicates.
    from brushtaild.replication.pki import check_site_files

    problems = check_site_files(
        config.site,
        replication.ca,
        replication.certificate,
        replication.key,
        replication.crl,
        now or datetime.now(UTC).replace(tzinfo=None),
    )
    if problems:
        raise ConfigError([(f"replication.{key}", reason) for key, reason in problems])
    return config
