"""Lease records, as the engine keeps them and the store persists them."""

from dataclasses import dataclass
from enum import IntEnum

from brushtaild.dhcp.options import parse_relay_agent_info


class LeaseState(IntEnum):
    """Persisted state of an address binding; the numbers are stored on disk."""

    BOUND = 1
    RELEASED = 2  # client gave it back; remembered so the client gets it again while free
    EXPIRED = 3  # lease ran out; remembered likewise
    DECLINED = 4  # client reported a conflict; quarantined until `expires`
    # Ended by the operator (`brushtail lease release`): the client's requests for it are
    # NAKed, and the address stays out of circulation until `expires`, the lease's old end,
    # since the client may use it until it hears the NAK.
    REVOKED = 5


@dataclass(slots=True)
class Lease:
    """One address binding. Times are Unix seconds (wall clock), so they survive reboots
    and mean the same on every site; the XDP edge converts to CLOCK_BOOTTIME."""

    address: int
    client_id: bytes  # option 61, else htype + chaddr; empty for a declined address
    hwaddr: bytes
    pool: str
    state: LeaseState
    expires: float
    updated: float  # client last transaction time (cltt)
    prl: bytes | None = None  # option 55 of the client's last request, for the fast path
    # The VLAN ids (outer first) its requests came on, the relay's for a relayed client:
    # the XDP program keys the client's entry with them.
    vlans: tuple[int, ...] = ()
    # Option 82 as the relay sent it with the request that bound the lease (stash-agent-
    # options): a client renews by unicast, without it, and is still the relay's subscriber.
    # Empty for a client on our own link.
    relay_info: bytes = b""
    # The giaddr of the relay it was bound through, kept likewise; 0 for our own link.
    relay: int = 0

    def relay_sub_option(self, code: int) -> bytes | None:
        """The value of sub-option `code` of the stashed option 82, if it has one (only
        option 82 whose sub-options parse is stashed)."""
        return dict(parse_relay_agent_info(self.relay_info)).get(code)

    @property
    def relayed(self) -> bool:
        """Bound through a relay (a lease stored before the relay was kept may know only
        its option 82)."""
        return self.relay != 0 or self.relay_info != b""

    @property
    def occupies(self) -> bool:
        """Holds its address while unexpired: a binding, a quarantine or a revoked binding."""
        return self.state in (LeaseState.BOUND, LeaseState.DECLINED, LeaseState.REVOKED)

    def active(self, now: float) -> bool:
        return self.expires > now and self.occupies
