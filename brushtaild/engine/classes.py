"""Client classes (docs/CONFIG.md, `classes:`), sans-IO: which class a request is in, and
what the class of a lease's renewals is, as far as the lease can tell.

The first class in config order whose every condition holds is the client's; a request no
class matches has none, and is served as if there were no classes.
"""

from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address

from brushtaild.config.model import ClassMatch, ClientClass
from brushtaild.dhcp.constants import OptionCode, RelayAgentSubOption
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.options import parse_relay_agent_info
from brushtaild.engine.leases import Lease


class Undecided(Enum):
    """A lease's class depends on option 60, which its client sends with every request
    but the lease does not keep."""

    UNDECIDED = "undecided"


UNDECIDED = Undecided.UNDECIDED


@dataclass(frozen=True, slots=True)
class LeaseClass:
    """The class of the renewals of a lease's client."""

    cls: ClientClass | None
    # A class that matches on what a relay adds (option 82, giaddr) was weighed: told from
    # what the lease stashed, which only a unicast renewal (no relay) is classified by. A
    # request through a relay brings its own, which may tell another class.
    by_relay: bool


NO_CLASS = LeaseClass(None, False)


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a class is matched on."""

    hwaddr: bytes
    vlans: tuple[int, ...]
    circuit_id: bytes | None
    remote_id: bytes | None
    relay: int  # giaddr; 0: not relayed


def _client_holds(match: ClassMatch, facts: _Facts) -> bool:
    """Whether the conditions on the client itself hold: MAC, OUI and VLANs."""
    return (
        (match.mac is None or facts.hwaddr == match.mac)
        and (match.oui is None or facts.hwaddr[:3] == match.oui)
        and (not match.vlans or any(r.matches(facts.vlans) for r in match.vlans))
    )


def _relay_holds(match: ClassMatch, facts: _Facts) -> bool:
    """Whether the conditions on what a relay adds hold: option 82 and giaddr."""
    relay = IPv4Address(facts.relay) if facts.relay else None
    return (
        (match.circuit_id is None or match.circuit_id.matches(facts.circuit_id))
        and (match.remote_id is None or match.remote_id.matches(facts.remote_id))
        and (match.relay is None or (relay is not None and relay in match.relay))
    )


def classify(
    classes: tuple[ClientClass, ...],
    msg: Message,
    vlans: tuple[int, ...],
    relay_subs: list[tuple[int, bytes]],
    relay: int,
) -> ClientClass | None:
    """The class of a request. `vlans`, `relay_subs` (the sub-options of option 82) and
    `relay` (the relay's giaddr) are the request's own; for a unicast renewal of a relayed
    client's lease, those the lease stashed (so the class stays the same at renewal)."""
    if not classes:
        return None
    subs = dict(relay_subs)
    facts = _Facts(
        msg.hwaddr,
        vlans,
        subs.get(RelayAgentSubOption.CIRCUIT_ID),
        subs.get(RelayAgentSubOption.REMOTE_ID),
        relay,
    )
    vendor_class = msg.options.get(OptionCode.VENDOR_CLASS_ID)
    for cls in classes:
        m = cls.match
        if (
            _client_holds(m, facts)
            and _relay_holds(m, facts)
            and (m.vendor_class is None or m.vendor_class.matches(vendor_class))
        ):
            return cls
    return None


def class_of_lease(classes: tuple[ClientClass, ...], lease: Lease) -> LeaseClass | Undecided:
    """The class of the unicast renewals of `lease`'s client (its MAC on its VLANs, with
    the option 82 and relay it stashed), or UNDECIDED when a class that may come first
    matches on option 60."""
    if not classes:
        # No class to weigh: what the loop below ends with, without its per-lease objects
        # (the fast path asks this of every lease when it fills its maps).
        return NO_CLASS
    subs = dict(parse_relay_agent_info(lease.relay_info)) if lease.relay_info else {}
    facts = _Facts(
        lease.hwaddr,
        lease.vlans,
        subs.get(RelayAgentSubOption.CIRCUIT_ID),
        subs.get(RelayAgentSubOption.REMOTE_ID),
        lease.relay,
    )
    by_relay = False
    for cls in classes:
        m = cls.match
        # A class no relay could make it match (its MAC, OUI or VLANs rule it out) is not
        # weighed: a relay's option 82 changes nothing about it.
        if not _client_holds(m, facts):
            continue
        by_relay = by_relay or m.by_relay
        if not _relay_holds(m, facts):
            continue
        if m.vendor_class is not None:
            return UNDECIDED
        return LeaseClass(cls, by_relay)
    return LeaseClass(None, by_relay)
