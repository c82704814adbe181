"""Subscribers on VLANs against the real daemon: tagged DHCP frames crafted and read with
raw sockets on a veth pair (this kernel has no 8021q module, and the server needs no VLAN
interface), with the fast path off and on. With it on, the tagged renewal is answered in
the kernel, with the client's tags, from the entry the slow path's lease installed."""

import contextlib
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode, parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from tests.bpf.frames import client_frame
from tests.e2e.daemon import Brushtaild, sweep_stale_pins
from tests.e2e.netns import CLIENT_IF, SERVER_IP, Link, in_netns
from tests.e2e.test_fastpath import START_TIMEOUT, fast_acks
from tests.e2e.test_packet_io import next_tagged_udp_to
from tests.e2e.xdp_pass import attach_client_pass

ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_AUXDATA = 263, 8
# The pool serves VLAN 100 and QinQ S-VLAN 300 with any C-VLAN; the TCIs carry priority
# bits, which the replies must keep.
POOL_VLANS = ["100", "300.*"]
TAGGINGS = {"802.1Q": (0xA000 | 100,), "QinQ": (300, 0x2000 | 7)}


@contextlib.contextmanager
def tagged_client(link: Link) -> Iterator[socket.socket]:
    with in_netns(link.client_ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind((CLIENT_IF, ETH_P_ALL))
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.settimeout(5.0)
        yield sock
    finally:
        sock.close()


def message(mtype: MessageType, mac: bytes, xid: int, ciaddr: int = 0,
            **options: bytes) -> bytes:  # fmt: skip
    extra = {OptionCode[name.upper()]: value for name, value in options.items()}
    return encode(
        Message(
            op=1,
            xid=xid,
            ciaddr=ciaddr,
            chaddr=mac.ljust(16, b"\0"),
            options={OptionCode.MESSAGE_TYPE: bytes((mtype,)), **extra},
        )
    )


def exchange(sock: socket.socket, frame: bytes, tags: bytes, xid: int) -> Message:
    """Sends `frame` and returns the reply to it, checking it came back with `tags`."""
    sock.send(frame)
    while True:
        got_tags, reply = next_tagged_udp_to(sock, 68)
        msg = parse(reply[42:])
        if msg.xid == xid:
            assert got_tags == tags
            return msg


def stored_vlans(state_dir: Path, address: int) -> tuple[int, int]:
    uri = f"file:{state_dir / 'leases.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        row = db.execute(
            "SELECT outer_vlan, inner_vlan FROM lease WHERE address = ?", (address,)
        ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.parametrize("fastpath", [False, True], ids=["slow path", "fast path"])
def test_tagged_subscribers_get_and_renew_leases_with_their_tags(
    link: Link, tmp_path: Path, fastpath: bool
) -> None:
    """One MAC on VLAN 100 and on QinQ 300.7, two subscribers of a pool that lists both:
    DISCOVER, REQUEST and a unicast RENEWING REQUEST, each answered with the tags it came
    with; each lease is stored with its VLANs. With the fast path, the renewal is answered
    in the kernel once the lease's entry (keyed with the VLANs) is there."""
    if fastpath:
        sweep_stale_pins()
        attach_client_pass(link)
    daemon = Brushtaild(link, tmp_path, fastpath=fastpath, vlans=POOL_VLANS)
    mac = link.client_mac
    server_mac = link.server_mac
    server_id = opt.ip(opt.parse_ip(SERVER_IP))
    try:
        daemon.start(START_TIMEOUT)
        addresses = set()
        with tagged_client(link) as sock:
            for n, (name, tcis) in enumerate(TAGGINGS.items()):
                vids = tuple(tci & 0x0FFF for tci in tcis)
                tags = client_frame(b"", src_mac=mac, vlans=tcis)[12 : 12 + 4 * len(tcis)]
                xid = 0x7A600 + 64 * n
                discover = client_frame(
                    message(MessageType.DISCOVER, mac, xid), src_mac=mac, vlans=tcis
                )
                offer = exchange(sock, discover, tags, xid)
                assert offer.message_type is MessageType.OFFER, name
                address = offer.yiaddr
                addresses.add(address)
                request = message(
                    MessageType.REQUEST, mac, xid + 1,
                    requested_address=opt.ip(address), server_id=server_id,
                )  # fmt: skip
                frame = client_frame(request, src_mac=mac, vlans=tcis)
                ack = exchange(sock, frame, tags, xid + 1)
                assert (ack.message_type, ack.yiaddr) == (MessageType.ACK, address), name
                assert stored_vlans(daemon.state_dir, address) == (*vids, 0)[:2], name
                # RENEWING: unicast from the address to the server, still tagged; with the
                # fast path, again until the kernel has the entry and answers one.
                text = opt.format_ip(address)
                answered_before = len(fast_acks(daemon, text))
                for attempt in range(2, 40 if fastpath else 3):
                    renew = message(MessageType.REQUEST, mac, xid + attempt, ciaddr=address)
                    frame = client_frame(
                        renew, src_mac=mac, dst_mac=server_mac, src_ip=text, dst_ip=SERVER_IP,
                        vlans=tcis,
                    )  # fmt: skip
                    renewed = exchange(sock, frame, tags, xid + attempt)
                    assert (renewed.message_type, renewed.yiaddr) == (MessageType.ACK, address)
                    if not fastpath or len(fast_acks(daemon, text)) > answered_before:
                        break
                    time.sleep(0.25)
                else:
                    raise AssertionError(f"{name}: no renewal answered in the kernel")
        assert len(addresses) == len(TAGGINGS)
    finally:
        daemon.kill()
        if fastpath:
            daemon.remove_pins()
