"""A log that says the same kind of trouble at most once per interval.

Per-packet trouble (a dropped request, a map write the kernel refuses) can repeat at line
rate: logged each time, a flood of garbage or a full map would flood the journal. Each kind
is logged at most once per interval, with how many were held back since the last line.
"""

import logging


class ThrottledLog:
    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self._logger = logger
        self._interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def report(self, kind: str, message: str, now: float, exc: BaseException | None = None) -> None:
        """Logs `message` unless a `kind` line went out less than the interval before `now`
        (seconds, any clock the caller keeps to); with `exc`, a bug: logged as an error with
        its traceback."""
        if now < self._next.get(kind, float("-inf")):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        suppressed = self._suppressed.pop(kind, 0)
        more = f" ({suppressed} more since last report)" if suppressed else ""
        level = logging.WARNING if exc is None else logging.ERROR
        self._logger.log(level, "%s%s", message, more, exc_info=exc)
        self._next[kind] = now + self._interval
