"""The fast path's map layouts, mirrored from bpf/shared.h, and how leases become entries.

Pure: no BCC and no kernel here, so the layouts and the conversions are unit-tested
anywhere. tests/bpf/test_layout.py checks every struct and number against the C that BCC
compiles, so the two sides cannot drift apart silently.
"""

import ctypes
import struct
from dataclasses import dataclass
from enum import IntEnum

MAX_CLIENT_ID = 32
TEMPLATE_MAX = 192
MAX_TEMPLATES = 4096  # in use at once
TEMPLATE_SLOTS = 2 * MAX_TEMPLATES  # the array's size: room for a rebuild
MAX_RELAYS = 4096
LATENCY_BUCKETS = 32
PRL_ABSENT = 0
PRL_MAX = 64
LEASE_HW_ID = 1
LEASE_BY_VLAN = 2
LEASE_UNICAST_ONLY = 4

CFG_SERVER_ID = 0
CFG_RATE_COST = 1
CFG_RATE_BURST = 2
CFG_SERVER_MAC = 3
CFG_RELAY_COST = 4
CFG_IFINDEX = 5
CFG_RENEWAL_LAYOUT = 6
CFG_TRACE_COST = 7
CFG_TRACE_MAC = 8
CFG_TRACE_RESULTS = 9
CFG_SLOTS = 10
# Slots of the per-CPU array `trace_lost`.
TRACE_LOST_RATE = 0
TRACE_LOST_FULL = 1
TRACE_LOST_SLOTS = 2

_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_U64 = (1 << 64) - 1


class Result(IntEnum):
    """What the program did with a DHCP packet (enum bt_result); metric labels."""

    OFFER = 0
    ACK = 1
    NOT_DHCP = 2
    UNPARSED = 3
    MISS = 4
    EXPIRED = 5
    IDENTITY = 6
    NETWORK = 7
    MESSAGE = 8
    REQUEST_MISMATCH = 9
    PRL = 10
    TOO_BIG = 11
    EVENT_FULL = 12
    NO_ROOM = 13
    NO_TEMPLATE = 14
    RATE_LIMIT = 15
    MALFORMED = 16
    SELECTOR = 17
    PRIORITY_TAG = 18  # no longer counted; the number stays taken (bpf/shared.h)
    LINK_BUDGET = 19
    RELAY = 20
    CAP = 21  # a roaming client's lease would run past its entry's cap (cap_ns)

    @property
    def label(self) -> str:
        return self.name.lower()


RESULTS = 22
# struct bt_rate_key.kind
RATE_SENDER = 0
RATE_LINK = 1
ANSWERED = (Result.OFFER, Result.ACK)
# Passes that mean "no usable entry for this client": the cache missed. Other passes found
# an entry but the request itself belongs to the slow path.
# A relay the program has no next hop for is one too, and so is a roaming client's entry
# whose cap its lease would pass.
CACHE_MISSES = (
    Result.MISS,
    Result.EXPIRED,
    Result.IDENTITY,
    Result.PRL,
    Result.NO_TEMPLATE,
    Result.RELAY,
    Result.CAP,
)


