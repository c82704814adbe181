"""Address allocation for one pool: which addresses are free, nothing about leases.

Cost per allocation does not depend on the pool size. Addresses never handed out yet are
taken from a cursor that walks the ranges once; addresses that come back (release, expiry,
end of quarantine) join a FIFO free list, so the address a client held longest ago is reused
first and a returning client usually finds its old address still free. The free list is
checked lazily: an address taken directly (a client's old address, a requested address)
stays in the list and is skipped when it reaches the front.

A host's fixed address (a reservation) belongs to the pool that serves it, inside its
ranges or not, but is never allocated: only `take(address, host=True)` reserves it, and
the lease table says when a client may.
"""

from collections import deque
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network

from brushtaild.config.model import Config, Pool


def reserved_addresses(pool: Pool, server_id: int) -> frozenset[int]:
    """Addresses in the pool's subnet that are never handed out."""
    net: IPv4Network = pool.subnet
    always = {int(net.network_address), int(net.broadcast_address), server_id, *pool.routers}
    return frozenset(always) | pool.exclude


class PoolAllocator:
    def __init__(self, pool: Pool, server_id: int, fixed: frozenset[int] = frozenset()) -> None:
        self.pool = pool
        self._fixed = fixed  # reserved for hosts, served from this pool
        self._reserved = reserved_addresses(pool, server_id) - fixed
        self._ranges = [(r.first, r.last) for r in pool.ranges]
        self._in_use: set[int] = set()
        # Addresses the cursor must skip because they came back at least once.
        self._recycled: set[int] = set()
        self._free: deque[int] = deque()
        # Addresses on the free list now: an address taken directly and given back again
        # is queued once, so the list never outgrows the pool.
        self._queued: set[int] = set()
        self._range_index = 0
        self._cursor = self._ranges[0][0] if self._ranges else 0
        never = self._reserved | fixed
        self.total = len(fixed) + sum(
            last - first + 1 - sum(1 for a in never if first <= a <= last)
            for first, last in self._ranges
        )

    def contains(self, address: int) -> bool:
        """True if the pool may ever hand out this address (a fixed one to its host)."""
        if address in self._fixed:
            return True
        if address in self._reserved:
            return False
        # An explicit loop: any() over a generator costs several times more per call, and
        # this runs for nearly every request.
        for first, last in self._ranges:  # noqa: SIM110
            if first <= address <= last:
                return True
        return False

    def is_free(self, address: int) -> bool:
        return address not in self._in_use and self.contains(address)

    def in_use(self) -> frozenset[int]:
        return frozenset(self._in_use)

    @property
    def assigned(self) -> int:
        """Addresses leased, offered or quarantined."""
        return len(self._in_use)

    @property
    def queued(self) -> int:
        """Length of the free list (bounded by the pool's size)."""
        return len(self._free)

    def take(self, address: int, host: bool = False) -> bool:
        """Reserve a specific address; False if it is not free, or fixed and not `host`."""
        if not self.is_free(address) or (address in self._fixed and not host):
            return False
        self._in_use.add(address)
        return True

    def allocate(self) -> int | None:
        """Reserve any free address, or None when the pool is exhausted."""
        address = self._next_unused()
        if address is None:
            address = self._next_recycled()
        if address is not None:
            self._in_use.add(address)
        return address

    def release(self, address: int) -> None:
        """Return an address; releasing a free one is a no-op, so callers need not track."""
        if address in self._in_use:
            self._in_use.discard(address)
            self._queue(address)

    def recycle(self, address: int) -> None:
        """Mark a free address as previously used (e.g. an expired lease loaded at start),
        so it is handed out only after the never-used ones."""
        if self.is_free(address) and address not in self._recycled:
            self._queue(address)

    def _queue(self, address: int) -> None:
        if address in self._fixed:  # never allocated, so never queued
            return
        self._recycled.add(address)
        if address not in self._queued:
            self._queued.add(address)
            self._free.append(address)

    def _next_unused(self) -> int | None:
        while self._range_index < len(self._ranges):
            last = self._ranges[self._range_index][1]
            while self._cursor <= last:
                address = self._cursor
                self._cursor += 1
                if (
                    address not in self._in_use
                    and address not in self._recycled
                    and address not in self._reserved
                    and address not in self._fixed
                ):
                    return address
            self._range_index += 1
            if self._range_index < len(self._ranges):
                self._cursor = self._ranges[self._range_index][0]
        return None

    def _next_recycled(self) -> int | None:
        while self._free:
            address = self._free.popleft()
            self._queued.discard(address)
            if address not in self._in_use:
                return address
        return None


def pool_allocators(config: Config) -> dict[str, PoolAllocator]:
    """An allocator per pool, by name, each knowing the fixed addresses it serves."""
    fixed = fixed_addresses(config.pools, (r.address for r in config.reservations))
    return {p.name: PoolAllocator(p, config.server_id, fixed[p.name]) for p in config.pools}


def fixed_addresses(pools: Sequence[Pool], addresses: Iterable[int]) -> dict[str, frozenset[int]]:
    """Which pool serves each fixed address: the first whose ranges hold it, else the first
    whose subnet does (config validation guarantees one does)."""
    owners: dict[str, set[int]] = {p.name: set() for p in pools}
    for address in addresses:
        in_ranges = (p for p in pools if any(r.first <= address <= r.last for r in p.ranges))
        in_subnet = (p for p in pools if IPv4Address(address) in p.subnet)
        pool = next(in_ranges, None) or next(in_subnet, None)
        if pool is not None:
            owners[pool.name].add(address)
    return {name: frozenset(a) for name, a in owners.items()}


def containing(allocators: Iterable[PoolAllocator], address: int) -> PoolAllocator | None:
    """The first of `allocators` that may hand out `address` (pools sharing a subnet are
    tried in config order), or None."""
    return next((a for a in allocators if a.contains(address)), None)
