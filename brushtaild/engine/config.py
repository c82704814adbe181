"""Typed configuration. Validation lives here too: nothing starts half-configured."""

from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path


@dataclass(frozen=True, slots=True)
class AddressRange:
    first: int  # host-order IPv4, inclusive
    last: int  # inclusive


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    subnet: IPv4Network
    ranges: tuple[AddressRange, ...]
    routers: tuple[int, ...] = ()
    dns_servers: tuple[int, ...] = ()
    domain: str | None = None
    lease_time: int = 3600
    renewal_time: int = 1800  # T1, default 50% of lease_time
    rebinding_time: int = 3150  # T2, default 87.5% of lease_time
    exclude: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Config:
    site: str
    interface: str
    server_id: int
    pools: tuple[Pool, ...]
    state_dir: Path = Path("/var/lib/brushtail")
    offer_hold: int = 30  # seconds an OFFERed address stays reserved for that client
    decline_hold: int = 86400  # seconds a DECLINEd address stays quarantined
    metrics_listen: tuple[str, int] = ("127.0.0.1", 9967)
    log_level: str = "info"
