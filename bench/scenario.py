"""The one shape every benchmark scenario writes, so bench/report.py can put them side by side.

A scenario script (bench/slowpath.py, bench/mix.py, ...) measures each server in several runs,
interleaved (run 1 of every server, then run 2, ...), and writes one JSON file with `--json PATH`.
Values are per run, aligned by run index: `values["kea"][i]` was measured in the same round as
`values["brushtail"][i]`, so a ratio is taken run by run and then its median reported. A run that
failed or a server that does not apply is `None`; a server not measured at all is absent from
`values` and named in `skipped` with why.
"""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SERVERS = ("brushtail", "kea", "dnsmasq", "dhcpd")

Better = Literal["higher", "lower"]
Runs = list[float | None]


@dataclass
class Metric:
    label: str  # a table heading: "DORA/s", "REQUEST-ACK p99 ms"
    unit: str  # "/s", "ms", "us", "s", "MiB", "%", "" (a plain count)
    better: Better
    values: dict[str, Runs] = field(default_factory=dict)  # server -> one value per run


@dataclass
class Series:
    """One curve per server for a plot: y measured at each x, one y per run."""

    x_label: str
    y_label: str
    points: dict[str, list[tuple[float, Runs]]] = field(default_factory=dict)


@dataclass
class Scenario:
    scenario: str  # an identifier: "dora", "mix", "restart", ...
    title: str
    command: str  # the exact command line that produced it
    started: str  # ISO 8601, UTC
    seconds: float  # wall time of the whole scenario
    revision: str  # the brushtaild/bpf revision measured (`git describe --always --dirty`)
    runs: int
    metrics: dict[str, Metric] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # server -> why it was not measured
    notes: list[str] = field(default_factory=list)  # facts a reader needs beside the table
    machine: dict[str, Any] = field(default_factory=dict)  # load average, waiting for CPU, ...

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")


def load(path: Path) -> Scenario:
    raw = json.loads(path.read_text())
    raw["metrics"] = {k: Metric(**v) for k, v in raw["metrics"].items()}
    raw["series"] = {k: _series(v) for k, v in raw["series"].items()}
    return Scenario(**raw)


def _series(raw: dict[str, Any]) -> Series:
    points = {s: [(x, ys) for x, ys in pts] for s, pts in raw["points"].items()}
    return Series(raw["x_label"], raw["y_label"], points)


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it, for the machine facts beside every figure."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def present(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def median(values: Sequence[float | None]) -> float | None:
    got = present(values)
    return statistics.median(got) if got else None


def run_ratios(ours: Sequence[float | None], theirs: Sequence[float | None]) -> list[float | None]:
    """brushtail / peer, run by run (same round, same load from other tenants)."""
    return [a / b if a is not None and b else None for a, b in zip(ours, theirs, strict=False)]
