"""brushtaild: wires the engine to its edges and drives them.

This is the only module that reads the clock for the engine, reads and sends packets, and
writes the lease store. One loop, one thread: receive a batch of requests, decide each with
the engine, write every lease change of the batch in one durable commit (group commit),
then send the replies. Nothing is acknowledged before it is on disk.
"""

import argparse
import logging
import selectors
import signal
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import Counter

from brushtaild import __version__
from brushtaild.config.load import DEFAULT_CONFIG, ConfigError, load_config
from brushtaild.config.model import Config
from brushtaild.config.reload import restart_keys
from brushtaild.daemon import clock, journal
from brushtaild.daemon.lease_log import LeaseLog, LeaseSink
from brushtaild.daemon.metrics import Metrics
from brushtaild.daemon.systemd import Notifier, Watchdog
from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import MessageType
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.options import format_ip, format_mac
from brushtaild.dhcp.reasons import DropReason, MalformedPacket
from brushtaild.engine.decisions import Decision, Ingress
from brushtaild.engine.leases import Lease
from brushtaild.engine.server import Server
from brushtaild.net.packet_io import PacketIO
from brushtaild.store.lease_store import LeaseStore, StoreError
from brushtaild.xdp import fastpath
from brushtaild.xdp.fastpath import FastPath, Renewal
from brushtaild.xdp.loader import LoadError

EX_CONFIG = 78  # sysexits.h; systemd shows it as "config" and does not restart-loop on it
EXIT_START_FAILED = 1
BATCH = 256
# Upper bound on sleeping, so kernel drop counters and timers are looked at regularly.
IDLE_WAKEUP = 1.0
DROP_LOG_INTERVAL = 10.0
# How often `systemctl status` gets a fresh STATUS= line; also the window of its rates.
STATUS_INTERVAL = 5.0

log = logging.getLogger("brushtaild")


class DropLog:
    """Logs drops by reason at most once per interval, with how many were suppressed, so a
    flood of garbage cannot flood the journal."""

    def __init__(self, interval: float = DROP_LOG_INTERVAL) -> None:
        self._interval = interval
        self._next: dict[DropReason, float] = {}
        self._suppressed: dict[DropReason, int] = {}

    def drop(self, reason: DropReason, detail: str, now: float) -> None:
        if now < self._next.get(reason, 0.0):
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        suppressed = self._suppressed.pop(reason, 0)
        more = f" ({suppressed} more since last report)" if suppressed else ""
        log.warning("drop reason=%s %s%s", reason.label, detail, more)
        self._next[reason] = now + self._interval


def _starts_an_exchange(request: tuple[Message, Ingress]) -> bool:
    return request[0].message_type is MessageType.DISCOVER


def _collapse(decisions: Iterable[Decision]) -> tuple[list[Lease], list[int]]:
    """The net effect of a batch on the store: the last change per address wins, so a delete
    and a later write of the same address (or the reverse) cannot be applied out of order."""
    final: dict[int, Lease | None] = {}
    for decision in decisions:
        for address in decision.lease_deletes:
            final[address] = None
        for lease in decision.lease_writes:
            final[lease.address] = lease
    writes = [lease for lease in final.values() if lease is not None]
    deletes = [address for address, lease in final.items() if lease is None]
    return writes, deletes


