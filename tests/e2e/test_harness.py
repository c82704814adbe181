"""Self-tests of the namespace harness and client helpers, with no DHCP server on the link."""

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e import clients, netns
from tests.e2e.netns import Link, in_netns

# A report from a perfdhcp 2.2 run against a working server, trimmed.
PERFDHCP_REPORT = """\
Running: perfdhcp -4 -l cli0 -r 100 -p 3 -R 150 198.18.0.1
Scenario: basic.
***Rate statistics***
Rate: 99.6258 4-way exchanges/second, expected rate: 100

***Malformed Packets***
Malformed packets: 0
***Statistics for: DISCOVER-OFFER***
sent packets: 299
received packets: 297
drops: 2
drops ratio: 0.67 %
orphans: 1
rejected leases: 0
non unique addresses: 0

min delay: 0.436 ms
avg delay: 0.786 ms
max delay: 3.006 ms
std deviation: 0.217 ms
collected packets: 0

***Statistics for: REQUEST-ACK***
sent packets: 297
received packets: 297
drops: 0
drops ratio: 0.000 %
orphans: 0
rejected leases: 0
non unique addresses: 0

min delay: 0.169 ms
avg delay: n/a
"""


def _resolv_conf_digest() -> str:
    try:
        return hashlib.sha256(Path("/etc/resolv.conf").read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""


def test_parse_perfdhcp_report() -> None:
    result = clients.parse_perfdhcp(PERFDHCP_REPORT, 3)
    assert (result.returncode, result.rate, result.expected_rate) == (3, 99.6258, 100.0)
    assert result.exchanges["DISCOVER-OFFER"] == clients.ExchangeStats(
        sent=299,
        received=297,
        drops=2,
        orphans=1,
        rejected_leases=0,
        non_unique_addresses=0,
        avg_delay_ms=0.786,
    )
    assert result.exchanges["REQUEST-ACK"].received == 297
    assert result.exchanges["REQUEST-ACK"].avg_delay_ms is None


def test_events_address_follows_last_binding() -> None:
    events = clients.Events(
        [clients.Event("BOUND", "198.18.1.5"), clients.Event("RENEW", "198.18.1.5")]
    )
    assert events.address == "198.18.1.5"
    events.events.append(clients.Event("RELEASE", "198.18.1.5"))
    assert events.address is None


def test_link_layout(relay_link: Link) -> None:
    link = relay_link
    assert link.server_ns.startswith(netns.PREFIX) and link.client_ns.startswith(netns.PREFIX)
    assert {link.server_ns, link.client_ns} <= set(netns.list_namespaces())
    assert link.addresses(link.server_ns, netns.SERVER_IF) == ["198.18.0.1/16"]
    assert link.addresses(link.client_ns, netns.CLIENT_IF) == ["198.18.0.2/16"]
    with in_netns(link.server_ns):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with in_netns(link.client_ns):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server, client:
        server.bind((netns.SERVER_IP, 9))
        server.settimeout(2)
        client.sendto(b"across", (netns.SERVER_IP, 9))
        assert server.recvfrom(64) == (b"across", (netns.RELAY_IP, client.getsockname()[1]))


def test_in_netns_opens_sockets_inside(link: Link) -> None:
    with pytest.raises(OSError):
        socket.if_nametoindex(netns.SERVER_IF)
    with in_netns(link.server_ns):
        index = socket.if_nametoindex(netns.SERVER_IF)
    assert index == link.ifindex(link.server_ns, netns.SERVER_IF)
    with pytest.raises(OSError):
        socket.if_nametoindex(netns.SERVER_IF)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaping is up to PID 1, not us)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_teardown_kills_processes_and_removes_namespaces() -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), Link() as link:
        link.popen_in(link.client_ns, ["sleep", "60"])
        # Started behind our back (not through popen_in): teardown must find it too.
        link.run_in(link.server_ns, ["sh", "-c", "sleep 60 >/dev/null 2>&1 &"])
        pids = netns.namespace_pids(link.server_ns) + netns.namespace_pids(link.client_ns)
        raise RuntimeError("boom")
    assert len(pids) == 2
    assert not {link.server_ns, link.client_ns} & set(netns.list_namespaces())
    assert not [pid for pid in pids if _running(pid)]


