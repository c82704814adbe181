"""bench/slowpath.py with brushtail's kernel request budgets off, for slow-path capacity.

perfdhcp is one relay (198.18.0.2) for every client it simulates, and by default the XDP
program lets one relay forward 1,000 requests a second (`fastpath.relay_rate_limit`,
docs/CONFIG.md): bench/slowpath.py's overload phase then measures that budget, not the
slow path (about 100 DORA/s at perfdhcp's unlimited rate). Kea has no such budget. This
runs bench/slowpath.py unchanged except that brushtail's config sets
`relay_rate_limit: 0` (and `rate_limit: 0`), as an operator would for a relay that
forwards a whole BNG's subscribers. Same arguments as bench/slowpath.py.
"""

import sys
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent))

import slowpath

from tests.e2e.netns import Link

_start = slowpath.start_brushtail


def start_brushtail(link: Link, work: Path, log: IO[bytes]) -> slowpath.Started:
    """slowpath.start_brushtail, with the budgets off: the config is written before the
    daemon reads it, so `Link.popen_in` appends the section first."""
    popen_in = link.popen_in

    def popen_unthrottled(*args: object, **kwargs: object) -> object:
        with (work / "brushtail.yaml").open("a") as config:
            config.write("fastpath:\n  relay_rate_limit: 0\n  rate_limit: 0\n")
        return popen_in(*args, **kwargs)  # type: ignore[arg-type]

    link.popen_in = popen_unthrottled  # type: ignore[method-assign,assignment]
    try:
        return _start(link, work, log)
    finally:
        del link.popen_in  # type: ignore[attr-defined]


slowpath.start_brushtail = start_brushtail
slowpath.STARTERS["brushtail"] = start_brushtail

if __name__ == "__main__":
    raise SystemExit(slowpath.main())
