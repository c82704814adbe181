"""LeaseStore: persistence semantics, locking, and how it fails."""

import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.replication.hlc import Hlc
from brushtaild.replication.state import Binding, Ownership
from brushtaild.store.lease_store import (
    DB_NAME,
    SCHEMA_VERSION,
    WAL_NAME,
    WAL_PREALLOCATED,
    LeaseStore,
    ReplicaChanges,
    StoreError,
    StoreLockedError,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def drop_replica_tables(conn: sqlite3.Connection) -> None:
    """Undo schema 6, to fake a store written before it."""
    for table in ("replica_binding", "replica_owner", "replica_meta"):
        conn.execute(f"DROP TABLE {table}")


def lease(address: int, **changes: object) -> Lease:
    hwaddr = b"\x52\x54\x00" + (address & 0xFFFFFF).to_bytes(3, "big")
    fields: dict[str, object] = {
        "address": address,
        "client_id": b"\x01" + hwaddr,
        "hwaddr": hwaddr,
        "pool": "residential",
        "state": LeaseState.BOUND,
        "expires": 1_760_000_000.25 + address,
        "updated": 1_759_990_000.125 + address,
    }
    fields.update(changes)
    return Lease(**fields)  # type: ignore[arg-type]


def test_round_trip_of_every_field(tmp_path: Path) -> None:
    written = [
        lease(0, client_id=b"", state=LeaseState.DECLINED),  # declined: no client
        lease(0x0A000001, client_id=bytes(range(255)), hwaddr=bytes(16)),
        lease(0xC0A80001, pool="büro-🐨", state=LeaseState.RELEASED, expires=-1.5),
        lease(0xFFFFFFFF, state=LeaseState.EXPIRED, expires=1e300, updated=5e-324),
        lease(0x0A000002, prl=bytes([1, 3, 6, 15, 119])),
        lease(0x0A000003, prl=b""),  # an empty list is not the same as none
        lease(0x0A000004, relay_info=bytes.fromhex("01036574680b04c6120001")),
    ]
    with LeaseStore.open(tmp_path) as store:
        store.apply(written, [])
        loaded = store.load()
    assert loaded == sorted(written, key=lambda lease: lease.address)
    assert all(type(got.state) is LeaseState for got in loaded)
    assert all(type(got.client_id) is bytes and type(got.hwaddr) is bytes for got in loaded)


def test_any_lease_round_trips_exactly(tmp_path: Path) -> None:
    leases = st.builds(
        Lease,
        address=st.integers(0, 2**32 - 1),
        client_id=st.binary(max_size=255),
        hwaddr=st.binary(max_size=16),
        pool=st.text(max_size=64),
        state=st.sampled_from(LeaseState),
        # NaN cannot be stored: SQLite turns it into NULL, which the schema refuses.
        expires=st.floats(allow_nan=False),
        updated=st.floats(allow_nan=False),
        prl=st.none() | st.binary(max_size=255),
        relay_info=st.binary(max_size=255),
    )
    with LeaseStore.open(tmp_path) as store:

        @settings(max_examples=100, deadline=None)
        @given(leases)
        def check(written: Lease) -> None:
            store.apply([written], [])
            assert store.load() == [written]
            store.apply([], [written.address])

        check()


def test_upsert_replaces_the_row_for_an_address(tmp_path: Path) -> None:
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1), lease(2)], [])
        renewed = lease(1, client_id=b"\x01other", state=LeaseState.RELEASED, expires=99.5)
        store.apply([renewed], [])
        assert store.load() == [renewed, lease(2)]


def test_within_a_batch_the_last_write_wins_and_deletes_come_last(tmp_path: Path) -> None:
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1, pool="a"), lease(1, pool="b"), lease(2)], [2])
        assert store.load() == [lease(1, pool="b")]


def test_delete(tmp_path: Path) -> None:
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1), lease(2), lease(3)], [])
        store.apply([], [2, 12345])  # deleting an absent address is not an error
        assert store.load() == [lease(1), lease(3)]


def test_reload_after_close(tmp_path: Path) -> None:
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(3), lease(1)], [])
        store.apply([lease(2)], [3])
    with LeaseStore.open(tmp_path) as store:
        assert store.load() == [lease(1), lease(2)]


def test_empty_apply_is_a_no_op(tmp_path: Path) -> None:
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1)], [])
        store.apply([], [])
        assert store.load() == [lease(1)]


