"""The short fuzz run of the XDP program against the slow path (the long one:
bench/fuzz_xdp.py): mutated corpus frames for clients with a lease, each either left to
the slow path (or dropped) or answered exactly as the slow path answers it."""

import random

from brushtaild.xdp.loader import Program
from tests.bpf.harness import XDP_TX, RenewalLog, clear_maps
from tests.fuzz.xdp import Disagreement, XdpFuzz, reframed, udp_payload

SHORT_RUN = 1500  # inputs, a few seconds
INPUT_LEN = 64  # bytes of choices: more than any one mutation reads


def test_mutated_corpus_frames_are_left_alone_or_answered_as_the_slow_path(
    program: Program, renewal_log: RenewalLog
) -> None:
    fuzz = XdpFuzz(program, renewal_log)
    rng = random.Random(2026)
    try:
        for _ in range(SHORT_RUN):
            data = rng.randbytes(INPUT_LEN)
            try:
                fuzz.run(data)
            except Disagreement as exc:
                exc.add_note(f"fuzz input: {data.hex()}")
                raise
    finally:
        clear_maps(program)
    # Both sides of the comparison were exercised: answers checked, frames left alone.
    assert fuzz.verdicts["tx"] > SHORT_RUN // 100, fuzz.verdicts
    assert fuzz.verdicts["pass"] > SHORT_RUN // 100, fuzz.verdicts


def test_reframing_is_lossless(program: Program, renewal_log: RenewalLog) -> None:
    """The control for the payload mutations: a payload put back in its own frame gives
    the same bytes, a frame the kernel answers."""
    fuzz = XdpFuzz(program, renewal_log)
    try:
        fastpath, bases = fuzz.state()
        for _, frame in bases:
            assert reframed(frame, udp_payload(frame)) == frame
            assert fastpath.run(frame).retval == XDP_TX
    finally:
        clear_maps(program)
