"""Durable lease store: one SQLite row per address, group-committed with one fsync per batch.

A lease may be acknowledged to a client only after `LeaseStore.apply` has returned for it:
apply() commits in WAL mode with synchronous=FULL, so SQLite has fdatasync()ed the WAL
before COMMIT returns, and neither SIGKILL nor power loss can take the change back.
"""

import errno
import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.replication.hlc import ZERO, Hlc
from brushtaild.replication.replica import Snapshot
from brushtaild.replication.state import Binding, Ownership, State

DB_NAME = "leases.sqlite3"
WAL_NAME = DB_NAME + "-wal"
LOCK_NAME = "lock"
# WAL frames of a checkpoint interval (PRAGMA wal_autocheckpoint below) and the WAL header:
# the size the WAL reaches in steady state, written out at open (_preallocate_wal).
_PAGE_SIZE = 4096
_WAL_FRAME = 24 + _PAGE_SIZE
_CHECKPOINT_PAGES = 1000
WAL_PREALLOCATED = 32 + _CHECKPOINT_PAGES * _WAL_FRAME

# 'BTLS' in PRAGMA application_id marks the file as ours, so a state dir pointed at some
# other SQLite database is refused instead of being migrated into a lease store.
APPLICATION_ID = 0x42544C53

# One entry per schema version: _MIGRATIONS[n] takes a database from user_version n to n + 1.
# Append to this tuple to migrate; never edit an entry that has shipped.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # STRICT makes SQLite reject a value of the wrong type instead of silently storing
        # it with another type that load() would then misread.
        # address is the rowid alias, so an upsert is one B-tree lookup with no extra index;
        # deliberately no secondary indexes: the engine indexes leases in memory, and every
        # index would add page writes to each small upsert.
        """
        CREATE TABLE lease (
            address   INTEGER PRIMARY KEY CHECK (address BETWEEN 0 AND 4294967295),
            client_id BLOB    NOT NULL,
            hwaddr    BLOB    NOT NULL,
            pool      TEXT    NOT NULL,
            state     INTEGER NOT NULL,
            expires   REAL    NOT NULL,
            updated   REAL    NOT NULL
        ) STRICT
        """,
        f"PRAGMA application_id = {APPLICATION_ID}",
    ),
    # The client's parameter request list (option 55) as last seen, or NULL when it sent
    # none: the XDP fast path answers with options rendered for exactly that list.
    ("ALTER TABLE lease ADD COLUMN prl BLOB",),
    # The VLAN ids the client's requests came on (0: none), so its kernel entry is keyed
    # with them; leases made before VLANs were served have none.
    (
        "ALTER TABLE lease ADD COLUMN outer_vlan INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE lease ADD COLUMN inner_vlan INTEGER NOT NULL DEFAULT 0",
    ),
    # Option 82 as the relay sent it when the lease was bound (empty: not relayed), kept
    # across renewals that come without it; leases made before it was kept have none.
    ("ALTER TABLE lease ADD COLUMN relay_info BLOB NOT NULL DEFAULT x''",),
    # The giaddr of that relay (0: not relayed), which classes may match on at renewals
    # too; leases made before it was kept have none.
    ("ALTER TABLE lease ADD COLUMN relay INTEGER NOT NULL DEFAULT 0",),
    # The replica's state (brushtaild/replication), committed with the leases it explains:
    # one row per binding and per moved block, and one of the clock's last stamp and the
    # end of a recovering site's wait. Plain columns, not the wire codec's bytes, which
    # name sites and pools by their index in the layout: a reconfigured site list must not
    # make the stored state unreadable.
    (
        """
        CREATE TABLE replica_binding (
            address          INTEGER PRIMARY KEY CHECK (address BETWEEN 0 AND 4294967295),
            tenure_wall      INTEGER NOT NULL,
            tenure_logical   INTEGER NOT NULL,
            tenure_site      TEXT    NOT NULL,
            client_id        BLOB    NOT NULL,
            stamp_wall       INTEGER NOT NULL,
            stamp_logical    INTEGER NOT NULL,
            stamp_site       TEXT    NOT NULL,
            hwaddr           BLOB    NOT NULL,
            pool             TEXT    NOT NULL,
            state            INTEGER NOT NULL,
            expires_ms       INTEGER NOT NULL,
            owner_expires_ms INTEGER NOT NULL,
            outer_vlan       INTEGER NOT NULL,
            inner_vlan       INTEGER NOT NULL,
            relay_info       BLOB    NOT NULL,
            prl              BLOB
        ) STRICT
        """,
        """
        CREATE TABLE replica_owner (
            block       INTEGER PRIMARY KEY CHECK (block BETWEEN 0 AND 4294967295),
            epoch       INTEGER NOT NULL,
            owner       TEXT    NOT NULL,
            previous    TEXT    NOT NULL,
            summary     INTEGER NOT NULL,
            ready_at_ms INTEGER NOT NULL
        ) STRICT
        """,
        """
        CREATE TABLE replica_meta (
            id             INTEGER PRIMARY KEY CHECK (id = 1),
            clock_wall     INTEGER NOT NULL,
            clock_logical  INTEGER NOT NULL,
            clock_site     TEXT    NOT NULL,
            blind_until_ms INTEGER NOT NULL
        ) STRICT
        """,
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_UPSERT = """
    INSERT INTO lease (address, client_id, hwaddr, pool, state, expires, updated, prl,
                       outer_vlan, inner_vlan, relay_info, relay)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (address) DO UPDATE SET
        client_id = excluded.client_id,
        hwaddr = excluded.hwaddr,
        pool = excluded.pool,
        state = excluded.state,
        expires = excluded.expires,
        prl = excluded.prl,
        outer_vlan = excluded.outer_vlan,
        inner_vlan = excluded.inner_vlan,
        relay_info = excluded.relay_info,
        relay = excluded.relay,
        updated = excluded.updated
"""
_DELETE = "DELETE FROM lease WHERE address = ?"
_SELECT_ALL = (
    "SELECT address, client_id, hwaddr, pool, state, expires, updated, prl, outer_vlan,"
    " inner_vlan, relay_info, relay FROM lease ORDER BY address"
)

_UPSERT_BINDING = """
    INSERT OR REPLACE INTO replica_binding (address, tenure_wall, tenure_logical, tenure_site,
        client_id, stamp_wall, stamp_logical, stamp_site, hwaddr, pool, state, expires_ms,
        owner_expires_ms, outer_vlan, inner_vlan, relay_info, prl)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_SELECT_BINDINGS = (
    "SELECT address, tenure_wall, tenure_logical, tenure_site, client_id, stamp_wall,"
    " stamp_logical, stamp_site, hwaddr, pool, state, expires_ms, owner_expires_ms,"
    " outer_vlan, inner_vlan, relay_info, prl FROM replica_binding"
)
_UPSERT_OWNER = (
    "INSERT OR REPLACE INTO replica_owner (block, epoch, owner, previous, summary, ready_at_ms)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_SELECT_OWNERS = "SELECT block, epoch, owner, previous, summary, ready_at_ms FROM replica_owner"
_UPSERT_META = (
    "INSERT OR REPLACE INTO replica_meta (id, clock_wall, clock_logical, clock_site,"
    " blind_until_ms) VALUES (1, ?, ?, ?, ?)"
)
_SELECT_META = "SELECT clock_wall, clock_logical, clock_site, blind_until_ms FROM replica_meta"


@dataclass(slots=True)
class ReplicaChanges:
    """What changed in the replica's state since the last batch, to commit with it: the
    bindings and ownership registers as they are now (each replaces its stored row), the
    clock's last stamp and the end of a recovering site's wait (`Replica.snapshot()`
    carries both)."""

    bindings: Sequence[Binding] = ()
    owners: Sequence[tuple[int, Ownership]] = ()
    clock: Hlc = ZERO
    blind_until_ms: int = 0


# A dict lookup is several times cheaper than LeaseState(n), which matters at 1M rows.
_STATES = {int(state): state for state in LeaseState}


class StoreError(Exception):
    """The store cannot guarantee durability; the daemon must stop rather than ACK."""


class StoreLockedError(StoreError):
    """Another process holds the state directory."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process whose pid is not recorded yet"
        super().__init__(
            f"state dir {state_dir} is locked by {holder}: "
            "two brushtaild instances must never share one lease store"
        )
        self.state_dir = state_dir
        self.pid = pid


class LeaseStore:
    """The lease table in ``<state_dir>/leases.sqlite3``, exclusively owned by this process.

    Not thread-safe: use it from one thread at a time (the daemon's writer thread, say); the
    connection is opened with check_same_thread=False only so that thread need not be the
    one that opened it. After any failed apply() the store refuses further writes: once an
    fsync has failed the kernel may have dropped the dirty pages, so only a reopen, which
    re-reads and checks the file, tells what is really on disk.
    """

    def __init__(self, state_dir: Path, lock_fd: int, conn: sqlite3.Connection) -> None:
        # Use LeaseStore.open(): the lock must be held before the database is touched.
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self._lock_fd: int | None = lock_fd
        self._conn: sqlite3.Connection | None = conn
        self._failure: StoreError | None = None

    @classmethod
    def open(cls, state_dir: Path) -> Self:
        """Lock `state_dir` (created 0750 if missing), open or create the database, migrate
        it to SCHEMA_VERSION and check its integrity."""
        try:
            _make_dir(state_dir)
            lock_fd = _lock(state_dir)
        except OSError as e:
            raise StoreError(f"cannot take state dir {state_dir}: {e}") from e
        try:
            conn = _connect(state_dir)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            _preallocate_wal(state_dir / WAL_NAME)
        except OSError as e:
            conn.close()
            os.close(lock_fd)
            raise StoreError(f"cannot prepare lease store {state_dir / WAL_NAME}: {e}") from e
        return cls(state_dir, lock_fd, conn)

    def load(self) -> list[Lease]:
        """Every stored lease, in address order."""
        conn = self._connection()
        leases = _select_all(conn, self.path)
        # The load read the whole table into the page cache (64 MiB at 1M leases): give it
        # back, while the daemon is at its largest; commits read back the pages they touch.
        conn.execute("PRAGMA shrink_memory")
        return leases

    def load_replica(self) -> Snapshot | None:
        """The replica's state as last committed, None if none was ever (a first start,
        or a store that served a single site)."""
        conn = self._connection()
        try:
            meta = conn.execute(_SELECT_META).fetchone()
            if meta is None:
                return None
            bindings = {row[0]: _binding(row) for row in conn.execute(_SELECT_BINDINGS)}
            owners = {
                block: Ownership(epoch, owner, previous, summary, ready_at)
                for block, epoch, owner, previous, summary, ready_at in conn.execute(_SELECT_OWNERS)
            }
        except sqlite3.Error as e:
            raise StoreError(f"lease store {self.path}: load failed: {_describe(e)}") from e
        except KeyError as e:
            raise StoreError(
                f"lease store {self.path}: unknown binding state {e.args[0]!r}; written by a "
                "newer brushtaild?"
            ) from e
        wall, logical, site, blind_until_ms = meta
        return Snapshot(State(bindings, owners), Hlc(wall, logical, site), blind_until_ms)

    def apply(
        self,
        writes: Sequence[Lease],
        deletes: Sequence[int],
        replica: ReplicaChanges | None = None,
    ) -> None:
        """Upsert `writes` and delete the addresses in `deletes` in one transaction, and
        return only once it is durable: the group commit, one fsync for the whole batch.
        `replica`: the replica's changes, committed in the same transaction, so the state
        that explains a lease never lags the lease after a crash.

        Writes go in order, so the last write of an address wins; deletes run after the
        writes, so an address in both ends up deleted. Deleting an absent address is a
        no-op. Raises StoreError if the batch may not be durable; nothing in it may be
        acknowledged then.
        """
        if not writes and not deletes and replica is None:
            return
        conn = self._connection()
        if self._failure is not None:
            raise StoreError(
                f"lease store {self.path} is unusable after an earlier failure; reopen it"
            ) from self._failure
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_UPSERT, _rows(writes))
                conn.executemany(_DELETE, ((address,) for address in deletes))
                if replica is not None:
                    _apply_replica(conn, replica)
                conn.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself after some errors (SQLITE_FULL, I/O errors),
                # so only roll back what is still open.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            self._failure = StoreError(
                f"lease store {self.path}: commit of {len(writes)} writes and "
                f"{len(deletes)} deletes failed: {_describe(e)}; "
                "the batch must not be acknowledged"
            )
            raise self._failure from e

    def close(self) -> None:
        """Close the database, then release the lock. Idempotent."""
        conn, self._conn = self._conn, None
        lock_fd, self._lock_fd = self._lock_fd, None
        try:
            if conn is not None:
                # Closing the last connection checkpoints the WAL into the database file.
                conn.close()
        except sqlite3.Error as e:
            raise StoreError(f"lease store {self.path}: close failed: {_describe(e)}") from e
        finally:
            if lock_fd is not None:
                os.close(lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"lease store {self.path} is closed")
        return self._conn


