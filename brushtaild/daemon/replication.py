"""The replication service at the daemon's edge: one site's Replica and its DTLS transport.

The daemon drives it from its selector loop (daemon/main.py) in this order, so that no
site ever hears of a lease this one has not made durable:

- every local decision's lease writes go to `record` before the store commit: the
  replica stamps each binding, and the commit persists the changed bindings (`changes`)
  with the leases;
- after the commit, `flush` sends the deltas `record` and everything else queued;
- `receive` reads the socket, merges what the peers sent and returns the leases the merge
  changed (for `Server.absorb`) and the conflicts; the daemon commits, updates the kernel
  maps, then flushes the answers;
- `tick` runs anti-entropy rounds and the transport's timers; `next_deadline` is part of
  the loop's timeout.

Nothing a peer sends stops the loop: a malformed or refused message is counted by the
replica (`Counters`), a socket error by the transport, and anything unexpected (a bug) is
counted as an error and logged at a bounded rate.
"""

import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from brushtaild.config.model import Config, Replication
from brushtaild.daemon.throttled_log import ThrottledLog
from brushtaild.dhcp.options import format_ip, format_mac
from brushtaild.engine.decisions import Decision
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.net.dtls import DtlsTransport
from brushtaild.replication.blocks import Block, BlockLayout
from brushtaild.replication.params import Params
from brushtaild.replication.policy import EvictionRefused
from brushtaild.replication.replica import Outgoing, Replica, Snapshot
from brushtaild.replication.state import Binding, Conflict, Ownership
from brushtaild.store.lease_store import ReplicaChanges

# The largest difference allowed between two sites' wall clocks (docs/STATE.md, `S`). NTP
# keeps sites within milliseconds; a few seconds leaves room for a site whose NTP is late.
MAX_SKEW = 5.0
ERROR_LOG_INTERVAL = 60.0

log = logging.getLogger("brushtaild.replication")

__all__ = ["EvictionRefused", "Incoming", "ReplicationService", "longest_lease", "params_of"]


def longest_lease(config: Config) -> int:
    """The longest lease any pool or class gives (docs/STATE.md, `L`)."""
    times = [p.lease_time for p in config.pools]
    times += [c.lease_time for c in config.classes if c.lease_time is not None]
    return max(times, default=0)


def params_of(config: Config, settings: Replication) -> Params:
    """The replication's timing from the config: `lost_after` is the least the safety
    argument allows, the longest lease plus the extension bound plus the clock skew."""
    tuning = settings.tuning
    longest = float(longest_lease(config))
    return Params(
        longest_lease=longest,
        extension_bound=float(tuning.extension_bound),
        max_skew=MAX_SKEW,
        lost_after=longest + tuning.extension_bound + MAX_SKEW,
        anti_entropy_interval=float(tuning.anti_entropy_interval),
    )


def layout_of(config: Config, settings: Replication) -> BlockLayout:
    sites = [config.site, *(peer.site for peer in settings.peers)]
    return BlockLayout.of_config(config, sites, settings.tuning.block_size)


@dataclass(slots=True)
class Incoming:
    """What the peers' messages did here: the leases the merge changed (for the lease
    table), the conflicts met, the HLC wall times of the bindings received (for the lag)."""

    leases: list[Lease] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    stamps_ms: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Dirty:
    """Addresses and blocks whose replicated state changed since the last commit."""

    addresses: set[int] = field(default_factory=set)
    blocks: set[int] = field(default_factory=set)
    # The clock and a recovering site's wait alone (persisted at a recovering first start).
    meta: bool = False

    def __bool__(self) -> bool:
        return bool(self.addresses or self.blocks or self.meta)


# Seconds between two looks at which blocks this site owns (ReplicationService.moved_blocks).
OWNERSHIP_LOOK_INTERVAL = 1.0


