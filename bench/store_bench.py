"""Lease store benchmark: apply() throughput per batch size, fsync latency, open and load time.

Each apply() is one transaction and one WAL fsync, so leases/s at batch size 1 is the
ungrouped rate and larger batches show what group commit buys. The workload is renewals:
random addresses of a prefilled table, as the fast path will send them. Figures are medians
of --runs runs, each in a fresh store under --dir, which should be on the filesystem that
holds /var/lib/brushtail in production.

    /work/main/.venv/bin/python bench/store_bench.py [--rows 1000000]
"""

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Run as a plain script from a checkout: make the package importable without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.store.lease_store import LeaseStore

BATCH_SIZES = (1, 8, 64, 256)
BASE_ADDRESS = 0x0A000000  # 10.0.0.0
PREFILL_CHUNK = 50_000
FSYNC_SAMPLES = 200


@dataclass
class Run:
    leases_per_s: dict[int, float] = field(default_factory=dict)
    apply_p50_ms: dict[int, float] = field(default_factory=dict)
    apply_p99_ms: dict[int, float] = field(default_factory=dict)
    fsync_ms: float = 0.0
    open_ms: float = 0.0
    load_ms: float = 0.0


def make_lease(address: int, rng: random.Random, now: float) -> Lease:
    hwaddr = rng.randbytes(6)
    return Lease(
        address=address,
        client_id=b"\x01" + hwaddr,
        hwaddr=hwaddr,
        pool="residential",
        state=LeaseState.BOUND,
        expires=now + 3600.0,
        updated=now,
    )


def prefill(store: LeaseStore, rows: int, rng: random.Random) -> None:
    now = time.time()
    for start in range(0, rows, PREFILL_CHUNK):
        end = min(start + PREFILL_CHUNK, rows)
        store.apply([make_lease(BASE_ADDRESS + i, rng, now) for i in range(start, end)], [])


def renewals(
    store: LeaseStore, rows: int, batch: int, seconds: float, rng: random.Random
) -> tuple[float, float, float]:
    """Apply renewal batches for about `seconds` of apply() time; only apply() is timed.
    Returns leases/s and the median and 99th percentile apply() latency in ms."""
    latencies: list[float] = []
    total = 0.0
    while total < seconds or len(latencies) < 20:
        now = time.time()
        writes = [make_lease(BASE_ADDRESS + i, rng, now) for i in rng.sample(range(rows), batch)]
        start = time.perf_counter()
        store.apply(writes, [])
        latencies.append(time.perf_counter() - start)
        total += latencies[-1]
    latencies.sort()
    return (
        batch * len(latencies) / total,
        statistics.median(latencies) * 1e3,
        latencies[int(len(latencies) * 0.99)] * 1e3,
    )


def fsync_latency(directory: Path) -> float:
    """Median ms of rewriting 4 KiB in place and fdatasync(), as SQLite does to a reused WAL."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        block = os.urandom(4096)
        os.pwrite(fd, block, 0)
        os.fsync(fd)
        samples = []
        for _ in range(FSYNC_SAMPLES):
            os.pwrite(fd, block, 0)
            start = time.perf_counter()
            os.fdatasync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples) * 1e3


def one_run(base_dir: Path, rows: int, seconds: float, seed: int) -> Run:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="brushtail-bench-", dir=base_dir))
    try:
        run = Run(fsync_ms=fsync_latency(work))
        state_dir = work / "state"
        with LeaseStore.open(state_dir) as store:
            prefill(store, rows, rng)
            for batch in BATCH_SIZES:
                (
                    run.leases_per_s[batch],
                    run.apply_p50_ms[batch],
                    run.apply_p99_ms[batch],
                ) = renewals(store, rows, batch, seconds, rng)
        # Warm page cache: what a daemon restart sees, not a cold boot.
        start = time.perf_counter()
        with LeaseStore.open(state_dir) as store:
            opened = time.perf_counter()
            loaded = store.load()
            done = time.perf_counter()
        assert len(loaded) == rows, (len(loaded), rows)
        run.open_ms = (opened - start) * 1e3
        run.load_ms = (done - opened) * 1e3
        return run
    finally:
        shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="leases in the table")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5, help="apply() time per size")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    if args.rows < max(BATCH_SIZES):
        parser.error(f"--rows must be at least {max(BATCH_SIZES)}")

    if os.stat(args.dir).st_dev != os.stat("/var/lib").st_dev:
        print(f"warning: {args.dir} is not on the filesystem of /var/lib", file=sys.stderr)
    print(
        f"sqlite {sqlite3.sqlite_version}, {args.rows} leases, medians of {args.runs} runs "
        f"in {args.dir}"
    )
    runs = []
    for seed in range(args.runs):
        runs.append(one_run(args.dir, args.rows, args.seconds, seed))
        print(f"  run {seed + 1}/{args.runs} done", file=sys.stderr)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(f"{'batch':>6} {'leases/s':>10} {'apply p50 ms':>13} {'apply p99 ms':>13}")
    for batch in BATCH_SIZES:
        print(
            f"{batch:>6} {med([r.leases_per_s[batch] for r in runs]):>10.0f} "
            f"{med([r.apply_p50_ms[batch] for r in runs]):>13.2f} "
            f"{med([r.apply_p99_ms[batch] for r in runs]):>13.2f}"
        )
    print(f"fdatasync 4 KiB:        {med([r.fsync_ms for r in runs]):8.3f} ms")
    print(f"open (integrity_check): {med([r.open_ms for r in runs]):8.1f} ms")
    print(f"load() {args.rows} leases:  {med([r.load_ms for r in runs]):8.1f} ms")


if __name__ == "__main__":
    main()
