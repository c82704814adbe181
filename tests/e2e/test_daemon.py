"""brushtaild end to end: real clients, real sockets, real disk, in namespaces we create."""

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.e2e.clients import DhclientProcess, UdhcpcProcess, run_perfdhcp
from tests.e2e.daemon import PYTHON, REPO, Brushtaild
from tests.e2e.netns import RELAY_IP, SERVER_IP, Link


def stored_leases(state_dir: Path) -> dict[str, tuple[bytes, int]]:
    """address -> (client id, state) straight from the lease database."""
    with sqlite3.connect(f"file:{state_dir / 'leases.sqlite3'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT address, client_id, state FROM lease").fetchall()
    return {
        ".".join(str(b) for b in int(address).to_bytes(4, "big")): (client_id, state)
        for address, client_id, state in rows
    }


def test_dhclient_gets_reboots_and_releases(link: Link, tmp_path: Path) -> None:
    with Brushtaild(link, tmp_path).start() as daemon:
        client = DhclientProcess(link, tmp_path / "dhclient", timeout=10)
        with client.start():
            bound = client.wait_bound(15)
            assert bound.reasons[-1] == "BOUND", bound.log
            address = bound.address
            assert address is not None and address.startswith("198.18.")
            assert f"{address}/16" in link.addresses(link.client_ns, "cli0")
            # INIT-REBOOT on the lease file: the same address comes back.
            rebooted = client.reboot(15)
            assert rebooted.reasons[-1] in ("REBOOT", "BOUND"), rebooted.log
            assert rebooted.address == address
            released = client.release()
            assert released.reasons[-1] == "RELEASE"
        time.sleep(0.5)
        log = daemon.log()
        for kind in ("ack", "release"):
            assert f"{kind} client=" in log and f"ip={address}" in log, log
        # OFFERs are logged at debug only: a DISCOVER flood must not become a log flood.
        assert "offer client=" not in log
        assert "path=slow" in log
        assert daemon.metric('dhcp_slowpath_requests_total{result="ack"}') >= 2
        assert stored_leases(daemon.state_dir)[address][1] == 2  # RELEASED


def test_udhcpc_gets_renews_and_releases(link: Link, tmp_path: Path) -> None:
    with Brushtaild(link, tmp_path).start() as daemon:
        client = UdhcpcProcess(link, tmp_path / "udhcpc", discovers=10)
        with client.start():
            bound = client.wait_bound(15)
            assert bound.reasons[-1] == "bound", bound.log
            address = bound.address
            renewed = client.renew(10)
            assert renewed.reasons[-1] == "renew" and renewed.address == address
            client.release(10)
        time.sleep(0.5)
        acks = daemon.lines("ack")
        assert len(acks) >= 2 and all(f"ip={address}" in line for line in acks)
        assert daemon.lines("release")


def test_perfdhcp_relayed_exchanges(relay_link: Link, tmp_path: Path) -> None:
    with Brushtaild(relay_link, tmp_path).start() as daemon:
        result = run_perfdhcp(relay_link, rate=200, duration=3, clients=300)
        assert result.exchanges["DISCOVER-OFFER"].received > 0
        assert result.exchanges["REQUEST-ACK"].received > 0
        # perfdhcp counts as "drops" what is still in flight when it stops; almost all of
        # its requests must have been answered.
        assert (
            result.exchanges["REQUEST-ACK"].received >= 0.9 * result.exchanges["REQUEST-ACK"].sent
        )
        time.sleep(0.5)
        acked = daemon.metric('dhcp_slowpath_requests_total{result="ack"}')
        assert acked >= result.exchanges["REQUEST-ACK"].received
    # perfdhcp cycles through its 300 client MACs: each has exactly one lease.
    assert len(stored_leases(daemon.state_dir)) == 300


def test_sigterm_keeps_every_lease_and_restart_reloads_them(link: Link, tmp_path: Path) -> None:
    daemon = Brushtaild(link, tmp_path)
    with daemon.start():
        client = UdhcpcProcess(link, tmp_path / "udhcpc", discovers=10, quit_when_bound=True)
        with client.start():
            address = client.wait_exit(15).address
        assert daemon.stop() == 0
        assert "every acknowledged lease is on disk" in daemon.log()
    with daemon.start():
        assert "leases=1" in daemon.log()
        again = UdhcpcProcess(link, tmp_path / "udhcpc2", discovers=10, quit_when_bound=True)
        with again.start():
            assert again.wait_exit(15).address == address


def test_sighup_with_a_bad_config_keeps_the_old_one(link: Link, tmp_path: Path) -> None:
    daemon = Brushtaild(link, tmp_path)
    with daemon.start():
        good = daemon.config_file.read_text()
        daemon.config_file.write_text(good.replace("lease_time:", "lease_tme:"))
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused" not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "pools[0].lease_tme" in daemon.log()
        client = UdhcpcProcess(link, tmp_path / "udhcpc", discovers=10, quit_when_bound=True)
        with client.start():
            assert client.wait_exit(15).address is not None


