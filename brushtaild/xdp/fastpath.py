"""The fast path as the daemon drives it: load or adopt the program, keep its maps equal to
the engine's leases, read back the renewals it answered and its counters, and take it down
without losing a renewal.

Every renewal the program acknowledged is queued in a pinned ring buffer until a
brushtaild records it. So no pin is ever removed before its ring is drained and what it
held handed to the caller, who records it in the lease store: pins of an older layout are
retired only after the daemon committed their last renewals, and taking the fast path down
(`fastpath.enabled: false`, `brushtail fastpath detach`) first takes the programs off the
interfaces, then drains, then removes.
"""

import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from brushtaild.config.model import Config
from brushtaild.daemon import clock
from brushtaild.engine.decisions import Decision
from brushtaild.engine.server import Server
from brushtaild.net.next_hop import NextHops
from brushtaild.xdp import loader, maps, stats
from brushtaild.xdp.relays import Relays
from brushtaild.xdp.sync import MapSync

log = logging.getLogger("brushtaild.xdp")
# What the caller's record step of a take-down returns (take_down hands it back).
Recorded = TypeVar("Recorded")


@dataclass(frozen=True, slots=True)
class Renewal:
    """One lease the program extended: the client's key, its address, and the new expiry
    in Unix seconds."""

    key: bytes
    address: int
    expires: float


def _renewal(event: maps.Renewal) -> Renewal:
    return Renewal(
        bytes(event.key), maps.host32(event.address), clock.from_boot_ns(event.expires_ns)
    )


def recorded(
    server: Server, renewals: Iterable[Renewal], now: float
) -> tuple[Decision, list[tuple[Renewal, Decision]]]:
    """The engine's account of renewals the kernel answered: one decision with every lease
    they extend (to be committed), and those it refuses with its reason (the slow path
    changed the lease meanwhile, so the kernel's entry must go)."""
    accepted = Decision()
    refused = []
    for renewal in renewals:
        key = maps.Key.from_ctype(maps.ClientKey.from_buffer_copy(renewal.key))
        renewed = server.kernel_renewal(key.mac, renewal.address, renewal.expires, now, key.vlans)
        if renewed.drop is not None:
            refused.append((renewal, renewed))
            continue
        accepted.lease_writes += renewed.lease_writes
        accepted.events += renewed.events
    return accepted, refused


