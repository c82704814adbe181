"""brushtaild/net/next_hop.py against the kernel's own routing and neighbour tables, in
namespaces of our own: the MAC a reply to a relay leaves for, or None where XDP_TX on the
served interface cannot send it."""

import socket
import time
from collections.abc import Callable

from brushtaild.dhcp import options as opt
from brushtaild.net.next_hop import NextHops
from tests.e2e.netns import RELAY_IP, SERVER_IF, SERVER_IP, Link, in_netns, ip

ip4 = opt.parse_ip
ROUTED = "198.19.0.0/17"  # behind the relay
ELSEWHERE = "198.19.128.0/17"  # out of another interface of the server


def eventually(check: Callable[[], bytes | None], timeout: float = 3.0) -> bytes | None:
    deadline = time.monotonic() + timeout
    while (found := check()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_next_hops_follow_routing_and_arp(relay_link: Link) -> None:
    ns = relay_link.server_ns
    ip("-n", ns, "route", "add", ROUTED, "via", RELAY_IP)
    ip("-n", ns, "link", "add", "side0", "type", "veth", "peer", "name", "side1")
    ip("-n", ns, "link", "set", "side0", "up")
    ip("-n", ns, "route", "add", ELSEWHERE, "dev", "side0")
    relay_mac = relay_link.client_mac
    with in_netns(ns):
        hops = NextHops(SERVER_IF)
        try:
            # Not resolved until something is sent that way (the slow path's reply).
            assert hops.mac(ip4(RELAY_IP)) is None
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.sendto(b"\0", (RELAY_IP, 67))
            assert eventually(lambda: hops.mac(ip4(RELAY_IP))) == relay_mac
            # Through the relay as gateway, the same next hop.
            assert hops.mac(ip4("198.19.5.5")) == relay_mac
            assert hops.mac(ip4(SERVER_IP)) is None  # local
            assert hops.mac(ip4("198.19.130.1")) is None  # leaves by another interface
            assert hops.mac(ip4("198.18.77.77")) is None  # on the link, never resolved
        finally:
            hops.close()
