"""A client class reaches a real client on both paths: udhcpc, matched by its MAC, is
given its class's NTP servers and lease time by the slow path, and its renewal answered in
the kernel carries the same; a class for another MAC changes nothing for it."""

from pathlib import Path

from tests.e2e.daemon import Brushtaild
from tests.e2e.netns import Link
from tests.e2e.test_fastpath import (
    FAST_ACK,
    START_TIMEOUT,
    entries,
    fast_acks,
    fast_daemon,
    renew,
    scrape,
    udhcpc_bound,
    wait_until,
)


def add_classes(daemon: Brushtaild, mac: bytes) -> None:
    """Classes after the pools, as a top-level key of the daemon's config file."""
    text = daemon.config_file.read_text()
    daemon.config_file.write_text(
        text
        + f"""\
classes:
  - name: someone-else
    match: {{mac: "02:00:00:00:00:01"}}
    options: {{ntp-servers: [198.18.0.99]}}
  - name: stb
    match: {{mac: "{mac.hex(":")}"}}
    lease_time: 7200
    options: {{ntp-servers: [198.18.0.123]}}
"""
    )


def test_udhcpc_gets_its_class_options_from_both_paths(link: Link, tmp_path: Path) -> None:
    with fast_daemon(link, tmp_path) as daemon:
        add_classes(daemon, link.client_mac)
        daemon.start(START_TIMEOUT)
        client, address = udhcpc_bound(link, tmp_path / "udhcpc", request=["ntpsrv"])
        with client:
            slow = client.received()
            wait_until("lease entry", lambda: entries(daemon) == 1)
            before = scrape(daemon)
            renew(client, address)
            wait_until("path=fast ack line", lambda: fast_acks(daemon, address))
            fast = client.received()
        assert scrape(daemon)[FAST_ACK] >= before[FAST_ACK] + 1
    assert slow["ntpsrv"] == "198.18.0.123", slow
    assert slow["lease"] == "7200", slow
    assert fast == slow
