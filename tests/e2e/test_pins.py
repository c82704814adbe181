"""The fast path's pins with the real daemon: what the program answered while brushtaild
was stopped is recorded whatever the next start does with the pins (a new layout, the fast
path disabled), one daemon per pin directory, and the program follows the configured
interface (with rx VLAN offload off where it runs)."""

import re
import socket
import time
from pathlib import Path

from brushtaild.xdp import loader
from tests.e2e.clients import run_perfdhcp
from tests.e2e.daemon import Brushtaild
from tests.e2e.netns import SERVER_IF, Link, in_netns, ip
from tests.e2e.test_fastpath import (
    FAST_ACK,
    SLOW_ACK,
    START_TIMEOUT,
    _xdp_program,
    entries,
    fast_acks,
    fast_daemon,
    renew,
    scrape,
    stored_expiry,
    udhcpc_bound,
    wait_until,
)

OTHER_IF = "sub1"


def versions(daemon: Brushtaild) -> list[str]:
    return sorted(p.name for p in daemon.pin_dir.iterdir()) if daemon.pin_dir.exists() else []


def edit_config(daemon: Brushtaild, old: str, new: str) -> None:
    config = daemon.config_file.read_text()
    assert old in config
    daemon.config_file.write_text(config.replace(old, new))


def test_a_new_layout_records_what_the_old_program_answered_while_stopped(
    link: Link, tmp_path: Path
) -> None:
    """Finding 3b on the wire: renewals the kernel answered while brushtaild was stopped,
    then a start with a new max_subscribers (a new map layout, as an upgrade that changes
    bpf/shared.h): they are in the store, and the old pins go only after that."""
    with fast_daemon(link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        client, address = udhcpc_bound(link, tmp_path / "udhcpc")
        with client:
            wait_until("lease entry", lambda: entries(daemon) == 1)
            old = versions(daemon)
            assert daemon.stop() == 0
            expires = stored_expiry(daemon.state_dir, address)
            renew(client, address)
            assert stored_expiry(daemon.state_dir, address) == expires
            edit_config(daemon, "fastpath:\n", "fastpath:\n  max_subscribers: 2048\n")
            daemon.start(START_TIMEOUT)
            assert "fast path map layout changed" in daemon.log()
            wait_until("path=fast ack lines", lambda: fast_acks(daemon, address))
            assert stored_expiry(daemon.state_dir, address) > expires
            wait_until("old pins removed", lambda: not set(old) & set(versions(daemon)))
            assert len(versions(daemon)) == 1
            # The new program answers in the kernel, and that is recorded too.
            recorded = len(fast_acks(daemon, address))
            renew(client, address)
            wait_until("a later fast ack", lambda: len(fast_acks(daemon, address)) > recorded)


def test_disabling_records_what_the_program_answered_while_stopped(
    link: Link, tmp_path: Path
) -> None:
    """Finding 3c: `fastpath.enabled: false` takes the program and pins away, after
    recording the renewals queued in its ring."""
    with fast_daemon(link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        client, address = udhcpc_bound(link, tmp_path / "udhcpc")
        with client:
            wait_until("lease entry", lambda: entries(daemon) == 1)
            assert daemon.stop() == 0
            expires = stored_expiry(daemon.state_dir, address)
            renew(client, address)
            edit_config(daemon, "enabled: true", "enabled: false")
            daemon.start()
            assert _xdp_program(link) is None and not daemon.pin_dir.exists()
            assert "removed the XDP program and maps an earlier run left" in daemon.log()
            assert stored_expiry(daemon.state_dir, address) > expires
            wait_until("path=fast ack lines", lambda: fast_acks(daemon, address))
            # From now on the slow path alone renews it.
            renew(client, address)
            assert scrape(daemon)[SLOW_ACK] >= 1


def _rx_vlan(link: Link, ifname: str, on: bool | None = None) -> bool:
    """Whether rx VLAN offload is on on `ifname` in the server namespace; sets it first
    if `on` is given."""
    with in_netns(link.server_ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = loader.ethtool_flags(sock, ifname, loader.ETHTOOL_GFLAGS)
        if on is not None:
            flags = flags | loader.ETH_FLAG_RXVLAN if on else flags & ~loader.ETH_FLAG_RXVLAN
            loader.ethtool_flags(sock, ifname, loader.ETHTOOL_SFLAGS, flags)
            flags = loader.ethtool_flags(sock, ifname, loader.ETHTOOL_GFLAGS)
        return bool(flags & loader.ETH_FLAG_RXVLAN)


def test_one_daemon_per_pin_dir_and_the_program_follows_the_interface(
    link: Link, tmp_path: Path
) -> None:
    """Finding 16: a second brushtaild on the same pin directory is refused, naming the
    first; changing `interface` takes the program off the old one; finding 14a: rx VLAN
    offload is turned off where the program is attached."""
    ip("-n", link.server_ns, "link", "add", OTHER_IF, "type", "veth", "peer", "name", "sub1p")
    for dev in (OTHER_IF, "sub1p"):
        ip("-n", link.server_ns, "link", "set", dev, "up")
    assert _rx_vlan(link, SERVER_IF, on=True)
    with fast_daemon(link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        assert not _rx_vlan(link, SERVER_IF)
        assert f"turned rx VLAN offload (rxvlan) off on {SERVER_IF}" in daemon.log()

        second_dir = tmp_path / "second"
        second_dir.mkdir()
        second = Brushtaild(link, second_dir, fastpath=True)
        assert second.pin_dir == daemon.pin_dir
        second.spawn()
        assert second.proc is not None and daemon.proc is not None
        assert second.proc.wait(timeout=30) == 1, second.log()
        assert f"is in use by pid {daemon.proc.pid} (" in second.log(), second.log()
        assert "Traceback" not in second.log()

        assert daemon.stop() == 0
        assert _xdp_program(link) == "xdp_brushtail"
        edit_config(daemon, f"interface: {SERVER_IF}", f"interface: {OTHER_IF}")
        daemon.start(START_TIMEOUT)
        assert f"took the program off {SERVER_IF}" in daemon.log()
        assert _xdp_program(link) is None
        out = link.run_in(link.server_ns, ["ip", "-d", "link", "show", "dev", OTHER_IF]).stdout
        assert "name xdp_brushtail" in out, out
        time.sleep(0.5)  # a few loop turns on the new interface: still running
        assert daemon.proc.poll() is None, daemon.log()


LOAD_SECONDS = 30
# Renewals at 500/s among 600 exchanges/s, over 2000 clients; every message with the same
# option 55, so that more renewals match the request list their entry was rendered for.
PERFDHCP = ["-f", "500", "-o", "55,011c02030f060c"]
DRAIN = re.compile(r"longest interval between two drains of the renewals ring: ([\d.]+)s")


def test_the_ring_is_drained_often_under_a_renewal_load(relay_link: Link, tmp_path: Path) -> None:
    """The window DESIGN.md "Nothing unrecorded" states: the longest interval between two
    drains of the renewals ring (what a power loss can take) while perfdhcp binds clients
    through the slow path and renews them through the kernel. `pytest -s` prints the
    figures."""
    with fast_daemon(relay_link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        before = scrape(daemon)
        started = time.monotonic()
        result = run_perfdhcp(
            relay_link, rate=600, duration=LOAD_SECONDS, clients=2000, extra_args=PERFDHCP
        )
        elapsed = time.monotonic() - started
        after = scrape(daemon)
        assert daemon.stop() == 0
        found = DRAIN.search(daemon.log())
        assert found is not None, daemon.log()
    kernel_acks = after[FAST_ACK] - before[FAST_ACK]
    slow_acks = after[SLOW_ACK] - before[SLOW_ACK]
    longest = float(found.group(1))
    print(
        f"\nperfdhcp -r 600 -R 2000 {' '.join(PERFDHCP)} for {LOAD_SECONDS}s: "
        f"{kernel_acks:.0f} kernel ACKs "
        f"({kernel_acks / elapsed:.0f}/s), {slow_acks:.0f} slow-path ACKs "
        f"({slow_acks / elapsed:.0f}/s); longest interval between two drains {longest:.3f}s; "
        f"perfdhcp exchanges {result.exchanges}; kernel results "
        f"{ {k: after[k] - before[k] for k in after if 'fastpath_requests' in k} }"
    )
    assert kernel_acks > 0
    assert longest < 3.0  # measured 1.00-1.07 s here; a margin for a busier machine
