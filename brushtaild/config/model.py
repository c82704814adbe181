"""The configuration as the rest of brushtail sees it: frozen dataclasses, already validated.

Nothing here reads files or YAML; `brushtaild.config.load` builds these objects and is the
only place that knows the file format, so the engine can import the model and stay sans-IO.
docs/CONFIG.md describes every field; its defaults are the ones written here.
"""

import re
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

# Where the daemon listens for the `brushtail` command, and where the command looks first.
DEFAULT_CONTROL_SOCKET = Path("/run/brushtail/control.sock")
# What a site may be called (`site`, `replication.peers[].site`, a certificate's CN).
SITE_NAME_RE = re.compile(r"[a-z0-9-]{1,63}")
# Replication's UDP port (DTLS), the same on every site unless a peer says otherwise.
DEFAULT_REPLICATION_PORT = 6767
# What the brushtail_pki Ansible role installs on each site (its vars/main.yml).
PKI_DIR = Path("/etc/brushtail/pki")


class XdpMode(StrEnum):
    """How the XDP program is attached (`fastpath.xdp_mode`)."""

    AUTO = "auto"  # native where the driver has it, else generic
    NATIVE = "native"  # in the NIC driver, before an skb exists
    GENERIC = "generic"  # after the kernel has built an skb; any interface


class LogLevel(StrEnum):
    """Lowest severity logged (`log_level`); the values are the `logging` names, lower case."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class AddressRange:
    first: int  # host-order IPv4, inclusive
    last: int  # inclusive


@dataclass(frozen=True, slots=True)
class OptionSet:
    """DHCP options one level of the config gives (`options:` in docs/CONFIG.md), each
    value already encoded as it goes on the wire, in ascending code order.

    Levels are combined by `merge_options`, later levels winning per option code. The
    documented precedence is pool < class < reservation: a reply carries the pool's options,
    overridden by its client's class, overridden by its client's reservation."""

    values: tuple[tuple[int, bytes], ...] = ()

    def as_dict(self) -> dict[int, bytes]:
        return dict(self.values)


NO_OPTIONS = OptionSet()


def option_set(values: dict[int, bytes]) -> OptionSet:
    return OptionSet(tuple(sorted(values.items())))


def merge_options(*levels: OptionSet) -> OptionSet:
    """The options of `levels` in precedence order, lowest first: per code, the last
    level that gives a value wins (no level removes an option another gave)."""
    merged: dict[int, bytes] = {}
    for level in levels:
        merged.update(level.values)
    return option_set(merged)


@dataclass(frozen=True, slots=True)
class VlanRange:
    """Requests that came on these VLANs (`pools[].vlans`): an outer VLAN id in
    outer_first..outer_last and, for QinQ, an inner one in inner_first..inner_last; an
    inner range of 0..0 means one tag only. IDs are 1-4094 (a VID-0 tag names no VLAN)."""

    outer_first: int
    outer_last: int
    inner_first: int = 0
    inner_last: int = 0

    def matches(self, vlans: tuple[int, ...]) -> bool:
        outer, inner = (*vlans, 0, 0)[:2]
        return (
            bool(vlans)
            and self.outer_first <= outer <= self.outer_last
            and self.inner_first <= inner <= self.inner_last
        )


@dataclass(frozen=True, slots=True)
class Pool:
    name: str  # unique; stored with each lease and labels per-pool metrics
    subnet: IPv4Network  # the clients' link; its mask and broadcast go out as options 1, 28
    ranges: tuple[AddressRange, ...]  # what may be leased; disjoint across all pools
    routers: tuple[int, ...] = ()  # option 3, in order of preference
    dns_servers: tuple[int, ...] = ()  # option 6, in order of preference
    domain: str | None = None  # option 15; None sends no option
    lease_time: int = 3600  # seconds, option 51
    renewal_time: int = 1800  # T1 (option 58), default 50% of lease_time
    rebinding_time: int = 3150  # T2 (option 59), default 87.5% of lease_time
    exclude: frozenset[int] = frozenset()  # addresses inside `ranges` never leased
    # Pools naming one shared network serve one link together, whatever their subnets:
    # tried in file order, so the next takes over when one is exhausted. Pools with the
    # same subnet are one shared network even without a name.
    shared_network: str | None = None
    # Every other option by name or code (`options:`). Never 3, 6 or 15: the loader puts
    # `options.routers`, `dns-servers` and `domain-name` in the fields above.
    options: OptionSet = NO_OPTIONS
    # The VLANs whose clients (not relayed) this pool serves; empty: the link's own
    # clients, untagged or on VLANs no pool lists (docs/CONFIG.md, "vlans").
    vlans: tuple[VlanRange, ...] = ()

    def serves_vlans(self, vlans: tuple[int, ...]) -> bool:
        return any(r.matches(vlans) for r in self.vlans)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A host's fixed address (`reservations:`), for the one client its identifier names.

    Exactly one of `mac`, `client_id` and `circuit_id` is set; `remote_id` narrows a
    `circuit_id` (option 82 sub-options 1 and 2 of a relayed request). The address is
    served from the pool whose ranges hold it, else the first pool whose subnet does.
    `options` override the pool's for this host (the reservation level of OptionSet).
    """

    address: int  # host-order IPv4
    mac: bytes | None = None  # chaddr, 6 bytes
    client_id: bytes | None = None  # option 61 as sent, or htype + chaddr (RFC 2132 9.14)
    circuit_id: bytes | None = None
    remote_id: bytes | None = None
    options: OptionSet = NO_OPTIONS