def test_100k_leases_in_one_apply_and_reload(tmp_path: Path) -> None:
    written = [lease(0x0A000000 + i) for i in range(100_000)]
    with LeaseStore.open(tmp_path) as store:
        store.apply(written, [])
    with LeaseStore.open(tmp_path) as store:
        assert store.load() == written


def test_lock_held_by_another_process_names_dir_and_pid(tmp_path: Path) -> None:
    holder_code = (
        "import sys; from pathlib import Path; from brushtaild.store.lease_store import LeaseStore;"
        "store = LeaseStore.open(Path(sys.argv[1])); print('ready', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(tmp_path)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        with pytest.raises(StoreLockedError) as raised:
            LeaseStore.open(tmp_path)
        assert raised.value.pid == holder.pid
        assert str(tmp_path) in str(raised.value)
        assert f"pid {holder.pid}" in str(raised.value)
    finally:
        holder.communicate(timeout=30)  # EOF on stdin: the holder exits
    with LeaseStore.open(tmp_path):
        pass


def test_lock_refuses_a_second_open_in_the_same_process(tmp_path: Path) -> None:
    # flock belongs to the open file, not the process, so this catches a daemon that
    # accidentally opens its store twice.
    with LeaseStore.open(tmp_path), pytest.raises(StoreLockedError):
        LeaseStore.open(tmp_path)


def test_creates_missing_dirs_private_and_records_schema_version(tmp_path: Path) -> None:
    state_dir = tmp_path / "var" / "brushtail"
    with LeaseStore.open(state_dir) as store:
        store.apply([lease(1)], [])
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o750
        for name in (DB_NAME, DB_NAME + "-wal", "lock"):
            assert stat.S_IMODE((state_dir / name).stat().st_mode) == 0o640, name
    with sqlite3.connect(state_dir / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_durability_settings_are_in_effect(tmp_path: Path) -> None:
    # A SIGKILL test passes even with synchronous=OFF (the page cache survives the process),
    # so check directly that power-loss durability is configured.
    with LeaseStore.open(tmp_path) as store:
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    with LeaseStore.open(tmp_path):
        pass
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        LeaseStore.open(tmp_path)
    with pytest.raises(StoreError, match="newer"):  # the failed open released the lock
        LeaseStore.open(tmp_path)


def test_refuses_some_other_sqlite_database(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("CREATE TABLE something (x)")
    with pytest.raises(StoreError, match="not a brushtail lease store"):
        LeaseStore.open(tmp_path)


def test_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"lease 10.0.0.1 { starts 4 2025/01/01 00:00:00; }\n" * 100)
    with pytest.raises(StoreError, match=DB_NAME):
        LeaseStore.open(tmp_path)


def test_disk_full_raises_store_error_and_keeps_committed_leases(tmp_path: Path) -> None:
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1)], [])
        conn = store._conn
        assert conn is not None
        # Capping the page count makes SQLite fail with SQLITE_FULL exactly as on a full disk.
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreError, match="SQLITE_FULL") as raised:
            store.apply([lease(0x0A000000 + i) for i in range(10_000)], [])
        assert "must not be acknowledged" in str(raised.value)
        # After a failed commit nothing more is accepted, even a batch that would fit.
        with pytest.raises(StoreError, match="unusable after an earlier failure"):
            store.apply([lease(2)], [])
    with LeaseStore.open(tmp_path) as store:
        assert store.load() == [lease(1)]


def test_rejects_an_address_outside_ipv4(tmp_path: Path) -> None:
    with LeaseStore.open(tmp_path) as store, pytest.raises(StoreError, match="CHECK"):
        store.apply([lease(2**32)], [])


def test_use_after_close_raises_store_error(tmp_path: Path) -> None:
    store = LeaseStore.open(tmp_path)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.apply([lease(1)], [])
    with pytest.raises(StoreError, match="closed"):
        store.load()


def test_unknown_state_on_disk_is_a_store_error(tmp_path: Path) -> None:
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1)], [])
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("UPDATE lease SET state = 99")
    with LeaseStore.open(tmp_path) as store, pytest.raises(StoreError, match="unknown lease state"):
        store.load()


