"""Map sync: keeps the kernel's lease entries equal to the engine's bound leases.

The daemon calls it after every durable commit, so an entry never exists for a lease the
store does not hold: the fast path answers only what is already on disk. Entries carry
the ids of reply templates that the engine rendered with the slow path's codec, for the
client's own parameter request list, so both paths answer with the same bytes.

The maps are a cache: a lease without an entry is answered by the slow path. So a full
`leases` map, a template table out of slots or a write the kernel refuses (E2BIG, ENOMEM)
leaves the lease there, counted in `skipped` (and `failed`), and never stops the daemon.

Times: entries hold CLOCK_BOOTTIME nanoseconds (bpf_ktime_get_boot_ns), converted from
engine time by daemon/clock.py with its one constant offset: the expiry, and a roaming
client's cap (Server.kernel_answer), which the program never lets a lease run past.
"""

import contextlib
import ctypes
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from brushtaild.config.model import Config
from brushtaild.daemon import clock
from brushtaild.daemon.throttled_log import ThrottledLog
from brushtaild.dhcp.constants import MessageType
from brushtaild.engine.decisions import Decision, LeaseEventKind
from brushtaild.engine.lease_table import paced
from brushtaild.engine.leases import Lease
from brushtaild.engine.server import KernelAnswer, Server, wire_client_id
from brushtaild.xdp import maps

log = logging.getLogger("brushtaild.xdp")

# A full map or a refusing kernel fails every install: say so at most this often (engine
# seconds), with the count since.
WARN_INTERVAL = 60.0
CAP_MARGIN_NS = 1000
TemplateKey = tuple[str, MessageType, bytes | None]
# Events after which the client's entry must go; writes say the same, but an expiry is
# only an event (the store needs no write for it).
_WITHDRAW = (LeaseEventKind.EXPIRE, LeaseEventKind.RELEASE, LeaseEventKind.DECLINE)
KEY_SIZE = ctypes.sizeof(maps.ClientKey)
ENTRY_SIZE = ctypes.sizeof(maps.LeaseEntry)


def cap_ns(cap: float | None) -> int:
    """A roaming client's cap (engine time) as its entry holds it; 0 for none. It is set
    CAP_MARGIN_NS early: a renewal the kernel makes at the cap, converted back to engine
    time, may round up by a fraction of a microsecond, and must not land past the limit.
    A cap from before boot is still one (1: the kernel passes every request)."""
    if cap is None:
        return 0
    return max(1, clock.to_boot_ns(cap) - CAP_MARGIN_NS)


def key_bytes(hwaddr: bytes, outer_vlan: int = 0, inner_vlan: int = 0) -> bytes:
    return maps.KEY_FORMAT.pack(hwaddr, outer_vlan, inner_vlan, 0)


class TemplateSlots:
    """Which slot of the `templates` array holds which reply template. A slot is handed out
    only while no entry can point at it: never one in use, nor one that entries still in
    the map point at (`busy`). Allocation takes from a free list, so it ends even when no
    slot is free (the lease then stays on the slow path)."""

    def __init__(self, busy: Iterable[int] = ()) -> None:
        taken = set(busy)
        self.ids: dict[TemplateKey, int] = {}
        self._free = deque(slot for slot in range(maps.TEMPLATE_SLOTS) if slot not in taken)

    def take(self, key: TemplateKey) -> int | None:
        # Clients choose request lists: never let them fill the map.
        if len(self.ids) >= maps.MAX_TEMPLATES or not self._free:
            return None
        slot = self._free.popleft()
        self.ids[key] = slot
        return slot

    def give_back(self, slots: Iterable[int]) -> None:
        """Slots no entry points at any more (zeroed by the caller)."""
        self._free.extend(slots)


