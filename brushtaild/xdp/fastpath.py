"""The fast path as the daemon drives it: load or adopt the program, keep its maps equal to
the engine's leases, and read back the renewals it answered and its counters."""

import ctypes
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from brushtaild.config.model import Config
from brushtaild.daemon import clock
from brushtaild.engine.decisions import Decision
from brushtaild.engine.server import Server
from brushtaild.xdp import loader, maps, stats
from brushtaild.xdp.sync import MapSync

log = logging.getLogger("brushtaild.xdp")


@dataclass(frozen=True, slots=True)
class Renewal:
    """One lease the program extended: the client's key, its address, and the new expiry
    in Unix seconds."""

    key: bytes
    address: int
    expires: float


class FastPath:
    def __init__(self, config: Config, server: Server) -> None:
        settings = config.fastpath
        self.config = config
        self.program = loader.Program(
            settings.pin_dir,
            loader.Limits(settings.max_subscribers, settings.rate_limit_clients),
        )
        self.sync = MapSync(self.program, server)
        self._pending: list[Renewal] = []
        self.program.ring_buffer(self._on_renewal)
        self.mode: str | None = None

    def _on_renewal(self, _ctx: Any, data: Any, _size: int) -> None:
        event = ctypes.cast(data, ctypes.POINTER(maps.Renewal)).contents
        self._pending.append(
            Renewal(
                bytes(event.key), maps.host32(event.address), clock.from_boot_ns(event.expires_ns)
            )
        )

    def renewals(self) -> list[Renewal]:
        """Renewals answered since the last call (or, at start, while no daemon ran)."""
        self.program.consume()
        pending, self._pending = self._pending, []
        return pending

    def attach(self, server_mac: bytes, now: float) -> str:
        """Fills the maps from the engine, then puts this program on the interface in
        place of any running one. Renewals still queued must be applied to the engine
        before (see Daemon), or reconcile would roll back their expiry."""
        settings = self.config.fastpath
        self.sync.configure(
            self.config,
            server_mac,
            settings.rate_limit,
            settings.rate_burst,
            settings.relay_rate_limit,
        )
        written, removed = self.sync.reconcile(now)
        self.mode = self.program.attach(self.config.interface, settings.xdp_mode)
        log.info(
            "fast path attached to %s in %s mode: %d entries, %d stale removed, "
            "compiled and loaded in %.1fs",
            self.config.interface,
            self.mode,
            written,
            removed,
            self.program.load_seconds,
        )
        return self.mode

    def apply(self, decisions: Iterable[Decision], now: float) -> None:
        self.sync.apply(decisions, now)

    def reconfigured(
        self,
        config: Config,
        server: Server,
        server_mac: bytes,
        now: float,
        keepalive: Callable[[], object],
    ) -> None:
        """New templates for the new config, and every entry rewritten to use them."""
        self.config = config
        self.sync.server = server
        settings = config.fastpath
        self.sync.configure(
            config, server_mac, settings.rate_limit, settings.rate_burst, settings.relay_rate_limit
        )
        self.sync.reconcile(now, keepalive)

    def collector(self) -> stats.FastPathCollector:
        return stats.FastPathCollector(self.program, lambda: self.sync.entries, lambda: self.mode)

    def snapshot(self) -> stats.Snapshot:
        return stats.read(self.program)

    def close(self) -> None:
        """Leaves the program attached and its maps pinned: renewals go on being answered
        (and queued for the next brushtaild) while the daemon is away."""
        self.program.close()
