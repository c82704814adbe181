"""Host reservations and shared networks end to end: a real client gets its reserved
address, and perfdhcp exhausts a small first pool and goes on in the second subnet."""

import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from tests.e2e.clients import UdhcpcProcess, run_perfdhcp
from tests.e2e.daemon import Brushtaild
from tests.e2e.netns import CLIENT_IF, Link
from tests.e2e.test_daemon import stored_leases

RESERVED = "198.18.0.77"  # in the pool's subnet, outside its ranges
SECOND = IPv4Network("198.19.5.0/24")


def test_udhcpc_gets_and_renews_its_reserved_address(link: Link, tmp_path: Path) -> None:
    daemon = Brushtaild(link, tmp_path, first="198.18.1.0", last="198.18.1.255")
    client_mac = link.mac(link.client_ns, CLIENT_IF).hex(":")
    daemon.config_file.write_text(
        daemon.config_file.read_text()
        + f'reservations:\n  - mac: "{client_mac}"\n    address: {RESERVED}\n'
    )
    with daemon.start():
        client = UdhcpcProcess(link, tmp_path / "udhcpc", discovers=10)
        with client.start():
            bound = client.wait_bound(15)
            assert bound.reasons[-1] == "bound" and bound.address == RESERVED, bound.log
            assert f"{RESERVED}/16" in link.addresses(link.client_ns, CLIENT_IF)
            renewed = client.renew(10)
            assert renewed.reasons[-1] == "renew" and renewed.address == RESERVED
        time.sleep(0.5)
        assert stored_leases(daemon.state_dir)[RESERVED][1] in (1, 2)  # BOUND, or RELEASED


def test_perfdhcp_continues_in_the_second_subnet_of_a_shared_network(
    relay_link: Link, tmp_path: Path
) -> None:
    daemon = Brushtaild(relay_link, tmp_path, first="198.18.1.0", last="198.18.1.19")
    text = daemon.config_file.read_text()
    text = text.replace("    lease_time:", "    shared_network: line\n    lease_time:")
    text = text.replace(
        "fastpath:\n",
        "  - name: second\n"
        f"    subnet: {SECOND}\n"
        '    ranges: ["198.19.5.10-198.19.5.250"]\n'
        "    routers: [198.19.5.1]\n"
        "    shared_network: line\n"
        "fastpath:\n",
    )
    daemon.config_file.write_text(text)
    with daemon.start():
        result = run_perfdhcp(relay_link, rate=50, duration=2, clients=60)
        assert result.exchanges["REQUEST-ACK"].received > 20, result.output
        time.sleep(0.5)
    leases = [IPv4Address(a) for a in stored_leases(daemon.state_dir)]
    first = [a for a in leases if a in IPv4Network("198.18.0.0/16")]
    second = [a for a in leases if a in SECOND]
    assert len(first) == 20 and len(second) == len(leases) - 20 > 0, leases
