"""The ISP example, docs/examples/isp.yaml, serves each kind of subscriber as docs/CONFIG.md
("A complete ISP example") says: the pool, options and lease time, and which path answers
its renewals.

One daemon runs the file itself (only its interface, state, control socket and pin dir are
the test's) for the whole module, with the fast path on. The Link's client namespace is
the access router: 198.18.0.2 on the server's link, forwarding, and Debian's ISC dhcrelay
(`-a`) relaying from two business ports, each a namespace of its own with a real udhcpc
behind it. The other subscribers (VLAN 100, QinQ 300.17, the native VLAN) are crafted
frames from the router's end of the link, tagged where they come on a VLAN, read back
with a raw socket (tests/e2e/crafted.py). Which path answered a renewal is read from the
counters and the daemon's `path=fast` lines (`crafted.answered_by`).
"""

import contextlib
import functools
import json
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from tests.e2e import dhcrelay, netns
from tests.e2e.clients import UdhcpcProcess
from tests.e2e.crafted import Subscribers, answered_by, ips, lease_time, request
from tests.e2e.daemon import REPO, Brushtaild, sweep_stale_pins
from tests.e2e.dhcrelay import Dhcrelay
from tests.e2e.netns import (
    CLIENT_IF,
    RELAY_IP,
    SERVER_IF,
    SERVER_IP,
    Downstream,
    Link,
    in_netns,
    ip,
)
from tests.e2e.test_fastpath import (
    FAST_ACK,
    FAST_MISS,
    FAST_OFFER,
    SLOW_ACK,
    START_TIMEOUT,
    scrape,
)
from tests.e2e.xdp_pass import attach_client_pass
from tests.environment import unavailable

EXAMPLE = REPO / "docs" / "examples" / "isp.yaml"
# The access router's business ports, as the example names them: dhcrelay -a writes the
# port's interface name as circuit-id, and its address as giaddr.
DYNAMIC_PORT = ("biz-0017", "198.19.128.1/24")
RESERVED_PORT = ("biz-0042", "198.19.129.1/24")
BUSINESS_ROUTE = "198.19.128.0/23"
# 802.1Q TCIs of the crafted subscribers (priority bits kept in the replies' tags).
N_TO_1 = (0x2000 | 100,)
QINQ_1_TO_1 = (300, 17)
SUBSCRIBER_MAC = bytes.fromhex("020000000101")
QUARANTINED_MAC = bytes.fromhex("020bad000001")
STB_MAC = bytes.fromhex("021a2b000001")
OTHER_MAC = bytes.fromhex("020000000202")
STB_VENDOR_CLASS = b"IPTV-STB-4K"


@dataclass
class Site:
    link: Link
    daemon: Brushtaild
    ports: dict[str, Link]
    workdir: Path


