"""Engine time against a wall clock that NTP steps: engine time, and the conversions to and
from the kernel's CLOCK_BOOTTIME, do not move; `step()` says by how much the wall did."""

import pytest

from brushtaild.daemon import clock
from tests.unit.conftest import HOUR, FakeClocks


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_engine_time_and_kernel_conversions_ignore_a_wall_clock_step(
    clocks: FakeClocks, step: float
) -> None:
    clocks.advance(10)
    before = clock.wall()
    offset = clock.boot_offset()
    expires = before + 600
    boot_ns = clock.to_boot_ns(expires)
    clocks.step_wall(step)
    assert clock.wall() == before
    assert clock.boot_offset() == offset
    assert clock.to_boot_ns(expires) == boot_ns
    assert clock.from_boot_ns(boot_ns) == pytest.approx(expires)
    assert clock.step() == step
    clocks.advance(5)  # time goes on at the rate of CLOCK_BOOTTIME
    assert clock.wall() == before + 5
    assert clock.step() == step


def test_engine_time_is_the_wall_clock_at_start_and_counts_suspend(clocks: FakeClocks) -> None:
    assert clock.wall() == clocks.wall and clock.step() == 0
    clocks.advance(3 * HOUR)  # CLOCK_BOOTTIME counts a suspended machine's sleep
    assert clock.wall() == clocks.wall
    assert clock.from_boot_ns(int(clocks.boot * clock.NS)) == pytest.approx(clocks.wall)


def test_start_re_anchors_to_the_wall_clock(clocks: FakeClocks) -> None:
    clocks.step_wall(-HOUR)
    clock.start()
    assert clock.wall() == clocks.wall and clock.step() == 0
