"""What allocation costs with replication: one site of three hands out every address of its
blocks in a pool of 1,000,000 (blocks of 256), through a real Replica's rules.

    PYTHONPATH=$PWD /work/main/.venv/bin/python bench/replicated_allocation.py

Prints the cost per allocation, and that of an allocation in the exhausted pool: the one
that looks at the other sites' blocks again (at most once per REVISIT_INTERVAL) and the
ones between.
"""

import time
from dataclasses import replace
from ipaddress import IPv4Network

from brushtaild.config.model import AddressRange
from brushtaild.dhcp import options as opt
from brushtaild.engine.allocator import Admission, PoolAllocator
from brushtaild.replication.blocks import BlockLayout
from brushtaild.replication.params import Params
from brushtaild.replication.replica import Replica
from tests.engine_helpers import SERVER, make_pool

ADDRESSES = 1_000_000
NOW = 1.8e9


def main() -> None:
    first = opt.parse_ip("198.16.0.1")
    pool = replace(
        make_pool(),
        subnet=IPv4Network("198.16.0.0/12"),
        ranges=(AddressRange(first, first + ADDRESSES - 1),),
    )
    layout = BlockLayout(["a", "b", "c"], [(pool.name, first, first + ADDRESSES - 1)], 256)
    replica = Replica("a", layout, Params(3600, 600, 2, 4300), None, NOW)
    alloc = PoolAllocator(pool, SERVER)

    def admission(now: float) -> Admission:
        return Admission(
            layout.block_size,
            lambda a: replica.owns(a, now),
            lambda a: replica.may_allocate(a, b"\x01client", now),
            now,
        )

    started = time.perf_counter()
    given = 0
    while alloc.allocate(admission(NOW)) is not None:
        given += 1
    total = time.perf_counter() - started
    print(
        f"site a of 3 hands out its {given:,} addresses of {ADDRESSES:,}: {total:.2f} s, "
        f"{total / given * 1e6:.1f} us an allocation"
    )
    started = time.perf_counter()
    alloc.allocate(admission(NOW + 2))
    revisit = time.perf_counter() - started
    started = time.perf_counter()
    alloc.allocate(admission(NOW + 2.5))
    between = time.perf_counter() - started
    print(
        f"exhausted: {revisit * 1e3:.1f} ms for the allocation that looks at the other "
        f"sites' blocks again, {between * 1e6:.1f} us for the others"
    )


if __name__ == "__main__":
    main()
