"""The only place brushtail reads clocks.

Lease times are wall-clock Unix seconds: they are stored on disk, survive reboots and will be
compared between sites. Durations (latency, intervals) use the monotonic performance counter.
"""

import time


def wall() -> float:
    return time.time()


def ticks() -> float:
    """Monotonic seconds for measuring durations; unrelated to wall time."""
    return time.perf_counter()