class ClientKey(ctypes.Structure):
    _fields_ = (
        ("mac", ctypes.c_uint8 * 6),
        ("outer_vlan", ctypes.c_uint16),
        ("inner_vlan", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    )


class RateKey(ctypes.Structure):
    """Whom the program charges a request to (struct bt_rate_key)."""

    _fields_ = (
        ("mac", ctypes.c_uint8 * 6),  # the frame's L2 source
        ("outer_vlan", ctypes.c_uint16),
        ("inner_vlan", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("giaddr", ctypes.c_uint32),  # network order; 0 for a client on the link
        ("saddr", ctypes.c_uint32),  # the IP source, network order (0.0.0.0 before DHCP)
        ("kind", ctypes.c_uint32),  # RATE_SENDER, or RATE_LINK: a link's new subscribers
        ("circuit", ctypes.c_uint64),  # hash of option 82's circuit-id, or 0
    )


class RelayKey(ctypes.Structure):
    """A relay as its requests name it (struct bt_relay_key)."""

    _fields_ = (
        ("giaddr", ctypes.c_uint32),  # network order
        ("outer_vlan", ctypes.c_uint16),
        ("inner_vlan", ctypes.c_uint16),
    )


class Relay(ctypes.Structure):
    """Where a relay's replies go (struct bt_relay)."""

    _fields_ = (
        ("next_hop", ctypes.c_uint8 * 6),  # MAC
        ("trusted", ctypes.c_uint8),  # its link selection (82 sub-option 5) is honoured
        ("pad", ctypes.c_uint8),
    )


class LeaseEntry(ctypes.Structure):
    _fields_ = (
        ("expires_ns", ctypes.c_uint64),
        ("cap_ns", ctypes.c_uint64),  # 0, or the latest a roaming client's lease may run
        ("prl_hash", ctypes.c_uint64),
        ("address", ctypes.c_uint32),  # network order, as every address in the maps
        ("subnet", ctypes.c_uint32),
        ("netmask", ctypes.c_uint32),
        ("lease_time", ctypes.c_uint32),
        ("offer_template", ctypes.c_uint16),
        ("ack_template", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("id_len", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
        ("client_id", ctypes.c_uint8 * MAX_CLIENT_ID),
    )


class Template(ctypes.Structure):
    _fields_ = (
        ("len", ctypes.c_uint16),
        ("csum", ctypes.c_uint16),
        ("options", ctypes.c_uint8 * TEMPLATE_MAX),
    )


class Renewal(ctypes.Structure):
    _fields_ = (
        ("key", ClientKey),
        ("address", ctypes.c_uint32),
        ("expires_ns", ctypes.c_uint64),
    )


class TraceEvent(ctypes.Structure):
    """One traced request (struct bt_trace)."""

    _fields_ = (
        ("time_ns", ctypes.c_uint64),  # CLOCK_BOOTTIME
        ("latency_ns", ctypes.c_uint64),  # answered ones only
        ("mac", ctypes.c_uint8 * 6),  # chaddr, zero if not well-formed
        ("outer_vlan", ctypes.c_uint16),
        ("inner_vlan", ctypes.c_uint16),
        ("result", ctypes.c_uint8),  # Result
        ("action", ctypes.c_uint8),  # XDP_DROP, XDP_PASS, XDP_TX
        ("giaddr", ctypes.c_uint32),  # network order
        ("address", ctypes.c_uint32),  # the lease's if answered, else ciaddr or option 50
        ("msg_type", ctypes.c_uint8),  # option 53, 0 if not read
        ("pad", ctypes.c_uint8 * 3),
    )


class Bucket(ctypes.Structure):
    _fields_ = (("last_ns", ctypes.c_uint64), ("credit_ns", ctypes.c_uint64))


# The same layouts as struct formats, to build a million entries without a ctypes object
# each (tests/unit/test_xdp_maps.py checks they match the ctypes mirrors).
KEY_FORMAT = struct.Struct("<6sHHH")
ENTRY_FORMAT = struct.Struct(f"<QQQIIIIHHBB2x{MAX_CLIENT_ID}s")


def net32(value: int) -> int:
    """A host-order IPv4 address as the u32 the maps hold (network byte order in memory)."""
    return int.from_bytes(value.to_bytes(4, "big"), "little")


def host32(value: int) -> int:
    return int.from_bytes(value.to_bytes(4, "little"), "big")


def prl_hash(prl: bytes | None) -> int:
    """bpf/brushtail.c's hash_bytes() of option 55: 64-bit FNV-1a over the length, then the
    list zero-padded to 64 bytes, 8 bytes (little-endian words) a step; never PRL_ABSENT."""
    if prl is None:
        return PRL_ABSENT
    padded = prl.ljust(PRL_MAX, b"\0")
    h = ((_FNV64_OFFSET ^ len(prl)) * _FNV64_PRIME) & _U64
    for i in range(0, PRL_MAX, 8):
        h = ((h ^ int.from_bytes(padded[i : i + 8], "little")) * _FNV64_PRIME) & _U64
    return h or 1


@dataclass(frozen=True, slots=True)
class Key:
    """A client as the program looks it up: its chaddr, on its VLANs (0 = untagged)."""

    mac: bytes
    outer_vlan: int = 0
    inner_vlan: int = 0

    def packed(self) -> bytes:
        return KEY_FORMAT.pack(self.mac, self.outer_vlan, self.inner_vlan, 0)

    @property
    def vlans(self) -> tuple[int, ...]:
        """The VLAN ids as the slow path holds them (Ingress.vlans, Lease.vlans)."""
        return tuple(vid for vid in (self.outer_vlan, self.inner_vlan) if vid)

    def ctype(self) -> ClientKey:
        return ClientKey.from_buffer_copy(self.packed())

    @classmethod
    def from_ctype(cls, key: ClientKey) -> "Key":
        return cls(bytes(key.mac), key.outer_vlan, key.inner_vlan)


def hardware_identity(client_id: bytes, hwaddr: bytes) -> bool:
    """Whether `client_id` is the htype 1 + chaddr identity the engine gives a client that
    sends no option 61 (so such a request matches the entry too)."""
    return client_id == b"\x01" + hwaddr


def fits(client_id: bytes, prl: bytes | None) -> bool:
    """Whether a client can have an entry at all: longer identities and request lists than
    the program compares stay on the slow path."""
    return 0 < len(client_id) <= MAX_CLIENT_ID and (prl is None or len(prl) <= PRL_MAX)


@dataclass(frozen=True, slots=True)
class Shape:
    """What an entry takes from its pool and templates, shared by every lease of one pool
    whose client asked for one request list."""

    subnet: int  # network order, as stored
    netmask: int
    lease_time: int
    prl_hash: int
    offer_template: int
    ack_template: int


def pack_entry(
    shape: Shape,
    *,
    client_id: bytes,
    hwaddr: bytes,
    address: int,
    expires_ns: int,
    flags: int = 0,
    cap_ns: int = 0,
) -> bytes:
    """The entry of one lease; `flags` are LEASE_BY_VLAN and LEASE_UNICAST_ONLY, as its
    lease calls for (LEASE_HW_ID follows from `client_id`); `cap_ns` a roaming client's
    cap (0: none)."""
    return ENTRY_FORMAT.pack(
        expires_ns,
        cap_ns,
        shape.prl_hash,
        net32(address),
        shape.subnet,
        shape.netmask,
        shape.lease_time,
        shape.offer_template,
        shape.ack_template,
        flags | (LEASE_HW_ID if hardware_identity(client_id, hwaddr) else 0),
        len(client_id),
        client_id,
    )


def lease_entry(shape: Shape, **lease: object) -> LeaseEntry:
    return LeaseEntry.from_buffer_copy(pack_entry(shape, **lease))  # type: ignore[arg-type]


def partial_csum(data: bytes) -> int:
    """The 16-bit one's complement sum of `data` as the program adds it up: 16-bit words
    in the CPU's (little-endian) byte order, an odd byte padded with zero, folded."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def template(options: bytes) -> Template:
    """A template as the program copies it: zero after the options, and with their partial
    checksum, so the reply's UDP checksum never has to read them back."""
    if len(options) > TEMPLATE_MAX:
        raise ValueError(f"{len(options)} bytes of options, the program copies {TEMPLATE_MAX}")
    t = Template()
    t.len = len(options)
    t.csum = partial_csum(options)
    ctypes.memmove(t.options, options, len(options))
    return t