def example_config(daemon: Brushtaild) -> str:
    """The example with this test's interface, state, socket and pin dir."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config["interface"] = SERVER_IF
    config["state_dir"] = str(daemon.state_dir)
    config["control_socket"] = str(daemon.control_socket)
    # Native XDP, as in production: a renewal the router forwards comes in an skb with little
    # room after it, and the program grows the frame at its front (bpf/reply.h, resize).
    fastpath = {"pin_dir": str(daemon.pin_dir), "xdp_mode": "native"}
    config["fastpath"] = {**config.get("fastpath", {}), **fastpath}
    return yaml.safe_dump(config, sort_keys=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    for reason in (netns.available(), dhcrelay.available()):
        if reason is not None:
            unavailable(reason)
    workdir = tmp_path_factory.mktemp("isp")
    sweep_stale_pins()
    with contextlib.ExitStack() as stack:
        link = stack.enter_context(Link(client_ip=RELAY_IP))
        router = link.client_ns
        # XDP_TX on a veth is delivered only if the peer runs XDP too.
        attach_client_pass(link)
        link.run_in(router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        ports = {
            name: stack.enter_context(
                Downstream(server_ns=router, router_if=name, router_ip=address)
            )
            for name, address in (DYNAMIC_PORT, RESERVED_PORT)
        }
        ip("-n", link.server_ns, "route", "add", BUSINESS_ROUTE, "via", RELAY_IP)
        daemon = Brushtaild(link, workdir, fastpath=True)
        stack.callback(daemon.remove_pins)
        stack.enter_context(daemon)
        daemon.config_file.write_text(example_config(daemon))
        daemon.start(START_TIMEOUT)
        relay = Dhcrelay(
            link, router, workdir, downstream=list(ports), upstream=CLIENT_IF, server=SERVER_IP
        )
        stack.enter_context(relay).start()
        yield Site(link, daemon, ports, workdir)


# --- crafted subscribers on the server's link -------------------------------------------


def in_range(address: int, first: str, last: str) -> bool:
    return IPv4Address(first) <= IPv4Address(address) <= IPv4Address(last)


@pytest.mark.parametrize("tcis", [N_TO_1, QINQ_1_TO_1], ids=["N:1 VLAN 100", "QinQ 300.17"])
def test_residential_subscriber_gets_the_residential_pool_and_kernel_renewals(
    site: Site, tcis: tuple[int, ...]
) -> None:
    with Subscribers(site.link) as clients:
        ack = clients.bind(SUBSCRIBER_MAC, tcis)
        assert in_range(ack.yiaddr, "198.19.1.0", "198.19.126.255")
        assert lease_time(ack) == 7200
        assert ips(ack, OptionCode.ROUTERS) == ["198.19.0.1"]
        assert ips(ack, OptionCode.DNS_SERVERS) == ["198.18.0.53", "198.18.0.54"]
        assert ips(ack, OptionCode.NTP_SERVERS) == ["198.19.0.1"]
        assert opt.decode_u16(ack.options[OptionCode.INTERFACE_MTU]) == 1500
        assert ack.options[OptionCode.DOMAIN_SEARCH] == opt.domain_search(
            ["home.example.net", "example.net"]
        )
        assert opt.decode_classless_routes(ack.options[OptionCode.CLASSLESS_STATIC_ROUTE]) == [
            (opt.parse_ip("0.0.0.0"), 0, opt.parse_ip("198.19.0.1")),
            (opt.parse_ip("198.18.32.0"), 20, opt.parse_ip("198.19.0.2")),
        ]
        renewed = clients.kernel_renews(site.daemon, SUBSCRIBER_MAC, tcis, ack.yiaddr)
        # A DISCOVER of the subscriber (its CPE rebooted) is the kernel's too.
        before = scrape(site.daemon)
        offer = clients.discover(SUBSCRIBER_MAC, tcis)
        assert scrape(site.daemon)[FAST_OFFER] > before[FAST_OFFER]
    assert renewed.options == ack.options
    assert (offer.yiaddr, lease_time(offer)) == (ack.yiaddr, 7200)


def test_quarantined_cpe_gets_the_walled_garden_and_kernel_renewals(site: Site) -> None:
    with Subscribers(site.link) as clients:
        ack = clients.bind(QUARANTINED_MAC, N_TO_1)
        assert in_range(ack.yiaddr, "198.19.127.10", "198.19.127.254")
        assert lease_time(ack) == 300
        assert ips(ack, OptionCode.DNS_SERVERS) == ["198.19.127.1"]
        assert ips(ack, OptionCode.ROUTERS) == ["198.19.0.1"]
        renewed = clients.kernel_renews(site.daemon, QUARANTINED_MAC, N_TO_1, ack.yiaddr)
    assert renewed.options == ack.options


def test_set_top_box_gets_its_vendor_options_and_slow_path_renewals(site: Site) -> None:
    """Untagged, on the server's own link, with option 60: the native pool with the class's
    day-long lease and option 43. The lease keeps no option 60, so the kernel cannot tell
    the class and leaves the renewal to the slow path."""
    vendor = {"vendor_class_id": STB_VENDOR_CLASS}
    with Subscribers(site.link) as clients:
        ack = clients.bind(STB_MAC, (), **vendor)
        assert in_range(ack.yiaddr, "198.18.2.0", "198.18.15.254")
        assert lease_time(ack) == 86400
        assert ack.options[OptionCode.VENDOR_SPECIFIC] == bytes.fromhex(
            "0104c612000a0210697074762e6578616d706c652e6e6574"
        )
        assert ips(ack, OptionCode.NTP_SERVERS) == [SERVER_IP]
        assert ips(ack, OptionCode.DNS_SERVERS) == ["198.18.0.53"]
        before = scrape(site.daemon)
        path, renewed = answered_by(
            site.daemon,
            opt.format_ip(ack.yiaddr),
            lambda: clients.renew(STB_MAC, (), ack.yiaddr, **vendor),
        )
    assert path == "slow"
    # The kernel holds no entry for it.
    assert scrape(site.daemon)[FAST_MISS] > before[FAST_MISS]
    assert (renewed.message_type, renewed.options) == (MessageType.ACK, ack.options)


def test_other_untagged_device_gets_the_native_pool_and_kernel_renewals(site: Site) -> None:
    """No class holds for it: its lease has no option 82 to put it in the business class
    and no OUI of the others, so the kernel renews it with the pool's templates."""
    with Subscribers(site.link) as clients:
        ack = clients.bind(OTHER_MAC)
        assert in_range(ack.yiaddr, "198.18.2.0", "198.18.15.254")
        assert lease_time(ack) == 3600
        assert ips(ack, OptionCode.ROUTERS) == [SERVER_IP]
        assert ips(ack, OptionCode.DNS_SERVERS) == ["198.18.0.53"]
        assert OptionCode.VENDOR_SPECIFIC not in ack.options
        renewed = clients.kernel_renews(site.daemon, OTHER_MAC, (), ack.yiaddr)
    assert renewed.options == ack.options


