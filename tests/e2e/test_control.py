"""The control socket and the `brushtail` command against a real daemon in namespaces:
every command with the daemon running and without it, a revoked lease NAKed to a real
client (and gone from the kernel's map with the fast path on), and clients of the socket
that send garbage or stall, while the daemon goes on answering DHCP."""

import contextlib
import json
import socket
import time
from pathlib import Path

from brushtaild.daemon.control import MAX_CONNECTIONS, TIMEOUT
from tests.e2e.clients import udhcpc_obtain
from tests.e2e.daemon import Brushtaild
from tests.e2e.netns import Link
from tests.e2e.test_fastpath import entries, fast_client, wait_until

EXIT_NOT_RUNNING = 3
COMMANDS = [
    ["status"],
    ["leases"],
    ["lease", "show", "198.18.1.0"],
    ["lease", "release", "198.18.1.0"],
    ["pools"],
    ["peers"],
    ["reload"],
]


def test_every_command_with_the_daemon_running_and_without_it(link: Link, tmp_path: Path) -> None:
    with Brushtaild(link, tmp_path).start() as daemon:
        obtained = udhcpc_obtain(link, tmp_path / "udhcpc")
        address = obtained.address
        assert address is not None, obtained.log
        status = daemon.cli("status")
        assert status.returncode == 0, status.stderr
        print(status.stdout)  # the screen, for whoever reads the test log
        assert "site         edge-test" in status.stdout
        assert "fast path    disabled" in status.stdout
        assert "residential" in status.stdout
        listed = daemon.cli("leases")
        assert listed.returncode == 0 and f"{address}  bound" in listed.stdout, listed.stdout
        assert "1 of 1 matching leases shown" in listed.stdout
        shown = daemon.cli("lease", "show", address)
        assert shown.returncode == 0 and address in shown.stdout
        for argv in (["status"], ["leases", "--state", "bound"], ["pools"], ["peers"]):
            answered = daemon.cli(*argv, "--json")
            assert answered.returncode == 0, answered.stderr
            json.loads(answered.stdout)
        pools = json.loads(daemon.cli("pools", "--json").stdout)
        assert pools[0]["assigned"] == 1
        reloaded = daemon.cli("reload")
        assert (reloaded.returncode, reloaded.stdout) == (
            0,
            f"applied: config reloaded from {daemon.config_file}\n",
        )
        assert "config reloaded" in daemon.log()
        assert json.loads(daemon.cli("status", "--json").stdout)["last_reload"]["applied"]
        released = daemon.cli("lease", "release", address)
        assert released.returncode == 0 and released.stdout.startswith(f"revoked {address}")
        assert daemon.cli("lease", "release", address).returncode == 1
        # The lease store can still be read directly, as before.
        stored = daemon.cli("leases", "--store", "--all")
        assert stored.returncode == 0 and f"{address}  revoked" in stored.stdout
        assert daemon.stop() == 0
    assert not daemon.control_socket.exists()
    for argv in COMMANDS:
        missing = daemon.cli(*argv)
        assert missing.returncode == EXIT_NOT_RUNNING, (argv, missing)
        assert missing.stderr == (
            f"brushtaild is not running: nothing answers on {daemon.control_socket}\n"
        )
    # A daemon killed leaves its socket file: still "not running", and the next start
    # replaces it.
    with Brushtaild(link, tmp_path).start() as daemon:
        daemon.kill()
        assert daemon.control_socket.exists()
        assert daemon.cli("status").returncode == EXIT_NOT_RUNNING
        daemon.start()
        assert daemon.cli("status").returncode == 0


def test_lease_release_is_a_nak_at_the_next_renew_and_leaves_the_kernel(
    link: Link, tmp_path: Path
) -> None:
    with fast_client(link, tmp_path) as (daemon, client, address):
        status = daemon.cli("status")
        assert status.returncode == 0, status.stderr
        print(status.stdout)
        assert "XDP, 1 entries" in status.stdout
        released = daemon.cli("lease", "release", address)
        assert released.returncode == 0, released.stderr
        wait_until("entry withdrawn", lambda: entries(daemon) == 0)
        assert any(f"ip={address} " in line for line in daemon.lines("revoke"))
        # The renewal misses the kernel (no entry), and the slow path NAKs it.
        seen = len(client.events().events)
        naked = client.renew(15)
        if "nak" not in naked.reasons[seen:]:
            naked = client.wait_for({"nak"}, 15, after=seen)
        assert "nak" in naked.reasons[seen:], naked.log
        assert any("lease revoked by the operator" in line for line in daemon.lines("nak")), (
            daemon.log()
        )
        # The client starts over, and may be given its address again.
        rebound = client.wait_for({"bound"}, 20, after=seen)
        assert rebound.reasons[-1] == "bound", rebound.log
        wait_until("entry again", lambda: entries(daemon) == 1)


def _stalled(path: Path, payload: bytes) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(path))
    conn.settimeout(5)
    # The daemon may refuse and close before taking all of it.
    with contextlib.suppress(OSError):
        conn.sendall(payload)
    return conn


def test_garbage_and_stalled_clients_do_not_stop_the_daemon(link: Link, tmp_path: Path) -> None:
    with Brushtaild(link, tmp_path).start() as daemon:
        path = daemon.control_socket
        garbage = _stalled(path, b"\x00\xff{{{ not json\n")
        garbage.settimeout(5)
        assert json.loads(garbage.recv(4096))["error"] == "not a JSON request"
        # A line that never ends is refused and its connection closed.
        flood = _stalled(path, b"x" * 100_000)
        flood.settimeout(5)
        assert json.loads(flood.recv(4096))["error"].startswith("request longer than")
        with contextlib.suppress(ConnectionResetError):  # closed with its bytes unread
            assert flood.recv(4096) == b""
        # Clients that never finish a request, or never read their answers, hold every
        # connection the daemon serves (the garbage one is still open too).
        stalled = [_stalled(path, b'{"command": "sta') for _ in range(MAX_CONNECTIONS - 2)]
        stalled.append(_stalled(path, b'{"command": "leases"}\n' * 50))
        started = time.monotonic()
        try:
            # DHCP goes on meanwhile.
            obtained = udhcpc_obtain(link, tmp_path / "udhcpc")
            assert obtained.address is not None, obtained.log
            busy = daemon.cli("status")
            assert busy.returncode == 1 and "too many connections" in busy.stderr, busy
            # Every stalled connection is closed after the timeout; the socket serves again.
            wait_until(
                "stalled connections closed",
                lambda: daemon.cli("status").returncode == 0,
                timeout=TIMEOUT + 10,
            )
            assert time.monotonic() - started >= TIMEOUT - 1
            for conn in stalled:
                conn.settimeout(5)
                while conn.recv(65536):
                    pass  # answered (the leases requests), then closed: EOF
        finally:
            for conn in (garbage, flood, *stalled):
                conn.close()
        again = udhcpc_obtain(link, tmp_path / "udhcpc2")
        assert again.address is not None, again.log
        assert daemon.proc is not None and daemon.proc.poll() is None