class MatchKind(StrEnum):
    """How a class compares a request's text (`classes[].match`)."""

    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"  # re.search over the bytes: anchor with ^ and $ to match the whole


@dataclass(frozen=True, slots=True)
class TextMatch:
    """One textual condition of a class: option 82's circuit-id or remote-id, option 60."""

    kind: MatchKind
    value: bytes  # the text, or for REGEX the pattern, as bytes
    pattern: re.Pattern[bytes] | None = None  # compiled, for REGEX

    def matches(self, data: bytes | None) -> bool:
        if data is None:
            return False
        if self.kind is MatchKind.EXACT:
            return data == self.value
        if self.kind is MatchKind.PREFIX:
            return data.startswith(self.value)
        return self.pattern is not None and self.pattern.search(data) is not None


@dataclass(frozen=True, slots=True)
class ClassMatch:
    """What a request must show to be in a class: every condition given holds."""

    circuit_id: TextMatch | None = None  # option 82 sub-option 1, of a relayed request
    remote_id: TextMatch | None = None  # option 82 sub-option 2, of a relayed request
    vendor_class: TextMatch | None = None  # option 60
    mac: bytes | None = None  # chaddr
    oui: bytes | None = None  # chaddr's first 3 bytes
    vlans: tuple[VlanRange, ...] = ()  # the request's VLANs (a relay's, for a relayed one)
    relay: IPv4Network | None = None  # giaddr; 0.0.0.0 (not relayed) never matches

    @property
    def by_relay(self) -> bool:
        """Whether a condition is on what a relay adds to a request (option 82, giaddr)."""
        return any(c is not None for c in (self.circuit_id, self.remote_id, self.relay))


