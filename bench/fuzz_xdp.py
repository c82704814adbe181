"""Long fuzz run of the XDP program against the slow path (tests/fuzz/xdp.py checks each
input), through BPF_PROG_TEST_RUN. Needs root and BCC, like tests/bpf:

    sudo /work/main/.venv/bin/python bench/fuzz_xdp.py --inputs 200000

Inputs are random bytes from --seed (a coverage-guided fuzzer sees only the Python side,
not the kernel program). Prints inputs run, inputs per second, the kernel's verdicts and
disagreements (an XDP_TX that is not the slow path's reply, or XDP_ABORTED; 0 expected);
the first few disagreeing inputs go to --failures. Exits 1 if there was any.
"""

import argparse
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brushtaild.xdp.loader import BPFFS  # noqa: E402
from tests.bpf.conftest import LIMITS, PIN_PREFIX, compiled  # noqa: E402
from tests.bpf.harness import RenewalLog  # noqa: E402
from tests.fuzz.xdp import Disagreement, XdpFuzz  # noqa: E402

INPUT_LEN = 64  # bytes of choices per input, as the short run in tests/bpf/test_fuzz_xdp.py
KEEP = 20  # disagreeing inputs written out
REPORT_EVERY = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--failures", type=Path, default=Path("/tmp/brushtail-fuzz-xdp"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    # The pin directory is named as the tests name theirs, so their sweep removes it if
    # this run is killed before its own cleanup.
    with compiled(BPFFS / f"{PIN_PREFIX}{os.getpid()}", LIMITS) as program:
        log = RenewalLog(program)
        fuzz = XdpFuzz(program, log)
        disagreements = 0
        start = last = time.monotonic()
        for n in range(1, args.inputs + 1):
            data = rng.randbytes(INPUT_LEN)
            try:
                fuzz.run(data)
            except Disagreement as exc:
                disagreements += 1
                if disagreements <= KEEP:
                    args.failures.mkdir(parents=True, exist_ok=True)
                    (args.failures / f"input-{n}.txt").write_text(f"{data.hex()}\n{exc}\n")
                    print(f"disagreement: {str(exc)[:200]}", flush=True)
            now = time.monotonic()
            if now - last >= REPORT_EVERY or n == args.inputs:
                last = now
                print(
                    f"{n} inputs in {now - start:.0f} s ({n / (now - start):.0f} inputs/s); "
                    f"verdicts {dict(fuzz.verdicts)}; disagreements {disagreements}",
                    flush=True,
                )
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