def read_snapshot(state_dir: Path) -> list[Lease]:
    """Every stored lease, read without taking the lock: for operators' tools, while the
    daemon runs. WAL lets this reader see the last committed state without blocking it."""
    path = state_dir / DB_NAME
    if not path.exists():
        raise StoreError(f"no lease store at {path}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open lease store {path}: {_describe(e)}") from e
    try:
        return _select_all(conn, path)
    finally:
        conn.close()


def _select_all(conn: sqlite3.Connection, path: Path) -> list[Lease]:
    # Every row carries its own copy of its pool name; sharing one str per name saves
    # ~60 MB at 1M leases. Building straight from the cursor, not from fetchall(), avoids
    # holding 1M row tuples and 1M Leases at once.
    pools: dict[str, str] = {}
    prls: dict[bytes, bytes] = {}  # likewise: most clients of a network send the same list
    try:
        return [
            Lease(
                address,
                client_id,
                hwaddr,
                pools.setdefault(pool, pool),
                _STATES[state],
                expires,
                updated,
                prls.setdefault(prl, prl) if prl is not None else None,
                vlan_ids(outer, inner),
                relay_info,
                relay,
            )
            for (
                address,
                client_id,
                hwaddr,
                pool,
                state,
                expires,
                updated,
                prl,
                outer,
                inner,
                relay_info,
                relay,
            ) in conn.execute(_SELECT_ALL)
        ]
    except sqlite3.Error as e:
        raise StoreError(f"lease store {path}: load failed: {_describe(e)}") from e
    except KeyError as e:
        raise StoreError(
            f"lease store {path}: unknown lease state {e.args[0]!r}; written by a newer brushtaild?"
        ) from e


