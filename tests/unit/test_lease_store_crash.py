"""A killed writer never loses a lease that apply() had returned for.

The SIGKILL test runs a writer process (this module, run with -m) that announces each batch
on stdout before apply() and confirms it after apply() returns; the parent kills it
mid-stream and checks the reopened store against what was confirmed. SIGKILL leaves the
kernel's page cache intact, so it proves the commit protocol, not the fsync; the strace test
checks that the WAL is fsynced before apply() returns, which is what survives power loss.
"""

import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.store.lease_store import DB_NAME, LeaseStore

REPO_ROOT = Path(__file__).resolve().parents[2]
# Few enough addresses that batches keep overwriting and deleting each other's leases.
ADDRESSES = range(0x0A000000, 0x0A000000 + 3000)
ROUNDS = 6
WATCHDOG_SECONDS = 60.0

Batch = tuple[list[Lease], list[int]]


def random_batch(rng: random.Random) -> Batch:
    writes = [
        Lease(
            address=address,
            client_id=rng.randbytes(rng.randint(0, 20)),
            hwaddr=rng.randbytes(6),
            pool=rng.choice(["residential", "business", "voip"]),
            state=rng.choice(list(LeaseState)),
            expires=rng.uniform(1.7e9, 1.8e9),
            updated=rng.uniform(1.7e9, 1.8e9),
        )
        for address in rng.sample(ADDRESSES, rng.randint(1, 400))
    ]
    return writes, rng.sample(ADDRESSES, rng.randint(0, 40))


def encode(batch: Batch) -> str:
    writes, deletes = batch
    return json.dumps(
        {
            "writes": [
                [
                    w.address,
                    w.client_id.hex(),
                    w.hwaddr.hex(),
                    w.pool,
                    w.state,
                    w.expires,
                    w.updated,
                ]
                for w in writes
            ],
            "deletes": deletes,
        }
    )


def decode(text: str) -> Batch:
    data: dict[str, Any] = json.loads(text)
    writes = [
        Lease(address, bytes.fromhex(cid), bytes.fromhex(hw), pool, LeaseState(state), exp, upd)
        for address, cid, hw, pool, state, exp, upd in data["writes"]
    ]
    return writes, data["deletes"]


def applied(leases: dict[int, Lease], batch: Batch) -> dict[int, Lease]:
    """What apply() promises the table holds after `batch`."""
    writes, deletes = batch
    result = dict(leases)
    result.update((w.address, w) for w in writes)
    for address in deletes:
        result.pop(address, None)
    return result


def writer(state_dir: Path, seed: int) -> None:
    """Child process: write batches until killed."""
    rng = random.Random(seed)
    out = sys.stdout.buffer
    with LeaseStore.open(state_dir) as store:
        while True:
            batch = random_batch(rng)
            out.write(f"batch {encode(batch)}\n".encode())
            out.flush()
            store.apply(*batch)
            # One write(2) of fewer than PIPE_BUF bytes, so the kill cannot cut this line: a
            # cut line is always (a prefix of) a batch announcement, which may take several.
            out.write(b"committed\n")
            out.flush()


def run_writer_and_kill(state_dir: Path, seed: int, commits: int, rng: random.Random) -> bytes:
    """Start a writer, SIGKILL it after `commits` confirmed batches, return all it printed."""
    # All of stdout is read through the one buffered reader, never communicate(): with two
    # pipes communicate() os.read()s the descriptor and silently drops whatever readline()
    # had already buffered past the line it returned. stderr goes to a file, so nothing
    # but stdout is ever read from a pipe and a chatty writer cannot block on a full one.
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.unit.test_lease_store_crash", str(state_dir), str(seed)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        # A hung writer would otherwise hang the test: killing it ends the reads with EOF.
        watchdog = threading.Timer(WATCHDOG_SECONDS, child.kill)
        watchdog.start()
        try:
            assert child.stdout is not None
            with child.stdout:
                output = []
                seen = 0
                while seen < commits:
                    line = child.stdout.readline()
                    if not line:
                        child.wait()
                        errors.seek(0)
                        pytest.fail(
                            f"writer exited early: {errors.read().decode(errors='replace')}"
                        )
                    output.append(line)
                    seen += line == b"committed\n"
                # The writer runs on meanwhile, so the kill lands at a random point of a later
                # batch.
                time.sleep(rng.uniform(0, 0.01))
                child.send_signal(signal.SIGKILL)
                # EOF once the writer is dead; starts with what readline() had buffered.
                output.append(child.stdout.read())
            child.wait()
        finally:
            watchdog.cancel()
        errors.seek(0)
        assert child.returncode == -signal.SIGKILL, errors.read().decode(errors="replace")
    return b"".join(output)


