"""The lease table: every binding, offer hold and quarantine, and the allocators' books.

Every lease input changes lease state through this class and nowhere else: the slow path's
handlers (offer, bind, release, decline), renewals the kernel already acknowledged, the
leases read back from the store at start and at a reload, bindings other sites made
(`absorb`, with multi-site replication), and expiry. Each change that must
reach the disk is appended to the caller's `Decision` (writes, deletes, events).

Rules it keeps, checked after every step by tests/property/test_lease_table.py:
1. An address is in its allocator's in-use set exactly while one bound lease, one hold,
   one quarantine or one revoked lease holds it. By state, not by time: a lease past its
   end holds its address until `expire` has processed it.
2. No address is active for two clients; a client has at most one hold, and `_by_client`
   points only at records that `_by_address` also holds.
3. Memory follows the number of records, not the number of renewals: an address or a hold
   has at most one armed timer, and stale heap entries are compacted away.
4. A reserved address is offered and bound only to its host (`Reservations.entitled`). A
   record another client held before a reload reserved the address keeps it until it ends
   (rule 1) but is never offered, renewed or bound again.
5. With `limits`, the count of bound records on each access line is exactly what the
   records say (`_line_leases`), and `over_limit` refuses a client that would go past one;
   likewise the count of holds on each line is what the holds say (`_line_offers`), and
   `over_offer_limit` refuses a new client past a bound of outstanding offers.
"""

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import Generic, TypeVar

from brushtaild.config.model import Config, Limits
from brushtaild.dhcp.constants import RelayAgentSubOption
from brushtaild.engine.allocator import Admission, PoolAllocator, containing, pool_allocators
from brushtaild.engine.decisions import Decision, LeaseEvent, LeaseEventKind
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.replication import Replication
from brushtaild.engine.reservations import Reservations

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

# Loading a million leases takes seconds: the caller's keepalive runs this often.
KEEPALIVE_EVERY = 65_536
# A link may hold at most this share of its pools' addresses in outstanding offers, and a
# pool at most this share in quarantine (see `offer` and `decline` for why).
OFFER_SHARE = 4
QUARANTINE_SHARE = 4
MIN_OFFERS_PER_LINK = 16
# A roaming client is extended for at least this long (seconds), or NAKed.
MIN_EXTENSION = 1.0
# The timer heaps are rebuilt once stale entries outnumber live ones by this factor.
COMPACT_FACTOR = 2

# The load order (a client's later record wins); attrgetter is several times cheaper per
# call than a lambda, which counts at a million leases.
_UPDATED = attrgetter("updated")

# An access line a limit counts bound leases or offers on: what kind ("relay", "circuit",
# "remote_id" or "vlan", the end of a `Limits` field's name) and its value (the relay's
# address, the circuit-id or remote-id, or the VLAN ids, two bytes each, outer first).
Line = tuple[str, bytes]


def access_lines(
    circuit_id: bytes | None, remote_id: bytes | None, vlans: tuple[int, ...], relay: int = 0
) -> tuple[Line, ...]:
    """The lines a client is on: its relay, the relay's circuit-id and remote-id, and its
    VLANs."""
    lines: list[Line] = []
    if relay:
        lines.append(("relay", relay.to_bytes(4, "big")))
    if circuit_id is not None:
        lines.append(("circuit", circuit_id))
    if remote_id is not None:
        lines.append(("remote_id", remote_id))
    if vlans:
        lines.append(("vlan", b"".join(v.to_bytes(2, "big") for v in vlans)))
    return tuple(lines)


def lease_lines(lease: Lease) -> tuple[Line, ...]:
    """The lines a lease counts on, from its stashed option 82 and its VLANs."""
    return access_lines(
        lease.relay_sub_option(RelayAgentSubOption.CIRCUIT_ID),
        lease.relay_sub_option(RelayAgentSubOption.REMOTE_ID),
        lease.vlans,
    )


def _bounds(limits: Limits, of: str) -> dict[str, int]:
    """The kinds of line `limits` bounds the `of` ("leases" or "offers") of, with their
    bounds: field `max_leases_per_circuit` bounds the leases of kind "circuit"."""
    prefix = f"max_{of}_per_"
    bounds = {
        f.name.removeprefix(prefix): getattr(limits, f.name)
        for f in fields(limits)
        if f.name.startswith(prefix)
    }
    return {kind: bound for kind, bound in bounds.items() if bound}


def _tally(counts: dict[Line, int], lines: Iterable[Line], step: int) -> None:
    """Add `step` to the count of each of `lines`, forgetting a line whose count is 0."""
    for line in lines:
        count = counts.get(line, 0) + step
        if count:
            counts[line] = count
        else:
            del counts[line]