# --- business customers behind ISC dhcrelay -a --------------------------------------------


def business_client(
    site: Site, port: str, run: str = "first"
) -> tuple[UdhcpcProcess, dict[str, str]]:
    """udhcpc behind `port`, bound through the relay: the client and what it was given."""
    downstream = site.ports[port]
    workdir = site.workdir / port / run
    client = UdhcpcProcess(downstream, workdir, discovers=10, request=["ntpsrv", "search"])
    client.start()
    bound = client.wait_bound(15)
    assert bound.reasons[-1] == "bound" and bound.address is not None, bound.log
    return client, client.received()


def stashed(site: Site, address: str) -> dict[str, str]:
    done = site.daemon.cli("leases", "--json", "--address", address)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["leases"]
    return dict(row)


def stored_identity(site: Site, address: str) -> tuple[bytes, bytes, bytes | None]:
    """The client id, MAC and parameter request list the lease of `address` was bound with."""
    uri = f"file:{site.daemon.state_dir / 'leases.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        row = db.execute(
            "SELECT client_id, hwaddr, prl FROM lease WHERE address = ?",
            (opt.parse_ip(address),),
        ).fetchone()
    assert row is not None, f"{address} is not in the lease store"
    return bytes(row[0]), bytes(row[1]), None if row[2] is None else bytes(row[2])