def vlan_ids(outer: int, inner: int) -> tuple[int, ...]:
    """A lease's VLAN ids from its two columns (0: none)."""
    return (outer, inner) if inner else (outer,) if outer else ()


def _rows(
    writes: Sequence[Lease],
) -> Iterator[tuple[int, bytes, bytes, str, int, float, float, bytes | None, int, int, bytes, int]]:
    for lease in writes:
        outer, inner = (*lease.vlans, 0, 0)[:2]
        yield (
            lease.address,
            lease.client_id,
            lease.hwaddr,
            lease.pool,
            int(lease.state),
            lease.expires,
            lease.updated,
            lease.prl,
            outer,
            inner,
            lease.relay_info,
            lease.relay,
        )


def _apply_replica(conn: sqlite3.Connection, changes: ReplicaChanges) -> None:
    conn.executemany(_UPSERT_BINDING, (_binding_row(b) for b in changes.bindings))
    conn.executemany(
        _UPSERT_OWNER,
        (
            (block, o.epoch, o.owner, o.previous, o.summary, o.ready_at_ms)
            for block, o in changes.owners
        ),
    )
    clock = changes.clock
    conn.execute(_UPSERT_META, (clock.wall, clock.logical, clock.site, changes.blind_until_ms))


def _binding_row(b: Binding) -> tuple[object, ...]:
    outer, inner = (*b.vlans, 0, 0)[:2]
    return (
        b.address,
        b.tenure.wall,
        b.tenure.logical,
        b.tenure.site,
        b.client_id,
        b.stamp.wall,
        b.stamp.logical,
        b.stamp.site,
        b.hwaddr,
        b.pool,
        int(b.state),
        b.expires_ms,
        b.owner_expires_ms,
        outer,
        inner,
        b.relay_info,
        b.prl,
    )


