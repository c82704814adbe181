"""Anti-entropy digests: a hash per bucket of the state, kept up to date as it changes.

A bucket is up to BUCKET_SPAN addresses of one block, named by its first address, with
their bindings; the block's first bucket holds its ownership register too. An address
outside every block (a host's fixed address) falls in the bucket of its /24. Buckets stay
small whatever the block size, so a bucket's repair or detail is a few messages.

A bucket's hash is the XOR of its entries' hashes, so a change costs one hash, whatever
the size of the state, and two sites with equal hashes for a bucket hold the same entries
in it (but for a 64-bit collision). Each binding's own hash is kept too: where two sites'
buckets differ, comparing those finds the addresses that do.
"""

import hashlib
from bisect import bisect_left

from brushtaild.replication.state import Binding, Ownership
from brushtaild.replication.wire import Codec

BUCKET_SPAN = 256
_OUTSIDE_MASK = 0xFFFFFF00
_OWNER_TAG = b"o"


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Digests:
    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        self._layout = codec.layout
        self.hashes: dict[int, int] = {}
        # The hash of the binding at each address, by bucket.
        self.members: dict[int, dict[int, int]] = {}
        self._sorted: list[int] | None = None

    def bucket_of(self, address: int) -> int:
        block = self._layout.block_of(address)
        if block is None:
            return address & _OUTSIDE_MASK
        return block.first + (address - block.first) // BUCKET_SPAN * BUCKET_SPAN

    def _toggle(self, bucket: int, entry_hash: int) -> None:
        if bucket not in self.hashes:
            self._sorted = None
        value = self.hashes.get(bucket, 0) ^ entry_hash
        self.hashes[bucket] = value

    def binding(self, new: Binding) -> None:
        """`new` is the binding at its address now."""
        bucket = self.bucket_of(new.address)
        members = self.members.setdefault(bucket, {})
        old = members.get(new.address)
        if old is not None:
            self._toggle(bucket, old)
        members[new.address] = entry = _hash(self._codec.binding(new))
        self._toggle(bucket, entry)

    def owner(self, block: int, old: Ownership | None, new: Ownership) -> None:
        if old is not None:
            self._toggle(block, _hash(_OWNER_TAG + self._codec.owner(block, old)))
        self._toggle(block, _hash(_OWNER_TAG + self._codec.owner(block, new)))

    def buckets(self) -> list[int]:
        """Every bucket with an entry, in order."""
        if self._sorted is None:
            self._sorted = sorted(self.hashes)
        return self._sorted

    def chunk(self, start: int, count: int) -> tuple[int, int, list[tuple[int, int]]]:
        """The next `count` buckets from `start` on: (lo, hi, [(bucket, hash)]), where
        [lo, hi) is the range they cover (up to the next bucket, or the end of the
        address space)."""
        ordered = self.buckets()
        n = bisect_left(ordered, start)
        taken = ordered[n : n + count]
        hi = ordered[n + count] if n + count < len(ordered) else 1 << 32
        return start, hi, [(b, self.hashes[b]) for b in taken]

    def between(self, lo: int, hi: int) -> dict[int, int]:
        ordered = self.buckets()
        return {
            b: self.hashes[b] for b in ordered[bisect_left(ordered, lo) : bisect_left(ordered, hi)]
        }

    def total(self) -> bytes:
        """One hash of the whole state, to compare sites (convergence)."""
        h = hashlib.blake2b(digest_size=16)
        for bucket in self.buckets():
            h.update(bucket.to_bytes(4, "big") + self.hashes[bucket].to_bytes(8, "big"))
        return h.digest()
