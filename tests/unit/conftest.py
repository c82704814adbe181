"""Fixtures for the unit tests."""

import time
from collections.abc import Iterator

import pytest

from brushtaild.daemon import clock

HOUR = 3600.0


class FakeClocks:
    """time.time and CLOCK_BOOTTIME as the test sets them: `advance` moves both, as real
    time passing does; `step_wall` moves the wall clock alone, as `date -s` or NTP does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wall = 1_800_000_000.0
        self.boot = 5_000.0
        real_gettime = time.clock_gettime

        def gettime(clk: int) -> float:
            return self.boot if clk == time.CLOCK_BOOTTIME else real_gettime(clk)

        monkeypatch.setattr(time, "time", lambda: self.wall)
        monkeypatch.setattr(time, "clock_gettime", gettime)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.boot += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall += seconds


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClocks]:
    """Fake clocks, engine time anchored to them; real clocks and a fresh anchor after."""
    fake = FakeClocks(monkeypatch)
    clock.start()
    yield fake
    monkeypatch.undo()
    clock.start()
