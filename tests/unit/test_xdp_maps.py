"""The fast path's userspace side without a kernel: layouts, hashing, and map sync against
dict-backed tables. tests/bpf runs the same code against the real program."""

import ctypes
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brushtaild.config.model import AddressRange, Pool
from brushtaild.daemon import clock
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.engine.decisions import Decision, LeaseEventKind
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.server import Server
from brushtaild.xdp import maps
from brushtaild.xdp.sync import MapSync, Planner, key_bytes
from tests.engine_helpers import INGRESS, SERVER, mac, make_config, request
from tests.unit.conftest import HOUR, FakeClocks

NOW = 1_800_000_000.0
PRL = bytes([1, 3, 6, 15])


class FakeTable:
    """A BCC table as MapSync uses it: ctypes keys and values, iteration, batch update.
    With `zero`, it reads like an array: a missing slot holds a zero value. Like the
    kernel's hash, it refuses a new key beyond `max_entries` (E2BIG), and with `refuse`
    set every write (as ENOMEM would), with BCC's bare Exception."""

    def __init__(self, zero: type | None = None, max_entries: int = 1 << 20) -> None:
        self.rows: dict[bytes, tuple[Any, Any]] = {}
        self.zero = zero
        self.max_entries = max_entries
        self.refuse = False
        self.peak = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.refuse:
            raise Exception("Could not update table: Cannot allocate memory")
        if bytes(key) not in self.rows and len(self.rows) >= self.max_entries:
            raise Exception("Could not update table: Argument list too long")
        self.rows[bytes(key)] = (key, value)
        self.peak = max(self.peak, len(self.rows))

    def __getitem__(self, key: Any) -> Any:
        if self.zero is not None and bytes(key) not in self.rows:
            return self.zero()
        return self.rows[bytes(key)][1]

    def __delitem__(self, key: Any) -> None:
        del self.rows[bytes(key)]

    def __iter__(self) -> Any:
        return iter([key for key, _ in self.rows.values()])

    def items_update_batch(self, keys: Any, values: Any) -> None:
        if len(keys) > self.max_entries:
            raise ValueError("Array's length is wrong")  # BCC checks before the kernel
        for key, value in zip(keys, values, strict=True):
            self[type(key).from_buffer_copy(key)] = type(value).from_buffer_copy(value)

    def items_lookup_batch(self) -> Any:
        return list(self.rows.values())


class FakeProgram:
    def __init__(self, max_subscribers: int = 1 << 20) -> None:
        self.tables = {
            "leases": FakeTable(max_entries=max_subscribers),
            "templates": FakeTable(zero=maps.Template),
            "config": FakeTable(),
        }

    def table(self, name: str) -> FakeTable:
        return self.tables[name]


def bind(server: Server, n: int, prl: bytes | None = PRL, now: float = NOW) -> Decision:
    extra = {OptionCode.PARAMETER_REQUEST_LIST: prl} if prl is not None else {}
    offer = server.handle(request(MessageType.DISCOVER, n, extra=extra), INGRESS, now)
    address = offer.replies[0].message.yiaddr
    return server.handle(
        request(MessageType.REQUEST, n, requested=address, server_id=SERVER, extra=extra),
        INGRESS,
        now,
    )


def entry(program: FakeProgram, n: int) -> maps.LeaseEntry:
    value: maps.LeaseEntry = program.tables["leases"][key_bytes(mac(n))]
    return value


def test_prl_hash_is_never_the_absent_value_and_sees_order() -> None:
    assert maps.prl_hash(None) == maps.PRL_ABSENT
    assert maps.prl_hash(b"") != maps.PRL_ABSENT
    assert maps.prl_hash(b"\x01\x03") != maps.prl_hash(b"\x03\x01")
    # The length is hashed on its own: trailing zero codes are not padding, and a length
    # never cancels out a first code.
    assert maps.prl_hash(b"\x01") != maps.prl_hash(b"\x01\x00")
    assert maps.prl_hash(b"\x03") != maps.prl_hash(b"\x00\x00")