def unicast_renewal(site: Site, port: str, address: str, more: bytes = b"") -> Message:
    """The business client's RENEWING REQUEST, as udhcpc sends it at T1 (its identity and
    request list), from its address straight to server_id, routed by the access router: no
    relay, no option 82. The reply, read on the client's port 68 (udhcpc itself opens its
    socket only after the kernel's ACK is back, and would take the relayed rebinding's).
    `more` asks for more options than the lease's request list, which only the slow path
    answers."""
    downstream = site.ports[port]
    gateway = dict((DYNAMIC_PORT, RESERVED_PORT))[port].split("/")[0]
    ip("-n", downstream.client_ns, "route", "replace", "198.18.0.0/16", "via", gateway)
    client_id, hwaddr, prl = stored_identity(site, address)
    options = {"client_id": client_id}
    if prl is not None or more:
        options["parameter_request_list"] = (prl or b"") + more
    xid = 0x15C000 + opt.parse_ip(address) % 0x1000 + 0x1000 * len(more)
    with in_netns(downstream.client_ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((address, 68))
        sock.settimeout(5.0)
        sent = request(MessageType.REQUEST, hwaddr, xid, options, ciaddr=opt.parse_ip(address))
        sock.sendto(sent, (SERVER_IP, 67))
        while True:
            reply = parse(sock.recv(2048))
            if reply.xid == xid:
                return reply


def check_renewals(site: Site, port: str, address: str, **expected: list[str] | str) -> None:
    """Unicast renewals are answered with the class's lease time and `expected` options
    (the lease's class, from its stashed option 82), on both paths: by the kernel, and by
    the slow path when the kernel cannot answer (a request list it has no template for)."""
    for more, answering in ((b"", "kernel"), (bytes((OptionCode.TIME_OFFSET,)), "slow")):
        renewal = functools.partial(unicast_renewal, site, port, address, more)
        path, reply = answered_by(site.daemon, address, renewal)
        assert (reply.message_type, opt.format_ip(reply.yiaddr)) == (MessageType.ACK, address)
        assert lease_time(reply) == 28800, answering
        for name, value in expected.items():
            code = OptionCode[name.upper()]
            got = reply.options[code].decode() if isinstance(value, str) else ips(reply, code)
            assert got == value, (answering, name)
        assert path == answering


def check_relayed_again(site: Site, port: str, address: str) -> None:
    """udhcpc starting over behind `port` (DISCOVER and REQUEST, relayed with the port's
    option 82 as it is now) is answered by the slow path, which classifies them afresh:
    the kernel answers none of them, whatever entry the lease has."""
    before = scrape(site.daemon)
    client, got = business_client(site, port, "again")
    with client:
        assert (got["ip"], got["lease"]) == (address, "28800"), got
    after = scrape(site.daemon)
    assert (after[FAST_OFFER], after[FAST_ACK]) == (before[FAST_OFFER], before[FAST_ACK])
    assert after[SLOW_ACK] > before[SLOW_ACK]


def test_business_customer_behind_dhcrelay_gets_its_class(site: Site) -> None:
    client, got = business_client(site, DYNAMIC_PORT[0])
    with client:
        address = got["ip"]
        # The first pool of its shared network, as the class orders them.
        assert IPv4Address(address) in IPv4Network("198.19.128.0/24")
        assert in_range(opt.parse_ip(address), "198.19.128.10", "198.19.128.250")
        assert got["lease"] == "28800", got
        assert got["router"] == "198.19.128.1", got
        assert got["dns"] == "198.18.0.63 198.18.0.64", got
        assert got["search"] == "biz.example.net", got
        assert got["ntpsrv"] == SERVER_IP, got
        assert got["domain"] == "biz.example.net", got
        row = stashed(site, address)
        # dhcrelay -a: circuit-id is the port's interface name, and no remote-id.
        assert (row["pool"], row["circuit_id"], row["remote_id"]) == ("business", "biz-0017", "")
        client.kill()  # its address stays on the interface
        check_renewals(
            site, DYNAMIC_PORT[0], address,
            dns_servers=["198.18.0.63", "198.18.0.64"], domain_name="biz.example.net",
        )  # fmt: skip
    check_relayed_again(site, DYNAMIC_PORT[0], address)


def test_reserved_business_port_gets_its_address_and_host_options(site: Site) -> None:
    client, got = business_client(site, RESERVED_PORT[0])
    with client:
        address = got["ip"]
        assert address == "198.19.129.5", got
        assert got["lease"] == "28800", got
        assert got["router"] == "198.19.129.1", got
        assert got["dns"] == "198.18.0.63 198.18.0.64", got
        # The host's own options over its class's and its pool's.
        assert got["domain"] == "acme.example.com", got
        assert got["ntpsrv"] == "198.19.129.1", got
        row = stashed(site, address)
        assert (row["pool"], row["circuit_id"]) == ("business-2", "biz-0042")
        client.kill()
        check_renewals(
            site, RESERVED_PORT[0], address,
            dns_servers=["198.18.0.63", "198.18.0.64"], domain_name="acme.example.com",
        )  # fmt: skip
    check_relayed_again(site, RESERVED_PORT[0], address)