class Planner:
    """Which leases get which entries and templates: decides, writes nothing. Templates
    given a slot wait in `writes` (slot -> options) until the caller has put them in the
    map, which it must do before it writes an entry that points at them."""

    def __init__(self, busy: Iterable[int] = ()) -> None:
        self.slots = TemplateSlots(busy)
        self.writes: dict[int, bytes] = {}
        self.skipped = 0  # leases the program cannot answer for (maps.fits, templates)
        self._shapes: dict[tuple[str, bytes | None], maps.Shape | None] = {}

    def plan(
        self, server: Server, now: float, capacity: int, keepalive: Callable[[], object]
    ) -> "Plan":
        """The entry of every lease to install, at most `capacity` keys of them.
        `keepalive` is called every few thousand leases (`lease_table.paced`)."""
        plan = Plan()
        owner, keys, values, addresses = plan.owner, plan.keys, plan.values, plan.addresses
        for lease, answer in server.kernel_answers(paced(server.leases(), keepalive), now):
            built = self._entry(server, lease, answer)
            if built is None:
                continue
            key, value = built
            slot = owner.get(key)
            if slot is not None:
                # One MAC with two client ids: the later lease answers, as MapSync does.
                values[slot * ENTRY_SIZE : (slot + 1) * ENTRY_SIZE] = value
                addresses[slot] = lease.address
                continue
            if len(owner) >= capacity:
                plan.left_out += 1
                continue
            owner[key] = len(addresses)
            keys += key
            values += value
            addresses.append(lease.address)
        # The slots, needed only while planning, become the addresses (in place: no
        # second dict of a million keys).
        for key, slot in owner.items():
            owner[key] = addresses[slot]
        return plan

    def entry(self, server: Server, lease: Lease, now: float) -> tuple[bytes, bytes] | None:
        """The packed key and entry of a bound lease, or None for one the program may not
        or cannot answer for (those stay on the slow path)."""
        return self._entry(server, lease, server.kernel_answer(lease, now))

    def _entry(
        self, server: Server, lease: Lease, answer: KernelAnswer | None
    ) -> tuple[bytes, bytes] | None:
        if answer is None:
            return None
        shape = self._shape(server, answer.profile, lease.prl)
        client_id = wire_client_id(lease)
        if len(lease.hwaddr) != 6 or not maps.fits(client_id, lease.prl) or shape is None:
            self.skipped += 1
            return None
        value = maps.pack_entry(
            shape,
            client_id=client_id,
            hwaddr=lease.hwaddr,
            address=lease.address,
            expires_ns=clock.to_boot_ns(lease.expires),
            flags=(maps.LEASE_BY_VLAN if answer.by_vlan else 0)
            | (maps.LEASE_UNICAST_ONLY if answer.unicast_only else 0),
            cap_ns=cap_ns(answer.cap),
        )
        return key_bytes(lease.hwaddr, *lease.vlans), value

    def _shape(self, server: Server, profile: str, prl: bytes | None) -> maps.Shape | None:
        """What entries of leases rendered with `profile` (a pool, or a reserved host with
        options of its own) for request list `prl` share."""
        key = (profile, prl)
        if key in self._shapes:
            return self._shapes[key]
        pool = server.profile_pool(profile)
        shape = None
        offer = self._template_id(server, profile, MessageType.OFFER, prl)
        ack = self._template_id(server, profile, MessageType.ACK, prl)
        if offer is not None and ack is not None:
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

    def _template_id(
        self, server: Server, profile: str, mtype: MessageType, prl: bytes | None
    ) -> int | None:
        key = (profile, mtype, prl)
        template_id = self.slots.ids.get(key)
        if template_id is not None:
            return template_id
        wire = server.template(profile, mtype, prl).wire
        if len(wire) > maps.TEMPLATE_MAX:
            return None
        template_id = self.slots.take(key)
        if template_id is not None:
            self.writes[template_id] = wire
        return template_id


@dataclass(slots=True)
class Plan:
    """What a reconcile writes, packed as the kernel takes it: at a million leases a dict
    of per-lease tuples and entries cost hundreds of MiB more than the entries themselves."""

    owner: dict[bytes, int] = field(default_factory=dict)  # key -> address it answers with
    keys: bytearray = field(default_factory=bytearray)  # packed keys, in lease order
    values: bytearray = field(default_factory=bytearray)  # packed entries, likewise
    # Likewise; the leases' own int objects, which `owner` goes on holding (an array's
    # would be a new int each, 32 MiB at 1M leases).
    addresses: list[int] = field(default_factory=list)
    left_out: int = 0  # leases beyond the capacity

    def __len__(self) -> int:
        return len(self.addresses)

    def element(self, i: int) -> tuple[bytes, int, bytes]:
        """The i-th write: packed key, address, packed entry."""
        k, v = KEY_SIZE, ENTRY_SIZE
        return (
            bytes(self.keys[i * k : i * k + k]),
            self.addresses[i],
            bytes(self.values[i * v : i * v + v]),
        )