@given(st.binary(max_size=maps.PRL_MAX))
def test_prl_hash_is_a_u64_never_zero(prl: bytes) -> None:
    assert 0 < maps.prl_hash(prl) < 2**64


def test_addresses_are_stored_in_network_order() -> None:
    assert maps.net32(0xC6120001).to_bytes(4, "little") == bytes([198, 18, 0, 1])
    assert maps.host32(maps.net32(0xC6120001)) == 0xC6120001


def test_struct_formats_match_the_ctypes_layouts() -> None:
    assert maps.KEY_FORMAT.size == ctypes.sizeof(maps.ClientKey)
    assert maps.ENTRY_FORMAT.size == ctypes.sizeof(maps.LeaseEntry)
    shape = maps.Shape(1, 2, 3, 4, 5, 6)
    entry = maps.lease_entry(
        shape, client_id=b"\x01" + mac(1), hwaddr=mac(1), address=0xC6120105, expires_ns=7
    )
    assert (entry.subnet, entry.netmask, entry.lease_time, entry.prl_hash) == (1, 2, 3, 4)
    assert (entry.offer_template, entry.ack_template, entry.expires_ns) == (5, 6, 7)
    assert entry.cap_ns == 0
    capped = maps.lease_entry(
        shape, client_id=b"\x00x", hwaddr=mac(1), address=1, expires_ns=7, cap_ns=9
    )
    assert (capped.expires_ns, capped.cap_ns, capped.prl_hash) == (7, 9, 4)
    assert maps.host32(entry.address) == 0xC6120105
    assert bytes(entry.client_id)[:7] == b"\x01" + mac(1) and entry.id_len == 7
    assert maps.Key.from_ctype(maps.Key(mac(1), 10, 20).ctype()) == maps.Key(mac(1), 10, 20)


def test_layout_sizes() -> None:
    # Checked against the C by tests/bpf/test_layout.py; here against accidental edits.
    assert ctypes.sizeof(maps.ClientKey) == 12
    assert ctypes.sizeof(maps.LeaseEntry) == 80
    assert maps.LeaseEntry.client_id.offset % 8 == 0


def test_an_ack_installs_an_entry_with_rendered_templates() -> None:
    server = Server(make_config(), [], NOW)
    program = FakeProgram()
    sync = MapSync(program, server)
    decision = bind(server, 1)
    sync.apply([decision], NOW)
    got = entry(program, 1)
    lease = decision.lease_writes[0]
    assert maps.host32(got.address) == lease.address
    assert got.flags == maps.LEASE_HW_ID and got.id_len == 7
    assert got.prl_hash == maps.prl_hash(PRL)
    assert got.lease_time == 3600
    ack = program.tables["templates"][ctypes.c_uint32(got.ack_template)]
    wire = server.template("residential", MessageType.ACK, PRL).wire
    assert bytes(ack.options)[: ack.len] == wire
    assert sync.entries == 1


def test_release_and_expiry_withdraw_the_entry() -> None:
    server = Server(make_config(), [], NOW)
    program = FakeProgram()
    sync = MapSync(program, server)
    first, second = bind(server, 1), bind(server, 2)
    sync.apply([first, second], NOW)
    address = first.lease_writes[0].address
    release = request(MessageType.RELEASE, 1, ciaddr=address, server_id=SERVER)
    sync.apply([server.handle(release, INGRESS, NOW)], NOW)
    assert key_bytes(mac(1)) not in program.tables["leases"].rows
    sync.apply([server.tick(NOW + 7200)], NOW + 7200)
    assert program.tables["leases"].rows == {}
    assert sync.entries == 0


def test_reconcile_keeps_live_entries_and_drops_stale_ones_and_templates() -> None:
    server = Server(make_config(), [], NOW)
    program = FakeProgram()
    bind(server, 1)
    stale_key = maps.Key(mac(9)).ctype()
    program.tables["leases"][stale_key] = maps.LeaseEntry()
    program.tables["templates"][ctypes.c_uint32(7)] = maps.template(b"\x35\x01\x05")
    written, removed = MapSync(program, server).reconcile(NOW)
    assert (written, removed) == (1, 1)
    assert list(program.tables["leases"].rows) == [key_bytes(mac(1))]
    templates = program.tables["templates"]
    ids = {key.value for key in templates if templates[key].len}
    assert 7 not in ids and len(ids) == 2  # this client's OFFER and ACK


