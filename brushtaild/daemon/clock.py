"""The only place brushtail reads clocks.

Lease times are Unix seconds: they are stored on disk, survive reboots and will be compared
between sites. But the engine's clock, `wall()`, does not follow the system's wall clock
while the daemon runs: it is the wall clock read once, at `start()`, plus CLOCK_BOOTTIME
since then. An NTP step (or `date -s`) therefore never makes leases expire early or late
in a running daemon, and CLOCK_BOOTTIME, which the XDP program compares
(bpf_ktime_get_boot_ns), converts to engine time with one offset that is exact for the
daemon's whole life. `step()` says how far the system's wall clock has moved away since.
Durations (latency, intervals) use the monotonic performance counter.
"""

import time
from dataclasses import dataclass

NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class _Anchor:
    wall: float  # the system's wall clock at the anchor, Unix seconds
    boot: float  # CLOCK_BOOTTIME at the same moment, seconds

    @classmethod
    def now(cls) -> "_Anchor":
        return cls(time.time(), time.clock_gettime(time.CLOCK_BOOTTIME))


_anchor = _Anchor.now()


def start() -> None:
    """Anchors engine time to the wall clock as it is now; the daemon calls it once, before
    it reads any time (the anchor taken at import stands for tools that do not)."""
    global _anchor
    _anchor = _Anchor.now()


def wall() -> float:
    """Engine time: Unix seconds that advance with CLOCK_BOOTTIME, never stepped."""
    return _anchor.wall + (time.clock_gettime(time.CLOCK_BOOTTIME) - _anchor.boot)


def boot_offset() -> float:
    """Engine time minus CLOCK_BOOTTIME, in seconds; constant between two `start()`s."""
    return _anchor.wall - _anchor.boot


def to_boot_ns(unix: float) -> int:
    """An engine time as the CLOCK_BOOTTIME nanoseconds the XDP program compares."""
    return int((unix - boot_offset()) * NS)


def from_boot_ns(boot_ns: int) -> float:
    """CLOCK_BOOTTIME nanoseconds from the XDP program as engine time."""
    return boot_ns / NS + boot_offset()


def step() -> float:
    """How far the system's wall clock has been stepped since `start()` (positive: ahead
    of engine time), in seconds; slewing moves both clocks alike and does not count."""
    return time.time() - wall()


def ticks() -> float:
    """Monotonic seconds for measuring durations; unrelated to wall time."""
    return time.perf_counter()
