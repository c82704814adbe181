"""The relays the fast path may answer, and where their replies go.

The program answers a relayed request only for a relay in its `relays` map, and sends the
reply to the MAC written there: the next hop the kernel's routing and neighbour tables give
for the relay's giaddr (brushtaild/net/next_hop.py), as the slow path's own reply took. A
relay gets its entry once the slow path has answered it (the neighbour is resolved by then)
and keeps it while it resolves; entries are checked again every REFRESH_INTERVAL, and
rewritten at once after a reload, which may change which relays are trusted.
"""

import contextlib
import ctypes
import logging
from collections.abc import Callable
from typing import Any

from brushtaild.config.model import Config
from brushtaild.dhcp.constants import MessageType
from brushtaild.engine.decisions import DestKind, Reply
from brushtaild.xdp import maps

log = logging.getLogger("brushtaild.xdp")

# Seconds between two checks of every relay's next hop: how long a relay that changed its
# MAC may go on being sent replies at the old one (its clients retry meanwhile).
REFRESH_INTERVAL = 30.0
# Seconds between two tries for relays whose next hop was not resolved yet.
RETRY_INTERVAL = 1.0
# Relays waiting for a first entry. Each costs a netlink query per try, and any host can
# make the slow path answer new giaddrs: the ones beyond wait for a later reply.
MAX_PENDING = 256

# A relay as the program keys it: giaddr (host order), outer and inner VLAN id.
RelayId = tuple[int, int, int]
Resolve = Callable[[int], bytes | None]


def _ctype_key(relay: RelayId) -> maps.RelayKey:
    giaddr, outer, inner = relay
    return maps.RelayKey(maps.net32(giaddr), outer, inner)


class Relays:
    """Owns the program's `relays` map."""

    def __init__(self, tables: Any, resolve: Resolve, config: Config) -> None:
        self._table = tables.table("relays")
        self.capacity = int(self._table.max_entries)
        self._resolve = resolve
        self._config = config
        # What an earlier daemon left in the pinned map is checked at the first refresh.
        self._known: set[RelayId] = {
            (maps.host32(k.giaddr), k.outer_vlan, k.inner_vlan) for k in self._table
        }
        self._pending: set[RelayId] = set()
        self._refreshed_at = float("-inf")
        self._retried_at = float("-inf")

    @property
    def entries(self) -> int:
        return len(self._known)

    def answered(self, reply: Reply) -> None:
        """The slow path sent `reply`: if it offered or acknowledged through a relay, that
        relay is one the fast path may answer too."""
        if reply.dest.kind is not DestKind.RELAY or reply.message.message_type not in (
            MessageType.OFFER,
            MessageType.ACK,
        ):
            return
        self.learn(reply.dest.ip, reply.ingress.vlans)

    def learn(self, giaddr: int, vlans: tuple[int, ...] = ()) -> None:
        """The relay writing `giaddr`, on `vlans`, gets an entry at the next refresh if
        its next hop resolves."""
        outer, inner = (*vlans, 0, 0)[:2]
        relay = (giaddr, outer, inner)
        if relay not in self._known and len(self._pending) < MAX_PENDING:
            self._pending.add(relay)

    def reconfigured(self, config: Config) -> None:
        """Every entry is rewritten at the next refresh, with the new config's trust."""
        self._config = config
        self._refreshed_at = float("-inf")

    def refresh(self, now: float) -> None:
        """Resolves the relays learned since the last try (at most every RETRY_INTERVAL),
        and every known relay every REFRESH_INTERVAL (`now`: monotonic seconds). A relay
        that no longer resolves loses its entry: the slow path answers it again."""
        full = now - self._refreshed_at >= REFRESH_INTERVAL
        if full:
            self._refreshed_at = now
            todo = self._known | self._pending
        elif self._pending and now - self._retried_at >= RETRY_INTERVAL:
            todo = set(self._pending)
        else:
            return
        self._retried_at = now
        refused: list[Exception] = []
        for relay in sorted(todo):
            mac = self._resolve(relay[0])
            if mac is None:
                # A new relay is tried again until the next full refresh gives up on it.
                if full:
                    self._forget(relay)
                continue
            self._pending.discard(relay)
            if relay not in self._known and len(self._known) >= self.capacity:
                continue
            try:
                self._table[_ctype_key(relay)] = maps.Relay(
                    (ctypes.c_uint8 * 6)(*mac), self._config.trusts_relay(relay[0]), 0
                )
            except Exception as exc:  # BCC raises bare Exceptions with the errno's text
                refused.append(exc)
                self._forget(relay)
            else:
                self._known.add(relay)
        if refused:
            log.warning(
                "fast path: %d relay entries refused (%s); those relays are answered by the "
                "slow path",
                len(refused),
                refused[0],
            )

    def _forget(self, relay: RelayId) -> None:
        self._pending.discard(relay)
        if relay in self._known:
            self._known.discard(relay)
            with contextlib.suppress(KeyError):
                del self._table[_ctype_key(relay)]