def test_clients_the_program_cannot_compare_stay_on_the_slow_path() -> None:
    server = Server(make_config(), [], NOW)
    program = FakeProgram()
    sync = MapSync(program, server)
    long_id = {OptionCode.CLIENT_ID: b"\x00" + bytes(40)}
    offer = server.handle(request(MessageType.DISCOVER, 3, extra=long_id), INGRESS, NOW)
    address = offer.replies[0].message.yiaddr
    ack = server.handle(
        request(MessageType.REQUEST, 3, requested=address, server_id=SERVER, extra=long_id),
        INGRESS,
        NOW,
    )
    sync.apply([ack], NOW)
    assert program.tables["leases"].rows == {}
    assert sync.skipped == 1


# -- time: entries do not move when the wall clock is stepped -----------------------------


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_a_wall_clock_step_moves_no_entry_and_no_renewal(clocks: FakeClocks, step: float) -> None:
    server = Server(make_config(), [], clock.wall())
    program = FakeProgram()
    sync = MapSync(program, server)
    sync.reconcile(clock.wall())
    sync.apply([bind(server, 1, now=clock.wall())], clock.wall())
    written = entry(program, 1).expires_ns
    clocks.step_wall(step)
    sync.reconcile(clock.wall())  # as after a reload
    assert entry(program, 1).expires_ns == written
    # A renewal the kernel answered converts back to the same engine time.
    assert clock.from_boot_ns(written) == pytest.approx(server.leases()[0].expires)


# -- room: more bound leases than the map holds -------------------------------------------


def bind_many(server: Server, n: int) -> list[Decision]:
    return [bind(server, i) for i in range(1, n + 1)]


def test_leases_beyond_the_maps_capacity_stay_on_the_slow_path() -> None:
    server = Server(make_config(), [], NOW)
    program = FakeProgram(max_subscribers=3)
    sync = MapSync(program, server)
    sync.apply(bind_many(server, 5), NOW)
    assert len(program.tables["leases"].rows) == sync.entries == 3
    assert sync.skipped == 2 and sync.failed == 0
    # A client that has an entry keeps it when its lease is written again.
    sync.apply([bind(server, 1)], NOW)
    assert entry(program, 1).expires_ns and sync.entries == 3
    # Room made by a release goes to the next lease written.
    address = server.leases()[0].address
    release = request(MessageType.RELEASE, 1, ciaddr=address, server_id=SERVER)
    sync.apply([server.handle(release, INGRESS, NOW)], NOW)
    sync.apply([bind(server, 5)], NOW)
    assert key_bytes(mac(5)) in program.tables["leases"].rows and sync.entries == 3


def test_a_refused_map_write_is_counted_and_withdraws_the_old_entry() -> None:
    server = Server(make_config(), [], NOW)
    program = FakeProgram()
    sync = MapSync(program, server)
    sync.apply([bind(server, 1)], NOW)
    program.tables["leases"].refuse = True  # ENOMEM from here on
    sync.apply([bind(server, 1), bind(server, 2)], NOW)
    assert sync.failed == 2 and sync.skipped == 2
    # The old entry of client 1 is not left answering with what the engine replaced.
    assert program.tables["leases"].rows == {} and sync.entries == 0


def test_a_restart_with_more_leases_than_room_starts() -> None:
    """The adopted map is full of entries no lease backs any more, and the engine has more
    bound leases than the map holds: stale entries go first, the rest are capped."""
    server = Server(make_config(), [], NOW)
    bind_many(server, 6)
    program = FakeProgram(max_subscribers=4)
    table = program.tables["leases"]
    for n in range(100, 104):
        table[maps.Key(mac(n)).ctype()] = maps.LeaseEntry()
    sync = MapSync(program, server)
    assert sync.reconcile(NOW) == (4, 4)
    assert table.peak == 4 and sync.skipped == 2
    assert all(maps.Key(mac(n)).packed() not in table.rows for n in range(100, 104))


