"""Where the kernel would send a packet: the next hop's MAC, from its routing and
neighbour tables over netlink.

The fast path answers a relay in place (XDP_TX), below the IP stack, so it must be told the
MAC that routing would pick for the relay's giaddr: the frame's own L2 source is whatever
host sent it, and any host on the link can write a giaddr.
"""

import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

RTN_UNICAST = 1  # linux/rtnetlink.h: a route through a gateway or straight to the link
# linux/neighbour.h: states whose link-layer address the kernel itself would send to.
NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE, NUD_PERMANENT = 0x02, 0x04, 0x08, 0x10, 0x80
NUD_USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT


class NextHops:
    """Resolves addresses to the MAC of their next hop on one interface."""

    def __init__(self, ifname: str) -> None:
        self._ipr = IPRoute()
        # Looked up on the netlink socket, so in the network namespace it was opened in.
        found = self._ipr.link_lookup(ifname=ifname)
        self._ifindex = found[0] if found else 0

    def mac(self, address: int) -> bytes | None:
        """The MAC a packet to `address` (host-order IPv4) would be sent to, or None if
        it would not leave by our interface, or its next hop is not resolved (yet)."""
        dst = socket.inet_ntoa(address.to_bytes(4, "big"))
        ifindex = self._ifindex
        try:
            routes = self._ipr.route("get", dst=dst)
            if not routes:
                return None
            route = routes[0]
            # A local or broadcast route, or one out of another interface: XDP_TX cannot
            # send there.
            if route["type"] != RTN_UNICAST or route.get_attr("RTA_OIF") != ifindex:
                return None
            hop = route.get_attr("RTA_GATEWAY") or dst
            neighbours = self._ipr.neigh("get", dst=hop, ifindex=ifindex)
        except (NetlinkError, OSError):
            # No route (ENETUNREACH), no neighbour entry (ENOENT), the interface gone.
            return None
        for neighbour in neighbours:
            lladdr = neighbour.get_attr("NDA_LLADDR")
            if neighbour["state"] & NUD_USABLE and lladdr:
                mac = bytes.fromhex(lladdr.replace(":", ""))
                if len(mac) == 6:
                    return mac
        return None

    def close(self) -> None:
        self._ipr.close()
