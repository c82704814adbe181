"""The program's per-CPU counters and latency histogram, as Prometheus metrics.

Read from the maps at scrape time: the kernel counts, nothing is copied on the packet
path, and the counters survive daemon restarts because the maps are pinned.
"""

import ctypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from brushtaild.xdp import maps


@dataclass(frozen=True, slots=True)
class Snapshot:
    results: dict[maps.Result, int]
    latency: list[int]  # count per log2 bucket: bucket k holds [2^k, 2^(k+1)) ns

    @property
    def answered(self) -> int:
        return sum(self.results[r] for r in maps.ANSWERED)

    @property
    def hit_rate(self) -> float:
        """Answered in the kernel, out of the requests that looked for a lease entry."""
        misses = sum(self.results[r] for r in maps.CACHE_MISSES)
        looked = self.answered + misses
        return self.answered / looked if looked else 0.0


def read(tables: Any) -> Snapshot:
    results_table = tables.table("results")
    latency_table = tables.table("latency")
    results = {r: int(results_table.sum(ctypes.c_int(r)).value) for r in maps.Result}
    latency = [int(latency_table.sum(ctypes.c_int(i)).value) for i in range(maps.LATENCY_BUCKETS)]
    return Snapshot(results, latency)


class FastPathCollector(Collector):
    def __init__(
        self,
        tables: Any,
        *,
        entries: Callable[[], int],
        relays: Callable[[], int],
        mode: Callable[[], str | None],
        configured_mode: str,
        memory: Callable[[], dict[str, int]],
    ) -> None:
        self._tables = tables
        self._entries = entries
        self._relays = relays
        self._mode = mode
        self._configured_mode = configured_mode
        self._memory = memory

    def collect(self) -> Iterator[Metric]:
        snap = read(self._tables)
        requests = CounterMetricFamily(
            "dhcp_fastpath_requests",
            "DHCP requests seen by the XDP program, by what it did: offer/ack (answered in "
            "the kernel), a pass reason (left to the slow path), rate_limit, malformed or "
            "link_budget (dropped)",
            labels=["result"],
        )
        for result, count in snap.results.items():
            if result is not maps.Result.NOT_DHCP:
                requests.add_metric([result.label], count)
        yield requests
        buckets, cumulative = [], 0
        for k, count in enumerate(snap.latency):
            cumulative += count
            buckets.append((repr(2 ** (k + 1) / 1e9), cumulative))
        buckets[-1] = ("+Inf", cumulative)
        yield HistogramMetricFamily(
            "dhcp_fastpath_latency_seconds",
            "Time from the program seeing a request to its reply leaving (XDP_TX), log2 "
            "buckets; one reply in 16 is timed",
            buckets=buckets,
            sum_value=_estimated_sum(snap.latency),
        )
        yield GaugeMetricFamily(
            "dhcp_cache_hit_ratio",
            "Share of requests that found a usable lease entry and were answered in the "
            "kernel, since the maps were created",
            value=snap.hit_rate,
        )
        yield GaugeMetricFamily(
            "dhcp_cache_entries",
            "Lease entries installed in the kernel map",
            value=self._entries(),
        )
        size = GaugeMetricFamily(
            "dhcp_cache_size_bytes",
            "Kernel memory the fast path's maps take, by map (the kernel's own figure)",
            labels=["map"],
        )
        for name, memory in sorted(self._memory().items()):
            size.add_metric([name], memory)
        yield size
        yield GaugeMetricFamily(
            "dhcp_fastpath_relays",
            "Relays the kernel answers, each with the next hop routing gives for its giaddr",
            value=self._relays(),
        )
        mode = GaugeMetricFamily(
            "dhcp_fastpath_xdp_mode",
            "1 for the XDP mode the program is attached in as the kernel reports it now "
            "(native: in the driver; generic: after the kernel built an skb; detached: not "
            "on the interface), with the mode the config asks for",
            labels=["mode", "configured"],
        )
        mode.add_metric([self._mode() or "detached", self._configured_mode], 1)
        yield mode


def _estimated_sum(latency: list[int]) -> float:
    """The kernel keeps counts per bucket only; each is taken at its geometric middle."""
    return float(sum(count * 1.5 * 2**k for k, count in enumerate(latency))) / 1e9