def test_a_refused_batch_is_written_one_by_one() -> None:
    server = Server(make_config(), [], NOW)
    bind_many(server, 3)
    program = FakeProgram()
    calls = []

    def refuse_batch(keys: Any, values: Any) -> None:
        calls.append(len(keys))
        raise Exception("BPF_MAP_UPDATE_BATCH has failed: Cannot allocate memory")

    program.tables["leases"].items_update_batch = refuse_batch  # type: ignore[method-assign]
    sync = MapSync(program, server)
    assert sync.reconcile(NOW) == (3, 0)
    assert calls == [3] and len(program.tables["leases"].rows) == 3


# -- template slots -----------------------------------------------------------------------


def template_slots_in_use(program: FakeProgram) -> set[int]:
    templates = program.tables["templates"]
    return {int.from_bytes(k, "little") for k, (_, v) in templates.rows.items() if v.len}


@pytest.mark.timeout(10)
def test_a_start_after_a_crash_mid_reconcile_frees_unreferenced_template_slots() -> None:
    server = Server(make_config(), [], NOW)
    bind(server, 1)
    program = FakeProgram()
    for slot in range(maps.TEMPLATE_SLOTS):
        program.tables["templates"][ctypes.c_uint32(slot)] = maps.template(b"\x35\x01\x05")
    sync = MapSync(program, server)
    assert sync.reconcile(NOW) == (1, 0)
    got = entry(program, 1)
    assert template_slots_in_use(program) == {got.offer_template, got.ack_template}


