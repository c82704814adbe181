"""brushtaild: wires the engine to its edges and drives them.

This is the only module that reads the clock for the engine, reads and sends packets, and
writes the lease store. One loop decides: receive a batch of requests, decide each with the
engine, write every lease change of the batch in one durable commit (group commit), then
send the replies. Nothing is acknowledged before it is on disk. Under load the commit runs
on a writer thread while the loop reads the next batch (reading decides nothing).

Nothing a subscriber sends and nothing that happens to the box stops the loop: a request
that cannot be decided, encoded or sent is dropped, counted under a reason and logged at a
bounded rate, and the batch goes on; a receive error is counted and the loop goes on. The
one exception is the lease store: when it cannot commit, the daemon stops rather than
acknowledge what is not on disk. The fast path is an accelerator: when it cannot be
compiled, loaded or attached (no BCC, no kernel headers), the daemon serves on the slow
path alone and says so in the log, the metrics and its STATUS= line.

With a `replication` section the loop also drives the replication service
(daemon/replication.py): each lease this site writes is stamped in the replica before the
commit that persists both, and its deltas leave after that commit; what the peers send is
absorbed by the engine and committed like a batch, then reaches the kernel's maps. A peer's
message, like a subscriber's request, never stops the loop.
"""

import argparse
import collections
import contextlib
import ctypes
import errno
import gc
import logging
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from brushtaild import __version__
from brushtaild.config.load import DEFAULT_CONFIG, ConfigError, load_daemon_config
from brushtaild.config.model import Config
from brushtaild.config.reload import restart_keys
from brushtaild.daemon import clock, journal
from brushtaild.daemon.commands import Commands, RateWindow, ReloadResult, describe_fastpath
from brushtaild.daemon.control import ControlServer
from brushtaild.daemon.lease_log import LeaseLog, LeaseSink
from brushtaild.daemon.metrics import Metrics
from brushtaild.daemon.systemd import Notifier, Watchdog
from brushtaild.daemon.throttled_log import ThrottledLog
from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import MessageType
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.options import format_ip, format_mac
from brushtaild.dhcp.reasons import DropReason, MalformedPacket
from brushtaild.engine.decisions import Decision, Ingress, LeaseEvent, NakReason
from brushtaild.engine.leases import Lease
from brushtaild.engine.replication import Replication
from brushtaild.engine.server import Server
from brushtaild.net.packet_io import PacketIO, Received
from brushtaild.store.lease_store import LeaseStore, ReplicaChanges, StoreError
from brushtaild.xdp.fastpath import FastPath, Renewal, recorded, take_down
from brushtaild.xdp.loader import LoadError, PinDirBusy

if TYPE_CHECKING:  # the transport loads OpenSSL, which a single site does not need
    from brushtaild.daemon.replication import Incoming, ReplicationService

EX_CONFIG = 78  # sysexits.h; systemd shows it as "config" and does not restart-loop on it
EXIT_START_FAILED = 1
BATCH = 256
# Upper bound on sleeping, so kernel drop counters and timers are looked at regularly.
IDLE_WAKEUP = 1.0
DROP_LOG_INTERVAL = 10.0
# A request older than this when we read it is dropped as stale. RFC 2131 4.1 has a client
# retransmit after 4 s (randomized by +-1 s, then doubling): by then its retransmission is
# queued behind the old copy, and answering both would spend an overloaded slow path twice
# on one client. Under normal load requests wait microseconds; only a backlog reaches this.
MAX_QUEUE_AGE = 4.0
# A DISCOVER older than this when we read it is dropped (`backlog`): the server is behind,
# and the REQUEST its OFFER would bring queues behind as long a backlog, so new exchanges
# wait and those under way (their REQUESTs, kept up to MAX_QUEUE_AGE) are answered while
# their clients still wait. Shedding DISCOVERs costs a fraction of answering them, which
# keeps the queue this short under any flood. Clients that give up on a REQUEST soonest
# (perfdhcp: 1 s) then still get their ACK; a shed client retransmits its DISCOVER.
MAX_DISCOVER_AGE = 0.5
# After an error on the packet socket other than an empty queue, the loop waits this long
# before reading it again: an error that repeats (a link going up and down) costs a few
# wake-ups a second instead of a busy loop.
RECEIVE_ERROR_PAUSE = 0.1
# The reason a fast path failure gives in the STATUS= line; the log has it whole.
STATUS_REASON_CHARS = 120
# How often `systemctl status` gets a fresh STATUS= line; also the window of its rates.
STATUS_INTERVAL = 5.0
# A wall clock step beyond this is logged (engine time does not follow it; see clock.py).
CLOCK_STEP_LOGGED = 1.0

log = logging.getLogger("brushtaild")


class DropLog(ThrottledLog):
    """Logs drops by reason, and other per-packet trouble by kind (`report`), each at most
    once per DROP_LOG_INTERVAL."""

    def __init__(self) -> None:
        super().__init__(log, DROP_LOG_INTERVAL)

    def drop(
        self, reason: DropReason, detail: str, now: float, exc: BaseException | None = None
    ) -> None:
        """A dropped request; with `exc`, a bug: logged as an error with its traceback."""
        self.report(reason.label, f"drop reason={reason.label} {detail}", now, exc)