class FastPath:
    def __init__(self, config: Config, server: Server) -> None:
        settings = config.fastpath
        self.config = config
        limits = loader.Limits.of(settings)
        self.pins = loader.PinDir(settings.pin_dir, limits)
        self.pins.lock()
        self._retired: list[tuple[loader.Version, loader.Ring | None]] = []
        try:
            # Read before this program's attach records its own interface.
            self._attached_to = {i for v in self.pins.versions() if (i := v.ifindex())}
            for version in self.pins.others():
                self._retired.append((version, version.ring()))
            if self._retired:
                # The running program keeps its own maps until it is replaced: no gap.
                log.warning(
                    "fast path map layout changed (%s, now %s): rebuilding the maps from the "
                    "lease store; the renewals queued in the old ones are recorded first",
                    ", ".join(str(v.path) for v, _ in self._retired),
                    self.pins.current.path.name,
                )
            self.program = loader.Program(self.pins.current.path, limits)
        except BaseException:
            self._release()
            raise
        self.sync = MapSync(self.program, server)
        self._next_hops = NextHops(config.interface)
        self.relays = Relays(self.program, self._next_hops.mac, config)
        self._pending: list[Renewal] = []
        self.mode: str | None = None
        self._retiring = False
        self._drained_at: float | None = None
        self.longest_drain_interval = 0.0

    def renewals(self) -> list[Renewal]:
        """Renewals answered since the last call (or, at start, while no daemon ran). The
        caller commits them before calling again: that is what lets an older layout's pins
        go at the call after the one that returned their last renewals."""
        if self._retiring:
            for version, ring in self._retired:
                if ring is not None:
                    ring.close()
                self.pins.remove(version)
                log.info("fast path: removed the retired maps in %s", version.path)
            self._retired = []
            self._retiring = False
        self._pending += [
            _renewal(maps.Renewal.from_buffer_copy(raw)) for raw in self.program.renewals().peek()
        ]
        for _, ring in self._retired:
            if ring is not None:
                self._pending += [_renewal(event) for event in ring.drain()]
        # Once this program is attached in their place, nothing writes the old rings.
        self._retiring = bool(self._retired) and self.mode is not None
        now = clock.ticks()
        if self._drained_at is not None:
            self.longest_drain_interval = max(self.longest_drain_interval, now - self._drained_at)
        self._drained_at = now
        pending, self._pending = self._pending, []
        return pending

    def recorded_up_to_here(self) -> None:
        """The renewals returned so far are durable: the ring may reuse their room. Until
        this call they stay in the ring, for the next brushtaild if this one dies."""
        self.program.renewals().release()

    def attach(self, server_mac: bytes, now: float) -> str:
        """Fills the maps from the engine, then puts this program on the interface in
        place of any running one, and takes ours off an interface the config no longer
        names. Renewals still queued must be applied to the engine before (see Daemon), or
        reconcile would roll back their expiry."""
        self._configure(server_mac)
        started = clock.ticks()
        written, removed = self.sync.reconcile(now)
        reconciled = clock.ticks() - started
        self.mode = self.program.attach(self.config.interface, self.config.fastpath.xdp_mode)
        log.info(
            "fast path attached to %s in %s mode: %d entries, %d stale removed, "
            "compiled and loaded in %.2fs, maps loaded in %.2fs",
            self.config.interface,
            self.mode,
            written,
            removed,
            self.program.load_seconds,
            reconciled,
        )
        ours = {i for v in self.pins.versions() if (i := v.config_map_id())}
        for ifindex in sorted(self._attached_to - {socket.if_nametoindex(self.config.interface)}):
            old = loader.remove_program(ifindex, ours)
            if old is not None:
                log.warning("fast path: took the program off %s, no longer configured", old)
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
        self._configure(server_mac)
        self.sync.reconcile(now, keepalive)
        self.relays.reconfigured(config)

    def _configure(self, server_mac: bytes) -> None:
        """The program's settings (server identity, rate limits) from the config."""
        settings = self.config.fastpath
        self.sync.configure(
            self.config,
            server_mac,
            settings.rate_limit,
            settings.rate_burst,
            settings.relay_rate_limit,
        )

    def collector(self) -> stats.FastPathCollector:
        return stats.FastPathCollector(
            self.program,
            entries=lambda: self.sync.entries,
            relays=lambda: self.relays.entries,
            mode=lambda: self.program.mode_on(self.config.interface),
            configured_mode=self.config.fastpath.xdp_mode.value,
            memory=self.program.map_memory,
        )

    def snapshot(self) -> stats.Snapshot:
        return stats.read(self.program)

    def close(self) -> None:
        """Leaves the program attached and its maps pinned: renewals go on being answered
        (and queued for the next brushtaild) while the daemon is away."""
        self.program.close()
        self._next_hops.close()
        self._release()
        if self._drained_at is not None:
            log.info(
                "fast path: longest interval between two drains of the renewals ring: %.3fs",
                self.longest_drain_interval,
            )

    def _release(self) -> None:
        for _, ring in self._retired:
            if ring is not None:
                ring.close()
        self.pins.close()


@dataclass(frozen=True, slots=True)
class Takedown:
    renewals: list[Renewal]  # recorded before the pins went
    interfaces: list[str]  # the programs were taken off these


def pinned(config: Config) -> list[loader.Version]:
    """What is pinned under the configured pin directory."""
    return loader.PinDir.of(config.fastpath).versions()


def take_down(
    config: Config, record: Callable[[list[Renewal]], Recorded]
) -> tuple[Takedown, Recorded] | None:
    """Takes the fast path out of the kernel, if anything is pinned (None if not): the
    programs off the interfaces first (so nothing is queued any more), then every ring
    drained and its renewals handed to `record`, which puts them in the lease store; the
    pins go once it returns, and stay if it raises. Returns what was taken down and what
    `record` returned. Raises loader.PinDirBusy while a brushtaild holds the pin directory."""
    if not pinned(config):
        return None
    pins = loader.PinDir.of(config.fastpath)
    pins.lock()
    rings: list[loader.Ring] = []
    try:
        interfaces = loader.remove_programs(pins, [config.interface])
        rings = [ring for v in pins.versions() if (ring := v.ring()) is not None]
        down = Takedown([_renewal(e) for ring in rings for e in ring.drain()], interfaces)
        result = record(down.renewals)
        pins.remove_all()
    finally:
        for ring in rings:
            ring.close()
        pins.close()
    return down, result