@pytest.mark.timeout(10)
def test_no_free_template_slot_leaves_the_lease_on_the_slow_path() -> None:
    """Every slot is pointed at by an adopted entry: the lease gets none and reconcile
    ends; those entries are stale, so the next reconcile has room."""
    server = Server(make_config(), [], NOW)
    bind(server, 1)
    program = FakeProgram()
    shape = maps.Shape(0, 0, 0, 0, 0, 0)
    for n in range(maps.TEMPLATE_SLOTS // 2):
        program.tables["templates"][ctypes.c_uint32(2 * n)] = maps.template(b"\x35\x01\x02")
        program.tables["templates"][ctypes.c_uint32(2 * n + 1)] = maps.template(b"\x35\x01\x05")
        stale = maps.lease_entry(
            replace(shape, offer_template=2 * n, ack_template=2 * n + 1),
            client_id=b"\x01" + mac(1000 + n),
            hwaddr=mac(1000 + n),
            address=n,
            expires_ns=1,
        )
        program.tables["leases"][maps.Key(mac(1000 + n)).ctype()] = stale
    sync = MapSync(program, server)
    assert sync.reconcile(NOW) == (0, maps.TEMPLATE_SLOTS // 2)
    assert sync.skipped == 1 and template_slots_in_use(program) == set()
    assert sync.reconcile(NOW) == (1, 0)


# -- leases the pool no longer hands out (review finding 7) -------------------------------


@pytest.mark.parametrize(
    "changed",
    [
        lambda pool, address: replace(pool, exclude=frozenset({address})),
        lambda pool, _: replace(
            pool,
            subnet=IPv4Network("198.19.0.0/16"),
            ranges=(AddressRange(0xC6130100, 0xC6130109),),
        ),
    ],
    ids=["excluded", "renumbered"],
)
def test_a_reload_that_takes_the_address_away_withdraws_its_entry(
    changed: Callable[[Pool, int], Pool],
) -> None:
    config = make_config()
    server = Server(config, [], NOW)
    program = FakeProgram()
    sync = MapSync(program, server)
    decision = bind(server, 1)
    sync.apply([decision], NOW)
    lease = decision.lease_writes[0]
    new = replace(config, pools=(changed(config.pools[0], lease.address),))
    sync.server = server.reconfigured(new, NOW)
    sync.reconcile(NOW)
    assert program.tables["leases"].rows == {} and sync.entries == 0
    # Nor does a later write of the lease bring it back.
    sync.apply([Decision(lease_writes=[lease])], NOW)
    assert program.tables["leases"].rows == {}


# -- the plan alone: no map at all ----------------------------------------------------------


def test_the_plan_caps_entries_at_the_room_and_names_its_templates() -> None:
    server = Server(make_config(), [], NOW)
    bind_many(server, 5)
    bind(server, 6, prl=None)
    planner = Planner()
    plan = planner.plan(server, NOW, 4, lambda: None)
    assert len(plan) == len(plan.owner) == 4 and plan.left_out == 2 and planner.skipped == 0
    # One OFFER and one ACK template per request list seen, each with its own slot.
    assert len(planner.writes) == len(set(planner.writes)) == 4
    ack = server.template("residential", MessageType.ACK, PRL).wire
    assert ack in planner.writes.values()
    for i in range(len(plan)):
        key, address, value = plan.element(i)
        assert plan.owner[key] == address
        lease = server.lease_at(address)
        assert lease is not None and key == key_bytes(lease.hwaddr)
        got = maps.LeaseEntry.from_buffer_copy(value)
        assert got.expires_ns == clock.to_boot_ns(lease.expires)
        assert {got.offer_template, got.ack_template} <= set(planner.writes)


def test_the_plan_gives_up_when_no_template_slot_is_free() -> None:
    server = Server(make_config(), [], NOW)
    bind(server, 1)
    planner = Planner(busy=range(maps.TEMPLATE_SLOTS))
    plan = planner.plan(server, NOW, 10, lambda: None)
    assert (plan.owner, len(plan), plan.left_out) == ({}, 0, 0)
    assert planner.skipped == 1 and planner.writes == {}


def test_an_address_rebound_in_the_decision_that_expired_it_keeps_its_entry() -> None:
    """Review finding 17: the engine expires a lease at the start of the request that binds
    its address again; the expiry must not withdraw the entry the bind just wrote."""
    server = Server(make_config(), [], NOW)
    program = FakeProgram()
    sync = MapSync(program, server)
    sync.apply([bind(server, 1)], NOW)
    address = server.leases()[0].address
    later = NOW + 7200  # past the one-hour lease: expired at the start of the next request
    renew = request(MessageType.REQUEST, 1, ciaddr=address, extra={55: PRL})
    rebound = server.handle(renew, INGRESS, later)
    assert [e.kind for e in rebound.events] == [LeaseEventKind.EXPIRE, LeaseEventKind.ACK]
    sync.apply([rebound], later)
    assert entry(program, 1).expires_ns and sync.entries == 1


def test_the_plan_packs_one_entry_per_key_and_the_later_lease_answers() -> None:
    """Two leases of one MAC (two client ids): the plan's buffers hold one entry for the
    key, the later lease's, so the batch never holds a key twice (nor more keys than the
    map's room)."""
    pool = make_config().pools[0]
    first, second = pool.ranges[0].first, pool.ranges[0].first + 1
    leases = [
        Lease(a, cid, mac(7), pool.name, LeaseState.BOUND, NOW + HOUR, NOW + n, PRL)
        for n, (a, cid) in enumerate(((first, b"\x00one"), (second, b"\x00two")))
    ]
    server = Server(make_config(), leases, NOW)
    plan = Planner().plan(server, NOW, 10, lambda: None)
    assert len(plan) == 1 and plan.owner == {key_bytes(mac(7)): second}
    key, address, value = plan.element(0)
    assert (key, address) == (key_bytes(mac(7)), second)
    assert maps.LeaseEntry.from_buffer_copy(value).address == maps.net32(second)
    program = FakeProgram(max_subscribers=1)
    sync = MapSync(program, server)
    assert sync.reconcile(NOW) == (1, 0)
    assert entry(program, 7).address == maps.net32(second)
