"""Replication figures from the sans-IO core alone (no DTLS, no sockets, one process).

    /work/main/.venv/bin/python bench/replication.py --leases 1000000 --missed 100000

Prints: the bytes of one lease update on the wire (one delta message, per peer); how many
lease updates per second one replica stamps, encodes and hashes; and what anti-entropy
costs to bring back a peer that missed `--missed` renewals among `--leases` leases (of
consecutive addresses, or with --scattered spread evenly over them all): rounds, messages,
bytes each way, CPU time, and the wall time at `anti_entropy_interval` (the rounds, since a
round is one interval).
"""

import argparse
import sys
import time
from collections import Counter, deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brushtaild.engine.leases import Lease, LeaseState  # noqa: E402
from brushtaild.replication.blocks import BlockLayout  # noqa: E402
from brushtaild.replication.params import Params  # noqa: E402
from brushtaild.replication.replica import Outgoing, Replica  # noqa: E402

T0 = 1_800_000_000.0
FIRST = 0x0A000000  # 10.0.0.0/8: room for millions of leases
PARAMS = Params(3600, extension_bound=600, max_skew=5, lost_after=4205)
# Option 82 as a BNG relay sends it: a circuit-id and a 6-byte remote-id.
RELAY_INFO = b"\x01\x10eth0/1/0:100.200" + b"\x02\x06\x00\x11\x22\x33\x44\x55"


def lease(n: int, now: float) -> Lease:
    return Lease(
        FIRST + n,
        b"\x01" + n.to_bytes(6, "big"),
        n.to_bytes(6, "big"),
        "subscribers",
        LeaseState.BOUND,
        now + 3600,
        now,
        prl=bytes((1, 3, 6, 15, 28, 51, 58, 59)),
        vlans=(100, 200),
        relay_info=RELAY_INFO,
    )


def exchange(
    sites: dict[str, Replica], first: list[Outgoing], sender: str, now: float, sent: Counter[str]
) -> None:
    """Deliver `first` and every answer, counting the bytes each site sends."""
    queue = deque((sender, m) for m in first)
    while queue:
        src, message = queue.popleft()
        sent[src] += len(message.payload)
        received = sites[message.peer].receive(src, message.payload, now)
        queue.extend((message.peer, m) for m in received.messages)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leases", type=int, default=100_000)
    parser.add_argument("--missed", type=int, default=10_000)
    parser.add_argument("--block-size", type=int, default=256)  # the config's default
    parser.add_argument("--scattered", action="store_true")
    args = parser.parse_args()
    layout = BlockLayout(
        ["a", "b"], [("subscribers", FIRST, FIRST + args.leases - 1)], args.block_size
    )
    a = Replica("a", layout, PARAMS, None, T0)

    one = a.local_update(lease(0, T0), T0)
    print(f"one lease update: {len(one[0].payload)} bytes per peer, in {len(one)} message")

    started = time.perf_counter()
    for n in range(1, args.leases):
        a.local_update(lease(n, T0), T0)
    elapsed = time.perf_counter() - started
    rate = (args.leases - 1) / elapsed
    print(f"local updates: {rate:,.0f}/s (stamp, merge, hash, encode for every peer)")

    b = Replica("b", layout, PARAMS, a.snapshot(), T0)
    step = args.leases // args.missed if args.scattered else 1
    for n in range(0, step * args.missed, step):
        a.local_update(lease(n, T0 + 1), T0 + 1)  # b was cut off: none of these reach it
    sites = {"a": a, "b": b}
    now, rounds, sent = T0 + 2, 0, Counter[str]()
    sent_before = a.counters.messages_sent
    started = time.perf_counter()
    while a.digests.total() != b.digests.total():
        rounds += 1
        now += PARAMS.anti_entropy_interval
        exchange(sites, a.tick(now), "a", now, sent)
        exchange(sites, b.tick(now), "b", now, sent)
    cpu = time.perf_counter() - started
    messages = a.counters.messages_sent - sent_before + b.counters.messages_sent
    print(
        f"catch-up of {args.missed:,} missed renewals"
        f"{' scattered' if args.scattered else ''} among {args.leases:,} leases: "
        f"{rounds} rounds ({rounds * PARAMS.anti_entropy_interval:.0f} s at one round "
        f"every {PARAMS.anti_entropy_interval:g} s), {messages:,} messages, "
        f"{sent['a'] / 1e6:.2f} MB a->b and {sent['b'] / 1e6:.2f} MB b->a, "
        f"{b.counters.repaired_entries + a.counters.repaired_entries:,} entries repaired, "
        f"CPU {cpu:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
