"""Many seeded schedules of a simulated brushtail cluster (tests/sim/cluster.py).

    /work/main/.venv/bin/python bench/simulate.py --schedules 300 --sites 10 --seed 1

Each schedule runs `--steps` steps of partitions, message loss, duplication, reordering and
delay, crashes and restarts, lost sites and their eviction, clock steps, handovers, and
clients arriving, renewing, roaming and releasing; after every step no two clients may
hold an unexpired ACK for one address, and after the network heals all live sites must
converge. Prints schedules run, steps, steps/s and violations (the first few in full);
exits 1 if there was any.
"""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.sim.cluster import SimConfig, Simulation  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", type=int, default=100)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="first schedule's seed")
    parser.add_argument("--steps", type=int, default=SimConfig().steps)
    parser.add_argument("--clients-per-site", type=int, default=12)
    parser.add_argument("--addresses-per-site", type=int, default=16)
    parser.add_argument(
        "--operator-mistakes",
        action="store_true",
        help="evict live sites too: conflicts are expected, and every one must be reported",
    )
    args = parser.parse_args()
    config = replace(
        SimConfig(),
        sites=args.sites,
        steps=args.steps,
        clients=args.clients_per_site * args.sites,
        addresses=args.addresses_per_site * args.sites,
        operator_mistakes=args.operator_mistakes,
    )
    steps = violations = failed = 0
    totals = dict.fromkeys(
        ("acks", "naks", "roams", "evictions", "handovers", "disks_lost", "conflicts", "messages"),
        0,
    )
    started = time.perf_counter()
    for seed in range(args.seed, args.seed + args.schedules):
        result = Simulation(seed, config).run()
        steps += result.steps
        for key in totals:
            totals[key] += getattr(result, key)
        if result.violations:
            failed += 1
            violations += len(result.violations)
            if failed <= 3:
                print(f"seed {seed}: {len(result.violations)} violations, first:")
                print("   ", result.violations[0])
    elapsed = time.perf_counter() - started
    print(
        f"schedules {args.schedules} (seeds {args.seed}..{args.seed + args.schedules - 1}), "
        f"sites {args.sites}, steps {steps}, {steps / elapsed:.0f} steps/s, "
        f"{elapsed:.1f} s"
    )
    print("  " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    print(f"violations {violations} in {failed} schedules")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
