"""A client class reaches a real client on both paths: udhcpc, matched by its MAC, is
given its class's NTP servers and lease time by the slow path, and its renewal answered in
the kernel carries the same; a class for another MAC changes nothing for it."""

from pathlib import Path

from tests.e2e.daemon import Brushtaild
from tests.e2e.netns import Link
from tests.e2e.test_fastpath import START_TIMEOUT, fast_daemon, options_from_both_paths


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
        slow, fast = options_from_both_paths(daemon, link, tmp_path / "udhcpc", ["ntpsrv"])
    assert slow["ntpsrv"] == "198.18.0.123", slow
    assert slow["lease"] == "7200", slow
    assert fast == slow