def _binding(row: tuple[Any, ...]) -> Binding:
    (address, t_wall, t_logical, t_site, client_id, s_wall, s_logical, s_site, hwaddr, pool) = row[
        :10
    ]
    state, expires_ms, owner_expires_ms, outer, inner, relay_info, prl = row[10:]
    return Binding(
        address=address,
        tenure=Hlc(t_wall, t_logical, t_site),
        client_id=client_id,
        stamp=Hlc(s_wall, s_logical, s_site),
        hwaddr=hwaddr,
        pool=pool,
        state=_STATES[state],
        expires_ms=expires_ms,
        owner_expires_ms=owner_expires_ms,
        vlans=vlan_ids(outer, inner),
        relay_info=relay_info,
        prl=prl,
    )


def _describe(e: sqlite3.Error) -> str:
    # The error name (SQLITE_FULL, SQLITE_IOERR_FSYNC, ...) tells an operator more than the
    # generic message, which is the same for every kind of I/O error.
    name = getattr(e, "sqlite_errorname", None)
    return f"{e} ({name})" if name else str(e)


def _make_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=0o750, parents=True)
    except FileExistsError:
        # An existing dir keeps the mode its operator gave it.
        return
    # mkdir's mode is filtered by the umask; leases hold subscriber MACs, so set it exactly.
    os.chmod(state_dir, 0o750)
    _fsync_dir(state_dir.parent)


