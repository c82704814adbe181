"""PacketIO on a real veth: raw receive with its kernel filter, frame and UDP sends.

Frames are built and checked with tests/unit/test_packet_io.py's plain word-loop checksum,
independent of the residue arithmetic in packet_io, so the two cross-check each other.
"""

import contextlib
import select
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from brushtaild.engine.decisions import Destination, DestKind, Ingress
from brushtaild.net.packet_io import PacketIO, Received
from brushtaild.xdp import loader
from tests.bpf.frames import client_frame
from tests.e2e import netns
from tests.e2e.netns import Link, in_netns
from tests.unit.test_packet_io import discover, ones_sum, udp_frame

SERVER_IP = 0xC6120001  # 198.18.0.1
RELAY_IP = 0xC6120002  # 198.18.0.2
YIADDR = 0xC6120063  # 198.18.0.99
BROADCAST_IP = 0xFFFFFFFF
BROADCAST_MAC = b"\xff" * 6
ETH_P_ALL = 0x0003
WAIT = 2.0


@contextlib.contextmanager
def server_io(link: Link) -> Iterator[PacketIO]:
    with in_netns(link.server_ns):
        io = PacketIO(netns.SERVER_IF, SERVER_IP)
    try:
        yield io
    finally:
        io.close()


@contextlib.contextmanager
def client_raw(link: Link) -> Iterator[socket.socket]:
    with in_netns(link.client_ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind((netns.CLIENT_IF, ETH_P_ALL))
        sock.settimeout(WAIT)
        yield sock
    finally:
        sock.close()


def receive(io: PacketIO, want: int = 1) -> tuple[list[tuple[bytes, Ingress]], int]:
    """Collect until `want` frames (good or malformed) arrived, or WAIT passed."""
    got: list[tuple[bytes, Ingress]] = []
    malformed = 0
    deadline = time.monotonic() + WAIT
    while len(got) + malformed < want and time.monotonic() < deadline:
        select.select([io], [], [], max(0.0, deadline - time.monotonic()))
        batch = io.receive_batch(64)
        assert batch.error is None and batch.stale == 0
        got += batch.frames
        malformed += batch.malformed
    return got, malformed


def next_udp_to(sock: socket.socket, port: int) -> bytes:
    """The next IPv4/UDP frame to `port` seen on the raw socket."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        frame = sock.recv(65535)
        if frame[12:14] == b"\x08\x00" and frame[23] == 17:
            ihl = (frame[14] & 0x0F) * 4
            if struct.unpack_from("!H", frame, 14 + ihl + 2)[0] == port:
                return frame
    raise AssertionError(f"no UDP frame to port {port} within {WAIT}s")


def check_reply_frame(frame: bytes, *, dst_mac: bytes, src_mac: bytes, dst_ip: int,
                      payload: bytes) -> None:  # fmt: skip
    assert frame[0:6] == dst_mac
    assert frame[6:12] == src_mac
    ip = frame[14:34]
    ver_ihl, _tos, total, _id, frag, ttl, proto, _csum, src, dst = struct.unpack("!BBHHHBBHII", ip)
    assert (ver_ihl, ttl, proto, frag) == (0x45, 64, 17, 0)  # DF off, no options
    assert (src, dst) == (SERVER_IP, dst_ip)
    assert ones_sum(ip) == 0xFFFF, "bad IPv4 header checksum"
    udp = frame[34 : 14 + total]
    sport, dport, udp_len, udp_csum = struct.unpack_from("!HHHH", udp)
    assert (sport, dport, udp_len) == (67, 68, 8 + len(payload))
    assert udp_csum != 0, "UDP checksum must be filled in"
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, udp_len)
    assert ones_sum(pseudo + udp) == 0xFFFF, "bad UDP checksum"
    assert udp[8:] == payload


# --- on a veth between namespaces ---------------------------------------------------------


def test_missing_interface_names_it() -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    with pytest.raises(OSError, match="no-such-if0"):
        PacketIO("no-such-if0", SERVER_IP)


def test_receives_broadcast_discover(link: Link) -> None:
    client_mac = link.client_mac
    payload = discover(client_mac)
    with server_io(link) as io, client_raw(link) as cli:
        cli.send(udp_frame(client_mac, BROADCAST_MAC, 0, BROADCAST_IP, payload))
        got, malformed = receive(io)
        sub0 = link.ifindex(link.server_ns, netns.SERVER_IF)
        assert got == [(payload, Ingress(sub0, client_mac, 0, BROADCAST_IP))]
        assert malformed == 0
        assert io.kernel_drops() == 0


def test_fragment_and_bad_headers_are_counted_malformed(link: Link) -> None:
    mac = link.client_mac
    bad = [
        udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac), frag=0x2000),
        udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac), good_checksum=False),
        udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac), udp_len=1000),
    ]
    with server_io(link) as io, client_raw(link) as cli:
        for frame in bad:
            cli.send(frame)
        cli.send(udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac)))
        got, malformed = receive(io, want=4)
        assert (len(got), malformed) == (1, 3)


def test_filter_keeps_other_traffic_in_the_kernel(link: Link) -> None:
    mac = link.client_mac
    server_mac = link.server_mac
    # Promiscuous, the veth also delivers frames for other MACs: those must not reach us.
    link.run_in(link.server_ns, ["ip", "link", "set", netns.SERVER_IF, "promisc", "on"])
    noise = [
        udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac), dport=68),
        udp_frame(mac, bytes.fromhex("020000000099"), 0, BROADCAST_IP, discover(mac)),
        udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac), proto=6),
        udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac), frag=0x0010),
        BROADCAST_MAC + mac + b"\x08\x06" + bytes(28),  # ARP
        # Three tags: the kernel takes the outer one off, and two are left in the frame.
        client_frame(discover(mac), src_mac=mac, vlans=(100, 200, 300)),
        # QinQ to port 68 (dport at Ethernet, two tags, IPv4, two bytes in).
        (qinq := client_frame(discover(mac), src_mac=mac, vlans=(100, 200)))[:44]
        + b"\x00\x44"
        + qinq[46:],
    ]
    last = discover(mac, xid=42)
    with server_io(link) as io, client_raw(link) as cli:
        for frame in noise:
            cli.send(frame)
        cli.send(udp_frame(mac, server_mac, 0, SERVER_IP, last))
        # The veth keeps order, so once `last` is here the noise has been judged.
        got, malformed = receive(io)
        assert [p for p, _ in got] == [last]
        assert malformed == 0


def test_broadcast_and_link_unicast_replies_arrive_with_valid_checksums(link: Link) -> None:
    client_mac = link.client_mac
    ingress = Ingress(link.ifindex(link.server_ns, netns.SERVER_IF), client_mac, 0, BROADCAST_IP)
    with server_io(link) as io, client_raw(link) as cli:
        for payload in (b"\x02" + bytes(299), b"\x02" + bytes(300)):  # even and odd length
            io.send(payload, Destination(DestKind.BROADCAST, BROADCAST_IP, 68), ingress)
            check_reply_frame(
                next_udp_to(cli, 68),
                dst_mac=BROADCAST_MAC, src_mac=io.mac, dst_ip=BROADCAST_IP, payload=payload,
            )  # fmt: skip
            dest = Destination(DestKind.LINK_UNICAST, YIADDR, 68, client_mac)
            io.send(payload, dest, ingress)
            check_reply_frame(
                next_udp_to(cli, 68),
                dst_mac=client_mac, src_mac=io.mac, dst_ip=YIADDR, payload=payload,
            )  # fmt: skip


# (TCIs as sent, VLAN ids the server reads): priority bits kept, VID 0 names no VLAN.
TAGGINGS = [
    ((0xA000 | 100,), (100,)),
    ((100, 0x2000 | 7), (100, 7)),
    ((0x6000,), ()),
]


def set_rx_vlan_offload(link: Link, on: bool) -> None:
    with in_netns(link.server_ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = loader.ethtool_flags(sock, netns.SERVER_IF, loader.ETHTOOL_GFLAGS)
        flags = flags | loader.ETH_FLAG_RXVLAN if on else flags & ~loader.ETH_FLAG_RXVLAN
        loader.ethtool_flags(sock, netns.SERVER_IF, loader.ETHTOOL_SFLAGS, flags)
        got = loader.ethtool_flags(sock, netns.SERVER_IF, loader.ETHTOOL_GFLAGS)
    assert bool(got & loader.ETH_FLAG_RXVLAN) is on


@pytest.mark.parametrize("offload", [True, False], ids=["rxvlan on", "rxvlan off"])
def test_receives_tagged_requests_with_their_vlans(link: Link, offload: bool) -> None:
    """The kernel hands the packet socket the frame without its outer tag and the tag in
    PACKET_AUXDATA, whether rx VLAN offload is on (as without the fast path) or off (as the
    fast path leaves it); an inner tag stays in the frame. The tags read back are the ones
    sent, TPIDs and priority bits included."""
    set_rx_vlan_offload(link, offload)
    mac = link.client_mac
    sub0 = link.ifindex(link.server_ns, netns.SERVER_IF)
    with server_io(link) as io, client_raw(link) as cli:
        for tcis, vlans in TAGGINGS:
            payload = discover(mac, xid=len(tcis))
            frame = client_frame(payload, src_mac=mac, vlans=tcis)
            cli.send(frame)
            got, malformed = receive(io)
            tags = frame[12 : 12 + 4 * len(tcis)]
            assert got == [(payload, Ingress(sub0, mac, 0, BROADCAST_IP, vlans, tags))]
            assert malformed == 0


def next_tagged_udp_to(sock: socket.socket, port: int) -> tuple[bytes, bytes]:
    """The next IPv4/UDP frame to `port` on `sock` (PACKET_AUXDATA on): its tags, the outer
    one read from the auxdata (struct tpacket_auxdata), and the frame without them."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        frame, ancillary, _flags, _addr = sock.recvmsg(65535, 256)
        tags = b""
        for level, kind, data in ancillary:
            if (level, kind) == (263, 8):  # SOL_PACKET, PACKET_AUXDATA
                status, *_lengths, tci, tpid = struct.unpack("=IIIHHHH", data)
                if status & 0x10:  # TP_STATUS_VLAN_VALID
                    tags = struct.pack("!HH", tpid, tci)
        while frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
            tags, frame = tags + frame[12:16], frame[:12] + frame[16:]
        if frame[12:14] == b"\x08\x00" and frame[23] == 17:
            ihl = (frame[14] & 0x0F) * 4
            if struct.unpack_from("!H", frame, 14 + ihl + 2)[0] == port:
                return tags, frame
    raise AssertionError(f"no UDP frame to port {port} within {WAIT}s")


def test_tagged_replies_carry_the_request_tags(link: Link) -> None:
    """Broadcast, link-unicast and unicast (RENEWING) replies to a tagged client are framed
    with its tags as received: no route of ours reaches its VLAN."""
    mac = link.client_mac
    sub0 = link.ifindex(link.server_ns, netns.SERVER_IF)
    payload = b"\x02" + bytes(299)
    with server_io(link) as io, client_raw(link) as cli:
        cli.setsockopt(263, 8, 1)
        for tcis, vlans in TAGGINGS:
            tags = client_frame(b"", src_mac=mac, vlans=tcis)[12 : 12 + 4 * len(tcis)]
            for dest, dst_mac, dst_ip in [
                (Destination(DestKind.BROADCAST, BROADCAST_IP, 68), BROADCAST_MAC, BROADCAST_IP),
                (Destination(DestKind.LINK_UNICAST, YIADDR, 68, mac), mac, YIADDR),
                (Destination(DestKind.UNICAST, YIADDR, 68), mac, YIADDR),
            ]:
                ingress = Ingress(sub0, mac, YIADDR, SERVER_IP, vlans, tags)
                io.send(payload, dest, ingress)
                got_tags, frame = next_tagged_udp_to(cli, 68)
                assert got_tags == tags
                check_reply_frame(
                    frame, dst_mac=dst_mac, src_mac=io.mac, dst_ip=dst_ip, payload=payload
                )


def test_relay_and_unicast_replies_go_through_the_kernel(relay_link: Link) -> None:
    link = relay_link
    ingress = Ingress(link.ifindex(link.server_ns, netns.SERVER_IF), link.client_mac,
                      RELAY_IP, SERVER_IP)  # fmt: skip
    with in_netns(link.client_ns):
        relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server_io(link) as io, relay, client:
        relay.bind((netns.RELAY_IP, 67))
        client.bind((netns.RELAY_IP, 68))
        relay.settimeout(WAIT)
        client.settimeout(WAIT)
        io.send(b"relayed", Destination(DestKind.RELAY, RELAY_IP, 67), ingress)
        assert relay.recvfrom(2048) == (b"relayed", (netns.SERVER_IP, 67))
        io.send(b"renewed", Destination(DestKind.UNICAST, RELAY_IP, 68), ingress)
        assert client.recvfrom(2048) == (b"renewed", (netns.SERVER_IP, 67))
        # Our own reply to port 67 left through sub0; the raw socket must not read it back.
        time.sleep(0.1)
        assert io.receive_batch(16) == Received()


def test_unicast_request_is_read_raw_and_not_refused(relay_link: Link) -> None:
    link = relay_link
    with in_netns(link.client_ns):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server_io(link) as io, client:
        client.bind((netns.RELAY_IP, 68))
        client.connect((netns.SERVER_IP, 67))
        request = discover(link.client_mac)
        client.send(request)
        got, _ = receive(io)
        assert [(p, i.src_ip, i.dst_ip) for p, i in got] == [(request, RELAY_IP, SERVER_IP)]
        # Without the bound UDP socket the kernel would answer ICMP port-unreachable, which a
        # connected socket reports as ECONNREFUSED on its next call.
        time.sleep(0.1)
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.recv(16)


def test_reply_for_another_interface_is_refused(link: Link) -> None:
    with server_io(link) as io:
        ingress = Ingress(io.ifindex + 1, link.client_mac, 0, BROADCAST_IP)
        with pytest.raises(ValueError, match="sub0"):
            io.send(b"x", Destination(DestKind.BROADCAST, BROADCAST_IP, 68), ingress)


def test_overflow_is_counted_as_kernel_drops(link: Link) -> None:
    mac = link.client_mac
    frame = udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac))
    sent = 20_000
    with server_io(link) as io, client_raw(link) as cli:
        for _ in range(sent):
            cli.send(frame)
        drops = io.kernel_drops()
        assert io.kernel_drops() == 0, "the counter resets on each read"
        queued = 0
        while batch := io.receive_batch(1024).frames:
            queued += len(batch)
    assert drops > 0
    assert queued + drops <= sent
    # The default 208 KiB buffer holds a few hundred of these; 4 MiB holds thousands.
    assert queued > 2_000
