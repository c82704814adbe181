"""Address allocation for one pool: which addresses are free, nothing about leases.

Cost per allocation does not depend on the pool size. Addresses never handed out yet are
taken from a cursor that walks the ranges once; addresses that come back (release, expiry,
end of quarantine) join a FIFO free list, so the address a client held longest ago is reused
first and a returning client usually finds its old address still free. The free list is
checked lazily: an address taken directly (a client's old address, a requested address)
stays in the list and is skipped when it reaches the front.

With multi-site replication (`Admission`) a new client gets only an address this site may
allocate: the cursor skips a block that is another site's whole, with one question, and an
address that comes back in such a block is parked with its block; both are looked at again
(at most every REVISIT_INTERVAL, and only once nothing else is left) when ownership may have
moved. So an allocation costs the same whether the site owns a third of the pool or all of
it.

A host's fixed address (a reservation) belongs to the pool that serves it, inside its
ranges or not, but is never allocated: only `take(address, host=True)` reserves it, and
the lease table says when a client may.
"""

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from brushtaild.config.model import Config, Pool

# Blocks and addresses set aside as another site's are looked at again at most this often
# (seconds), when the pool has nothing else: a block handed over or evicted to this site
# becomes usable within it.
REVISIT_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Admission:
    """Which addresses a new client may be given now, with replication: `owns` says for a
    whole block (every range is cut into blocks of `block_size` from its first address)
    whether it is this site's now, `admits` for one address whether it may go to this
    client now (its block ours, the previous client's bounds past)."""

    block_size: int
    owns: Callable[[int], bool]
    admits: Callable[[int], bool]
    now: float


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
        # With an Admission: the block the cursor last found ours; blocks it skipped as
        # another site's (first address -> the part not walked); returned addresses parked
        # with their block (recycled, off the free list); parts of blocks found ours since,
        # to walk like the cursor; when to look at the set-aside blocks again.
        self._cursor_block = -1
        self._foreign: dict[int, tuple[int, int]] = {}
        self._parked: dict[int, set[int]] = {}
        self._segments: deque[tuple[int, int]] = deque()
        self._next_revisit = 0.0
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

    def allocate(self, admission: Admission | None = None) -> int | None:
        """Reserve any free address (one `admission` admits, if given), or None when the
        pool has none."""
        if admission is None:
            address = self._next_unused()
            if address is None:
                address = self._next_recycled()
        else:
            address = self._next_admitted(admission)
            if address is None and admission.now >= self._next_revisit:
                self._next_revisit = admission.now + REVISIT_INTERVAL
                self._revisit(admission)
                address = self._next_admitted(admission)
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

    def _block(self, address: int, size: int) -> tuple[int, int]:
        """The first and last address of the block holding `address` (in a range)."""
        for first, last in self._ranges:
            if first <= address <= last:
                start = first + (address - first) // size * size
                return start, min(start + size - 1, last)
        return address, address  # a fixed address outside the ranges: a block of its own

    def _fresh(self, address: int) -> bool:
        return (
            address not in self._in_use
            and address not in self._recycled
            and address not in self._reserved
            and address not in self._fixed
        )

    def _next_admitted(self, admission: Admission) -> int | None:
        """The next address `admission` admits: never-used ones first (the cursor, then
        the blocks found ours since), then returned ones. Another site's block is skipped
        whole by the cursor and set aside; an address not admitted is parked."""
        size = admission.block_size
        while self._range_index < len(self._ranges):
            first, last = self._ranges[self._range_index]
            while self._cursor <= last:
                address = self._cursor
                start = first + (address - first) // size * size
                if start != self._cursor_block:
                    end = min(start + size - 1, last)
                    if not admission.owns(address):
                        self._foreign[start] = (address, end)
                        self._cursor = end + 1
                        continue
                    self._cursor_block = start
                self._cursor += 1
                if self._fresh(address) and self._admitted(address, admission):
                    return address
            self._range_index += 1
            if self._range_index < len(self._ranges):
                self._cursor = self._ranges[self._range_index][0]
        while self._segments:
            first, last = self._segments.popleft()
            for address in range(first, last + 1):
                if self._fresh(address) and self._admitted(address, admission):
                    if address < last:
                        self._segments.appendleft((address + 1, last))
                    return address
        while self._free:
            address = self._free.popleft()
            self._queued.discard(address)
            if address not in self._in_use and self._admitted(address, admission):
                return address
        return None

    def _admitted(self, address: int, admission: Admission) -> bool:
        """Whether `admission` admits `address`; if not, it is parked with its block (a
        recycled address, off the free list), to be looked at again by `_revisit`."""
        if admission.admits(address):
            return True
        self._recycled.add(address)
        self._parked.setdefault(self._block(address, admission.block_size)[0], set()).add(address)
        return False

    def _revisit(self, admission: Admission) -> None:
        """Blocks set aside that are ours now: their unwalked part is walked like the
        cursor's; addresses parked in blocks ours now rejoin the free list."""
        for start in [s for s in self._foreign if admission.owns(s)]:
            self._segments.append(self._foreign.pop(start))
        for start in [s for s in self._parked if admission.owns(s)]:
            for address in sorted(self._parked.pop(start)):
                if address not in self._in_use:
                    self._queue(address)

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
