"""Map sync: keeps the kernel's lease entries equal to the engine's bound leases.

The daemon calls it after every durable commit, so an entry never exists for a lease the
store does not hold: the fast path answers only what is already on disk. Entries carry
the ids of reply templates that the engine rendered with the slow path's codec, for the
client's own parameter request list, so both paths answer with the same bytes.

Times: the engine and the store use wall-clock Unix seconds; the program compares
CLOCK_BOOTTIME nanoseconds (bpf_ktime_get_boot_ns). The conversion happens here only.
"""

import contextlib
import ctypes
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from brushtaild.config.model import Config
from brushtaild.dhcp.constants import MessageType
from brushtaild.engine.decisions import Decision, LeaseEventKind
from brushtaild.engine.leases import Lease
from brushtaild.engine.server import Server
from brushtaild.xdp import maps

log = logging.getLogger("brushtaild.xdp")

NS = 1_000_000_000
KEEPALIVE_EVERY = 65_536
TemplateKey = tuple[str, MessageType, bytes | None]
# Events after which the client's entry must go; writes say the same, but an expiry is
# only an event (the store needs no write for it).
_WITHDRAW = (LeaseEventKind.EXPIRE, LeaseEventKind.RELEASE, LeaseEventKind.DECLINE)


def boot_offset() -> float:
    """Wall clock minus CLOCK_BOOTTIME, in seconds: add it to a boot time to get Unix time."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def key_bytes(hwaddr: bytes, outer_vlan: int = 0, inner_vlan: int = 0) -> bytes:
    return maps.KEY_FORMAT.pack(hwaddr, outer_vlan, inner_vlan, 0)


class MapSync:
    """Owns the `leases` and `templates` maps and the `config` slots of one program."""

    def __init__(self, tables: Any, server: Server) -> None:
        self._leases = tables.table("leases")
        self._templates = tables.table("templates")
        self._config = tables.table("config")
        self.server = server
        self._template_ids: dict[TemplateKey, int] = {}
        self._shapes: dict[tuple[str, bytes | None], maps.Shape | None] = {}
        self._reserved: set[int] = set()
        self._next_id = 0
        self._owner: dict[bytes, int] = {}  # key -> address its entry answers with
        self._key_of: dict[int, bytes] = {}  # address -> key
        self.skipped = 0  # bound leases left to the slow path (see maps.fits, templates)
        self._offset = boot_offset()

    @property
    def entries(self) -> int:
        return len(self._owner)

    def configure(
        self, config: Config, server_mac: bytes, rate: int, burst: int, relay_rate: int = 0
    ) -> None:
        cost = NS // rate if rate else 0
        self._put_config(maps.CFG_SERVER_ID, maps.net32(config.server_id))
        self._put_config(maps.CFG_RATE_COST, cost)
        self._put_config(maps.CFG_RATE_BURST, cost * burst)
        self._put_config(maps.CFG_SERVER_MAC, int.from_bytes(server_mac.ljust(8, b"\0"), "little"))
        self._put_config(maps.CFG_RELAY_COST, NS // relay_rate if relay_rate else 0)

    def _put_config(self, slot: int, value: int) -> None:
        self._config[ctypes.c_uint32(slot)] = ctypes.c_uint64(value)

    # -- after each commit ---------------------------------------------------------------

    def apply(self, decisions: Iterable[Decision], now: float) -> None:
        for decision in decisions:
            for lease in decision.lease_writes:
                self._install(lease, now)
            for address in decision.lease_deletes:
                self.withdraw(address)
            for event in decision.events:
                if event.kind in _WITHDRAW:
                    self.withdraw(event.address)

    def client_of(self, key: bytes, address: int) -> bytes | None:
        """The client the kernel answered under `key` with `address`, if the engine still
        leases that address to the same hardware address."""
        lease = self.server.lease_at(address)
        # The MAC only: the engine does not know VLANs yet (entries it installs are untagged).
        if lease is None or key[: len(lease.hwaddr)] != lease.hwaddr:
            return None
        return lease.client_id

    # -- whole-map rebuild: at start (adoption) and after a reload ----------------------

    def reconcile(
        self, now: float, keepalive: Callable[[], object] = lambda: None
    ) -> tuple[int, int]:
        """Makes the maps hold exactly the engine's bound leases, with templates rendered
        from the current config. Entries are overwritten in place and stale ones deleted
        afterwards, so a client in both sets is answered throughout. Returns (entries
        written, stale entries removed). At a million leases this takes seconds:
        `keepalive` is called every KEEPALIVE_EVERY leases (the daemon pings systemd's
        watchdog with it)."""
        self._offset = boot_offset()
        # Templates entries may still point at: never rewritten until the swap is done.
        old_templates = [
            template_id
            for template_id in range(maps.TEMPLATE_SLOTS)
            if self._templates[ctypes.c_uint32(template_id)].len
        ]
        self._template_ids = {}
        self._shapes = {}
        self._reserved = set(old_templates)
        wanted: dict[bytes, tuple[int, bytes]] = {}
        for n, lease in enumerate(self.server.leases()):
            if n % KEEPALIVE_EVERY == KEEPALIVE_EVERY - 1:
                keepalive()
            built = self._entry(lease, now)
            if built is not None:
                # One MAC with two client ids: the later lease answers, as _install does.
                wanted[built[0]] = (lease.address, built[1])
        count = len(wanted)
        had_entries = next(iter(self._leases), None) is not None
        if count:
            keys = bytearray(b"".join(wanted))
            values = bytearray(b"".join(value for _, value in wanted.values()))
            self._leases.items_update_batch(
                (maps.ClientKey * count).from_buffer(keys),
                (maps.LeaseEntry * count).from_buffer(values),
            )
        owner = {key: address for key, (address, _) in wanted.items()}
        # Walking a million keys takes seconds: only maps adopted from a running program
        # can hold entries we did not just write.
        stale = (
            [k for k, _ in self._leases.items_lookup_batch() if bytes(k) not in owner]
            if had_entries
            else []
        )
        for k in stale:
            del self._leases[k]
        live = set(self._template_ids.values())
        for template_id in old_templates:
            if template_id not in live:
                self._templates[ctypes.c_uint32(template_id)] = maps.Template()
        self._reserved = set()
        self._owner = owner
        self._key_of = {address: key for key, address in owner.items()}
        return count, len(stale)

    # -- internals -----------------------------------------------------------------------

    def _install(self, lease: Lease, now: float) -> None:
        built = self._entry(lease, now)
        if built is None:
            self.withdraw(lease.address)
            return
        key, value = built
        previous = self._owner.get(key)
        if previous is not None and previous != lease.address:
            del self._key_of[previous]
        old_key = self._key_of.get(lease.address)
        if old_key is not None and old_key != key:
            self.withdraw(lease.address)
        self._leases[maps.ClientKey.from_buffer_copy(key)] = maps.LeaseEntry.from_buffer_copy(value)
        self._owner[key] = lease.address
        self._key_of[lease.address] = key

    def withdraw(self, address: int) -> None:
        """Removes the entry that answers with `address`, if one does."""
        key = self._key_of.pop(address, None)
        if key is None or self._owner.get(key) != address:
            return
        del self._owner[key]
        with contextlib.suppress(KeyError):  # already gone from the kernel
            del self._leases[maps.ClientKey.from_buffer_copy(key)]

    def _entry(self, lease: Lease, now: float) -> tuple[bytes, bytes] | None:
        """The packed key and entry of a bound lease, or None for one the program cannot
        answer for (those stay on the slow path)."""
        if not self.server.renewable(lease, now):
            return None
        shape = self._shape(lease.pool, lease.prl)
        if len(lease.hwaddr) != 6 or not maps.fits(lease.client_id, lease.prl) or shape is None:
            self.skipped += 1
            return None
        value = maps.pack_entry(
            shape,
            client_id=lease.client_id,
            hwaddr=lease.hwaddr,
            address=lease.address,
            expires_ns=int((lease.expires - self._offset) * NS),
        )
        return key_bytes(lease.hwaddr), value

    def _shape(self, pool_name: str, prl: bytes | None) -> maps.Shape | None:
        key = (pool_name, prl)
        if key in self._shapes:
            return self._shapes[key]
        pool = next((p for p in self.server.config.pools if p.name == pool_name), None)
        offer = self._template_id(pool_name, MessageType.OFFER, prl) if pool else None
        ack = self._template_id(pool_name, MessageType.ACK, prl) if pool else None
        shape = None
        if pool is not None and offer is not None and ack is not None:
            shape = maps.Shape(
                maps.net32(int(pool.subnet.network_address)),
                maps.net32(int(pool.subnet.netmask)),
                pool.lease_time,
                maps.prl_hash(prl),
                offer,
                ack,
            )
        self._shapes[key] = shape
        return shape

    def _template_id(self, pool: str, mtype: MessageType, prl: bytes | None) -> int | None:
        key = (pool, mtype, prl)
        template_id = self._template_ids.get(key)
        if template_id is not None:
            return template_id
        if len(self._template_ids) >= maps.MAX_TEMPLATES:
            return None  # clients choose request lists: never let them fill the map
        wire = self.server.template(pool, mtype, prl).wire
        if len(wire) > maps.TEMPLATE_MAX:
            return None
        # A slot is written only while no entry can point at it: not one in use now, nor one
        # the previous set used (during a rebuild). There are twice as many slots as
        # templates in use, so one is always free.
        live = set(self._template_ids.values())
        while self._next_id in self._reserved or self._next_id in live:
            self._next_id = (self._next_id + 1) % maps.TEMPLATE_SLOTS
        template_id = self._next_id
        self._next_id = (self._next_id + 1) % maps.TEMPLATE_SLOTS
        self._templates[ctypes.c_uint32(template_id)] = maps.template(wire)
        self._template_ids[key] = template_id
        return template_id