class Signals:
    """SIGTERM/SIGINT (stop) and SIGHUP (reload) as flags, and a socket the loop selects on
    to wake up for them. Installed before the lease store is loaded and the fast path
    compiled, which take seconds to minutes: a SIGHUP then is a reload once started (not
    the default action, which kills), a SIGTERM a clean exit."""

    HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._wakeup_w.fileno())
        self._previous = {signum: signal.signal(signum, self._on_signal) for signum in self.HANDLED}
        for signum in self.HANDLED:
            # Restart interrupted system calls: BCC's compile and SQLite run C code that
            # may not retry on EINTR. The loop's select() returns early all the same.
            signal.siginterrupt(signum, False)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = True

    def fileno(self) -> int:
        return self._wakeup_r.fileno()

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wakeup_r.recv(64)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._wakeup_r.close()
        self._wakeup_w.close()


@contextlib.contextmanager
def long_lived() -> Iterator[None]:
    """Builds what lives as long as the daemon (a million leases, their indexes and kernel
    entries) with the cyclic GC off, then freezes it: each collection while building would
    walk every object built so far (a third of the start-up time at 1M leases), and every
    full collection afterwards would walk them again, stalling the packet loop. Leases and
    their indexes hold no reference cycles, so nothing is lost by never scanning them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _discard(compiling: "Future[FastPath]") -> None:
    """A fast path compiled for a start that did not complete: closed once compiled (its
    pins stay, as at any stop), whatever the compile raised left aside."""
    with contextlib.suppress(Exception):
        compiling.result().close()


def release_free_memory() -> None:
    """Hands memory the heap holds free back to the system (glibc's malloc_trim); a no-op
    where there is none."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


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


@dataclass(slots=True)
class Batch:
    """Requests read from the socket, to be decided."""

    started: float  # ticks when it was read: the slow-path latency starts here
    requests: list[tuple[Message, Ingress]]
    full: bool  # it took the whole BATCH: more is likely queued
    error: bool  # a receive error ended it early: the loop pauses after it


class Daemon:
    def __init__(
        self,
        config: Config,
        config_path: Path,
        signals: Signals,
        *,
        journald: bool = False,
        recovering: bool = False,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.signals = signals
        self.store = LeaseStore.open(config.state_dir)
        self.replication: ReplicationService | None = None
        try:
            with long_lived():
                self._open(journald, recovering)
        except BaseException:
            if self.replication is not None:
                self.replication.close()
            self.store.close()
            raise

    def _open(self, journald: bool, recovering: bool) -> None:
        config = self.config
        now = clock.wall()
        if config.replication is not None:
            from brushtaild.daemon.replication import ReplicationService

            self.replication = ReplicationService(
                config, config.replication, self.store.load_replica(), now, recovering=recovering
            )
        replica = self.replication.replica if self.replication is not None else None
        self.fastpath: FastPath | None = None
        self.fastpath_failure: str | None = None
        compiling = (
            self._compile(now) if config.fastpath.enabled and not self.signals.stop else None
        )
        try:
            self._build(journald, replica, now)
        except BaseException:
            if compiling is not None:
                _discard(compiling)
            raise
        if not config.fastpath.enabled:
            self._take_down_leftover("fast path disabled")
        elif compiling is not None and self.signals.stop:
            _discard(compiling)
        elif compiling is not None:
            # Compiled meanwhile, attached in _start_complete: until then a program from an
            # earlier run (pinned, still attached) goes on answering.
            try:
                self.fastpath = compiling.result()
                self.fastpath.sync.server = self.server
                self._fastpath_collector = self.fastpath.collector()
            except PinDirBusy:
                raise  # another brushtaild's pins: a configuration error, not ours to fix
            except Exception as exc:  # whatever BCC, clang or the kernel refused
                self._fastpath_failed(exc)
            else:
                self.metrics.registry.register(self._fastpath_collector)

    def _compile(self, now: float) -> "Future[FastPath]":
        """The fast path, compiled and loaded on a thread while the store loads and the
        engine is built: BCC's compile (seconds) releases the GIL, and needs no lease. Its
        maps are filled from the engine only at the attach. Until the engine exists it
        holds an empty one."""
        placeholder = Server(self.config, (), now)
        executor = ThreadPoolExecutor(1, thread_name_prefix="compile")
        future = executor.submit(FastPath, self.config, placeholder)
        executor.shutdown(wait=False)  # its one thread ends with the compile
        return future

    def _build(self, journald: bool, replica: "Replication | None", now: float) -> None:
        """The engine from the store, and the daemon's edges."""
        config = self.config
        # Timed in the log: at a million leases each step takes seconds, and whoever waits
        # for READY (bench/startup.py, an operator) wants to know which.
        started = clock.ticks()
        leases = self.store.load()
        loaded = clock.ticks()
        log.info("lease store: %d leases loaded in %.2fs", len(leases), loaded - started)
        self.server = Server(config, leases, now, replication=replica)
        del leases
        log.info(
            "engine built from %d leases in %.2fs",
            len(self.server.leases()),
            clock.ticks() - loaded,
        )
        self.metrics = Metrics(lambda: self.server.pool_usage())
        if self.replication is not None:
            self._add_replication_metrics(self.replication)
        Gauge(
            "dhcp_clock_step_seconds",
            "How far the wall clock was stepped since start; engine time does not follow",
            registry=self.metrics.registry,
        ).set_function(clock.step)
        self._step_logged = 0.0
        self.io = PacketIO(config.interface, config.server_id)
        # The lease store's writer while the next batch is read (_commit's `overlap`): one
        # thread, so commits stay in order, and the store is used by one thread at a time.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._prefetched: Batch | None = None
        self.drops = DropLog()
        level = logging.getLogger().getEffectiveLevel()
        self.lease_log: LeaseSink = (
            journal.JournalLeaseLog(config.site, sys.stderr, level)
            if journald
            else LeaseLog(sys.stderr, level)
        )
        self.notifier = Notifier()
        self.watchdog = Watchdog()
        self.started = clock.ticks()
        self.rates = RateWindow()
        self._rates_due = 0.0
        self.last_reload: ReloadResult | None = None
        # A lease store that cannot commit stops the daemon, from a command as from a batch.
        self.control = ControlServer(
            config.control_socket, Commands(self).table(), fatal=(StoreError,)
        )
        self._status_due = 0.0
        self._status_window = (0.0, 0.0)  # (ticks, requests counted) at the last STATUS

    def _add_replication_metrics(self, service: "ReplicationService") -> None:
        replica, transport = service.replica, service.transport
        # Up: a session and heard from lately. A session alone outlives a peer that died
        # silently until its lifetime ends.
        self.metrics.add_replication_transport(
            lambda: transport.counters, replica.peers, lambda: service.peers_up(clock.wall())
        )
        self._lag = self.metrics.add_replication(
            lambda: replica.counters,
            lambda: service.owned_blocks(clock.wall()),
            lambda: service.errors,
            lambda: self.server.renewals_past_cap,
        )

    def run(self) -> int:
        if self.signals.stop:
            # Stopped while starting: nothing was attached or announced, nothing to finish.
            self._close()
            log.info("brushtaild stopped during start-up")
            return 0
        host, port = self.config.metrics_listen
        self.metrics.serve(host, port)
        with selectors.DefaultSelector() as selector:
            selector.register(self.io.fileno(), selectors.EVENT_READ, "packets")
            selector.register(self.signals.fileno(), selectors.EVENT_READ, "signal")
            if self.replication is not None:
                selector.register(self.replication.fileno(), selectors.EVENT_READ, "replication")
            try:
                self._open_control(selector)
                self._start_complete()
                while not self.signals.stop:
                    absorbed_at = None
                    # A batch read ahead (_prefetch) is served now, the socket ready or not.
                    timeout = 0.0 if self._prefetched is not None else self._timeout()
                    for key, events in selector.select(timeout):
                        if key.data == "signal":
                            self.signals.drain()
                        elif key.data == "packets":
                            absorbed_at = self._serve_batch()
                        elif key.data == "replication":
                            absorbed_at = self._serve_peers()
                        else:
                            self.control.ready(key.data, events, clock.ticks())
                    if absorbed_at is None and self._prefetched is not None:
                        absorbed_at = self._serve_batch()
                    if self.signals.reload:
                        self.signals.reload = False
                        self.reload()
                    self._housekeeping(absorbed_at)
                self.notifier.stopping()
                # The program goes on answering while we are away (queued for the next
                # start); what it answered until now is recorded now.
                self._record_renewals()
                self.lease_log.flush()
                if self.replication is not None:
                    self.replication.flush(clock.wall())
            finally:
                self._close()
        log.info("brushtaild stopped; every acknowledged lease is on disk")
        return 0

    def _open_control(self, selector: selectors.BaseSelector) -> None:
        """Without its control socket the daemon still serves DHCP: subscribers come
        before the operator's tools, as they do before the fast path."""
        try:
            self.control.open(selector)
        except OSError as exc:
            log.error(
                "control socket %s unavailable, the brushtail command cannot reach this daemon: %s",
                self.control.path,
                exc.strerror or exc,
            )

    def _close(self) -> None:
        self._writer.shutdown()
        self.control.close()
        if self.fastpath is not None:
            self.fastpath.close()
        if self.replication is not None:
            self.replication.close()
        self.io.close()
        self.store.close()
        self.notifier.close()

    def _start_complete(self) -> None:
        """The single point where start-up ends: leases are loaded, the packet socket is
        open and signals are handled (a SIGHUP from `systemctl reload` must not kill us).

        The XDP program is attached here, before READY=1, so that systemd calls the unit
        active only once known subscribers are answered in the kernel. Renewals it answered
        while no daemon ran are recorded first, so the maps are refilled with them."""
        config = self.config
        self._record_renewals()
        if self.fastpath is not None:  # still: reading its ring can find it failed
            try:
                with long_lived():
                    self.fastpath.attach(self.io.mac, clock.wall())
            except Exception as exc:
                self._fastpath_failed(exc)
            else:
                self.metrics.set_fastpath_up(True)
        # What start-up built and dropped (the store's rows, the maps' buffers) goes back
        # to the system: it would otherwise stay resident for the daemon's life.
        release_free_memory()
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

    def _fastpath_failed(self, exc: Exception) -> None:
        """Serve on the slow path alone, and say so loudly. A program an earlier run left
        attached must go with its maps: nothing would keep them equal to the engine's
        leases, and it would go on renewing leases the slow path has since given away."""
        reason = str(exc).strip() or type(exc).__name__
        # A LoadError's message is the whole story (BCC's or the verifier's words); anything
        # else is unexpected and gets its traceback.
        trace = None if isinstance(exc, LoadError) else exc
        log.error("fast path FAILED, serving on the slow path alone: %s", reason, exc_info=trace)
        self.fastpath_failure = reason.splitlines()[0][:STATUS_REASON_CHARS]
        self.metrics.set_fastpath_up(False)
        if self.fastpath is not None:
            self.metrics.registry.unregister(self._fastpath_collector)
            self.fastpath.close()
            self.fastpath = None
        try:
            self._take_down_leftover("fast path failed")
        except Exception:
            # The loop goes on; the pins stay, for the next start or `fastpath detach`.
            log.exception("fast path FAILED and could not be taken down")

    def _take_down_leftover(self, why: str) -> None:
        """Removes the program and maps an earlier run left, after recording the renewals
        its rings hold."""
        taken = take_down(self.config, self._record_leftover)
        if taken is None:
            return
        leftover, _ = taken
        log.warning(
            "%s: removed the XDP program and maps an earlier run left on %s; recorded the %d "
            "renewals it answered",
            why,
            ", ".join(leftover.interfaces) or self.config.interface,
            len(leftover.renewals),
        )

    def _record_leftover(self, renewals: list[Renewal]) -> None:
        renewed, _ = self._recorded(renewals)
        self._commit([renewed])
        self._log_events(renewed.events, "fast")
        self.lease_log.flush()

    def _status(self, now: float) -> str:
        """The STATUS= line: what an operator needs from `systemctl status` at a glance.
        Its rate covers the time since the previous line, and a new window starts here."""
        requests = _counter_total(self.metrics.requests)
        since, counted = self._status_window
        rate = (requests - counted) / (now - since) if since and now > since else 0.0
        self._status_window = (now, requests)
        self._status_due = now + STATUS_INTERVAL
        usage = self.server.pool_usage().values()
        total = sum(pool.total for pool in usage)
        assigned = sum(pool.assigned for pool in usage)
        share = 100 * assigned / total if total else 0.0
        return (
            f"serving {self.config.interface}: {assigned} leases ({share:.0f}% of {total}), "
            f"slow path {rate:.0f} req/s, fast path: {self._fastpath_status()}, "
            f"peers: {self._peers_status()}"
        )

    def _peers_status(self) -> str:
        if self.replication is None:
            return "none configured"
        up = self.replication.peers_up(clock.wall())
        total = len(self.replication.replica.peers)
        return f"{len(up)}/{total} up ({', '.join(up)})" if up else f"0/{total} up"

    def _fastpath_status(self) -> str:
        return describe_fastpath(self.fastpath_state())

    def fastpath_state(self) -> dict[str, object]:
        """The fast path for `brushtail status`: up (mode, entries, counters), failed (why)
        or disabled."""
        if self.fastpath_failure is not None:
            return {"state": "failed", "reason": self.fastpath_failure}
        if self.fastpath is None:
            return {"state": "disabled"}
        state: dict[str, object] = {
            "state": "up",
            "mode": self.fastpath.mode,
            "entries": self.fastpath.sync.entries,
        }
        try:
            snap = self.fastpath.snapshot()
        except Exception as exc:
            state["counters"] = str(exc)
        else:
            state["answered"] = snap.answered
            state["hit_rate"] = round(snap.hit_rate, 4)
        return state

    def answers(self) -> tuple[float, float]:
        """Requests answered so far by the slow path (this process) and the fast path
        (since its maps were made), for `brushtail status`'s rates."""
        slow = _counter_total(self.metrics.requests) - _counter_total(self.metrics.dropped)
        fast = 0.0
        if self.fastpath is not None:
            with contextlib.suppress(Exception):  # unreadable counters: status says so
                fast = float(self.fastpath.snapshot().answered)
        return slow, fast

    def _sample_rates(self, now: float) -> None:
        self._rates_due = now + STATUS_INTERVAL
        self.rates.sample(now, *self.answers())

    def _timeout(self) -> float:
        timeout = IDLE_WAKEUP
        now = clock.wall()
        deadlines = [self.server.next_deadline()]
        if self.replication is not None:
            deadlines.append(self.replication.next_deadline())
        for deadline in deadlines:
            if deadline is not None:
                timeout = min(max(deadline - now, 0.0), timeout)
        # A sleep past the watchdog's ping time would get a healthy daemon killed.
        ping = self.watchdog.wait(clock.ticks())
        return timeout if ping is None else min(ping, timeout)

    def _serve_batch(self) -> float:
        """One batch, in group-commit order: decide every request, send the replies that
        change no lease, commit the batch's lease changes in one transaction, give them to
        the fast path, then send the replies that depended on them. Returns the time it
        decided at: every renewal the kernel answered before it has been absorbed."""
        batch, self._prefetched = self._prefetched or self._read(), None
        now = clock.wall()
        # Before the engine decides anything at `now`: a renewal the kernel ACKed must not
        # be expired, or its address offered to someone else, in this batch.
        renewed = self._absorb_renewals()
        requests = batch.requests
        # Under a storm (every CPE of a segment back after a power cut) the queue holds far
        # more DISCOVERs than we can answer in time: finishing exchanges already under way
        # (REQUESTs) before starting new ones turns more of the work into bound clients.
        requests.sort(key=_starts_an_exchange)
        decisions = [
            decision
            for msg, ingress in requests
            if (decision := self._decide(msg, ingress, now)) is not None
        ]
        durable: list[Decision] = []
        at_once: list[Decision] = []
        for decision in decisions:
            (durable if decision.lease_writes or decision.lease_deletes else at_once).append(
                decision
            )
        # Replies that change no lease (OFFER, NAK, INFORM) need not wait for the commit.
        self._send(at_once, now)
        # With more queued (a full batch, or a frame that came meanwhile) the next batch is
        # read while this one's commit waits for the disk. Not at light load, where the
        # hand-over to the writer thread would only delay the ACK.
        busy = batch.full or self.io.pending()
        self._commit([renewed, *durable], overlap=self._prefetch if busy else None)
        self._log_events(renewed.events, "fast")
        # Only now that the batch is on disk may the kernel answer for its leases.
        self._apply_to_fastpath(decisions, now)
        self._send(durable, now)
        self.lease_log.flush()
        elapsed = clock.ticks() - batch.started
        for decision in decisions:
            if decision.replies:
                self.metrics.latency.observe(elapsed)
        if batch.error:
            time.sleep(RECEIVE_ERROR_PAUSE)
        return now

    def _read(self) -> "Batch":
        """The next batch from the socket, its drops counted and its requests parsed."""
        started = clock.ticks()
        now = clock.wall()
        received = self.io.receive_batch(BATCH, now - MAX_QUEUE_AGE, now - MAX_DISCOVER_AGE)
        self._count_receive(received, now)
        read = len(received.frames) + received.malformed + received.stale
        return Batch(started, self._parse(received, now), read >= BATCH, received.error is not None)

    def _prefetch(self) -> None:
        """Reads the next batch while a commit runs on the writer thread: receiving and
        parsing touch no engine state, so nothing is decided on what is not yet durable.
        The loop serves it next, without waiting for the socket."""
        batch = self._read()
        if batch.requests or batch.error:
            self._prefetched = batch

    def _serve_peers(self) -> float:
        """What the peers sent: the bindings their messages changed enter the lease table
        (Server.absorb), are committed with the replicated state, then reach the kernel's
        maps, each conflict's loser withdrawn first; the answers go out after the commit,
        from housekeeping. Returns the time it absorbed at, as `_serve_batch` does."""
        assert self.replication is not None
        now = clock.wall()
        incoming = self.replication.receive(now)
        renewed = self._absorb_renewals()
        absorbed = Decision()
        if incoming.leases:
            try:
                absorbed = self.server.absorb(incoming.leases, now)
            except Exception as exc:
                # A bug: the replicated state has the bindings, anti-entropy does not
                # resend them, and the table goes on with what it had.
                self.drops.report("absorb", f"replication: absorb failed: {exc!r}", now, exc)
        self._commit([renewed], absorbed)
        self._withdraw_losers(incoming)
        self._apply_to_fastpath([absorbed], now)
        self.replication.log_conflicts(incoming.conflicts)
        for stamp_ms in incoming.stamps_ms:
            self._lag.observe(max(now - stamp_ms / 1000, 0.0))
        self._log_events(renewed.events, "fast")
        self._log_events(absorbed.events, "peer")
        self.lease_log.flush()
        return now

    def _replan_moved_blocks(self, now: float) -> None:
        """A block that became ours, or stopped being ours, changes how the kernel may
        answer its leases (no cap, a cap, or no entry): their entries are planned again.
        Ownership only leaves this site by its own handover or by its eviction while cut
        off (docs/STATE.md), so this catches up on gains, and on losses it could not have
        served past anyway."""
        assert self.replication is not None
        moved = self.replication.moved_blocks(now)
        if moved and self.fastpath is not None:
            writes = [lease for b in moved for lease in self.server.leases_in(b.first, b.last)]
            self._apply_to_fastpath([Decision(lease_writes=writes)], now)

    def _withdraw_losers(self, incoming: "Incoming") -> None:
        """The kernel must stop answering a conflict's loser here at once; the winner's
        entry, if it gets one, is written with the absorbed leases. A loser that was never
        ours (the winner is the binding we had) has no entry to take out."""
        if self.fastpath is None or not incoming.conflicts:
            return
        replaced = {lease.address for lease in incoming.leases}
        for conflict in incoming.conflicts:
            if conflict.loser.address in replaced:
                self.fastpath.sync.withdraw(conflict.loser.address)

    def _count_receive(self, received: Received, now: float) -> None:
        if received.malformed:
            self.metrics.count_drop(DropReason.BAD_FRAME, received.malformed)
            self.drops.drop(DropReason.BAD_FRAME, f"frames={received.malformed}", now)
        if received.stale:
            self.metrics.count_drop(DropReason.STALE, received.stale)
            self.drops.drop(
                DropReason.STALE,
                f"frames={received.stale} (queued longer than {MAX_QUEUE_AGE:.0f}s)",
                now,
            )
        if received.error is not None:
            name = _errno_name(received.error)
            self.metrics.count_socket_error("receive", name)
            self.drops.report(
                f"receive:{name}",
                f"receive error on {self.config.interface}: {received.error}",
                now,
            )

    def _parse(self, received: Received, now: float) -> list[tuple[Message, Ingress]]:
        """The batch's well-formed requests, less the DISCOVERs that waited too long."""
        requests: list[tuple[Message, Ingress]] = []
        shed = 0
        for index, (payload, ingress) in enumerate(received.frames):
            try:
                msg = parse(payload)
            except MalformedPacket as exc:
                self.metrics.count_drop(exc.reason)
                self.drops.drop(exc.reason, f"src_mac={format_mac(ingress.src_mac)}", now)
            except Exception as exc:
                self._internal_error(exc, f"src_mac={format_mac(ingress.src_mac)}", now)
            else:
                if index < received.aged and msg.message_type is MessageType.DISCOVER:
                    shed += 1
                else:
                    requests.append((msg, ingress))
        if shed:
            self.metrics.count_drop(DropReason.BACKLOG, shed)
            self.drops.drop(
                DropReason.BACKLOG,
                f"discovers={shed} (queued longer than {MAX_DISCOVER_AGE}s)",
                now,
            )
        return requests

    def _decide(self, msg: Message, ingress: Ingress, now: float) -> Decision | None:
        """The engine's decision, or None if it failed on this request (a bug): the
        request is dropped and the batch goes on."""
        try:
            decision = self.server.handle(msg, ingress, now)
        except Exception as exc:
            self._internal_error(exc, f"mac={format_mac(msg.hwaddr)}", now)
            return None
        if decision.drop is not None:
            self.metrics.count_drop(decision.drop)
            detail = f"mac={format_mac(msg.hwaddr)}"
            if decision.error is not None:
                detail += f" {decision.error!r}"
            self.drops.drop(decision.drop, detail, now, decision.error)
        return decision

    def _internal_error(self, exc: Exception, detail: str, now: float) -> None:
        self.metrics.count_drop(DropReason.INTERNAL_ERROR)
        self.drops.drop(DropReason.INTERNAL_ERROR, f"{detail} {exc!r}", now, exc)

    def _send(self, decisions: list[Decision], now: float) -> None:
        """Sends the decisions' replies; one that cannot be sent is dropped and counted, and
        the others still go. Their lease events are logged either way: they happened. The
        counters are added to once per batch, not per reply: each addition takes a lock."""
        sent: collections.Counter[MessageType | None] = collections.Counter()
        naks: collections.Counter[NakReason] = collections.Counter()
        events: list[LeaseEvent] = []
        for decision in decisions:
            self._send_replies(decision, now, sent, naks)
            events += decision.events
        for mtype, count in sent.items():
            self.metrics.count_reply(mtype, count)
        for nak, count in naks.items():
            self.metrics.count_nak(nak, count)
        self._log_events(events, "slow")

    def _send_replies(
        self,
        decision: Decision,
        now: float,
        sent: "collections.Counter[MessageType | None]",
        naks: "collections.Counter[NakReason]",
    ) -> None:
        for reply in decision.replies:
            try:
                self.io.send(reply.payload, reply.dest, reply.ingress)
                if self.fastpath is not None:
                    # Inside the try: a bug in the fast path's bookkeeping is one dropped
                    # request's error, never the loop's.
                    self.fastpath.relays.answered(reply)
            except OSError as exc:
                # An unroutable giaddr, a firewall's EPERM, a full queue, a link going down.
                name = _errno_name(exc)
                self.metrics.count_drop(DropReason.SEND_FAILED)
                self.metrics.count_socket_error("send", name)
                self.drops.drop(
                    DropReason.SEND_FAILED,
                    f"dest={reply.dest.kind.value}:{format_ip(reply.dest.ip)} {exc}",
                    now,
                )
            except Exception as exc:
                self._internal_error(exc, f"mac={format_mac(reply.message.hwaddr)}", now)
            else:
                sent[reply.message.message_type] += 1
                if decision.nak is not None:
                    naks[decision.nak] += 1

    def _log_events(self, events: list[LeaseEvent], path: str) -> None:
        self.lease_log.add(events, path)
        self.metrics.count_events(events, path)

    def _commit(
        self,
        decisions: list[Decision],
        absorbed: Decision | None = None,
        overlap: Callable[[], None] | None = None,
    ) -> None:
        """Durably write a batch's lease changes, and the replicated state they changed:
        `decisions` are this site's (each lease they write is stamped in the replica
        first), `absorbed` what the peers' bindings changed. A store failure propagates and
        stops the daemon: acknowledging a lease that is not on disk is never an option. The
        deltas go to the peers later, from housekeeping: never before they are durable.
        With `overlap`, the commit runs on the writer thread while this one runs
        `overlap`, and returns once both are done (sqlite3 lets go of the GIL while the
        disk syncs)."""
        writes, deletes = _collapse(decisions if absorbed is None else [*decisions, absorbed])
        changes = None
        if self.replication is not None:
            self.replication.record(decisions, clock.wall())
            changes = self.replication.changes()
        if writes or deletes or changes is not None:
            started = clock.ticks()
            if overlap is None:
                self._apply(writes, deletes, changes)
            else:
                commit = self._writer.submit(self._apply, writes, deletes, changes)
                try:
                    overlap()
                finally:
                    commit.result()  # raises what the store raised
            self.metrics.commits.observe(clock.ticks() - started)
            self.metrics.committed.inc(len(writes) + len(deletes))
        if self.fastpath is not None:
            # Every renewal read from the ring so far was in a commit by now (each reading
            # is committed by the caller that read it): the ring may reuse their room.
            self.fastpath.recorded_up_to_here()

    def _apply(
        self, writes: list[Lease], deletes: list[int], changes: "ReplicaChanges | None"
    ) -> None:
        if changes is None:
            self.store.apply(writes, deletes)
        else:
            self.store.apply(writes, deletes, replica=changes)

    def _apply_to_fastpath(self, decisions: list[Decision], now: float) -> None:
        if self.fastpath is None:
            return
        try:
            self.fastpath.apply(decisions, now)
        except Exception as exc:
            # Maps that missed a change could renew a lease the engine has given away:
            # better no fast path than a wrong one.
            self._fastpath_failed(exc)

    def _absorb_renewals(self) -> Decision:
        """The renewals the kernel answered, extended in the engine: the returned decision
        writes them, and the caller commits it, so the store never falls behind the fast
        path. Called before the engine acts on the time (a batch, expiry)."""
        if self.fastpath is None:
            return Decision()
        try:
            renewals = self.fastpath.renewals()
        except Exception as exc:
            # A ring or retired pins that cannot be read or removed: better no fast path
            # than one whose renewals go unrecorded (taking it down records what it holds).
            self._fastpath_failed(exc)
            return Decision()
        accepted, refused = self._recorded(renewals)
        for renewal in refused:
            # The slow path changed this lease meanwhile: its entry must go.
            self.fastpath.sync.withdraw(renewal.address)
        return accepted

    def _record_renewals(self) -> None:
        """Absorbs the kernel's renewals and commits them on their own (at start, before a
        reload, at stop); a batch and housekeeping commit them with their own changes."""
        renewed = self._absorb_renewals()
        self._commit([renewed])
        self._log_events(renewed.events, "fast")

    def _recorded(self, renewals: list[Renewal]) -> tuple[Decision, list[Renewal]]:
        """The engine's decision on renewals the kernel answered, for the caller to commit,
        and those it refused (counted as drops)."""
        accepted, refused = recorded(self.server, renewals, clock.wall())
        for _, decision in refused:
            assert decision.drop is not None
            self.metrics.count_drop(decision.drop)
        return accepted, [renewal for renewal, _ in refused]

    def _housekeeping(self, absorbed_at: float | None = None) -> None:
        """Expiry and the periodic chores, after a batch or on a timeout. The renewals ring
        is read once per wake-up, after the time expiry runs at, so every renewal the
        kernel answered before a lease's end is in the engine when the lease is looked at:
        a batch read it after `absorbed_at`, and expiry runs at that time; with no batch,
        the time is read here, then the ring."""
        if absorbed_at is None:
            now = clock.wall()
            renewed = self._absorb_renewals()
        else:
            now, renewed = absorbed_at, Decision()
        try:
            expired = self.server.tick(now)
        except Exception as exc:
            self._internal_error(exc, "expiry", now)
            expired = Decision()
        self._commit([renewed, expired])
        self._apply_to_fastpath([expired], now)
        self._log_events(renewed.events, "fast")
        self._log_events(expired.events, "slow")
        self.lease_log.flush()
        if self.replication is not None:
            # After every commit of the wake-up: what the deltas say is durable now.
            self.replication.tick(now)
            self.replication.flush(now)
            self._replan_moved_blocks(now)
        step = clock.step()
        if abs(step - self._step_logged) > CLOCK_STEP_LOGGED:
            self._step_logged = step
            log.warning(
                "wall clock stepped %+.0fs while running: engine time does not follow it, "
                "stored lease ends will shift by that much at the next start",
                step,
            )
        if self.fastpath is not None:
            try:
                self.fastpath.relays.refresh(clock.ticks())
            except Exception as exc:
                # Relays without an entry are answered by the slow path: nothing is lost.
                self.drops.report("relays", f"fast path: relay refresh failed: {exc!r}", now, exc)
        dropped = self.io.kernel_drops()
        if dropped:
            self.metrics.socket_drops.inc(dropped)
        # Pinged from the loop itself: a loop stuck anywhere (a hung fsync, a wedged socket)
        # stops the pings, and systemd restarts the daemon.
        self._keepalive()
        ticks = clock.ticks()
        self.control.expire(ticks)
        if ticks >= self._rates_due:
            self._sample_rates(ticks)
        if self.notifier.enabled and ticks >= self._status_due:
            self.notifier.status(self._status(ticks))

    def _keepalive(self) -> None:
        """Pings systemd's watchdog when a ping is due; also called from inside long work
        (a reload rebuilding a million leases), which is progress, not a stuck loop."""
        now = clock.ticks()
        if self.watchdog.due(now):
            self.notifier.ping()
            self.watchdog.pinged(now)

    def revoke(self, address: int) -> Decision:
        """`brushtail lease release`: the engine's revoke of `address`, carried out like a
        batch's decisions: on disk, then withdrawn from the kernel's map, then logged. The
        renewals the kernel answered so far are absorbed first, as before a batch: the
        revoked lease must keep the address as long as its client was told it may."""
        renewed = self._absorb_renewals()
        now = clock.wall()
        decision = self.server.revoke(address, now)
        self._commit([renewed, decision])
        self._apply_to_fastpath([decision], now)
        self.lease_log.add(renewed.events, "fast")
        self.lease_log.add(decision.events, "slow")
        self.lease_log.flush()
        return decision

    def evict(self, site: str) -> int:
        """`brushtail sites evict`: hand the lost site's blocks to the others (raises
        EvictionRefused or ValueError with the reason); the number of blocks moved. The
        registers are durable before they are sent, from housekeeping."""
        if self.replication is None:
            raise ValueError("replication is not configured")
        moved = self.replication.evict(site, clock.wall())
        self._commit([])
        log.warning("site %s evicted: %d of its blocks handed to the other sites", site, moved)
        return moved

    def reload(self) -> ReloadResult:
        """The reload of SIGHUP and `brushtail reload`, announced to systemd around it."""
        # ticks() is CLOCK_MONOTONIC on Linux, the clock systemd expects.
        self.notifier.reloading(int(clock.ticks() * 1_000_000))
        applied, detail = self._reload_config()
        self.last_reload = ReloadResult(clock.wall(), applied, detail)
        self.notifier.ready(self._status(clock.ticks()))
        return self.last_reload

    def _reload_config(self) -> tuple[bool, str]:
        """(applied, why not or from where)."""
        try:
            new = load_daemon_config(self.config_path)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return False, str(exc)
        changed = restart_keys(self.config, new)
        if changed:
            why = f"{', '.join(changed)} cannot change without a restart"
            log.error("reload refused, keeping the running config: %s", why)
            return False, why
        # Renewals the kernel answered so far belong to the old engine's leases.
        self._record_renewals()
        # A million leases take seconds to rebuild, and as long again to rewrite in the
        # kernel's maps: keep systemd's watchdog fed through both.
        # The new server keeps the replica (its section cannot change without a restart).
        self.server = self.server.reconfigured(new, clock.wall(), keepalive=self._keepalive)
        self.config = new
        certificates = self._reload_certificates()
        if self.fastpath is not None:
            try:
                self.fastpath.reconfigured(
                    new, self.server, self.io.mac, clock.wall(), self._keepalive
                )
            except Exception as exc:
                self._fastpath_failed(exc)
        level = logging.getLevelName(new.log_level.upper())
        logging.getLogger().setLevel(level)
        self.lease_log.level = level
        log.info("config reloaded from %s", self.config_path)
        return True, f"config reloaded from {self.config_path}{certificates}"

    def _reload_certificates(self) -> str:
        """Re-read the replication's CA, certificate, key and CRL (a renewal, a new CRL);
        what to add to the reload's outcome. Files that do not load leave those in use."""
        if self.replication is None:
            return ""
        from brushtaild.net.dtls import TransportError

        try:
            closed = self.replication.reload()
        except TransportError as exc:
            log.error("replication certificates not reloaded, keeping those in use: %s", exc)
            return f"; replication certificates NOT reloaded: {exc}"
        if closed:
            log.warning("sessions closed, their certificates revoked: %s", ", ".join(closed))
            return f"; certificates reloaded, revoked sessions closed: {', '.join(closed)}"
        return "; certificates reloaded"


def _errno_name(exc: OSError) -> str:
    """ENETUNREACH for errno 101: a label value that stays the same across versions."""
    return errno.errorcode.get(exc.errno or 0, "unknown")


def _transport_error() -> type[Exception]:
    """The transport's start-up error (unreadable or refused certificate files), without
    loading OpenSSL on a single site."""
    if "brushtaild.net.dtls" not in sys.modules:
        return OSError
    from brushtaild.net.dtls import TransportError

    return TransportError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brushtaild", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--recovering",
        action="store_true",
        help="this site served before and lost its lease store: allocate nothing new for "
        "lost_after (docs/STATE.md); ignored when the store holds replicated state",
    )
    args = parser.parse_args(argv)
    clock.start()
    journald = journal.connected(sys.stderr)
    if journald:
        logging.basicConfig(level=logging.INFO, handlers=[journal.handler()])
    else:
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s"
        )
    try:
        config = load_daemon_config(args.config)
    except ConfigError as exc:
        log.error("config %s refused:\n%s", args.config, exc)
        return EX_CONFIG
    except OSError as exc:
        log.error("cannot read config %s: %s", args.config, exc.strerror or exc)
        return EX_CONFIG
    logging.getLogger().setLevel(config.log_level.upper())
    # First, before the lease store load and the fast path compile: both take long enough
    # for a SIGHUP (config management) or a SIGTERM (systemctl stop) to arrive meanwhile.
    signals = Signals()
    try:
        try:
            daemon = Daemon(
                config, args.config, signals, journald=journald, recovering=args.recovering
            )
        except (OSError, StoreError, LoadError, _transport_error()) as exc:
            # A missing interface, a locked or unreadable state dir: say which, no traceback.
            log.error("cannot start: %s", exc)
            return EXIT_START_FAILED
        return daemon.run()
    finally:
        signals.close()


if __name__ == "__main__":
    raise SystemExit(main())