class ReplicationService:
    def __init__(
        self,
        config: Config,
        settings: Replication,
        snapshot: Snapshot | None,
        now: float,
        *,
        recovering: bool = False,
        sock: socket.socket | None = None,
    ) -> None:
        """`snapshot`: the store's (None on a first start). `recovering`: this site served
        before and lost its disk; honoured only on a first start (no snapshot), so a flag
        left in place costs nothing at later starts. `sock`: bound already, instead of
        `settings.listen` (tests). Raises TransportError or OSError (the certificate
        files, the socket)."""
        self.settings = settings
        self.params = params_of(config, settings)
        self.layout = layout_of(config, settings)
        if recovering and snapshot is not None:
            log.warning(
                "--recovering ignored: the lease store holds this site's replicated state, "
                "so its disk was not lost"
            )
            recovering = False
        self.recovering = recovering
        self.replica = Replica(config.site, self.layout, self.params, snapshot, now, recovering)
        self.transport = DtlsTransport(config.site, settings, now, sock)
        self.errors = 0  # unexpected failures (bugs), each logged
        # A recovering site's wait is on disk before it serves anything.
        self.dirty = Dirty(meta=recovering)
        self._outbox: list[Outgoing] = []
        self._log = ThrottledLog(log, ERROR_LOG_INTERVAL)
        # The blocks this site owned at the last look (moved_blocks), and the next look.
        self._owned = self._owned_now(now)
        self._next_ownership_look = now + OWNERSHIP_LOOK_INTERVAL

    def fileno(self) -> int:
        return self.transport.fileno()

    # -- local changes ----------------------------------------------------------------------

    def record(self, decisions: Iterable[Decision], now: float) -> None:
        """Stamp the leases these local decisions wrote into the replicated state; their
        deltas wait in the outbox until `flush`, after the commit. An expiry is not
        replicated: every site reads it from the expiry it has, and a newer stamp saying
        "expired" would win over the owner's renewal made meanwhile."""
        for decision in decisions:
            for lease in decision.lease_writes:
                if lease.state is LeaseState.EXPIRED:
                    continue
                try:
                    self._outbox += self.replica.local_update(lease, now)
                except Exception as exc:
                    self._error("local_update", exc, now)
                else:
                    self.dirty.addresses.add(lease.address)

    def changes(self) -> ReplicaChanges | None:
        """What the replicated state gained since the last commit, for the store to commit
        with the leases; None if nothing."""
        if not self.dirty:
            return None
        state = self.replica.state
        changes = ReplicaChanges(
            bindings=[state.bindings[a] for a in sorted(self.dirty.addresses)],
            owners=[(b, state.owners[b]) for b in sorted(self.dirty.blocks)],
            clock=self.replica.clock.last,
            blind_until_ms=self.replica.policy.blind_until_ms,
        )
        self.dirty = Dirty()
        return changes

    def evict(self, lost: str, now: float) -> int:
        """Hand every block of the lost site to the others (EvictionRefused while it was
        heard from within `lost_after`, ValueError for a name that is not a peer); the
        number of blocks that moved. The registers are sent at the next `flush`."""
        before = dict(self.replica.state.owners)
        self._outbox += self.replica.evict(lost, now)
        moved = {b for b, r in self.replica.state.owners.items() if before.get(b) != r}
        self.dirty.blocks |= moved
        return len(moved)

    # -- peers ------------------------------------------------------------------------------

    def receive(self, now: float) -> Incoming:
        """Read the socket and merge what the peers sent. The answers wait in the outbox:
        what the merge changed must be durable before anyone is told we have it."""
        incoming = Incoming()
        try:
            delivered = self.transport.on_readable(now)
        except Exception as exc:
            self._error("receive", exc, now)
            return incoming
        for peer, payload in delivered:
            try:
                received = self.replica.receive(peer, payload, now)
            except Exception as exc:
                self._error("merge", exc, now)
                continue
            self._outbox += received.messages
            self._took(received.bindings, received.owners, incoming)
            incoming.conflicts += received.conflicts
        return incoming

    def _took(
        self, bindings: list[Binding], owners: list[tuple[int, Ownership]], incoming: Incoming
    ) -> None:
        for binding in bindings:
            self.dirty.addresses.add(binding.address)
            incoming.leases.append(binding.lease())
            incoming.stamps_ms.append(binding.stamp.wall)
        self.dirty.blocks.update(block for block, _ in owners)

    def tick(self, now: float) -> None:
        """Start an anti-entropy round when one is due, and run the transport's timers."""
        try:
            self._outbox += self.replica.tick(now)
            if now >= self.transport.next_deadline():
                self.transport.on_timer(now)
        except Exception as exc:
            self._error("tick", exc, now)

    def flush(self, now: float) -> None:
        """Send what waits in the outbox (each message to its peer)."""
        outbox, self._outbox = self._outbox, []
        for message in outbox:
            try:
                self.transport.send(message.peer, message.payload, now)
            except Exception as exc:
                self._error("send", exc, now)

    def next_deadline(self) -> float:
        """When `tick` has something to do: the transport's timers (the anti-entropy
        interval is never below the loop's idle wake-up of a second)."""
        return self.transport.next_deadline()

    def reload(self) -> list[str]:
        """Re-read the certificate files (the paths cannot change without a restart);
        the sites whose sessions the CRL now revokes. Raises TransportError."""
        s = self.settings
        return self.transport.reload(s.ca, s.certificate, s.key, s.crl)

    def close(self) -> None:
        self.transport.close()

    # -- what the operator sees -------------------------------------------------------------

    def peers_up(self, now: float) -> list[str]:
        """Peers with a DTLS session up that we heard from lately."""
        heard = set(self.replica.peers_up(now))
        return [p for p in self.transport.peers_up() if p in heard]

    def owned_blocks(self, now: float) -> int:
        return len(self._owned_now(now))

    def moved_blocks(self, now: float) -> list[Block]:
        """The blocks that became or stopped being this site's since the last call: a
        register merged or written (an eviction), or a handover, an eviction or a
        recovering site's wait that became ready with time alone. The kernel's entries
        of their leases must be planned again (`Server.kernel_answer` depends on it).
        Looked at once a second at most: the daemon calls this after every batch, and a
        look weighs every block (2.3 ms for 2,560 blocks), while ownership moves rarely and
        readiness in whole seconds."""
        if now < self._next_ownership_look:
            return []
        self._next_ownership_look = now + OWNERSHIP_LOOK_INTERVAL
        try:
            owned = self._owned_now(now)
        except Exception as exc:
            self._error("ownership", exc, now)
            return []
        moved = owned.keys() ^ self._owned.keys()
        blocks = [owned.get(first) or self._owned[first] for first in sorted(moved)]
        self._owned = owned
        return blocks

    def _owned_now(self, now: float) -> dict[int, Block]:
        return {b.first: b for b in self.replica.policy.owned_blocks(int(now * 1000))}

    def describe(self, now: float) -> dict[str, object]:
        """The `brushtail peers` answer."""
        sessions = set(self.transport.peers_up())
        handshaking = set(self.transport.handshaking())
        heard = self.replica.policy.last_heard
        up = set(self.peers_up(now))
        peers = []
        for peer in self.settings.peers:
            last = heard.get(peer.site)
            peers.append(
                {
                    "site": peer.site,
                    "address": f"{peer.address}:{peer.port}",
                    "up": peer.site in up,
                    "session": (
                        "established"
                        if peer.site in sessions
                        else "handshaking"
                        if peer.site in handshaking
                        else "none"
                    ),
                    "last_heard": last / 1000 if last is not None else None,
                    "last_heard_ago": round(now - last / 1000, 1) if last is not None else None,
                }
            )
        c = self.transport.counters
        blind = self.replica.policy.blind_until_ms / 1000
        return {
            "site": self.replica.site,
            "peers": peers,
            "owned_blocks": self.owned_blocks(now),
            "blocks": len(self.layout.blocks()),
            "recovering_until": blind if blind > now else None,
            "lost_after": self.params.lost_after,
            "bytes_sent": c.bytes_sent,
            "bytes_received": c.bytes_received,
        }

    # -- conflicts --------------------------------------------------------------------------

    def log_conflicts(self, conflicts: Iterable[Conflict]) -> None:
        """One warning per conflict, with the journal fields the lease log uses, so
        `journalctl CLIENT_MAC=...` finds the client that lost its address."""
        for c in conflicts:
            loser, winner = c.loser, c.winner
            log.warning(
                "replication conflict ip=%s winner client=%s mac=%s loser client=%s mac=%s: "
                "the loser is withdrawn and NAKed at its next request",
                format_ip(loser.address),
                winner.client_id.hex(),
                format_mac(winner.hwaddr),
                loser.client_id.hex(),
                format_mac(loser.hwaddr),
                extra={
                    "LEASE_EVENT": "conflict",
                    "LEASE_IP": format_ip(loser.address),
                    "CLIENT_ID": loser.client_id.hex(),
                    "CLIENT_MAC": format_mac(loser.hwaddr),
                    "WINNER_CLIENT_ID": winner.client_id.hex(),
                    "WINNER_CLIENT_MAC": format_mac(winner.hwaddr),
                    "WINNER_SITE": winner.tenure.site,
                },
            )

    def _error(self, stage: str, exc: Exception, now: float) -> None:
        self.errors += 1
        self._log.report(stage, f"replication: {stage} failed: {exc!r}", now, exc)