def _past(counts: dict[Line, int], bounds: dict[str, int], lines: Iterable[Line]) -> bool:
    """Whether one of `lines` is at its bound already."""
    return any(
        kind in bounds and counts.get((kind, value), 0) >= bounds[kind] for kind, value in lines
    )


# Where a request came from, for the offer bound: a relay (its giaddr) or the local link
# (interface index and VLAN ids).
LinkKey = Hashable


def paced(items: Iterable[T], keepalive: Callable[[], object]) -> Iterator[T]:
    """`items`, calling `keepalive` every KEEPALIVE_EVERY of them: a walk over a million
    leases takes seconds, and the daemon pings systemd's watchdog meanwhile."""
    for n, item in enumerate(items, 1):
        if n % KEEPALIVE_EVERY == 0:
            keepalive()
        yield item


@dataclass(slots=True)
class Hold:
    """An OFFERed address, reserved for one client until `expires`."""

    client_id: bytes
    address: int
    pool: str
    expires: float
    link: LinkKey
    lines: tuple[Line, ...] = ()  # the bounded lines it counts on (`_line_offers`)


class _Timers(Generic[K]):
    """Deadlines by key: one armed deadline per key, however often it is pushed back.

    A later deadline is not queued at all: when the armed one fires, the owner looks at
    the record and re-arms it if it was extended. Only an earlier deadline is pushed, and
    the entry it supersedes is skipped when it surfaces (and compacted away in bulk).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, K]] = []
        self._armed: dict[K, float] = {}

    def arm(self, key: K, at: float) -> None:
        armed = self._armed.get(key)
        if armed is not None and armed <= at:
            return
        self._armed[key] = at
        heapq.heappush(self._heap, (at, key))
        if len(self._heap) > COMPACT_FACTOR * len(self._armed) + 64:
            self._heap = [(at, key) for key, at in self._armed.items()]
            heapq.heapify(self._heap)

    def disarm(self, key: K) -> None:
        self._armed.pop(key, None)

    def due(self, now: float) -> list[K]:
        """Keys whose armed deadline has come, disarmed: re-arm those still wanted."""
        heap = self._heap
        keys = []
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            if self._armed.get(key) == at:
                del self._armed[key]
                keys.append(key)
        return keys

    def next(self) -> float | None:
        heap = self._heap
        while heap and self._armed.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(frozen=True, slots=True)
class PoolUsage:
    total: int  # addresses the pool can hand out
    assigned: int  # leased, offered or quarantined
    declined: int  # quarantined after a DECLINE (counted in `assigned` too)

    @property
    def utilization(self) -> float:
        return self.assigned / self.total if self.total else 0.0


class LeaseTable:
    def __init__(
        self,
        config: Config,
        leases: Iterable[Lease],
        now: float,
        keepalive: Callable[[], object] = lambda: None,
        replication: Replication | None = None,
    ) -> None:
        """`replication`: a new binding only where it admits one (`may_allocate`)."""
        self.config = config
        self.replication = replication
        self.reservations = Reservations(config.reservations)
        self.allocators = pool_allocators(config)
        self._by_client: dict[bytes, Lease] = {}
        self._by_address: dict[int, Lease] = {}
        self._hold_by_client: dict[bytes, Hold] = {}
        self._hold_by_address: dict[int, Hold] = {}
        self._holds_by_link: dict[LinkKey, OrderedDict[bytes, None]] = {}
        self._quarantined: dict[str, OrderedDict[int, None]] = {}
        self._lease_timers: _Timers[int] = _Timers()
        self._hold_timers: _Timers[bytes] = _Timers()
        # Store rows that are dead on arrival (quarantines over while no daemon ran): the
        # next `expire` hands them to the store to delete.
        self._dead_rows: list[int] = []
        # Bound records and holds per access line, kept only for the kinds `limits` bounds.
        self._lease_bounds = _bounds(config.limits, "leases")
        self._offer_bounds = _bounds(config.limits, "offers")
        self._line_leases: dict[Line, int] = {}
        self._line_offers: dict[Line, int] = {}
        for lease in paced(sorted(leases, key=_UPDATED), keepalive):
            self._load(lease, now)

    # Reading ------------------------------------------------------------------------------

    def lease_at(self, address: int) -> Lease | None:
        return self._by_address.get(address)

    def lease_of(self, client_id: bytes) -> Lease | None:
        return self._by_client.get(client_id)

    def hold_of(self, client_id: bytes) -> Hold | None:
        return self._hold_by_client.get(client_id)

    def leases(self) -> list[Lease]:
        return list(self._by_address.values())

    def holds(self) -> list[Hold]:
        return list(self._hold_by_client.values())

    def allocator_for(self, address: int, pool_name: str = "") -> PoolAllocator | None:
        """The allocator that may hand out `address`: the named pool's if it contains it
        (pools may share a subnet), else any pool's, else None."""
        alloc = self.allocators.get(pool_name)
        if alloc is not None and alloc.contains(address):
            return alloc
        return containing(self.allocators.values(), address)

    def renewable(self, lease: Lease, now: float) -> bool:
        """Bound, unexpired, the client's current record, and still an address of its
        pool: a reload that excluded or renumbered it ends it at the next renewal. Not if
        the address is now another host's, nor if the client has another address reserved
        (the slow path sends it there)."""
        if lease.state is not LeaseState.BOUND or not lease.active(now):
            return False
        if self._by_client.get(lease.client_id) is not lease:
            return False
        alloc = self.allocators.get(lease.pool)
        if alloc is None or not alloc.contains(lease.address):
            return False
        if not self.reservations:
            return True
        own = self.reservations.of_identity(lease.client_id, lease.hwaddr, lease.vlans)
        return (own is None or own.address == lease.address) and self._entitled(
            lease.address, lease.client_id, lease.hwaddr, lease.vlans, 0
        )

    def _entitled(
        self, address: int, client_id: bytes, hwaddr: bytes, vlans: tuple[int, ...], host: int
    ) -> bool:
        """Whether the client (its identity on `vlans`) may have `address` (rule 4); `host`
        is the address reserved for it as this request identifies it (by circuit-id too),
        or 0."""
        if address == host:
            return True
        lease = self._by_address.get(address)
        holder = lease if lease is not None and self._by_client.get(client_id) is lease else None
        return self.reservations.entitled(address, client_id, hwaddr, vlans, holder)

    def next_deadline(self) -> float | None:
        times = [t for t in (self._lease_timers.next(), self._hold_timers.next()) if t is not None]
        if self._dead_rows:
            times.append(0.0)
        return min(times) if times else None

    def usage(self) -> dict[str, PoolUsage]:
        return {
            name: PoolUsage(a.total, a.assigned, len(self._quarantined.get(name, ())))
            for name, a in self.allocators.items()
        }

    def timer_entries(self) -> int:
        """Heap entries of both timer kinds: bounded by the records, whatever the renewals."""
        return len(self._lease_timers) + len(self._hold_timers)

    # Offers -------------------------------------------------------------------------------

    def offer(
        self,
        client_id: bytes,
        pools: list[PoolAllocator],
        requested: int,
        link: LinkKey,
        now: float,
        hwaddr: bytes = b"",
        host: int = 0,
        lines: tuple[Line, ...] = (),
        vlans: tuple[int, ...] = (),
    ) -> tuple[int, PoolAllocator] | None:
        """The address to offer, in Kea's order: the client's active lease, its old address
        while free, its pending offer, the address it asks for if free, any free address.
        A new address is held for `offer_hold` seconds so no one else is offered it.

        A link (one relay, or the local link) may hold at most 1/OFFER_SHARE of its
        pools' addresses in offers: a flood of DISCOVERs from random MACs can then tie up
        only that share, and the rest stays for renewals, reboots and other links that
        share the pools. Past the bound the link's oldest offer is withdrawn (its client
        may still REQUEST the address while it is free), so new clients on a flooded link
        keep getting offers. None: nothing to offer.

        A client with a reserved address (`host`, on its network) is offered that first;
        while someone else still holds it, the client gets a dynamic address meanwhile.
        A new hold counts on the client's `lines` (`over_offer_limit`)."""
        if host:
            chosen = self._offer_host(client_id, pools, host, link, now, lines)
            if chosen is not None:
                return chosen
        lease = self._by_client.get(client_id)
        if lease is not None and lease.address != host:
            alloc = containing(pools, lease.address)
            if alloc is not None and self._entitled(lease.address, client_id, hwaddr, vlans, 0):
                # A client's record is bound, revoked, released or expired: active means
                # bound or revoked, and either way the address is still this client's.
                if lease.active(now) and self.extension_until(lease.address, client_id, now):
                    return lease.address, alloc
                if self.may_allocate(lease.address, client_id, now) and alloc.take(
                    lease.address, host=True
                ):
                    return self._hold(client_id, alloc, lease.address, link, now, lines)
        hold = self._hold_by_client.get(client_id)
        if hold is not None:
            alloc = containing(pools, hold.address)
            if alloc is not None:
                return self._keep_hold(hold, alloc, now)
        if requested and requested != host:
            alloc = containing(pools, requested)
            if (
                alloc is not None
                and self.may_allocate(requested, client_id, now)
                and alloc.take(requested, self._entitled(requested, client_id, hwaddr, vlans, 0))
            ):
                return self._hold(client_id, alloc, requested, link, now, lines)
        admission = self._admission(client_id, now)
        for alloc in pools:
            address = alloc.allocate(admission)
            if address is not None:
                return self._hold(client_id, alloc, address, link, now, lines)
        return None

    def may_allocate(self, address: int, client_id: bytes, now: float) -> bool:
        """Whether replication lets `address` go to the client as a new binding (always,
        for a single site)."""
        return self.replication is None or self.replication.may_allocate(address, client_id, now)

    def extension_until(self, address: int, client_id: bytes, now: float) -> float:
        """How long the client's binding of `address` may run: without bound (math.inf)
        where replication lets this site allocate it; up to the `extension_limit` of a
        roaming client; 0 if that leaves it less than MIN_EXTENSION (it is NAKed, and
        offered an address of this site's blocks instead)."""
        until = self.extension_limit(address, client_id, now)
        return until if until >= now + MIN_EXTENSION else 0.0

    def extension_limit(self, address: int, client_id: bytes, now: float) -> float:
        """The latest the client's binding of `address` may run: math.inf at an address of
        this site's blocks, a roaming client's `extension_limit` elsewhere."""
        replication = self.replication
        if replication is None or replication.owns(address, now):
            return math.inf
        return replication.extension_limit(address, client_id, now)

    def _admission(self, client_id: bytes, now: float) -> Admission | None:
        replication = self.replication
        if replication is None:
            return None
        return Admission(
            replication.block_size,
            lambda address: replication.owns(address, now),
            lambda address: replication.may_allocate(address, client_id, now),
            now,
        )

    def _offer_host(
        self,
        client_id: bytes,
        pools: list[PoolAllocator],
        host: int,
        link: LinkKey,
        now: float,
        lines: tuple[Line, ...],
    ) -> tuple[int, PoolAllocator] | None:
        """The client's reserved address, unless another client still holds it."""
        alloc = containing(pools, host)
        if alloc is None:
            return None
        lease = self._by_address.get(host)
        if lease is not None and lease.client_id == client_id and lease.active(now):
            return host, alloc
        hold = self._hold_by_address.get(host)
        if hold is not None and hold.client_id == client_id:
            return self._keep_hold(hold, alloc, now)
        if self.may_allocate(host, client_id, now) and alloc.take(host, host=True):
            return self._hold(client_id, alloc, host, link, now, lines)
        return None

    def _keep_hold(self, hold: Hold, alloc: PoolAllocator, now: float) -> tuple[int, PoolAllocator]:
        hold.expires = now + self.config.offer_hold
        self._hold_timers.arm(hold.client_id, hold.expires)
        self._holds_by_link[hold.link].move_to_end(hold.client_id)
        return hold.address, alloc

    def host_free(self, client_id: bytes, host: int) -> bool:
        """Whether the client's reserved address waits for it: not held by anyone else."""
        lease = self._by_address.get(host)
        hold = self._hold_by_address.get(host)
        return (lease is None or not lease.occupies or lease.client_id == client_id) and (
            hold is None or hold.client_id == client_id
        )

    def _hold(
        self,
        client_id: bytes,
        alloc: PoolAllocator,
        address: int,
        link: LinkKey,
        now: float,
        lines: tuple[Line, ...],
    ) -> tuple[int, PoolAllocator]:
        """Record the offer of an address the caller has just taken from `alloc`, counted
        on those of `lines` a bound is configured for."""
        previous = self._hold_by_client.get(client_id)
        if previous is not None:
            self._drop_hold(previous)
        on_link = self._holds_by_link.setdefault(link, OrderedDict())
        bound = max(MIN_OFFERS_PER_LINK, alloc.total // OFFER_SHARE)
        while len(on_link) >= bound:
            oldest = next(iter(on_link))
            self._drop_hold(self._hold_by_client[oldest])
        counted = tuple(line for line in lines if line[0] in self._offer_bounds)
        expires = now + self.config.offer_hold
        hold = Hold(client_id, address, alloc.pool.name, expires, link, counted)
        self._hold_by_client[client_id] = hold
        self._hold_by_address[address] = hold
        _tally(self._line_offers, counted, 1)
        on_link[client_id] = None
        self._hold_timers.arm(client_id, hold.expires)
        return address, alloc

    def drop_hold(self, client_id: bytes) -> None:
        """The client took another server's offer: ours is free again (RFC 2131 4.3.2)."""
        hold = self._hold_by_client.get(client_id)
        if hold is not None:
            self._drop_hold(hold)

    def _drop_hold(self, hold: Hold, keep: int = 0) -> None:
        """The one way a hold ends: taken up by a bind, expired, withdrawn for a newer
        offer, or dropped for another server's."""
        del self._hold_by_client[hold.client_id]
        del self._hold_by_address[hold.address]
        _tally(self._line_offers, hold.lines, -1)
        self._hold_timers.disarm(hold.client_id)
        on_link = self._holds_by_link[hold.link]
        del on_link[hold.client_id]
        if not on_link:
            del self._holds_by_link[hold.link]
        if hold.address != keep and not self._occupied(hold.address):
            alloc = self.allocators.get(hold.pool)
            if alloc is not None:
                alloc.release(hold.address)

    def _occupied(self, address: int) -> bool:
        """Whether a record holds the address (see `check`: by state, not by time)."""
        lease = self._by_address.get(address)
        return lease is not None and lease.occupies

    # Bindings -----------------------------------------------------------------------------

    def bind(
        self,
        client_id: bytes,
        hwaddr: bytes,
        alloc: PoolAllocator,
        address: int,
        now: float,
        prl: bytes | None,
        decision: Decision,
        host: int = 0,
        vlans: tuple[int, ...] = (),
        lease_time: int | None = None,
        relay_info: bytes | None = None,
        relay: int = 0,
        until: float = math.inf,
    ) -> Lease | None:
        """Lease `address` to the client (on `vlans`) for `lease_time` (its class's), else
        the pool's, if it is the client's to take: its own active lease, its own offer, or
        free. None if someone else holds it, or it is reserved for another host (`may_bind`
        tells which). `relay_info` is the relayed request's option 82 (empty if the relay
        added none) and `relay` its giaddr; `relay_info` None for a request that came
        without a relay, which keeps what the client's record of `address` stashed (a
        renewal unicast from a relayed client carries no option 82).

        With replication, `until` is the client's `extension_limit` at an address of
        another site's block (the caller NAKs when it is not in the future): the lease
        ends by it, and the client's binding there is replicated state already; anywhere
        else the binding must be one `may_allocate` admits."""
        if not self.may_bind(client_id, hwaddr, address, host, vlans):
            return None
        if until == math.inf and not self.may_allocate(address, client_id, now):
            return None
        owner = self._by_address.get(address)
        hold = self._hold_by_address.get(address)
        leased_to_client = owner is not None and owner.client_id == client_id
        mine = (leased_to_client and owner is not None and owner.active(now)) or (
            hold is not None and hold.client_id == client_id
        )
        if not mine and not alloc.take(address, host=True):
            return None
        own_hold = self._hold_by_client.get(client_id)
        if own_hold is not None:
            # Taken above or by the hold itself: either way `address` stays in use.
            self._drop_hold(own_hold, keep=address)
        previous = self._by_client.get(client_id)
        if relay_info is None:
            kept = previous if previous is not None and previous.address == address else None
            relay_info, relay = (kept.relay_info, kept.relay) if kept is not None else (b"", 0)
        if previous is not None and previous.address != address:
            # One record per client: the old address is given back and forgotten.
            self._forget(previous)
            decision.lease_deletes.append(previous.address)
        if (
            owner is not None
            and not leased_to_client
            and self._by_client.get(owner.client_id) is owner
        ):
            # A released or expired record of another client: it loses the address.
            del self._by_client[owner.client_id]
        lease = Lease(
            address=address,
            client_id=client_id,
            hwaddr=hwaddr,
            pool=alloc.pool.name,
            state=LeaseState.BOUND,
            expires=min(now + (lease_time or alloc.pool.lease_time), until),
            updated=now,
            prl=prl,
            vlans=vlans,
            relay_info=relay_info,
            relay=relay,
        )
        self._put(lease)
        decision.lease_writes.append(lease)
        return lease

    def may_bind(
        self, client_id: bytes, hwaddr: bytes, address: int, host: int, vlans: tuple[int, ...]
    ) -> bool:
        """Whether `address` is no other host's (rule 4): False when the client (its
        identity on `vlans`) must be told no even if the address is free or its own."""
        return not self.reservations or self._entitled(address, client_id, hwaddr, vlans, host)

    def renew(self, hwaddr: bytes, address: int, expires: float, now: float) -> Lease | None:
        """Record a renewal the kernel has already acknowledged: the lease of `address`,
        held by the client with `hwaddr`, runs until at least `expires`. None when the
        address is no longer that client's to renew; the caller withdraws the kernel entry.
        A roaming client's `expires` is the caller's to cap (Server.kernel_renewal).

        The record's state, not the time, says whether the address is still taken: a BOUND
        record holds it until `expire` has processed it, even past its end (the kernel may
        answer in the lease's last instant, and this call come after it). A lease that
        expired here meanwhile (EXPIRED: the daemon was down or slow) is taken back if no
        one else is bound to it: the client was told it holds it. Only an offer to someone
        else can stand in the way, and an offer is no promise: it is withdrawn."""
        lease = self._by_address.get(address)
        if (
            lease is None
            or lease.hwaddr != hwaddr
            or not lease.client_id
            or self._by_client.get(lease.client_id) is not lease
            or lease.state not in (LeaseState.BOUND, LeaseState.EXPIRED)
        ):
            return None
        alloc = self.allocators.get(lease.pool)
        if alloc is None or not alloc.contains(address):
            return None
        if not self._entitled(address, lease.client_id, lease.hwaddr, lease.vlans, 0):
            return None
        if lease.state is LeaseState.EXPIRED:
            hold = self._hold_by_address.get(address)
            if hold is not None and hold.client_id != lease.client_id:
                self._drop_hold(hold)
            if not alloc.take(address, host=True):
                return None
        renewed = replace(
            lease, state=LeaseState.BOUND, expires=max(expires, lease.expires), updated=now
        )
        self._put(renewed)
        return renewed

    def release(self, lease: Lease, now: float, decision: Decision) -> Lease:
        """The client gives its active lease back; the record is kept so the client gets
        the address again while it is free."""
        released = replace(lease, state=LeaseState.RELEASED, expires=now, updated=now)
        self._put(released)
        alloc = self.allocator_for(lease.address, lease.pool)
        if alloc is not None:
            alloc.release(lease.address)
        decision.lease_writes.append(released)
        return released

    def revoke(self, lease: Lease, now: float, decision: Decision) -> Lease:
        """The operator ends the client's active lease. The record stays the client's, as
        REVOKED until the lease's old end: its address stays in use (the client knows
        nothing of this until its next request, which the server NAKs), it is never
        renewed (`renew` refuses it, `renewable` is False), and `expire` ends it at that
        time like any lease. The client may bind anew through DISCOVER meanwhile."""
        revoked = replace(lease, state=LeaseState.REVOKED, updated=now)
        self._put(revoked)
        decision.lease_writes.append(revoked)
        return revoked

    def decline(self, lease: Lease, now: float, decision: Decision) -> None:
        """Someone we do not know uses the address of the client's active lease: keep it
        out of circulation for `decline_hold` seconds. The allocator keeps it in use; the
        quarantine record carries no client.

        A pool keeps at most 1/QUARANTINE_SHARE of its addresses in quarantine: DORA then
        DECLINE from ever new MACs (three packets an address) would otherwise empty it for
        a day. Past the bound the oldest quarantine ends early; if its address really is
        in use, the next client declines it again."""
        quarantine = replace(
            lease,
            client_id=b"",
            state=LeaseState.DECLINED,
            expires=now + self.config.decline_hold,
            updated=now,
        )
        del self._by_client[lease.client_id]
        self._set(quarantine)
        self._lease_timers.arm(lease.address, quarantine.expires)
        decision.lease_writes.append(quarantine)
        alloc = self.allocator_for(lease.address, lease.pool)
        if alloc is None:
            return
        pool = self._quarantined.setdefault(alloc.pool.name, OrderedDict())
        pool[lease.address] = None
        while len(pool) > max(1, alloc.total // QUARANTINE_SHARE):
            oldest = next(iter(pool))
            self._end_quarantine(oldest, decision, "quarantine ended early: too many")

    # Replication --------------------------------------------------------------------------

    def absorb(self, lease: Lease, now: float, decision: Decision) -> bool:
        """Install a binding a replication merge changed, as the merge decided (the caller
        has expired what is due). It replaces whatever record is at its address: another
        client's is dropped (the conflict's loser, or a tenure that ended), and so is an
        offer there if the binding holds the address. A binding that holds the address
        becomes its client's record (the client's record at another address is forgotten,
        its offer withdrawn); one that does not (released, expired) becomes it too unless
        the client holds another address, and then leaves its address without a record:
        every record stays its client's, so a restart cannot mistake one for the client's
        current lease. False, and nothing changed, when none of our pools
        hands the address out, or for a binding without a client that is no quarantine."""
        alloc = self.allocator_for(lease.address, lease.pool)
        if alloc is None or (not lease.client_id and lease.state is not LeaseState.DECLINED):
            return False
        if alloc.pool.name != lease.pool:
            lease = replace(lease, pool=alloc.pool.name)
        if lease.occupies and not lease.active(now) and lease.state is not LeaseState.DECLINED:
            lease = replace(lease, state=LeaseState.EXPIRED)
        address = lease.address
        self._vacate(address)
        hold = self._hold_by_address.get(address)
        if lease.occupies and hold is not None:
            self._drop_hold(hold, keep=address)
        if lease.state is LeaseState.DECLINED:
            if lease.active(now):
                self._set(lease)
                self._lease_timers.arm(address, lease.expires)
                alloc.take(address, host=True)
                self._quarantined.setdefault(alloc.pool.name, OrderedDict())[address] = None
                decision.lease_writes.append(lease)
            else:
                self._free(alloc, address)
                decision.lease_deletes.append(address)
            return True
        previous = self._by_client.get(lease.client_id)  # elsewhere: vacated above if here
        if lease.occupies:
            if previous is not None:
                self._forget(previous)
                decision.lease_deletes.append(previous.address)
            own_hold = self._hold_by_client.get(lease.client_id)
            if own_hold is not None:
                self._drop_hold(own_hold, keep=address)
            self._put(lease)
            alloc.take(address, host=True)
        elif previous is not None and previous.occupies:
            # The client holds another address here: this one is merely free (a record
            # that is not its client's would outlive it, and at a restart could be taken
            # for the client's own).
            self._free(alloc, address)
            decision.lease_deletes.append(address)
            return True
        else:
            if previous is not None:
                self._forget(previous)
                decision.lease_deletes.append(previous.address)
            self._put(lease)
            self._free(alloc, address)
        decision.lease_writes.append(lease)
        return True

    def _vacate(self, address: int) -> None:
        """Take the record at `address` out of every index (the allocator's books are the
        caller's to settle)."""
        old = self._by_address.get(address)
        if old is None:
            return
        self._unset(address)
        self._lease_timers.disarm(address)
        if old.client_id and self._by_client.get(old.client_id) is old:
            del self._by_client[old.client_id]
        if old.state is LeaseState.DECLINED:
            for quarantined in self._quarantined.values():
                quarantined.pop(address, None)

    def _free(self, alloc: PoolAllocator, address: int) -> None:
        """The address is held by no record: free unless an offer holds it."""
        if address not in self._hold_by_address:
            alloc.release(address)
            alloc.recycle(address)

    # Expiry -------------------------------------------------------------------------------

    def expire(self, now: float, decision: Decision) -> None:
        """Process every lease, quarantine and offer that is due."""
        if self._dead_rows:
            decision.lease_deletes += self._dead_rows
            self._dead_rows = []
        for address in self._lease_timers.due(now):
            lease = self._by_address.get(address)
            if lease is None or not lease.occupies:
                continue
            if lease.expires > now:
                self._lease_timers.arm(address, lease.expires)  # extended since armed
            elif lease.state is LeaseState.DECLINED:
                self._end_quarantine(address, decision, "quarantine over")
            else:
                expired = replace(lease, state=LeaseState.EXPIRED)
                self._set(expired)
                self._by_client[lease.client_id] = expired
                alloc = self.allocator_for(address, lease.pool)
                if alloc is not None:
                    alloc.release(address)
                decision.events.append(
                    LeaseEvent(
                        LeaseEventKind.EXPIRE, lease.client_id, lease.hwaddr, address, lease.pool
                    )
                )
        for client_id in self._hold_timers.due(now):
            hold = self._hold_by_client.get(client_id)
            if hold is not None:
                self._drop_hold(hold)

    def _end_quarantine(self, address: int, decision: Decision, detail: str) -> None:
        lease = self._unset(address)
        self._lease_timers.disarm(address)
        alloc = self.allocator_for(address, lease.pool)
        if alloc is not None:
            alloc.release(address)
            self._quarantined[alloc.pool.name].pop(address, None)
        decision.lease_deletes.append(address)
        decision.events.append(
            LeaseEvent(LeaseEventKind.EXPIRE, b"", lease.hwaddr, address, lease.pool, detail)
        )

    # Internals ----------------------------------------------------------------------------

    def _put(self, lease: Lease) -> None:
        self._set(lease)
        self._by_client[lease.client_id] = lease
        if lease.occupies:
            self._lease_timers.arm(lease.address, lease.expires)
        else:
            self._lease_timers.disarm(lease.address)

    def _set(self, lease: Lease) -> None:
        """Put `lease` at its address, replacing any record there (the one way in)."""
        old = self._by_address.get(lease.address)
        if old is not None:
            self._count(old, -1)
        self._by_address[lease.address] = lease
        self._count(lease, 1)

    def _unset(self, address: int) -> Lease:
        lease = self._by_address.pop(address)
        self._count(lease, -1)
        return lease

    def _lines(self, lease: Lease) -> tuple[Line, ...]:
        """The bounded lines `lease` counts on: none unless it is bound."""
        if not self._lease_bounds or lease.state is not LeaseState.BOUND:
            return ()
        return tuple(line for line in lease_lines(lease) if line[0] in self._lease_bounds)

    def _count(self, lease: Lease, step: int) -> None:
        if self._lease_bounds:  # else nothing is counted: no call per lease loaded
            _tally(self._line_leases, self._lines(lease), step)

    def over_limit(self, client_id: bytes, lines: tuple[Line, ...]) -> bool:
        """Whether a lease for the client on `lines` would put one past its bound. The
        lines its own bound lease counts on already are not held against it: a client
        keeps what it has (a reload that lowers a bound ends no lease)."""
        if not self._lease_bounds:
            return False
        own = self._by_client.get(client_id)
        held = self._lines(own) if own is not None else ()
        return _past(self._line_leases, self._lease_bounds, (ln for ln in lines if ln not in held))

    def over_offer_limit(self, client_id: bytes, lines: tuple[Line, ...]) -> bool:
        """Whether a new offer to the client on `lines` would put one past its bound of
        outstanding offers (holds). A client the table knows, by a hold or a record of its
        own, is never refused: its offer is of what it holds (its hold, its lease, its old
        address), so a flood of new MACs is what the bound stops."""
        if not self._offer_bounds or client_id in self._hold_by_client:
            return False
        return client_id not in self._by_client and _past(
            self._line_offers, self._offer_bounds, lines
        )

    def _forget(self, lease: Lease) -> None:
        if self._by_address.get(lease.address) is lease:
            self._unset(lease.address)
            self._lease_timers.disarm(lease.address)
        if lease.occupies:
            alloc = self.allocator_for(lease.address, lease.pool)
            if alloc is not None:
                alloc.release(lease.address)

    def _load(self, lease: Lease, now: float) -> None:
        """One stored record, at start or at a reload: the allocators learn what is taken.

        A record that is no longer active becomes EXPIRED in memory, whatever its stored
        state says, so that nothing renews it without taking its address back first. A
        record whose address no pool hands out any more (a reload excluded or renumbered
        it) stays until it ends, blocking nobody, and is never renewed."""
        alloc = self.allocator_for(lease.address, lease.pool)
        if alloc is not None and alloc.pool.name != lease.pool:
            lease = replace(lease, pool=alloc.pool.name)
        active = lease.active(now)
        if lease.state is LeaseState.DECLINED:
            if not active:
                self._dead_rows.append(lease.address)
                return
            self._set(lease)
            self._lease_timers.arm(lease.address, lease.expires)
            if alloc is not None:
                alloc.take(lease.address, host=True)
                self._quarantined.setdefault(alloc.pool.name, OrderedDict())[lease.address] = None
            return
        if lease.state in (LeaseState.BOUND, LeaseState.REVOKED) and not active:
            lease = replace(lease, state=LeaseState.EXPIRED)
        previous = self._by_client.get(lease.client_id)
        if previous is not None:
            # Two records of one client (possible in a store written by an older version):
            # the later one is the client's; the earlier stays only as an address record.
            previous_active = previous.active(now)
            if previous_active and active:
                self._forget(previous)
                self._dead_rows.append(previous.address)
        self._set(lease)
        self._by_client[lease.client_id] = lease
        if active:
            self._lease_timers.arm(lease.address, lease.expires)
            if alloc is not None:
                alloc.take(lease.address, host=True)
        elif alloc is not None:
            alloc.recycle(lease.address)

    def check(self) -> None:
        """Assert the rules in the module docstring (tests call it after every step). By
        state, not by time: a BOUND record holds its address until `expire` has processed
        it, whenever that comes, so the rules hold between two expiry passes too."""
        expected: dict[str, set[int]] = {name: set() for name in self.allocators}
        for address, lease in self._by_address.items():
            assert lease.address == address
            alloc = self.allocator_for(address, lease.pool)
            if lease.occupies and alloc is not None:
                expected[alloc.pool.name].add(address)
        for address, hold in self._hold_by_address.items():
            assert self._hold_by_client[hold.client_id] is hold
            record = self._by_address.get(address)
            assert record is None or not record.occupies or record.client_id == hold.client_id, (
                f"{address:#x} offered to one client and held by another"
            )
            expected[hold.pool].add(address)
        for name, alloc in self.allocators.items():
            assert alloc.in_use() == expected[name], f"pool {name}: in use != held"
        for client_id, lease in self._by_client.items():
            assert lease.client_id == client_id
            assert self._by_address.get(lease.address) is lease
        lines: dict[Line, int] = {}
        for lease in self._by_address.values():
            for line in self._lines(lease):
                lines[line] = lines.get(line, 0) + 1
        assert lines == self._line_leases, "bound leases per access line miscounted"
        offers: dict[Line, int] = {}
        for hold in self._hold_by_client.values():
            for line in hold.lines:
                assert line[0] in self._offer_bounds
                offers[line] = offers.get(line, 0) + 1
        assert offers == self._line_offers, "outstanding offers per access line miscounted"
        records = len(self._by_address) + len(self._hold_by_client)
        assert self.timer_entries() <= COMPACT_FACTOR * records + 2 * 64 + 2