def replay(acknowledged: dict[int, Lease], output: bytes) -> tuple[dict[int, Lease], Batch | None]:
    """Replay the writer's output: the state its confirmed batches promise, and the batch it
    had announced but not confirmed when it was killed, if any."""
    *lines, cut = output.split(b"\n")
    in_flight: Batch | None = None
    for number, line in enumerate(lines):
        if line == b"committed":
            assert in_flight is not None, f"line {number}: confirmed with no batch announced"
            acknowledged = applied(acknowledged, in_flight)
            in_flight = None
        else:
            # The writer announces a batch only after confirming the one before, so anything
            # else means output was lost or garbled and the replay would prove nothing.
            assert in_flight is None, (
                f"line {number}: a batch announced before the last one was confirmed"
            )
            assert line.startswith(b"batch "), f"line {number}: {line[:60]!r}"
            in_flight = decode(line.removeprefix(b"batch ").decode())
    if cut:
        # Cut by the kill while being announced, so apply() had not started on it; only a batch
        # announcement takes more than one write(2), and only the one after a confirmation.
        assert in_flight is None, f"cut line {cut[:60]!r} after an unconfirmed batch"
        assert cut.startswith(b"batch ") or b"batch ".startswith(cut), cut[:60]
    return acknowledged, in_flight


def test_sigkill_never_loses_an_acknowledged_lease(tmp_path: Path) -> None:
    rng = random.Random(20250601)
    on_disk: dict[int, Lease] = {}
    for round_ in range(ROUNDS):
        output = run_writer_and_kill(tmp_path, round_, rng.randint(2, 25), rng)
        acknowledged, in_flight = replay(on_disk, output)

        with LeaseStore.open(tmp_path) as store:
            found = {stored.address: stored for stored in store.load()}
        if found != acknowledged:
            # Only the batch in flight at the kill may differ, and then all of it or none.
            lost = [a for a, want in acknowledged.items() if found.get(a) != want]
            assert in_flight is not None, f"round {round_}: lost or changed {lost[:10]}"
            assert found == applied(acknowledged, in_flight), (
                f"round {round_}: neither the acknowledged state nor it plus the batch in "
                f"flight; first differing addresses {lost[:10]}"
            )
        on_disk = found
    assert on_disk, "no batch was ever committed"


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_apply_returns_only_after_the_wal_is_synced(tmp_path: Path) -> None:
    code = (
        "import os, sys; from pathlib import Path;"
        "from brushtaild.engine.leases import Lease, LeaseState;"
        "from brushtaild.store.lease_store import LeaseStore;"
        "store = LeaseStore.open(Path(sys.argv[1]));"
        "[(store.apply([Lease(a, b'c', b'h', 'p', LeaseState.BOUND, 1.0, 2.0)], []),"
        "  os.write(1, b'acked\\n')) for a in range(5)]"
    )
    log = tmp_path / "strace.log"
    strace = ["strace", "-f", "-y", "-o", str(log), "-e", "trace=pwrite64,write,fsync,fdatasync"]
    traced = subprocess.run(
        [*strace, sys.executable, "-c", code, str(tmp_path / "state")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WATCHDOG_SECONDS,
    )
    if traced.returncode != 0 and "ptrace" in traced.stderr:
        pytest.skip(f"strace cannot trace here: {traced.stderr.strip()}")
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == "acked\n" * 5

    wal = f"{DB_NAME}-wal>"
    acks = 0
    wal_written = synced_since_write = False
    for call in log.read_text().splitlines():
        if wal in call and "pwrite64(" in call:
            wal_written, synced_since_write = True, False
        elif wal in call and ("fdatasync(" in call or "fsync(" in call):
            synced_since_write = True
        elif "write(1" in call and "acked" in call:
            assert wal_written and synced_since_write, f"ack {acks} before the WAL was synced"
            acks += 1
            wal_written = False
    assert acks == 5


if __name__ == "__main__":
    writer(Path(sys.argv[1]), int(sys.argv[2]))
