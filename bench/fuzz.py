"""Long fuzz run of the engine and the reply encoder (tests/fuzz/engine.py checks each input).

    /work/main/.venv/bin/python bench/fuzz.py --inputs 1000000

With atheris installed (`.venv/bin/pip install atheris`), libFuzzer mutates the inputs,
guided by coverage of brushtaild; without it (or with --engine random) inputs are random
bytes from --seed. Either way each input is a sequence of requests replayed from its bytes
alone. Crashes (any exception) and rule violations are counted, not fatal: the first input
of each distinct failure is written to --failures with its traceback, and is replayed with
`bench/fuzz.py --replay FILE`. Prints inputs run, inputs and requests per second, crashes
and rule violations; exits 1 if there was any.
"""

import argparse
import hashlib
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAX_LEN = 512  # bytes per input: up to tests.fuzz.engine.MAX_STEPS requests
REPORT_EVERY = 30.0  # seconds between progress lines
DROPS = ("malformed:", "drop:")
SEEDS = 256  # random inputs libFuzzer starts from


class Tally:
    def __init__(self, limit: int, failures: Path) -> None:
        self.limit = limit
        self.failures = failures
        self.inputs = 0
        self.counts: Counter[str] = Counter()
        self.crashes = 0
        self.violations = 0
        self.kinds: Counter[str] = Counter()
        self.start = time.monotonic()
        self.last_report = self.start

    def one(self, engine: ModuleType, data: bytes) -> None:
        self.inputs += 1
        try:
            self.counts.update(engine.run(data))
        except engine.RuleBroken as exc:
            self.violations += 1
            self.failed("violation", exc, data)
        except Exception as exc:
            self.crashes += 1
            self.failed("crash", exc, data)
        now = time.monotonic()
        if now - self.last_report >= REPORT_EVERY:
            self.last_report = now
            self.report(final=False)

    def failed(self, kind: str, exc: BaseException, data: bytes) -> None:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        # The rule or error without the numbers in it, so one defect counts once.
        text = re.sub(r"[0-9a-f]{6,}|\d+", "N", str(exc))[:60]
        signature = f"{kind} {type(exc).__name__} {where.filename}:{where.lineno} {text}"
        self.kinds[signature] += 1
        if self.kinds[signature] > 1:
            return
        self.failures.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1(data).hexdigest()[:12]
        (self.failures / f"{kind}-{name}.bin").write_bytes(data)
        (self.failures / f"{kind}-{name}.txt").write_text(
            f"{signature}\ninput: {data.hex()}\n\n" + "".join(traceback.format_exception(exc))
        )
        print(f"new {kind}: {signature} -> {self.failures}/{kind}-{name}.txt", flush=True)

    def report(self, *, final: bool) -> None:
        elapsed = time.monotonic() - self.start
        requests = self.counts["requests"]
        print(
            f"{'done' if final else 'progress'}: {self.inputs} inputs, {requests} requests in "
            f"{elapsed:.0f} s ({self.inputs / elapsed:.0f} inputs/s, "
            f"{requests / elapsed:.0f} requests/s); crashes {self.crashes}, "
            f"rule violations {self.violations}",
            flush=True,
        )
        if final:
            replies = {k: v for k, v in self.counts.items() if k.startswith("reply:")}
            print(f"replies: {dict(sorted(replies.items()))}")
            drops = Counter({k: v for k, v in self.counts.items() if k.startswith(DROPS)})
            print(f"drops: {dict(drops.most_common())}")
            for signature, n in self.kinds.most_common():
                print(f"  {n:>8}  {signature}")


def random_inputs(seed: int) -> Callable[[], bytes]:
    rng = random.Random(seed)
    return lambda: rng.randbytes(rng.randrange(8, MAX_LEN))


def run_random(tally: Tally, engine: ModuleType, seed: int) -> None:
    draw = random_inputs(seed)
    for _ in range(tally.limit):
        tally.one(engine, draw())


def run_atheris(tally: Tally, seed: int) -> None:
    import atheris  # type: ignore[import-untyped]

    # Coverage of the code under test only: the checks would double the cost of each input.
    with atheris.instrument_imports(include=["brushtaild"]):
        from tests.fuzz import engine

    # Seeds of full length: libFuzzer's own start (one byte, growing slowly) would spend
    # the first hundred thousand inputs on one-request sequences.
    corpus = Path(tempfile.mkdtemp(prefix="brushtail-fuzz-corpus-"))
    draw = random_inputs(seed)
    for n in range(SEEDS):
        (corpus / f"seed-{n}").write_bytes(draw())

    def test_one_input(data: bytes) -> None:
        tally.one(engine, data)
        if tally.inputs >= tally.limit:
            tally.report(final=True)
            shutil.rmtree(corpus, ignore_errors=True)
            # libFuzzer exits from C without Python's teardown: flush and leave now.
            sys.stdout.flush()
            os._exit(1 if tally.crashes or tally.violations else 0)

    args = [sys.argv[0], f"-seed={seed}", f"-max_len={MAX_LEN}", "-len_control=0"]
    args += ["-print_final_stats=0", f"-runs={tally.limit + SEEDS}", str(corpus)]
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--failures", type=Path, default=Path("/tmp/brushtail-fuzz"))
    parser.add_argument("--replay", type=Path, help="run one saved input and show its error")
    args = parser.parse_args()
    if args.replay:
        from tests.fuzz import engine

        print(engine.run(args.replay.read_bytes()))
        return 0
    engine_name = args.engine
    if engine_name == "auto":
        try:
            import atheris  # noqa: F401

            engine_name = "atheris"
        except ImportError:
            engine_name = "random"
    print(f"engine fuzz: {args.inputs} inputs, {engine_name}, seed {args.seed}", flush=True)
    tally = Tally(args.inputs, args.failures)
    if engine_name == "atheris":
        run_atheris(tally, args.seed)
    from tests.fuzz import engine

    run_random(tally, engine, args.seed)
    tally.report(final=True)
    return 1 if tally.crashes or tally.violations else 0


if __name__ == "__main__":
    sys.exit(main())