class MapSync:
    """Owns the `leases` and `templates` maps and the `config` slots of one program, and
    writes what its Planner decides."""

    def __init__(self, tables: Any, server: Server) -> None:
        self._leases = tables.table("leases")
        self._templates = tables.table("templates")
        self._config = tables.table("config")
        self.server = server
        self.capacity = int(self._leases.max_entries)
        self._planner = Planner()
        self._owner: dict[bytes, int] = {}  # key -> address its entry answers with
        self._key_of: dict[int, bytes] = {}  # address -> key
        # Until the first reconcile, the maps may hold what an earlier daemon left.
        self._adopted = False
        self._skipped = 0  # by planners before the current one, and for want of room
        self.failed = 0  # map writes the kernel refused
        self._warnings = ThrottledLog(log, WARN_INTERVAL)

    @property
    def entries(self) -> int:
        return len(self._owner)

    @property
    def skipped(self) -> int:
        """Bound leases left to the slow path: ones the program cannot answer for, and ones
        beyond the map's room or refused by the kernel."""
        return self._skipped + self._planner.skipped

    def configure(
        self, config: Config, server_mac: bytes, rate: int, burst: int, relay_rate: int = 0
    ) -> None:
        cost = clock.NS // rate if rate else 0
        self._put_config(maps.CFG_SERVER_ID, maps.net32(config.server_id))
        self._put_config(maps.CFG_RATE_COST, cost)
        self._put_config(maps.CFG_RATE_BURST, cost * burst)
        self._put_config(maps.CFG_SERVER_MAC, int.from_bytes(server_mac.ljust(8, b"\0"), "little"))
        self._put_config(maps.CFG_RELAY_COST, clock.NS // relay_rate if relay_rate else 0)

    def _put_config(self, slot: int, value: int) -> None:
        self._config[ctypes.c_uint32(slot)] = ctypes.c_uint64(value)

    # -- after each commit ---------------------------------------------------------------

    def apply(self, decisions: Iterable[Decision], now: float) -> None:
        """Withdrawals first, then installs: within one decision an expiry or release is
        older than any write (the engine expires before it handles a request), so a lease
        rebound to the same address keeps the entry just written for it."""
        for decision in decisions:
            for address in decision.lease_deletes:
                self.withdraw(address)
            for event in decision.events:
                if event.kind in _WITHDRAW:
                    self.withdraw(event.address)
            for lease in decision.lease_writes:
                self._install(lease, now)

    def withdraw(self, address: int) -> None:
        """Removes the entry that answers with `address`, if one does."""
        key = self._key_of.pop(address, None)
        if key is None or self._owner.get(key) != address:
            return
        del self._owner[key]
        with contextlib.suppress(KeyError):  # already gone from the kernel
            del self._leases[maps.ClientKey.from_buffer_copy(key)]

    # -- whole-map rebuild: at start (adoption) and after a reload ----------------------

    def reconcile(
        self, now: float, keepalive: Callable[[], object] = lambda: None
    ) -> tuple[int, int]:
        """Makes the maps hold exactly the engine's bound leases (at most `capacity`), with
        templates rendered from the current config. Stale entries go first, so the map
        never holds more than it will at the end; entries in both sets are overwritten in
        place, so their clients are answered throughout. Returns (entries written, stale
        entries removed). At a million leases this takes seconds: `keepalive` is called
        every few thousand leases (the daemon pings systemd's watchdog with it)."""
        held, old_templates = self._held()
        self._skipped += self._planner.skipped
        # The old templates stay until no entry can point at them.
        self._planner = Planner(busy=old_templates)
        plan = self._planner.plan(self.server, now, self.capacity, keepalive)
        if plan.left_out:
            self._full(now, plan.left_out)
        self._write_templates()
        stale = held.difference(plan.owner)
        for key in stale:
            with contextlib.suppress(KeyError):
                del self._leases[maps.ClientKey.from_buffer_copy(key)]
        self._owner, self._key_of = {}, {}
        self._write_all(plan, now)
        dead = old_templates - set(self._planner.slots.ids.values())
        for template_id in dead:
            self._templates[ctypes.c_uint32(template_id)] = maps.Template()
        self._planner.slots.give_back(dead)
        self._adopted = True
        return len(self._owner), len(stale)

    def _held(self) -> tuple[set[bytes], set[int]]:
        """The keys the leases map holds and the template slots they point at. Known from
        the bookkeeping, except in maps adopted from an earlier daemon: those are read, and
        template slots no entry points at (a previous set, or a set written just before a
        crash) are zeroed, so they are free again."""
        if self._adopted:
            return set(self._owner), set(self._planner.slots.ids.values())
        held: set[bytes] = set()
        referenced: set[int] = set()
        # Walking a million keys takes seconds: only when there is something to walk.
        if next(iter(self._leases), None) is not None:
            for key, value in self._leases.items_lookup_batch():
                held.add(bytes(key))
                referenced.update((value.offer_template, value.ack_template))
        for template_id in range(maps.TEMPLATE_SLOTS):
            slot = ctypes.c_uint32(template_id)
            if template_id not in referenced and self._templates[slot].len:
                self._templates[slot] = maps.Template()
        return held, referenced

    def _write_templates(self) -> None:
        for template_id, wire in self._planner.writes.items():
            self._templates[ctypes.c_uint32(template_id)] = maps.template(wire)
        self._planner.writes.clear()

    def _write_all(self, plan: Plan, now: float) -> None:
        """Writes `plan` in one batch; if the kernel refuses it, entry by entry, so one
        refusal costs one lease its entry and no more."""
        count = len(plan)
        if not count:
            return
        try:
            self._leases.items_update_batch(
                (maps.ClientKey * count).from_buffer(plan.keys),
                (maps.LeaseEntry * count).from_buffer(plan.values),
            )
        except Exception as exc:  # BCC raises bare Exceptions with the errno's text
            self._warnings.report(
                "batch", f"fast path: bulk map write failed ({exc}), writing one by one", now
            )
            for i in range(count):
                key, address, value = plan.element(i)
                self._write(key, address, value, now)
            return
        self._owner = plan.owner
        self._key_of = {address: key for key, address in plan.owner.items()}

    # -- internals -----------------------------------------------------------------------

    def _install(self, lease: Lease, now: float) -> None:
        built = self._planner.entry(self.server, lease, now)
        self._write_templates()
        if built is None:
            self.withdraw(lease.address)
            return
        key, value = built
        old_key = self._key_of.get(lease.address)
        if old_key is not None and old_key != key:
            self.withdraw(lease.address)
        if key not in self._owner and len(self._owner) >= self.capacity:
            self._full(now)
            return
        self._write(key, lease.address, value, now)

    def _write(self, key: bytes, address: int, value: bytes, now: float) -> None:
        ckey = maps.ClientKey.from_buffer_copy(key)
        try:
            self._leases[ckey] = maps.LeaseEntry.from_buffer_copy(value)
        except Exception as exc:  # BCC raises bare Exceptions with the errno's text
            self._skipped += 1
            self.failed += 1
            self._warnings.report(
                "write", f"fast path: map write refused ({exc}), lease left to the slow path", now
            )
            # Whatever the key answered before must not go on answering.
            previous = self._owner.pop(key, None)
            if previous is not None:
                self._key_of.pop(previous, None)
            with contextlib.suppress(KeyError):
                del self._leases[ckey]
            return
        previous = self._owner.get(key)
        if previous is not None and previous != address:
            del self._key_of[previous]
        self._owner[key] = address
        self._key_of[address] = key

    def _full(self, now: float, leases: int = 1) -> None:
        self._skipped += leases
        self._warnings.report(
            "full",
            f"fast path: the leases map is full (max_subscribers={self.capacity}), more "
            "leases are left to the slow path",
            now,
        )