def test_a_version_1_store_gains_the_prl_column_and_keeps_its_rows(tmp_path: Path) -> None:
    """Stores written before the fast path (schema 1, no prl column) load unchanged."""
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1)], [])
    path = tmp_path / "leases.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE lease DROP COLUMN outer_vlan")
        conn.execute("ALTER TABLE lease DROP COLUMN inner_vlan")
        conn.execute("ALTER TABLE lease DROP COLUMN prl")
        conn.execute("ALTER TABLE lease DROP COLUMN relay_info")
        conn.execute("ALTER TABLE lease DROP COLUMN relay")
        drop_replica_tables(conn)
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    with LeaseStore.open(tmp_path) as store:
        assert store.load() == [lease(1)]
        store.apply([lease(1, prl=b"\x01\x03")], [])
        assert store.load()[0].prl == b"\x01\x03"


def test_a_version_2_store_gains_the_vlan_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    """Stores written before VLANs were served (schema 2) load as untagged leases; leases
    on one VLAN or two (QinQ) are kept with them."""
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1, prl=b"\x01")], [])
    path = tmp_path / "leases.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE lease DROP COLUMN outer_vlan")
        conn.execute("ALTER TABLE lease DROP COLUMN inner_vlan")
        conn.execute("ALTER TABLE lease DROP COLUMN relay_info")
        conn.execute("ALTER TABLE lease DROP COLUMN relay")
        drop_replica_tables(conn)
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    with LeaseStore.open(tmp_path) as store:
        assert store.load() == [lease(1, prl=b"\x01")]
        store.apply([lease(1, vlans=(100,)), lease(2, vlans=(100, 4094))], [])
        assert [row.vlans for row in store.load()] == [(100,), (100, 4094)]


def test_a_version_3_store_gains_the_relay_info_column_and_keeps_its_rows(tmp_path: Path) -> None:
    """Stores written before option 82 was stashed (schema 3) load as leases without it;
    a stashed option 82 is kept byte for byte."""
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1, vlans=(100,))], [])
    path = tmp_path / "leases.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE lease DROP COLUMN relay_info")
        conn.execute("ALTER TABLE lease DROP COLUMN relay")
        drop_replica_tables(conn)
        conn.execute("PRAGMA user_version = 3")
    conn.close()
    with LeaseStore.open(tmp_path) as store:
        assert store.load() == [lease(1, vlans=(100,))]
        stashed = bytes.fromhex("01060004006401050201ff")
        store.apply([lease(1, relay_info=stashed), lease(2, relay_info=bytes(255))], [])
        assert [row.relay_info for row in store.load()] == [stashed, bytes(255)]


def test_a_version_4_store_gains_the_relay_column_and_keeps_its_rows(tmp_path: Path) -> None:
    """Stores written before the relay's giaddr was kept (schema 4) load as leases
    without it, their stashed option 82 intact (such a lease still counts as relayed)."""
    stashed = bytes.fromhex("01060004006401050201ff")
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1, relay_info=stashed)], [])
    path = tmp_path / "leases.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE lease DROP COLUMN relay")
        drop_replica_tables(conn)
        conn.execute("PRAGMA user_version = 4")
    conn.close()
    with LeaseStore.open(tmp_path) as store:
        (old,) = store.load()
        assert old == lease(1, relay_info=stashed) and old.relay == 0 and old.relayed
        store.apply([lease(2, relay_info=stashed, relay=0xC6120002)], [])
        assert [row.relay for row in store.load()] == [0, 0xC6120002]


def binding(address: int, **changes: object) -> Binding:
    fields: dict[str, object] = {
        "address": address,
        "tenure": Hlc(1_760_000_000_000, 3, "edge-a"),
        "client_id": b"\x01" + address.to_bytes(6, "big"),
        "stamp": Hlc(1_760_000_000_500, 0, "edge-b"),
        "hwaddr": address.to_bytes(6, "big"),
        "pool": "residential",
        "state": LeaseState.BOUND,
        "expires_ms": 1_760_000_003_600_000,
        "owner_expires_ms": 1_760_000_003_000_000,
    }
    fields.update(changes)
    return Binding(**fields)  # type: ignore[arg-type]


REGISTER = Ownership(2, "edge-c", "edge-a", 12_345_678, 0)
EVICTED = Ownership(1, "edge-b", "édge-ø", 0, 1_760_000_100_000)


