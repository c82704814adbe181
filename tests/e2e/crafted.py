"""Crafted subscribers on a Link's server link, and which path answered them.

A `Subscribers` sends DHCP requests for any MAC, untagged or on VLANs, from one raw socket
on the Link's client end, and reads the replies back (tags included), as
tests/e2e/test_vlans.py does. `answered_by` reads which path answered from the counters: the
kernel's `dhcp_fastpath_requests_total{result="ack"}` with the daemon's `path=fast` line
for the address, or the slow path's ACK and NAK counters.
"""

import contextlib
import socket
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self, TypeVar

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from tests.bpf.frames import client_frame
from tests.e2e.daemon import Brushtaild
from tests.e2e.netns import SERVER_IF, SERVER_IP, Link, ip
from tests.e2e.test_fastpath import FAST_ACK, SLOW_ACK, SLOW_NAK, fast_acks, scrape, wait_until
from tests.e2e.test_vlans import exchange, tagged_client

T = TypeVar("T")
SERVER_ID = opt.ip(opt.parse_ip(SERVER_IP))


def request(
    mtype: MessageType, mac: bytes, xid: int, options: Mapping[str, bytes], ciaddr: int = 0
) -> bytes:
    """A request's BOOTP message; `options` by OptionCode name (vendor_class_id=b"...")."""
    coded: dict[int, bytes] = {OptionCode.MESSAGE_TYPE: bytes((mtype,))}
    coded.update((OptionCode[name.upper()], value) for name, value in options.items())
    return encode(Message(op=1, xid=xid, ciaddr=ciaddr, chaddr=mac.ljust(16, b"\0"),
                          options=coded))  # fmt: skip


def tags_of(tcis: tuple[int, ...], mac: bytes) -> bytes:
    """The tags of a frame sent on `tcis`, as the reply must carry them."""
    return client_frame(b"", src_mac=mac, vlans=tcis)[12 : 12 + 4 * len(tcis)]


class Subscribers:
    """Crafted clients on `link`'s client end; use as a context manager."""

    def __init__(self, link: Link, first_xid: int = 0x15B000) -> None:
        self.link = link
        self._xids = iter(range(first_xid, first_xid + 0x10000))
        self._stack = contextlib.ExitStack()
        self.sock: socket.socket | None = None

    def __enter__(self) -> Self:
        self.sock = self._stack.enter_context(tagged_client(self.link))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def _exchange(self, frame: bytes, tags: bytes, xid: int) -> Message:
        assert self.sock is not None, "use Subscribers as a context manager"
        return exchange(self.sock, frame, tags, xid)

    def discover(self, mac: bytes, tcis: tuple[int, ...] = (), **options: bytes) -> Message:
        """A DISCOVER from `mac` on `tcis`: the OFFER."""
        xid = next(self._xids)
        discover = request(MessageType.DISCOVER, mac, xid, options)
        frame = client_frame(discover, src_mac=mac, vlans=tcis)
        offer = self._exchange(frame, tags_of(tcis, mac), xid)
        assert offer.message_type is MessageType.OFFER
        return offer

    def bind(self, mac: bytes, tcis: tuple[int, ...] = (), **options: bytes) -> Message:
        """DISCOVER and REQUEST from `mac` on `tcis`: the ACK. The server's end is told
        the client's MAC for its address, which no ARP reply would give it, so that the slow
        path's unicast replies to it (through the stack, when untagged) reach it."""
        offer = self.discover(mac, tcis, **options)
        xid = next(self._xids)
        chosen = request(
            MessageType.REQUEST, mac, xid,
            {"requested_address": opt.ip(offer.yiaddr), "server_id": SERVER_ID, **options},
        )  # fmt: skip
        frame = client_frame(chosen, src_mac=mac, vlans=tcis)
        ack = self._exchange(frame, tags_of(tcis, mac), xid)
        assert (ack.message_type, ack.yiaddr) == (MessageType.ACK, offer.yiaddr)
        if not tcis:
            text = opt.format_ip(ack.yiaddr)
            ip("-n", self.link.server_ns, "neigh", "replace", text, "lladdr", mac.hex(":"),
               "dev", SERVER_IF)  # fmt: skip
        return ack

    def renew(self, mac: bytes, tcis: tuple[int, ...], address: int, **options: bytes) -> Message:
        """A RENEWING REQUEST, unicast from `address` to the server: the reply."""
        xid = next(self._xids)
        text = opt.format_ip(address)
        frame = client_frame(
            request(MessageType.REQUEST, mac, xid, options, ciaddr=address),
            src_mac=mac, dst_mac=self.link.server_mac, src_ip=text, dst_ip=SERVER_IP,
            vlans=tcis,
        )  # fmt: skip
        return self._exchange(frame, tags_of(tcis, mac), xid)

    def kernel_renews(
        self,
        daemon: Brushtaild,
        mac: bytes,
        tcis: tuple[int, ...],
        address: int,
        **options: bytes,
    ) -> Message:
        """Renews until the kernel answers: its ACK. The entry is written right after the
        commit that bound the lease, before the ACK is sent, so at once unless the machine
        is slow."""
        text = opt.format_ip(address)
        for _ in range(10):
            path, ack = answered_by(daemon, text, lambda: self.renew(mac, tcis, address, **options))
            if path == "kernel":
                assert (ack.message_type, ack.yiaddr) == (MessageType.ACK, address)
                return ack
            time.sleep(0.3)
        raise AssertionError(f"no renewal of {text} answered in the kernel")


def answered_by(daemon: Brushtaild, address: str, send: Callable[[], T]) -> tuple[str, T]:
    """What `send()` returned, and which path answered the request it sent: 'kernel' (the
    kernel's ACK counter moved and the daemon recorded a path=fast renewal of `address`) or
    'slow' (only the slow path's ACK or NAK counter moved)."""
    before = scrape(daemon)
    fast_before = len(fast_acks(daemon, address))
    result = send()

    def moved() -> str:
        now = scrape(daemon)
        if now[FAST_ACK] > before[FAST_ACK]:
            return "kernel" if len(fast_acks(daemon, address)) > fast_before else ""
        slow = now[SLOW_ACK] + now[SLOW_NAK] > before[SLOW_ACK] + before[SLOW_NAK]
        return "slow" if slow else ""

    return wait_until(f"answer to {address} counted", moved, timeout=10), result


def ips(msg: Message, code: OptionCode) -> list[str]:
    return [opt.format_ip(a) for a in opt.decode_ip_list(msg.options[code])]


def lease_time(msg: Message) -> int:
    return opt.decode_u32(msg.options[OptionCode.LEASE_TIME])