def _counter_total(counter: Counter) -> float:
    """Sum of a Prometheus counter over all its label sets, read from its samples so the
    request loop never keeps a second count."""
    return float(
        sum(
            sample.value
            for family in counter.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    )


class Daemon:
    def __init__(self, config: Config, config_path: Path, *, journald: bool = False) -> None:
        self.config = config
        self.config_path = config_path
        self.store = LeaseStore.open(config.state_dir)
        leases = self.store.load()
        self.server = Server(config, leases, clock.wall())
        self.metrics = Metrics(lambda: self.server.pool_usage())
        self.io = PacketIO(config.interface, config.server_id)
        # Compiled here, attached in _start_complete: until then a program from an earlier
        # run (pinned, still attached) goes on answering.
        self.fastpath = FastPath(config, self.server) if config.fastpath.enabled else None
        if self.fastpath is not None:
            self.metrics.registry.register(self.fastpath.collector())
        self.drops = DropLog()
        self.lease_log: LeaseSink = (
            journal.JournalLeaseLog(config.site, sys.stderr, log.isEnabledFor(logging.INFO))
            if journald
            else LeaseLog(sys.stderr, log.isEnabledFor(logging.INFO))
        )
        if self.fastpath is None and fastpath.pinned(config):
            # It would answer from maps nothing keeps up to date any more.
            with fastpath.taken_down(config) as leftover:
                self._record(leftover.renewals)
            log.warning(
                "fast path disabled: removed the XDP program and maps an earlier run left on "
                "%s; recorded the %d renewals it answered",
                ", ".join(leftover.interfaces) or config.interface,
                len(leftover.renewals),
            )
        self.notifier = Notifier()
        self.watchdog = Watchdog()
        self._running = True
        self._reload = False
        self._status_due = 0.0
        self._status_window = (0.0, 0.0)  # (ticks, requests counted) at the last STATUS

    def run(self) -> int:
        host, port = self.config.metrics_listen
        self.metrics.serve(host, port)
        wakeup_r, wakeup_w = socket.socketpair()
        wakeup_r.setblocking(False)
        wakeup_w.setblocking(False)
        signal.set_wakeup_fd(wakeup_w.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        with selectors.DefaultSelector() as selector:
            selector.register(self.io.fileno(), selectors.EVENT_READ, "packets")
            selector.register(wakeup_r, selectors.EVENT_READ, "signal")
            try:
                self._start_complete()
                while self._running:
                    for key, _ in selector.select(self._timeout()):
                        if key.data == "signal":
                            wakeup_r.recv(64)
                        else:
                            self._serve_batch()
                    if self._reload:
                        self._reload = False
                        # ticks() is CLOCK_MONOTONIC on Linux, the clock systemd expects.
                        self.notifier.reloading(int(clock.ticks() * 1_000_000))
                        self._reload_config()
                        self.notifier.ready(self._status(clock.ticks()))
                    self._housekeeping()
                self.notifier.stopping()
                if self.fastpath is not None:
                    # The program goes on answering while we are away (queued for the next
                    # start); what it answered until now is recorded now.
                    self._absorb_renewals()
            finally:
                if self.fastpath is not None:
                    self.fastpath.close()
                signal.set_wakeup_fd(-1)
                wakeup_r.close()
                wakeup_w.close()
                self.io.close()
                self.store.close()
                self.notifier.close()
        log.info("brushtaild stopped; every acknowledged lease is on disk")
        return 0

    def _start_complete(self) -> None:
        """The single point where start-up ends: leases are loaded, the packet socket is
        open and signals are handled (a SIGHUP from `systemctl reload` must not kill us).

        The XDP program is attached here, before READY=1, so that systemd calls the unit
        active only once known subscribers are answered in the kernel. Renewals it answered
        while no daemon ran are recorded first, so the maps are refilled with them."""
        config = self.config
        if self.fastpath is not None:
            self._absorb_renewals()
            self.fastpath.attach(self.io.mac, clock.wall())
        # Logged here, not earlier: whoever waits for this line may signal us at once.
        log.info(
            "brushtaild %s started site=%s interface=%s server_id=%s leases=%d pools=%s",
            __version__,
            config.site,
            config.interface,
            format_ip(config.server_id),
            len(self.server.leases()),
            ",".join(p.name for p in config.pools),
        )
        now = clock.ticks()
        self.watchdog.start(now)
        self.notifier.ready(self._status(now))

    def _status(self, now: float) -> str:
        """The STATUS= line: what an operator needs from `systemctl status` at a glance.
        Its rate covers the time since the previous line, and a new window starts here."""
        requests = _counter_total(self.metrics.requests)
        since, counted = self._status_window
        rate = (requests - counted) / (now - since) if since and now > since else 0.0
        self._status_window = (now, requests)
        self._status_due = now + STATUS_INTERVAL
        usage = self.server.pool_usage().values()
        total = sum(n_total for n_total, _ in usage)
        assigned = sum(n_assigned for _, n_assigned in usage)
        share = 100 * assigned / total if total else 0.0
        return (
            f"serving {self.config.interface}: {assigned} leases ({share:.0f}% of {total}), "
            f"slow path {rate:.0f} req/s, fast path: {self._fastpath_status()}, "
            "peers: none configured"
        )

    def _fastpath_status(self) -> str:
        if self.fastpath is None:
            return "disabled"
        snap = self.fastpath.snapshot()
        return (
            f"{self.fastpath.mode} XDP, {self.fastpath.sync.entries} entries, "
            f"{snap.answered} answered, {100 * snap.hit_rate:.0f}% hits"
        )

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._running = False

    def _timeout(self) -> float:
        timeout = IDLE_WAKEUP
        deadline = self.server.next_deadline()
        if deadline is not None:
            timeout = min(max(deadline - clock.wall(), 0.0), timeout)
        # A sleep past the watchdog's ping time would get a healthy daemon killed.
        ping = self.watchdog.wait(clock.ticks())
        return timeout if ping is None else min(ping, timeout)

    def _serve_batch(self) -> None:
        started = clock.ticks()
        packets, malformed_frames = self.io.receive_batch(BATCH)
        now = clock.wall()
        if malformed_frames:
            self.metrics.count_drop(DropReason.BAD_FRAME, malformed_frames)
            self.drops.drop(DropReason.BAD_FRAME, f"frames={malformed_frames}", now)
        requests: list[tuple[Message, Ingress]] = []
        for payload, ingress in packets:
            try:
                requests.append((parse(payload), ingress))
            except MalformedPacket as exc:
                self.metrics.count_drop(exc.reason)
                self.drops.drop(exc.reason, f"src_mac={format_mac(ingress.src_mac)}", now)
        # Under a storm (every CPE of a segment back after a power cut) the queue holds far
        # more DISCOVERs than we can answer in time: finishing exchanges already under way
        # (REQUESTs) before starting new ones turns more of the work into bound clients.
        requests.sort(key=_starts_an_exchange)
        decisions: list[Decision] = []
        for msg, ingress in requests:
            decision = self.server.handle(msg, ingress, now)
            if decision.drop is not None:
                self.metrics.count_drop(decision.drop)
                self.drops.drop(decision.drop, f"mac={format_mac(msg.hwaddr)}", now)
            decisions.append(decision)
        # Replies that change no lease (OFFER, NAK, INFORM) need not wait for the commit.
        durable = [d for d in decisions if d.lease_writes or d.lease_deletes]
        for decision in decisions:
            if not (decision.lease_writes or decision.lease_deletes):
                self._send(decision)
        self._commit(durable)
        if self.fastpath is not None:
            # Only now that the batch is on disk may the kernel answer for its leases.
            self.fastpath.apply(decisions, now)
        for decision in durable:
            self._send(decision)
        self.lease_log.flush()
        elapsed = clock.ticks() - started
        for decision in decisions:
            if decision.replies:
                self.metrics.latency.observe(elapsed)

    def _send(self, decision: Decision) -> None:
        for reply in decision.replies:
            self.io.send(reply.payload, reply.dest, reply.ingress)
            self.metrics.count_reply(reply.message.message_type)
        self.lease_log.add(decision.events, "slow")

    def _commit(self, decisions: list[Decision]) -> None:
        """Durably write a batch's lease changes. A store failure propagates and stops the
        daemon: acknowledging a lease that is not on disk is never an option."""
        writes, deletes = _collapse(decisions)
        if not writes and not deletes:
            return
        started = clock.ticks()
        self.store.apply(writes, deletes)
        self.metrics.commits.observe(clock.ticks() - started)
        self.metrics.committed.inc(len(writes) + len(deletes))

    def _absorb_renewals(self) -> None:
        """Records the renewals the kernel answered, so the store never falls behind the
        fast path."""
        assert self.fastpath is not None
        for renewal in self._record(self.fastpath.renewals()):
            # The slow path changed this lease meanwhile: its entry must go.
            self.fastpath.sync.withdraw(renewal.address)

    def _record(self, renewals: list[Renewal]) -> list[Renewal]:
        """Extends the renewed leases in the engine and writes them to the store; returns
        the renewals the engine refused (counted as drops)."""
        if not renewals:
            return []
        accepted, refused = fastpath.recorded(self.server, renewals, clock.wall())
        for _, decision in refused:
            assert decision.drop is not None
            self.metrics.count_drop(decision.drop)
        self._commit([accepted])
        self.lease_log.add(accepted.events, "fast")
        return [renewal for renewal, _ in refused]

    def _housekeeping(self) -> None:
        decision = self.server.tick(clock.wall())
        self._commit([decision])
        if self.fastpath is not None:
            self.fastpath.apply([decision], clock.wall())
            self._absorb_renewals()
        self.lease_log.add(decision.events, "slow")
        self.lease_log.flush()
        dropped = self.io.kernel_drops()
        if dropped:
            self.metrics.socket_drops.inc(dropped)
        # Pinged from the loop itself: a loop stuck anywhere (a hung fsync, a wedged socket)
        # stops the pings, and systemd restarts the daemon.
        now = clock.ticks()
        if self.watchdog.due(now):
            self.notifier.ping()
            self.watchdog.pinged(now)
        if self.notifier.enabled and now >= self._status_due:
            self.notifier.status(self._status(now))

    def _reload_config(self) -> None:
        try:
            new = load_config(self.config_path)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        changed = restart_keys(self.config, new)
        if changed:
            log.error(
                "reload refused, keeping the running config: %s cannot change without a restart",
                ", ".join(changed),
            )
            return
        self.server = self.server.reconfigured(new, clock.wall())
        self.config = new
        if self.fastpath is not None:
            # A million entries take seconds to rewrite: keep systemd's watchdog fed.
            self.fastpath.reconfigured(
                new, self.server, self.io.mac, clock.wall(), self.notifier.ping
            )
        logging.getLogger().setLevel(new.log_level.upper())
        self.lease_log.enabled = log.isEnabledFor(logging.INFO)
        log.info("config reloaded from %s", self.config_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brushtaild", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_args(argv)
    journald = journal.connected(sys.stderr)
    if journald:
        logging.basicConfig(level=logging.INFO, handlers=[journal.handler()])
    else:
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s"
        )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("config %s refused:\n%s", args.config, exc)
        return EX_CONFIG
    except OSError as exc:
        log.error("cannot read config %s: %s", args.config, exc.strerror or exc)
        return EX_CONFIG
    logging.getLogger().setLevel(config.log_level.upper())
    try:
        daemon = Daemon(config, args.config, journald=journald)
    except (OSError, StoreError, LoadError) as exc:
        # A missing interface, a locked or unreadable state dir: say which, no traceback.
        log.error("cannot start: %s", exc)
        return EXIT_START_FAILED
    return daemon.run()


if __name__ == "__main__":
    raise SystemExit(main())
