"""Address blocks: how the pools' ranges are cut up, and who owns each block to begin with.

Every range of every pool is cut into blocks of `block_size` consecutive addresses (the
last block of a range may be shorter); a block is named by its first address, unique since
ranges are disjoint across pools. The initial owner of each block is computed from the
configured site names alone, by rendezvous hashing, so every site agrees on it without a
message, and removing a site moves only that site's blocks. Ownership changes later are
replicated state (`state.Ownership`).

All sites must agree on the layout: `digest` summarises it, and a peer whose digest
differs is refused (replica.py) rather than merged with.
"""

import hashlib
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from brushtaild.config.model import Config

MAX_SITES = 255  # a site is one byte on the wire
MAX_SITE_NAME = 63  # bytes of UTF-8, as the config allows
MAX_POOLS = 65535  # a pool is two bytes on the wire


@dataclass(frozen=True, slots=True)
class Block:
    first: int
    last: int
    pool: str


class LayoutError(ValueError):
    """The site list or the block size cannot make a layout."""


def _score(site: str, block: int) -> int:
    digest = hashlib.blake2b(site.encode() + block.to_bytes(4, "big"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class BlockLayout:
    def __init__(
        self,
        sites: Iterable[str],
        ranges: Iterable[tuple[str, int, int]],
        block_size: int,
        pools: Iterable[str] = (),
    ) -> None:
        """`ranges`: (pool name, first, last) of every dynamic range of every pool;
        `pools`: the names of pools with no range (served reservations only), if any."""
        self.sites = tuple(sorted(set(sites)))
        if not self.sites or len(self.sites) > MAX_SITES:
            raise LayoutError(f"between 1 and {MAX_SITES} sites, got {len(self.sites)}")
        for site in self.sites:
            if not 0 < len(site.encode()) <= MAX_SITE_NAME:
                raise LayoutError(f"site name {site!r}: 1 to {MAX_SITE_NAME} bytes of UTF-8")
        if block_size < 1:
            raise LayoutError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self._blocks: dict[int, Block] = {}
        spans = sorted((first, last, pool) for pool, first, last in ranges)
        for first, last, pool in spans:
            for start in range(first, last + 1, block_size):
                self._blocks[start] = Block(start, min(start + block_size - 1, last), pool)
        self._spans = spans
        # Pools travel as their index in this list, so a binding always fits one record.
        self.pools = tuple(sorted({*pools, *(pool for _, _, pool in spans)}))
        if len(self.pools) > MAX_POOLS:
            raise LayoutError(f"at most {MAX_POOLS} pools, got {len(self.pools)}")
        self.pool_index = {pool: n for n, pool in enumerate(self.pools)}
        self._starts = [first for first, _, _ in spans]
        self.site_index = {site: n for n, site in enumerate(self.sites)}
        self._initial: dict[int, str] = {}
        self.digest = self._digest()

    @classmethod
    def of_config(cls, config: Config, sites: Sequence[str], block_size: int) -> "BlockLayout":
        ranges = [(p.name, r.first, r.last) for p in config.pools for r in p.ranges]
        return cls(sites, ranges, block_size, (p.name for p in config.pools))

    def _digest(self) -> bytes:
        h = hashlib.blake2b(digest_size=8)
        h.update(self.block_size.to_bytes(4, "big"))
        for site in self.sites:
            h.update(site.encode() + b"\0")
        for pool in self.pools:
            h.update(pool.encode() + b"\0")
        for first, last, pool in self._spans:
            h.update(first.to_bytes(4, "big") + last.to_bytes(4, "big") + pool.encode() + b"\0")
        return h.digest()

    def blocks(self) -> list[Block]:
        return list(self._blocks.values())

    def block(self, first: int) -> Block | None:
        return self._blocks.get(first)

    def block_of(self, address: int) -> Block | None:
        """The block holding `address`, or None for an address outside every range (a
        host's fixed address outside the dynamic ranges)."""
        n = bisect_right(self._starts, address) - 1
        if n < 0:
            return None
        first, last, _ = self._spans[n]
        if address > last:
            return None
        return self._blocks[first + (address - first) // self.block_size * self.block_size]

    def initial_owner(self, block: Block) -> str:
        owner = self._initial.get(block.first)
        if owner is None:
            owner = self._initial[block.first] = self.successor(block, frozenset())
        return owner

    def successor(self, block: Block, excluded: frozenset[str]) -> str:
        """The owner rendezvous hashing picks among the sites not `excluded`."""
        candidates = [s for s in self.sites if s not in excluded] or list(self.sites)
        return max(candidates, key=lambda site: (_score(site, block.first), site))
