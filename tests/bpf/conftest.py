"""Fixtures for the kernel tests: the XDP program compiled once per session, exactly as
brushtaild loads it, with its maps pinned in a directory of this run's own; and a fresh
engine + map sync for every test.

The program runs through BPF_PROG_TEST_RUN: no interface, no traffic. Needs root.
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from brushtaild.xdp.loader import BPFFS, Limits, Program
from tests.bpf.harness import Fastpath, RenewalLog, clear_maps
from tests.e2e.netns import pid_alive
from tests.environment import unavailable

PIN_PREFIX = "brushtail-pytest-"
# Small rate-limit table: test_ratelimit floods it with more MACs than it holds.
LIMITS = Limits(max_subscribers=4096, ratelimit_entries=64)


def remove_pins(pin_dir: Path) -> None:
    if not pin_dir.is_dir():
        return
    for path in pin_dir.iterdir():
        path.unlink()
    pin_dir.rmdir()


def _sweep_stale_pins() -> None:
    """A run killed before its teardown leaves its pins; remove those of dead runs."""
    for pin_dir in BPFFS.glob(f"{PIN_PREFIX}*"):
        pid = pin_dir.name.removeprefix(PIN_PREFIX).split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            remove_pins(pin_dir)


def _require_kernel() -> None:
    if os.geteuid() != 0:
        unavailable("BPF_PROG_TEST_RUN needs root")
    try:
        import bcc  # noqa: F401
    except ImportError:
        unavailable("BCC (python3-bpfcc) is not installed")


@contextlib.contextmanager
def compiled(pin_dir: Path, limits: Limits) -> Iterator[Program]:
    """A Program pinned under `pin_dir`; pins and directory go at exit, also on failure."""
    program: Program | None = None
    try:
        program = Program(pin_dir, limits)
        yield program
    finally:
        if program is not None:
            program.close()
        remove_pins(pin_dir)


@pytest.fixture(scope="session")
def program() -> Iterator[Program]:
    _require_kernel()
    _sweep_stale_pins()
    with compiled(BPFFS / f"{PIN_PREFIX}{os.getpid()}", LIMITS) as prog:
        yield prog


@pytest.fixture(scope="session")
def renewal_log(program: Program) -> RenewalLog:
    log = RenewalLog(program)
    return log


@pytest.fixture
def fastpath(program: Program, renewal_log: RenewalLog) -> Iterator[Fastpath]:
    """A new engine (two pools, no leases) and its MapSync; leases, templates and rate
    buckets are cleared before and after the test."""
    yield Fastpath(program, renewal_log)
    clear_maps(program)
