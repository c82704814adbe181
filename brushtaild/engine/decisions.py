"""What the engine decides, as values the I/O edges carry out.

The engine never touches a socket, a clock or the disk: it returns a Decision, and the daemon
writes `lease_writes` durably before it sends any reply that depends on them.
"""

from dataclasses import dataclass, field
from enum import Enum

from brushtaild.dhcp.message import Message
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.leases import Lease


@dataclass(frozen=True, slots=True)
class Ingress:
    """Where and how a request arrived, as seen below the DHCP layer."""

    ifindex: int
    src_mac: bytes
    src_ip: int
    dst_ip: int
    vlans: tuple[int, ...] = ()  # VLAN ids, outer first; priority tags (VID 0) name none
    tags: bytes = b""  # the 802.1Q/802.1ad tags as received (TPID, TCI each), for the reply

    @property
    def l3_broadcast(self) -> bool:
        return self.dst_ip == 0xFFFFFFFF


class DestKind(Enum):
    RELAY = "relay"  # unicast to giaddr, server port 67 (routed by the kernel)
    UNICAST = "unicast"  # unicast to ciaddr, client port 68 (routed by the kernel)
    BROADCAST = "broadcast"  # 255.255.255.255 / ff:ff:ff:ff:ff:ff on the link
    LINK_UNICAST = "link_unicast"  # to yiaddr at chaddr, without ARP (client has no address)


@dataclass(frozen=True, slots=True)
class Destination:
    kind: DestKind
    ip: int
    port: int
    mac: bytes = b""


@dataclass(slots=True)
class Reply:
    message: Message
    # The message encoded by the engine, already fitted to the client's maximum size.
    payload: bytes
    dest: Destination
    # Ingress this reply answers, so the edge can keep VLAN tags and pick the interface.
    ingress: Ingress


class LeaseEventKind(Enum):
    OFFER = "offer"
    ACK = "ack"
    NAK = "nak"
    RELEASE = "release"
    DECLINE = "decline"
    EXPIRE = "expire"
    INFORM = "inform"
    REVOKE = "revoke"  # by the operator (`brushtail lease release`)
    REPLICATED = "replicated"  # a binding another site made, installed here (Server.absorb)


class NakReason(Enum):
    """Why a REQUEST was NAKed: the metrics' label, and the text the NAK carries (option 56)."""

    NO_SUBNET = "no subnet for this network"
    NO_REQUESTED_ADDRESS = "no requested address"
    NOT_ON_NETWORK = "address not on this network"
    NOT_CLIENTS = "address not leased to this client"
    ADDRESS_IN_USE = "address in use"
    REVOKED = "lease revoked by the operator"
    RESERVED = "address reserved for another client"
    RESERVATION = "another address is reserved for this client"
    # Replication: the address is in another site's block and the client may not be
    # extended there any more (docs/STATE.md, rule 2); it DISCOVERs and gets one of ours.
    OTHER_SITE = "address belongs to another site"

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """One line of the lease log: who got what, where, and why."""

    kind: LeaseEventKind
    client_id: bytes
    hwaddr: bytes
    address: int
    pool: str
    detail: str = ""
    vlans: tuple[int, ...] = ()  # the VLAN ids the client came on, outer first

    @property
    def vlan_text(self) -> str:
        """`100`, `100.7` (outer.inner), or empty for an untagged client."""
        return ".".join(map(str, self.vlans))


@dataclass(slots=True)
class Decision:
    replies: list[Reply] = field(default_factory=list)
    lease_writes: list[Lease] = field(default_factory=list)
    lease_deletes: list[int] = field(default_factory=list)
    events: list[LeaseEvent] = field(default_factory=list)
    drop: DropReason | None = None
    nak: NakReason | None = None  # set with the NAK among `replies`
    # A bug met while deciding (drop is INTERNAL_ERROR): for the daemon to log.
    error: Exception | None = None
    # Replicated leases Server.absorb left out (drop is REPLICATED_ELSEWHERE): addresses
    # none of our pools hands out, bindings without a client.
    skipped: int = 0
