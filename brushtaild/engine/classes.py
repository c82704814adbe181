"""Client classes (docs/CONFIG.md, `classes:`), sans-IO: which class a request is in, and
whether the class of a lease can be told from the lease alone.

The first class in config order whose every condition holds is the client's; a request no
class matches has none, and is served as if there were no classes.
"""

from enum import Enum
from ipaddress import IPv4Address

from brushtaild.config.model import ClassMatch, ClientClass
from brushtaild.dhcp.constants import OptionCode, RelayAgentSubOption
from brushtaild.dhcp.message import Message
from brushtaild.engine.decisions import Ingress


class Undecided(Enum):
    """A lease's class depends on its request (option 82, option 60, giaddr), which the
    lease does not keep."""

    UNDECIDED = "undecided"


UNDECIDED = Undecided.UNDECIDED


def _by_client(match: ClassMatch, hwaddr: bytes, vlans: tuple[int, ...]) -> bool:
    """The conditions a lease keeps the facts for: MAC, OUI and VLANs."""
    return (
        (match.mac is None or hwaddr == match.mac)
        and (match.oui is None or hwaddr[:3] == match.oui)
        and (not match.vlans or any(r.matches(vlans) for r in match.vlans))
    )


def classify(
    classes: tuple[ClientClass, ...],
    msg: Message,
    ingress: Ingress,
    relay_subs: list[tuple[int, bytes]],
) -> ClientClass | None:
    """The class of a request. `relay_subs` are the sub-options of the request's own option
    82, as the server parsed them: empty unless the request is relayed (giaddr set)."""
    if not classes:
        return None
    subs = dict(relay_subs)
    circuit_id = subs.get(RelayAgentSubOption.CIRCUIT_ID)
    remote_id = subs.get(RelayAgentSubOption.REMOTE_ID)
    vendor_class = msg.options.get(OptionCode.VENDOR_CLASS_ID)
    relay = IPv4Address(msg.giaddr) if msg.giaddr else None
    for cls in classes:
        m = cls.match
        if (
            _by_client(m, msg.hwaddr, ingress.vlans)
            and (m.circuit_id is None or m.circuit_id.matches(circuit_id))
            and (m.remote_id is None or m.remote_id.matches(remote_id))
            and (m.vendor_class is None or m.vendor_class.matches(vendor_class))
            and (m.relay is None or (relay is not None and relay in m.relay))
        ):
            return cls
    return None


def class_of_lease(
    classes: tuple[ClientClass, ...], hwaddr: bytes, vlans: tuple[int, ...]
) -> ClientClass | Undecided | None:
    """The class a request of the lease's client (`hwaddr` on `vlans`) is in, as far as the
    lease tells: UNDECIDED when a class that may come first needs the request itself."""
    for cls in classes:
        if not _by_client(cls.match, hwaddr, vlans):
            continue
        if cls.match.by_request:
            return UNDECIDED
        return cls
    return None