def test_sweep_removes_only_namespaces_of_dead_runs() -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netns.PREFIX}{dead.pid}-0-s"
    live = f"{netns.PREFIX}{os.getpid()}-999-c"
    netns.ip("netns", "add", stale)
    netns.ip("netns", "add", live)
    try:
        swept = netns.sweep_stale()
        remaining = set(netns.list_namespaces())
        assert stale in swept and stale not in remaining
        assert live in remaining
    finally:
        for ns in (stale, live):
            if ns in netns.list_namespaces():
                netns.delete_namespace(ns)


def test_dhclient_script_sets_and_removes_the_address(link: Link, tmp_path: Path) -> None:
    events = tmp_path / "events"
    env = f"BT_EVENTS={events}"
    bound = ["env", "-i", env, "reason=BOUND", "interface=cli0",
             "new_ip_address=198.18.7.7", "new_subnet_mask=255.255.0.0"]  # fmt: skip
    released = ["env", "-i", env, "reason=RELEASE", "interface=cli0",
                "old_ip_address=198.18.7.7", "old_subnet_mask=255.255.0.0"]  # fmt: skip
    script = str(clients.DHCLIENT_SCRIPT)
    link.run_in(link.client_ns, [*bound, script])
    assert link.addresses(link.client_ns, netns.CLIENT_IF) == ["198.18.7.7/16"]
    link.run_in(link.client_ns, [*released, script])
    assert link.addresses(link.client_ns, netns.CLIENT_IF) == []
    assert clients.read_events(events) == [
        clients.Event("BOUND", "198.18.7.7"),
        clients.Event("RELEASE", "198.18.7.7"),
    ]


def test_udhcpc_script_sets_and_removes_the_address(link: Link, tmp_path: Path) -> None:
    events = tmp_path / "events"
    env = ["env", "-i", f"BT_EVENTS={events}", "interface=cli0"]
    script = str(clients.UDHCPC_SCRIPT)
    link.run_in(link.client_ns, [*env, "ip=198.18.7.8", "mask=16", script, "bound"])
    assert link.addresses(link.client_ns, netns.CLIENT_IF) == ["198.18.7.8/16"]
    link.run_in(link.client_ns, [*env, script, "deconfig"])
    assert link.addresses(link.client_ns, netns.CLIENT_IF) == []
    assert [e.reason for e in clients.read_events(events)] == ["bound", "deconfig"]


def test_dhclient_without_server_fails_cleanly(link: Link, tmp_path: Path) -> None:
    before = _resolv_conf_digest()
    started = time.monotonic()
    events = clients.dhclient_obtain(link, tmp_path, timeout=3)
    assert time.monotonic() - started < 15
    assert events.address is None
    assert events.returncode == 2, events.log
    assert "FAIL" in events.reasons
    assert "BOUND" not in events.reasons
    assert "DHCPDISCOVER on cli0" in events.log
    assert link.addresses(link.client_ns, netns.CLIENT_IF) == []
    assert _resolv_conf_digest() == before


def test_udhcpc_without_server_fails_cleanly(link: Link, tmp_path: Path) -> None:
    started = time.monotonic()
    events = clients.udhcpc_obtain(link, tmp_path, timeout=2)
    assert time.monotonic() - started < 15
    assert events.address is None
    assert events.returncode == 1, events.log
    assert events.reasons[-1] == "leasefail"


def test_udhcpc_signals_need_a_running_client(link: Link, tmp_path: Path) -> None:
    client = clients.UdhcpcProcess(link, tmp_path)
    with pytest.raises(RuntimeError, match="not running"):
        client.renew(1)


def test_perfdhcp_without_server_reports_nothing_received(relay_link: Link) -> None:
    result = clients.run_perfdhcp(relay_link, rate=20, duration=1, clients=10, exit_wait=0.2)
    offers = result.exchanges["DISCOVER-OFFER"]
    assert result.returncode == 3, result.output
    assert offers.sent > 0
    assert offers.received == 0
    assert offers.drops == offers.sent
    assert result.exchanges["REQUEST-ACK"].sent == 0


def test_perfdhcp_needs_a_relay_address(link: Link) -> None:
    with pytest.raises(ValueError, match="client_ip"):
        clients.run_perfdhcp(link, rate=1, duration=1, clients=1)
