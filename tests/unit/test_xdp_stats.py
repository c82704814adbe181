"""The fast path's collector: what a scrape exposes from the kernel's counters, the map
memory and the attachment the kernel reports (the maps are faked; tests/e2e reads real ones)."""

import ctypes
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest

from brushtaild.xdp import maps
from brushtaild.xdp.stats import FastPathCollector


@dataclass
class _Sum:
    value: int


class _PerCpuArray:
    def __init__(self, values: dict[int, int]) -> None:
        self.values = values

    def sum(self, key: ctypes.c_int) -> _Sum:
        return _Sum(self.values.get(key.value, 0))


class _Program:
    def __init__(self, results: dict[int, int]) -> None:
        self.tables = {"results": _PerCpuArray(results), "latency": _PerCpuArray({10: 3})}

    def table(self, name: str) -> _PerCpuArray:
        return self.tables[name]


def scrape(mode: str | None) -> str:
    registry = CollectorRegistry()
    results = {maps.Result.ACK: 6, maps.Result.MISS: 2, maps.Result.RATE_LIMIT: 5}
    registry.register(
        FastPathCollector(
            _Program(results),
            entries=lambda: 4,
            relays=lambda: 1,
            mode=lambda: mode,
            configured_mode="auto",
            memory=lambda: {"leases": 4096, "ratelimit": 1024},
        )
    )
    return generate_latest(registry).decode()


def test_a_scrape_exposes_counters_cache_memory_and_mode_with_conventional_names() -> None:
    text = scrape("native")
    for line in (
        "# TYPE dhcp_fastpath_requests_total counter",
        'dhcp_fastpath_requests_total{result="ack"} 6.0',
        'dhcp_fastpath_requests_total{result="rate_limit"} 5.0',
        'dhcp_fastpath_latency_seconds_bucket{le="+Inf"} 3.0',
        "dhcp_cache_hit_ratio 0.75",  # 6 answered out of 6 + 2 misses
        "dhcp_cache_entries 4.0",
        'dhcp_cache_size_bytes{map="leases"} 4096.0',
        'dhcp_cache_size_bytes{map="ratelimit"} 1024.0',
        "dhcp_fastpath_relays 1.0",
        'dhcp_fastpath_xdp_mode{configured="auto",mode="native"} 1.0',
    ):
        assert line in text.splitlines(), line
    assert 'result="not_dhcp"' not in text


def test_a_program_the_kernel_does_not_report_on_the_interface_is_detached() -> None:
    assert 'dhcp_fastpath_xdp_mode{configured="auto",mode="detached"} 1.0' in scrape(None)
