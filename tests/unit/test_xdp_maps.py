"""The fast path's userspace side without a kernel: layouts, hashing, and map sync against
dict-backed tables. tests/bpf runs the same code against the real program."""

import ctypes
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.engine.decisions import Decision
from brushtaild.engine.server import Server
from brushtaild.xdp import maps
from brushtaild.xdp.sync import MapSync, key_bytes
from tests.engine_helpers import INGRESS, SERVER, mac, make_config, request

NOW = 1_800_000_000.0
PRL = bytes([1, 3, 6, 15])


class FakeTable:
    """A BCC table as MapSync uses it: ctypes keys and values, iteration, batch update.
    With `zero`, it reads like an array: a missing slot holds a zero value."""

    def __init__(self, zero: type | None = None) -> None:
        self.rows: dict[bytes, tuple[Any, Any]] = {}
        self.zero = zero

    def __setitem__(self, key: Any, value: Any) -> None:
        self.rows[bytes(key)] = (key, value)

    def __getitem__(self, key: Any) -> Any:
        if self.zero is not None and bytes(key) not in self.rows:
            return self.zero()
        return self.rows[bytes(key)][1]

    def __delitem__(self, key: Any) -> None:
        del self.rows[bytes(key)]

    def __iter__(self) -> Any:
        return iter([key for key, _ in self.rows.values()])

    def items_update_batch(self, keys: Any, values: Any) -> None:
        for key, value in zip(keys, values, strict=True):
            self[type(key).from_buffer_copy(key)] = type(value).from_buffer_copy(value)

    def items_lookup_batch(self) -> Any:
        return list(self.rows.values())


class FakeProgram:
    def __init__(self) -> None:
        self.tables = {
            "leases": FakeTable(),
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
    assert maps.host32(entry.address) == 0xC6120105
    assert bytes(entry.client_id)[:7] == b"\x01" + mac(1) and entry.id_len == 7
    assert maps.Key.from_ctype(maps.Key(mac(1), 10, 20).ctype()) == maps.Key(mac(1), 10, 20)


def test_layout_sizes() -> None:
    # Checked against the C by tests/bpf/test_layout.py; here against accidental edits.
    assert ctypes.sizeof(maps.ClientKey) == 12
    assert ctypes.sizeof(maps.LeaseEntry) == 72
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
    assert sync.client_of(key_bytes(mac(1)), lease.address) == lease.client_id
    assert sync.client_of(key_bytes(mac(2)), lease.address) is None


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