def _fsync_dir(path: Path) -> None:
    # A new directory entry is durable only once its parent directory is fsynced.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(state_dir: Path) -> int:
    # flock, not a pid file: the kernel drops the lock when the holder dies however it dies
    # (SIGKILL, OOM), so a crash never leaves a stale lock behind. The pid written into the
    # file is only there for the error message.
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            raise
        holder = os.pread(fd, 32, 0)
        os.close(fd)
        try:
            pid: int | None = int(holder)
        except ValueError:
            # The holder has taken the lock but not yet written its pid.
            pid = None
        raise StoreLockedError(state_dir, pid) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _connect(state_dir: Path) -> sqlite3.Connection:
    path = state_dir / DB_NAME
    try:
        _create_db_file(path)
    except OSError as e:
        raise StoreError(f"cannot create lease store {path}: {e}") from e
    try:
        conn = sqlite3.connect(
            path,
            # None: the sqlite3 module opens no implicit transactions; apply() issues its
            # own BEGIN IMMEDIATE ... COMMIT so one batch is exactly one transaction.
            isolation_level=None,
            # The daemon may open the store on one thread and write from another; the class
            # documents one-thread-at-a-time use instead.
            check_same_thread=False,
            # Busy timeout: only ad-hoc tools (sqlite3 shell, backups) can contend with the
            # daemon; wait out their short locks rather than fail-stop, but not forever.
            timeout=5.0,
        )
    except sqlite3.Error as e:
        raise StoreError(f"cannot open lease store {path}: {_describe(e)}") from e
    try:
        _configure(conn, path)
        _migrate(conn, path)
        _check_integrity(conn, path)
    except sqlite3.Error as e:
        conn.close()
        raise StoreError(f"cannot open lease store {path}: {_describe(e)}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def _preallocate_wal(path: Path) -> None:
    """Zeros appended to the WAL up to WAL_PREALLOCATED bytes, and synced, so that every
    commit until the first checkpoint overwrites blocks the file already has, as commits
    after it do (the WAL is rewritten from its start): fdatasync then writes the frame
    alone, not also the file's new size (an ext4 journal commit). A fresh WAL (every start:
    a clean close deletes it) grew on every commit: a one-lease commit measured 0.56 ms
    against 0.45 ms in place. Safe whatever the WAL holds: SQLite reads frames only up to
    the first whose salt and checksum do not match its header, which zeros never do."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size >= WAL_PREALLOCATED:
            return
        os.pwrite(fd, bytes(WAL_PREALLOCATED - size), size)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _create_db_file(path: Path) -> None:
    # Created here rather than by SQLite so it gets 0640 whatever the umask; SQLite gives the
    # -wal and -shm files the same mode as the database file.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o640)
    finally:
        os.close(fd)
    # SQLite fsyncs the directory when it creates the WAL, but not for the database file.
    _fsync_dir(path.parent)


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    # Takes effect on a new database only. 4 KiB pages match filesystem blocks and modern
    # disks' sectors, so a sector torn by power loss mid-checkpoint damages only a page the
    # WAL still holds and replays. 1 KiB pages measured 35-50% cheaper COMMITs for random
    # upserts (a quarter of the WAL bytes), but a torn sector would also hit neighbouring
    # pages that the WAL does not hold.
    conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
    # WAL: a commit is one sequential append plus one fdatasync of the WAL, and readers
    # (inspection tools) never block the writer.
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"lease store {path}: cannot enable WAL mode (got {mode!r})")
    # FULL: fdatasync the WAL at every commit. NORMAL would skip it in WAL mode and lose
    # the latest acknowledged leases on power loss.
    conn.execute("PRAGMA synchronous = FULL")
    # Checkpoints run inside the apply() that crosses this many WAL pages (4 MiB), stalling
    # that batch: at 1M leases a checkpoint measured 40-100 ms; 4x the size gave 10-35%
    # more throughput but 2-3x longer stalls. Small also keeps crash recovery's WAL scan short.
    conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
    # After a checkpoint the WAL is rewritten from its start; keeping the file at up to
    # 16 MiB (about 4x a checkpoint interval) lets steady-state commits overwrite in place,
    # so fdatasync need not also flush a file-size change, while a burst's space is freed.
    conn.execute("PRAGMA journal_size_limit = 16777216")
    # 64 MiB page cache (negative = KiB) holds the whole B-tree of ~1M leases, so random
    # upserts find their pages in process memory instead of a pread() each; measured ~25%
    # more leases/s at 1M leases and batch 256 than the 2 MiB default.
    conn.execute("PRAGMA cache_size = -65536")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    app_id: int = conn.execute("PRAGMA application_id").fetchone()[0]
    has_tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] > 0
    if app_id != APPLICATION_ID and (version != 0 or has_tables):
        raise StoreError(f"{path} is an SQLite database but not a brushtail lease store")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"lease store {path} has schema version {version}, newer than this brushtaild "
            f"understands ({SCHEMA_VERSION}); refusing to downgrade it"
        )
    for target, statements in enumerate(_MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            # user_version is transactional, so a crash mid-migration leaves the old version.
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    # Full integrity_check rather than quick_check: with no secondary index they do nearly
    # the same work (quick_check only skips checking indexes against their table); measured
    # 0.13-0.25 s at 1M leases with the file cached (~0.45 s on a loaded machine), ~1.2 s
    # cold, most of it reading the file, which load() needs right after anyway.
    problems = [row[0] for row in conn.execute("PRAGMA integrity_check(10)")]
    if problems != ["ok"]:
        raise StoreError(
            f"lease store {path} is corrupt: {'; '.join(problems)}; restore it from a replica "
            "or backup"
        )