def test_the_replicas_state_round_trips_with_every_field(tmp_path: Path) -> None:
    bindings = [
        binding(1),
        binding(2, vlans=(100, 7), relay_info=bytes(range(40)), prl=b"", state=LeaseState.REVOKED),
        binding(0xFFFFFFFF, client_id=b"\x01q", prl=bytes([1, 3, 6]), vlans=(4094,)),
        binding(3, state=LeaseState.DECLINED, owner_expires_ms=0, pool="büro-🐨"),
    ]
    clock = Hlc(1_760_000_001_000, 7, "edge-a")
    with LeaseStore.open(tmp_path) as store:
        assert store.load_replica() is None  # nothing replicated yet
        changes = ReplicaChanges(bindings, [(0xC6120000, REGISTER)], clock, 1_760_000_200_000)
        store.apply([lease(1)], [], changes)
        # A later batch replaces what it changes and keeps the rest.
        moved = binding(1, state=LeaseState.RELEASED, stamp=Hlc(1_760_000_002_000, 0, "edge-a"))
        store.apply([], [], ReplicaChanges([moved], [(0xC6120100, EVICTED)], clock, 0))
    with LeaseStore.open(tmp_path) as store:
        snapshot = store.load_replica()
        assert store.load() == [lease(1)]
    assert snapshot is not None
    assert snapshot.state.bindings == {b.address: b for b in [moved, *bindings[1:]]}
    assert snapshot.state.owners == {0xC6120000: REGISTER, 0xC6120100: EVICTED}
    assert snapshot.clock == clock and snapshot.blind_until_ms == 0
    assert all(type(b.state) is LeaseState for b in snapshot.state.bindings.values())


def test_a_batch_with_the_replicas_changes_is_all_or_nothing(tmp_path: Path) -> None:
    """A batch whose replica part cannot be written leaves neither its leases nor its
    bindings behind (one transaction)."""
    clock = Hlc(1_760_000_001_000, 0, "edge-a")
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1)], [], ReplicaChanges([binding(1)], [], clock, 0))
        bad = ReplicaChanges([binding(2), binding(2**32)], [], clock, 0)  # out of IPv4
        with pytest.raises(StoreError, match="CHECK"):
            store.apply([lease(2)], [1], bad)
    with LeaseStore.open(tmp_path) as store:
        assert store.load() == [lease(1)]
        snapshot = store.load_replica()
    assert snapshot is not None and list(snapshot.state.bindings) == [1]


def test_a_version_5_store_gains_the_replica_tables_and_keeps_its_rows(tmp_path: Path) -> None:
    """Stores of a single site (schema 5) load unchanged, with no replica state."""
    with LeaseStore.open(tmp_path) as store:
        store.apply([lease(1, relay=0xC6120002)], [])
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        drop_replica_tables(conn)
        conn.execute("PRAGMA user_version = 5")
    conn.close()
    with LeaseStore.open(tmp_path) as store:
        assert store.load() == [lease(1, relay=0xC6120002)]
        assert store.load_replica() is None
        clock = Hlc(5, 0, "edge-a")
        store.apply([], [], ReplicaChanges([binding(1)], [], clock, 0))
        snapshot = store.load_replica()
    assert snapshot is not None and snapshot.state.bindings == {1: binding(1)}
    assert snapshot.clock == clock


def test_an_unknown_binding_state_on_disk_is_a_store_error(tmp_path: Path) -> None:
    with LeaseStore.open(tmp_path) as store:
        store.apply([], [], ReplicaChanges([binding(1)], [], Hlc(5, 0, "a"), 0))
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("UPDATE replica_binding SET state = 99")
    conn.close()
    with LeaseStore.open(tmp_path) as store, pytest.raises(StoreError, match="binding state"):
        store.load_replica()


def test_commits_overwrite_the_preallocated_wal_and_survive_a_crash(tmp_path: Path) -> None:
    """The WAL is written out to a checkpoint interval's size at open, so commits do not
    grow it; what they wrote is read back from a WAL padded with zeros, as after a crash."""
    state, crashed = tmp_path / "state", tmp_path / "crashed"
    with LeaseStore.open(state) as store:
        assert (state / WAL_NAME).stat().st_size == WAL_PREALLOCATED
        for address in range(1, 4):
            store.apply([lease(address)], [])
        assert (state / WAL_NAME).stat().st_size == WAL_PREALLOCATED
        # The files as a SIGKILL would leave them: the leases only in the WAL.
        crashed.mkdir()
        for name in (DB_NAME, WAL_NAME):
            shutil.copy(state / name, crashed / name)
    with LeaseStore.open(crashed) as store:
        assert store.load() == [lease(address) for address in range(1, 4)]