def test_malformed_packets_are_counted_not_fatal(relay_link: Link, tmp_path: Path) -> None:
    garbage = [b"", b"\x01" * 10, b"\x02" + bytes(299), bytes(236) + b"\x63\x82\x53\x63\x35\x05"]
    with Brushtaild(relay_link, tmp_path).start() as daemon:
        script = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('{RELAY_IP}', 67))\n"
            f"for p in {garbage!r}: s.sendto(p, ('{SERVER_IP}', 67))\n"
        )
        relay_link.run_in(relay_link.client_ns, [PYTHON, "-c", script])
        time.sleep(0.5)
        # Each under its most specific reason, which the codec gives (the frames are fine).
        samples = daemon.samples()
        dropped = {
            reason: samples[f'dhcp_packets_dropped_total{{reason="{reason}"}}']
            for reason in ("truncated", "bad_htype", "bad_op", "bad_frame")
        }
        assert dropped == {"truncated": 2, "bad_htype": 1, "bad_op": 1, "bad_frame": 0}
        assert daemon.proc is not None and daemon.proc.poll() is None
        result = run_perfdhcp(relay_link, rate=50, duration=1, clients=20)
        assert result.exchanges["REQUEST-ACK"].received > 0


@pytest.mark.parametrize("attempt", range(3))
def test_sigkill_loses_no_acknowledged_lease(
    relay_link: Link, tmp_path: Path, attempt: int
) -> None:
    """Kill -9 the daemon while clients are getting leases; after a restart every client
    that saw an ACK still has its address, both on disk and in what the server offers."""
    acked_file = tmp_path / "acked.txt"
    daemon = Brushtaild(relay_link, tmp_path)
    with daemon.start():
        load = relay_link.popen_in(
            relay_link.client_ns,
            [PYTHON, "-m", "tests.e2e.relay_client", "--relay", RELAY_IP, "--server", SERVER_IP,
             "--count", "5000", "--window", "32", "--seconds", "30", "--out", str(acked_file)],
            env={"PYTHONPATH": str(REPO)},
        )  # fmt: skip
        deadline = time.monotonic() + 20
        threshold = 100 + 150 * attempt
        while time.monotonic() < deadline:
            if acked_file.exists() and acked_file.read_text().count("\n") >= threshold:
                break
            time.sleep(0.01)
        daemon.kill()
        load.terminate()
        load.wait(timeout=10)
    acked = [line.split() for line in acked_file.read_text().splitlines() if line.strip()]
    assert len(acked) >= threshold
    stored = stored_leases(daemon.state_dir)
    for mac, address in acked:
        assert address in stored, f"{address} ACKed to {mac} is not on disk"
        assert stored[address][0] == b"\x01" + bytes.fromhex(mac)
    # The restarted server gives every one of those clients its address again.
    replayed = tmp_path / "replayed.txt"
    with daemon.start():
        assert f"leases={len(stored)}" in daemon.log()
        relay_link.run_in(
            relay_link.client_ns,
            [PYTHON, "-m", "tests.e2e.relay_client", "--relay", RELAY_IP, "--server", SERVER_IP,
             "--replay", str(acked_file), "--window", "32", "--seconds", "30",
             "--out", str(replayed)],
            timeout=60,
        )  # fmt: skip
    again = dict(line.split() for line in replayed.read_text().splitlines())
    assert again == dict(acked)


def test_start_failures_are_one_clear_line(link: Link, tmp_path: Path) -> None:
    first = Brushtaild(link, tmp_path)
    with first.start():
        # A second daemon on the same state dir must refuse, naming the holder.
        second = link.run_in(
            link.server_ns,
            [PYTHON, "-m", "brushtaild", "--config", str(first.config_file)],
            check=False,
        )
        assert second.returncode == 1
        assert "cannot start: state dir" in second.stderr and "locked by pid" in second.stderr
        assert "Traceback" not in second.stderr
    other = tmp_path / "other"
    other.mkdir()
    missing = Brushtaild(link, other)
    missing.config_file.write_text(
        missing.config_file.read_text().replace("interface: sub0", "interface: nosuch0")
    )
    done = link.run_in(
        link.server_ns,
        [PYTHON, "-m", "brushtaild", "--config", str(missing.config_file)],
        check=False,
    )
    assert done.returncode == 1 and "nosuch0" in done.stderr and "Traceback" not in done.stderr


def test_sighup_refuses_keys_only_a_restart_applies(link: Link, tmp_path: Path) -> None:
    """The daemon names the same keys as `brushtail check-config --compare`
    (brushtaild/config/reload.py), keeps running with the old file, and applies a later file
    that changes only reloadable keys."""

    def sighup_until(text: str) -> None:
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while text not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert text in daemon.log()

    daemon = Brushtaild(link, tmp_path)
    with daemon.start():
        good = daemon.config_file.read_text()
        daemon.config_file.write_text(
            good.replace("site: edge-test", "site: edge-other")
            .replace("offer_hold: 30", "offer_hold: 10")
            .replace("  enabled: false", "  enabled: false\n  xdp_mode: generic")
        )
        sighup_until("site, fastpath.xdp_mode cannot change without a restart")
        daemon.config_file.write_text(good.replace("offer_hold: 30", "offer_hold: 10"))
        sighup_until("config reloaded from")
        client = UdhcpcProcess(link, tmp_path / "udhcpc", discovers=10, quit_when_bound=True)
        with client.start():
            assert client.wait_exit(15).address is not None
