"""Host reservations: which client a fixed address belongs to, as lookups (no lease state).

A client is matched by its MAC (chaddr), then its client identifier, then the circuit-id
(with the remote-id, if the reservation names one) of a relayed request's option 82, the
order Kea checks its host identifiers in. The lease table asks `entitled` before it lets a
client have a reserved address; the allocators never hand one out by themselves.

A client-id reservation names the identifier as the client sends it; in a pool that lists
VLANs the client's identity also carries its VLANs (identity.subscriber_identity), so a
client is looked up by both: its identity, then the identifier read back from it.
"""

from collections.abc import Iterable

from brushtaild.config.model import Reservation
from brushtaild.dhcp.constants import RelayAgentSubOption
from brushtaild.engine.identity import wire_identity
from brushtaild.engine.leases import Lease


class Reservations:
    def __init__(self, reservations: Iterable[Reservation]) -> None:
        self.by_address: dict[int, Reservation] = {}
        self._by_mac: dict[bytes, Reservation] = {}
        self._by_client_id: dict[bytes, Reservation] = {}
        self._by_circuit: dict[tuple[bytes, bytes | None], Reservation] = {}
        for r in reservations:
            self.by_address[r.address] = r
            if r.mac is not None:
                self._by_mac[r.mac] = r
            elif r.client_id is not None:
                self._by_client_id[r.client_id] = r
            elif r.circuit_id is not None:
                self._by_circuit[(r.circuit_id, r.remote_id)] = r

    def __bool__(self) -> bool:
        return bool(self.by_address)

    def of_identity(
        self, client_id: bytes, hwaddr: bytes, vlans: tuple[int, ...]
    ) -> Reservation | None:
        """The reservation a client's own identifiers name, whatever path it came by:
        `client_id` is its identity on `vlans` (the VLANs it came on, its relay's if
        relayed), which carries them in a pool that lists VLANs. The identity itself is
        tried first: a relayed client's identifier is its identity, however it ends."""
        by_client_id = self._by_client_id
        return (
            self._by_mac.get(hwaddr)
            or by_client_id.get(client_id)
            or by_client_id.get(wire_identity(client_id, vlans))
        )

    def find(
        self,
        client_id: bytes,
        hwaddr: bytes,
        vlans: tuple[int, ...],
        circuit_id: bytes | None,
        remote_id: bytes | None,
    ) -> Reservation | None:
        """The client's reservation; a circuit-id one only for a relayed request that
        carries the circuit (and the remote-id, where the reservation names one)."""
        return self.of_identity(client_id, hwaddr, vlans) or self._of_circuit(circuit_id, remote_id)

    def _of_circuit(self, circuit_id: bytes | None, remote_id: bytes | None) -> Reservation | None:
        if circuit_id is None:
            return None
        return self._by_circuit.get((circuit_id, remote_id)) or self._by_circuit.get(
            (circuit_id, None)
        )

    def entitled(
        self,
        address: int,
        client_id: bytes,
        hwaddr: bytes,
        vlans: tuple[int, ...],
        holder: Lease | None,
    ) -> bool:
        """Whether the client (its identity on `vlans`, as `of_identity`) may hold
        `address`: it is no host's, or this client's.

        `holder`: the client's own lease of the address, if it holds it. For a circuit-id
        reservation that lease's stashed option 82 says whether the client is the host (its
        renewals come unicast without option 82); a lease that stashed none (bound before
        leases kept option 82) is taken on trust until it ends. MAC and client-id
        reservations take theirs back at once."""
        reservation = self.by_address.get(address)
        if reservation is None:
            return True
        if reservation.circuit_id is not None:
            if holder is None or not holder.relay_info:
                return holder is not None
            circuit = holder.relay_sub_option(RelayAgentSubOption.CIRCUIT_ID)
            remote = holder.relay_sub_option(RelayAgentSubOption.REMOTE_ID)
            return self._of_circuit(circuit, remote) is reservation
        return self.of_identity(client_id, hwaddr, vlans) is reservation
