"""A reload (SIGHUP) that changes a class or a reservation leaves no stale answer in the
kernel (issue 11, must-have 8): the first answer to each subscriber after the reload
follows the new config, from the kernel when its lease is still the kernel's, else from
the slow path.

One daemon, fast path on, four crafted subscribers on its link whose leases are in the
kernel (each renewal before the reload is answered there, with the old config's
options); one reload changes, for each:

- its class's options and lease time: the kernel answers the next renewal and DISCOVER
  with the new ones;
- its reservation's per-host options: likewise;
- its reservation's address: the kernel no longer answers for the old address, and the
  slow path NAKs it, sending the host to its new one;
- its class's pools, which no longer include the lease's pool: the kernel no longer
  answers, and the slow path NAKs it.
"""

import signal
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from tests.e2e import netns
from tests.e2e.crafted import Subscribers, answered_by, ips, lease_time
from tests.e2e.daemon import Brushtaild, sweep_stale_pins
from tests.e2e.netns import Link
from tests.e2e.test_fastpath import FAST_OFFER, START_TIMEOUT, scrape, wait_until
from tests.e2e.xdp_pass import attach_client_pass
from tests.environment import unavailable

CLASSED = bytes.fromhex("020000000a01")  # class "stb", by MAC: options and lease time
HOST = bytes.fromhex("020000000a02")  # reserved, with options of its own
MOVED = bytes.fromhex("020000000a03")  # reserved, at another address after the reload
GOLD = bytes.fromhex("020000000a04")  # class "gold", whose pools change
PREMIUM = """\
  - name: premium
    subnet: 198.18.0.0/16
    ranges: ["198.18.2.0-198.18.2.255"]
    routers: [198.18.0.1]
    lease_time: 3600
"""
POLICY = """\
classes:
  - name: stb
    match: {{mac: "{classed}"}}
    lease_time: {stb_lease}
    options: {{ntp-servers: [{stb_ntp}]}}
  - name: gold
    match: {{mac: "{gold}"}}
    pools: [{gold_pool}]
reservations:
  - mac: "{host}"
    address: 198.18.0.20
    options: {{ntp-servers: [{host_ntp}]}}
  - mac: "{moved}"
    address: {moved_to}
"""
BEFORE = {
    "stb_lease": 7200,
    "stb_ntp": "198.18.0.11",
    "gold_pool": "premium",
    "host_ntp": "198.18.0.21",
    "moved_to": "198.18.0.30",
}
AFTER = {
    "stb_lease": 5400,
    "stb_ntp": "198.18.0.12",
    "gold_pool": "residential",
    "host_ntp": "198.18.0.22",
    "moved_to": "198.18.0.31",
}


@dataclass
class Reloaded:
    """The daemon after the reload, and each subscriber's ACK from before it."""

    daemon: Brushtaild
    clients: Subscribers
    acks: dict[bytes, Message]


def config(base: str, policy: dict[str, object]) -> str:
    macs = {"classed": CLASSED, "host": HOST, "moved": MOVED, "gold": GOLD}
    text = base.replace("fastpath:\n", PREMIUM + "fastpath:\n")
    return text + POLICY.format(**{k: m.hex(":") for k, m in macs.items()}, **policy)


def reload(daemon: Brushtaild) -> None:
    """SIGHUP, and wait until the reload is applied (the maps are rewritten before its
    log line)."""
    assert daemon.proc is not None
    done = len(daemon.lines("reloaded"))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until("config reloaded", lambda: len(daemon.lines("reloaded")) > done)
    assert "reload refused" not in daemon.log()


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reloaded]:
    reason = netns.available()
    if reason is not None:
        unavailable(reason)
    workdir = tmp_path_factory.mktemp("reload")
    sweep_stale_pins()
    with Link() as link:
        attach_client_pass(link)
        daemon = Brushtaild(link, workdir, fastpath=True, first="198.18.1.0", last="198.18.1.255")
        base = daemon.config_file.read_text()
        try:
            daemon.config_file.write_text(config(base, BEFORE))
            daemon.start(START_TIMEOUT)
            with Subscribers(link) as clients:
                acks = {}
                for mac in (CLASSED, HOST, MOVED, GOLD):
                    ack = clients.bind(mac)
                    # In the kernel, with the old config's options.
                    renewed = clients.kernel_renews(daemon, mac, (), ack.yiaddr)
                    assert renewed.options == ack.options
                    acks[mac] = ack
                assert ips(acks[CLASSED], OptionCode.NTP_SERVERS) == ["198.18.0.11"]
                assert lease_time(acks[CLASSED]) == 7200
                assert ips(acks[HOST], OptionCode.NTP_SERVERS) == ["198.18.0.21"]
                assert opt.format_ip(acks[MOVED].yiaddr) == "198.18.0.30"
                assert opt.format_ip(acks[GOLD].yiaddr).startswith("198.18.2.")
                daemon.config_file.write_text(config(base, AFTER))
                reload(daemon)
                yield Reloaded(daemon, clients, acks)
        finally:
            daemon.kill()
            daemon.remove_pins()


def renewal_after(reloaded: Reloaded, mac: bytes) -> tuple[str, Message]:
    """The first renewal of `mac`'s lease after the reload: the path that answered, and
    the reply."""
    address = reloaded.acks[mac].yiaddr
    return answered_by(
        reloaded.daemon,
        opt.format_ip(address),
        lambda: reloaded.clients.renew(mac, (), address),
    )


def test_the_kernel_answers_with_the_class_s_new_options(reloaded: Reloaded) -> None:
    path, ack = renewal_after(reloaded, CLASSED)
    assert (path, ack.message_type) == ("kernel", MessageType.ACK)
    assert ips(ack, OptionCode.NTP_SERVERS) == ["198.18.0.12"]
    assert lease_time(ack) == 5400
    # The kernel's OFFER to the same client is rendered from the new config too.
    before = scrape(reloaded.daemon)
    offer = reloaded.clients.discover(CLASSED)
    assert scrape(reloaded.daemon)[FAST_OFFER] > before[FAST_OFFER]
    assert offer.yiaddr == ack.yiaddr
    assert ips(offer, OptionCode.NTP_SERVERS) == ["198.18.0.12"]
    assert lease_time(offer) == 5400


def test_the_kernel_answers_with_the_host_s_new_options(reloaded: Reloaded) -> None:
    path, ack = renewal_after(reloaded, HOST)
    assert (path, ack.message_type) == ("kernel", MessageType.ACK)
    assert opt.format_ip(ack.yiaddr) == "198.18.0.20"
    assert ips(ack, OptionCode.NTP_SERVERS) == ["198.18.0.22"]


def test_a_moved_reservation_is_no_longer_answered_at_the_old_address(
    reloaded: Reloaded,
) -> None:
    path, reply = renewal_after(reloaded, MOVED)
    assert (path, reply.message_type) == ("slow", MessageType.NAK)
    # Back to DISCOVER: offered its new address.
    assert opt.format_ip(reloaded.clients.discover(MOVED).yiaddr) == "198.18.0.31"


def test_a_class_no_longer_given_the_lease_s_pool_is_not_answered_from_it(
    reloaded: Reloaded,
) -> None:
    path, reply = renewal_after(reloaded, GOLD)
    assert (path, reply.message_type) == ("slow", MessageType.NAK)
    offer = reloaded.clients.discover(GOLD)
    assert opt.format_ip(offer.yiaddr).startswith("198.18.1.")
