"""Crash safety, long form: SIGKILL brushtaild at random moments, N rounds, and check after
each restart that every ACK any client received is in the lease store for that client with
at least the expiry it was told, and that no address was ACKed to two clients at once.

Run as root from the checkout (the daemon runs under Debian's python3, which has BCC):

    /work/main/.venv/bin/python bench/crash.py --rounds 20 [--seed N] [--workdir DIR]

What runs, what is checked and the slack allowed are described in tests/e2e/crash.py; the
short form (3 rounds) is tests/e2e/test_crash.py. One line per round: ACKs the clients
received since the previous round, how many the kernel sent (its pinned counter) and how
many the slow path, and how many recorded checks passed; then a summary, and every
violation with the daemon's log lines about its address. Exit status 1 if any check failed.
The work directory (capture, daemon log, store) is kept when a check failed.
"""

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a plain script from a checkout: the harness lives in tests/.
sys.path.insert(0, str(REPO))

from tests.e2e.crash import CrashRun, Plan  # noqa: E402
from tests.e2e.netns import available  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the work dir even on success")
    parser.add_argument(
        "--no-churn",
        action="store_true",
        help="without the clients that come back at their lease's expiry (see Plan.churn_rate)",
    )
    parser.add_argument("--show", type=int, default=3, help="violations shown in full per kind")
    args = parser.parse_args()
    reason = available()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="brushtail-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    plan = Plan(rounds=args.rounds, seed=seed, churn_rate=0 if args.no_churn else Plan.churn_rate)
    print(
        f"crash: {args.rounds} rounds, seed {seed}, churn {plan.churn_rate}/s, work dir {workdir}",
        flush=True,
    )
    started = time.monotonic()
    with CrashRun(workdir, plan) as run:
        for _ in range(args.rounds):
            print(run.round().line(), flush=True)
        print(f"summary: {run.summary()}; {time.monotonic() - started:.0f}s", flush=True)
        failures = run.violations()
        shown: dict[str, int] = {}
        for number, violation in failures:
            kind = f"{violation.check}/{violation.kind}"
            shown[kind] = shown.get(kind, 0) + 1
            if shown[kind] > args.show:
                continue
            print(f"round {number}: {violation}")
            for line in run.daemon_lines(violation.ack.address)[-8:]:
                print(f"    {line}")
    if failures or args.keep:
        print(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