@dataclass(frozen=True, slots=True)
class ClientClass:
    """A kind of subscriber (`classes:`): the first whose `match` holds is the client's.

    `pools` narrows the network's pools to these, in this order (empty: all of them);
    `lease_time` and its timers override the pool's; `options` override the pool's, and
    a reservation's override these (OptionSet's precedence)."""

    name: str
    match: ClassMatch
    pools: tuple[str, ...] = ()
    lease_time: int | None = None
    renewal_time: int = 0  # T1 and T2 with lease_time (as a pool's); 0 without
    rebinding_time: int = 0
    options: OptionSet = NO_OPTIONS

    @property
    def shapes_replies(self) -> bool:
        """Whether replies to its clients differ from the pool's (a profile of its own)."""
        return self.lease_time is not None or bool(self.options.values)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bound leases and outstanding offers one access line may have (0: no bound), against
    hoarding and DISCOVER floods: a client past one is not offered or given an address
    (docs/CONFIG.md, `limits`). A field is named `max_{leases,offers}_per_{line kind}`;
    the lease table reads the kind from the name (lease_table.access_lines)."""

    max_leases_per_circuit: int = 0  # option 82 circuit-id (sub-option 1)
    max_leases_per_remote_id: int = 0  # option 82 remote-id (sub-option 2)
    max_leases_per_vlan: int = 0  # the VLAN ids the requests came on, outer.inner
    max_offers_per_relay: int = 0  # the relay's address (giaddr)
    max_offers_per_circuit: int = 0  # option 82 circuit-id
    max_offers_per_vlan: int = 0  # the VLAN ids, as for leases


@dataclass(frozen=True, slots=True)
class FastPath:
    """The XDP fast path (docs/CONFIG.md, `fastpath:`)."""

    enabled: bool = True  # load and attach the program; False runs the slow path alone
    xdp_mode: XdpMode = XdpMode.AUTO
    pin_dir: Path = Path("/sys/fs/bpf/brushtail")  # under bpffs, so the maps outlive us
    max_subscribers: int = 1_048_576  # lease entries the kernel map holds
    rate_limit: int = 10  # requests per second per client (L2 source) or access line; 0: off
    rate_burst: int = 20  # requests a client may send at once after a quiet spell
    rate_limit_clients: int = 65_536  # token buckets kept (LRU)
    relay_rate_limit: int = 1000  # requests per second per relay (L2 source + giaddr); 0: off


@dataclass(frozen=True, slots=True)
class Peer:
    """Another site of the cluster (`replication.peers`): its certificate must name `site`,
    and it sends from, and is reached at, `address`:`port`."""

    site: str
    address: IPv4Address
    port: int = DEFAULT_REPLICATION_PORT


def _tunable(default: int, lo: int, hi: int, unit: str = "integer") -> int:
    """A field of ReplicationTuning: the loader checks it against lo..hi, with no code of
    its own per field."""
    value: int = field(default=default, metadata={"range": (lo, hi), "unit": unit})
    return value


@dataclass(frozen=True, slots=True)
class ReplicationTuning:
    """The replication core's knobs (`replication.tuning`). A field added here is a key of
    the file at once: the loader reads every field, bounded by its `_tunable` range."""

    block_size: int = _tunable(256, 16, 65_536)  # addresses in one owned block
    # Seconds a site that does not own an address may extend its lease past the last
    # replicated expiry; the owner waits as long before reusing it.
    extension_bound: int = _tunable(600, 60, 86_400, "integer (seconds)")
    anti_entropy_interval: int = _tunable(30, 1, 3600, "integer (seconds)")


@dataclass(frozen=True, slots=True)
class Replication:
    """Leases shared with the other sites over mutual-TLS DTLS (`replication:`); the
    certificate files default to what the brushtail_pki role installs."""

    peers: tuple[Peer, ...]  # non-empty; names unique and not our own `site`
    listen: tuple[IPv4Address, int] = (IPv4Address("0.0.0.0"), DEFAULT_REPLICATION_PORT)
    ca: Path = PKI_DIR / "ca.crt"  # the cluster CA: the only one trusted
    certificate: Path = PKI_DIR / "site.crt"  # ours, naming our `site`
    key: Path = PKI_DIR / "site.key"  # its private key; no access for group or others
    crl: Path | None = None  # revoked certificates, signed by the CA; None: no revocation
    tuning: ReplicationTuning = ReplicationTuning()


@dataclass(frozen=True, slots=True)
class Config:
    site: str  # short name of this edge site; labels logs and metrics
    interface: str  # where the server listens and the XDP program is attached
    server_id: int  # option 54 and the replies' source address, host-order IPv4
    pools: tuple[Pool, ...]  # tried in file order for a client's network
    state_dir: Path = Path("/var/lib/brushtail")  # the lease store
    offer_hold: int = 30  # seconds an OFFERed address stays reserved for that client
    decline_hold: int = 86400  # seconds a DECLINEd address stays quarantined
    metrics_listen: tuple[str, int] = ("127.0.0.1", 9967)  # Prometheus endpoint (host, port)
    control_socket: Path = DEFAULT_CONTROL_SOCKET  # the `brushtail` command's way in
    log_level: LogLevel = LogLevel.INFO
    fastpath: FastPath = FastPath()
    # Relays (giaddr) whose subnet and link selection (option 118, option 82 sub-option 5)
    # choose the client's pool; from any other sender those options are ignored.
    trusted_relays: tuple[IPv4Network, ...] = ()
    reservations: tuple[Reservation, ...] = ()  # fixed addresses, never handed to others
    classes: tuple[ClientClass, ...] = ()  # tried in file order; the first that matches
    limits: Limits = Limits()
    replication: Replication | None = None  # None: a single site, nothing replicated

    def trusts_relay(self, giaddr: int) -> bool:
        address = IPv4Address(giaddr)
        return any(address in prefix for prefix in self.trusted_relays)
