"""The daemon's only DHCP socket module: raw frames in, Ethernet frames or UDP datagrams out.

Receive: one AF_PACKET socket per served interface. A UDP socket cannot see the broadcast
DISCOVERs and REQUESTs of clients that have no address yet together with their source MAC,
and once the XDP fast path is loaded, the frames it declines (XDP_PASS) go up this same
path, so one raw socket is the single receive point for every request. A classic-BPF
filter runs in the kernel so we are only woken for IPv4 UDP to port 67 that was addressed
to this host (unicast to our MAC or broadcast); everything else, including frames the
interface only sees because it is promiscuous, never leaves the kernel.
PACKET_IGNORE_OUTGOING keeps our own transmissions, notably relay replies to port 67, from
looping back into the socket; the filter's packet-type check would reject them as well, but
only after the kernel had cloned each one for us.

VLANs (802.1Q, and QinQ: 802.1ad outer, 802.1Q inner). The socket is bound with ETH_P_ALL
rather than ETH_P_IP because only the ETH_P_ALL taps run on the parent interface before
VLAN demultiplexing, so tagged subscribers reach it without a VLAN interface each. The
kernel always takes the outer tag off before packet taps see the frame, in hardware (rx
VLAN offload) or else in software (skb_vlan_untag in the receive path), and reports it out
of band: PACKET_AUXDATA gives it back as tp_vlan_tpid and tp_vlan_tci. An inner QinQ tag
stays in the frame. So what this socket sees is the same whether or not the XDP fast path
turned rx VLAN offload off (which only changes what the XDP program sees, and always runs
before the tag is taken off): the frame without its outer tag, the filter included, which
accepts IPv4 right after the MACs, or after one in-frame tag when an outer one was taken
off (at most two tags, as the XDP program takes). The VLAN ids of a request are its tags'
nonzero VIDs, outer first: a priority tag (VID 0, 802.1p) names no VLAN, so a client is the
same subscriber with or without one, as the XDP program keys it (bpf/parsing.h). The tags
as received (TPID and TCI, so priority bits too) go back on the reply frame.

Send: BROADCAST and LINK_UNICAST replies go to clients that have no usable address, so
they are built here as complete Ethernet/IPv4/UDP frames and written to the AF_PACKET
socket: LINK_UNICAST reaches chaddr at yiaddr without ARP, as RFC 2131 section 4.1 asks.
RELAY (giaddr:67) and UNICAST (ciaddr:68) replies go to hosts that have an address, so an
ordinary UDP socket bound to (server_id, 67) sends them and the kernel routes and ARPs;
except a UNICAST reply to a client that came tagged, which no route of ours reaches (no
VLAN interfaces): it is framed here too, to the MAC the request came from, with its tags.
That socket's receive queue is never read, so a drop-everything filter keeps it empty; it
is bound all the same, because the bound port is what stops the kernel answering unicast
requests (which we read from the raw socket) with ICMP port-unreachable.

Requests that waited in the receive queue longer than a client waits for its answer are
counted as stale instead of returned (the daemon picks the age; see main.MAX_QUEUE_AGE), and
those that waited less but still long enough to be shed under a backlog are returned marked
as aged (main.MAX_DISCOVER_AGE: the daemon drops the DISCOVERs among them). The kernel stamps
each frame as it arrives (SO_TIMESTAMPNS). Every frame is read with recvmsg, since the outer
VLAN tag comes only as ancillary data (about 2.5 times the cost of recv, some 2 us more per
frame, bench/recv_timestamps.py); the stamp is looked at only up to the first frame of a
batch that is not aged: the queue is FIFO, and every frame behind it is fresher.

Errors: BlockingIOError ends a batch (the queue is empty); any other error on receive
(ENETDOWN after the link went down, ...) ends it too and is handed to the caller with what
was read before it, so one bad moment of the link loses no request already read. Send
errors are the caller's to count: send() raises them.

UDP checksums are not verified on receive: a datagram that a local stack sent across a
veth (perfdhcp, a relay in another namespace) still carries CHECKSUM_PARTIAL, i.e. only
the pseudo-header sum, and the Ethernet FCS already covers the link. The IPv4 header
checksum is always computed in software by the sender, so it is verified.
"""

import ctypes
import errno
import select
import socket
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from brushtaild.dhcp.constants import SERVER_PORT
from brushtaild.engine.decisions import Destination, DestKind, Ingress
from brushtaild.net.buffers import grow_receive_buffer

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
VLAN_HLEN = 4
VLAN_VID_MASK = 0x0FFF
IPPROTO_UDP = 17

# linux/if_packet.h; not all of them are exported by the socket module.
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
PACKET_BROADCAST = 1
# asm-generic/socket.h: the kernel's receive time as a struct timespec in a control message.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
# struct tpacket_auxdata: tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_vlan_tci,
# tp_vlan_tpid; the status bits say whether the tag fields hold a tag.
_AUXDATA = struct.Struct("=IIIHHHH")
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_AUXDATA.size)


ETH_HLEN = 14
IP_MIN_HLEN = 20
UDP_HLEN = 8
# The largest frame an IPv4 datagram can make; the filter keeps this much so the parser's
# total-length check is the only place a long frame can be judged truncated.
SNAPLEN = ETH_HLEN + 0xFFFF

_BROADCAST_MAC = b"\xff" * 6
_IP_MF_OR_OFFSET = 0x3FFF
_IP_OFFSET = 0x1FFF
_TTL = 64


# --- classic BPF ---------------------------------------------------------------------------
# linux/filter.h opcodes: class | size | mode for loads, class | op | source for jumps.
_BPF_LD, _BPF_LDX, _BPF_JMP, _BPF_RET = 0x00, 0x01, 0x05, 0x06
_BPF_W, _BPF_H, _BPF_B = 0x00, 0x08, 0x10
_BPF_ABS, _BPF_IND, _BPF_MSH = 0x20, 0x40, 0xA0
_BPF_JEQ, _BPF_JGT, _BPF_JSET = 0x10, 0x20, 0x40
_BPF_K = 0x00
# Ancillary loads read skb metadata instead of packet bytes.
_SKF_AD_OFF = -0x1000
_SKF_AD_PKTTYPE = 4
_SKF_AD_VLAN_TAG_PRESENT = 48

SO_ATTACH_FILTER = 26


class Insn(NamedTuple):
    """One cBPF instruction; jumps name their targets by label, None meaning the next one."""

    code: int
    k: int = 0
    true: str | None = None
    false: str | None = None
    label: str | None = None


def load_word_meta(offset: int, label: str | None = None) -> Insn:
    return Insn(_BPF_LD | _BPF_W | _BPF_ABS, (_SKF_AD_OFF + offset) & 0xFFFFFFFF, label=label)


def load_half(offset: int) -> Insn:
    return Insn(_BPF_LD | _BPF_H | _BPF_ABS, offset)


def load_byte(offset: int, label: str | None = None) -> Insn:
    return Insn(_BPF_LD | _BPF_B | _BPF_ABS, offset, label=label)


def load_half_x(offset: int) -> Insn:
    """A = halfword at X + offset."""
    return Insn(_BPF_LD | _BPF_H | _BPF_IND, offset)


def load_x_ip_hlen(offset: int) -> Insn:
    """X = 4 * (byte at offset & 0xf): the IPv4 header length from its IHL nibble."""
    return Insn(_BPF_LDX | _BPF_B | _BPF_MSH, offset)


def jump(op: int, k: int, true: str | None = None, false: str | None = None) -> Insn:
    return Insn(_BPF_JMP | op | _BPF_K, k, true, false)


def ret(k: int, label: str) -> Insn:
    return Insn(_BPF_RET | _BPF_K, k, label=label)


def udp_to_server(l3: int, label: str) -> tuple[Insn, ...]:
    """IPv4 at `l3` carrying UDP to port 67, unfragmented or the first fragment: a first
    fragment still shows the port, and the parser counts it as malformed; later fragments
    carry no UDP header to match on."""
    return (
        load_byte(l3 + 9, label),
        jump(_BPF_JEQ, IPPROTO_UDP, false="drop"),
        load_half(l3 + 6),
        jump(_BPF_JSET, _IP_OFFSET, true="drop"),
        load_x_ip_hlen(l3),
        load_half_x(l3 + 2),
        jump(_BPF_JEQ, SERVER_PORT, true="accept", false="drop"),
    )


# IPv4 UDP to port 67 (udp_to_server), received as unicast to us or broadcast, untagged or
# with one tag left in the frame after the kernel took the outer one off (module docstring).
DHCP_SERVER_FILTER: tuple[Insn, ...] = (
    load_word_meta(_SKF_AD_PKTTYPE),
    jump(_BPF_JGT, PACKET_BROADCAST, true="drop"),
    load_half(12),
    jump(_BPF_JEQ, ETH_P_IP, true="untagged"),
    jump(_BPF_JEQ, ETH_P_8021Q, true="inner"),
    jump(_BPF_JEQ, ETH_P_8021AD, true="inner", false="drop"),
    load_word_meta(_SKF_AD_VLAN_TAG_PRESENT, label="inner"),
    jump(_BPF_JEQ, 0, true="drop"),
    load_half(12 + VLAN_HLEN),
    jump(_BPF_JEQ, ETH_P_IP, true="tagged", false="drop"),
    *udp_to_server(ETH_HLEN, "untagged"),
    *udp_to_server(ETH_HLEN + VLAN_HLEN, "tagged"),
    ret(SNAPLEN, label="accept"),
    ret(0, label="drop"),
)

DROP_ALL_FILTER: tuple[Insn, ...] = (ret(0, label="drop"),)


def assemble(program: tuple[Insn, ...]) -> bytes:
    """Encode as an array of struct sock_filter, resolving labels to relative offsets."""
    labels = {insn.label: pc for pc, insn in enumerate(program) if insn.label}
    out = bytearray()
    for pc, insn in enumerate(program):
        jt = labels[insn.true] - pc - 1 if insn.true else 0
        jf = labels[insn.false] - pc - 1 if insn.false else 0
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError(f"cBPF jump out of range at instruction {pc}")
        out += struct.pack("=HBBI", insn.code, jt, jf, insn.k)
    return bytes(out)


def attach_filter(sock: socket.socket, program: tuple[Insn, ...]) -> None:
    code = ctypes.create_string_buffer(assemble(program))
    # struct sock_fprog: the kernel copies the instructions during the call, so `code`
    # only has to outlive setsockopt.
    fprog = struct.pack("@HP", len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# --- checksums -----------------------------------------------------------------------------


def internet_checksum_residue(data: bytes | bytearray | memoryview) -> int:
    """The one's-complement sum of `data` as 16-bit big-endian words, modulo 0xffff.

    2**16 is 1 modulo 0xffff, so the whole buffer read as one big integer has the same
    residue as the sum of its words; int.from_bytes does that in C, far faster than a
    word loop in Python. An odd length is padded with a zero byte, as RFC 1071 says.
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def checksum_field(residue: int) -> int:
    """The value to store in a checksum field, given the residue of everything else.

    A residue of 0 gives 0xffff, which is the right transmission of a zero UDP checksum
    (RFC 768) and an equally valid IPv4 header checksum.
    """
    return 0xFFFF - residue


# --- frame parsing -------------------------------------------------------------------------

# The IPv4 header up to the addresses.
_IP = struct.Struct("!BxHxxHxBxxII")
_UDP = struct.Struct("!xxxxHxx")
_TAG = struct.Struct("!HH")
_ETHERTYPE = struct.Struct("!H")
_VLAN_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)


def vlan_ids(tags: bytes) -> tuple[int, ...]:
    """The VLAN ids that `tags` (TPID and TCI each, outer first) name: their nonzero VIDs.
    A priority tag (VID 0) names no VLAN, as in the XDP program (bpf/parsing.h)."""
    return tuple(vid for _tpid, tci in _TAG.iter_unpack(tags) if (vid := tci & VLAN_VID_MASK))


def parse_frame(
    frame: bytearray, length: int, ifindex: int, outer_tag: bytes = b""
) -> tuple[bytes, Ingress] | None:
    """The UDP payload and its Ingress, or None if `frame[:length]` is not one well-formed
    datagram: docs/DESIGN.md, "Well-formed requests", the rules the XDP program applies too
    (bpf/parsing.h), so neither path takes a frame the other refuses. The payload's own rules
    (the BOOTP header, the cookie) are the codec's, which counts each by its reason.

    `outer_tag` is the tag the kernel took off (TPID and TCI, from PACKET_AUXDATA), empty
    for an untagged frame; one more tag may follow in the frame (QinQ), not without it.

    The IPv4 datagram must end where the frame ends and the UDP datagram where the IPv4 one
    does: bytes after either are not part of the request, and only one reading of a frame
    may exist. (Ethernet pads frames shorter than 60 bytes, but a request is at least 282.)
    Fragments are malformed: DHCP messages never need fragmenting, and reassembling in user
    space would be an amplification target.
    """
    l3 = ETH_HLEN
    tags = outer_tag
    if length < l3 + IP_MIN_HLEN + UDP_HLEN:
        return None
    (ethertype,) = _ETHERTYPE.unpack_from(frame, l3 - 2)
    if outer_tag and ethertype in _VLAN_TPIDS:
        tags += bytes(frame[l3 - 2 : l3 + 2])
        l3 += VLAN_HLEN
        if length < l3 + IP_MIN_HLEN + UDP_HLEN:
            return None
        (ethertype,) = _ETHERTYPE.unpack_from(frame, l3 - 2)
    ver_ihl, total_len, frag, proto, src_ip, dst_ip = _IP.unpack_from(frame, l3)
    ip_hlen = (ver_ihl & 0x0F) << 2
    l4 = l3 + ip_hlen
    if (
        ethertype != ETH_P_IP
        or ver_ihl >> 4 != 4
        or ip_hlen < IP_MIN_HLEN
        or l3 + total_len != length
        or total_len < ip_hlen + UDP_HLEN
        or frag & _IP_MF_OR_OFFSET
        or proto != IPPROTO_UDP
        # Inlined residue (see internet_checksum_residue): the header length is a multiple of
        # four, so no odd-byte padding, and a valid header sums to 0xffff, residue 0.
        or int.from_bytes(frame[l3:l4], "big") % 0xFFFF
    ):
        return None
    (udp_len,) = _UDP.unpack_from(frame, l4)
    if udp_len != total_len - ip_hlen:
        return None
    payload = bytes(memoryview(frame)[l4 + UDP_HLEN : length])
    ingress = Ingress(ifindex, bytes(frame[6:12]), src_ip, dst_ip, vlan_ids(tags), tags)
    return payload, ingress


def received_at(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive time of a frame (Unix seconds), from its SO_TIMESTAMPNS control
    message; with none (never seen on Linux) the frame counts as fresh rather than lost."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return float(seconds + nanoseconds / 1e9)
    return float("inf")


def outer_tag(ancillary: list[tuple[int, int, bytes]]) -> bytes:
    """The tag the kernel took off a received frame (TPID and TCI), from its PACKET_AUXDATA
    control message; empty when it had none. A kernel that does not say which TPID it was
    (TP_STATUS_VLAN_TPID_VALID) saw an 802.1Q one."""
    for level, kind, data in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA:
            status, _len, _snaplen, _mac, _net, tci, tpid = _AUXDATA.unpack_from(data)
            if not status & TP_STATUS_VLAN_VALID:
                return b""
            if not status & TP_STATUS_VLAN_TPID_VALID:
                tpid = ETH_P_8021Q
            return _TAG.pack(tpid, tci)
    return b""


# --- the sockets ---------------------------------------------------------------------------

_FRAME_HEADERS = ETH_HLEN + IP_MIN_HLEN + UDP_HLEN
# Ethernet, IPv4 without options, UDP: every field of a reply frame's headers in one pack.
_REPLY_HEADERS = struct.Struct("!6s6sH BBHHHBBHII HHHH")
_CHECKSUM = struct.Struct("!H")
_IP_CHECKSUM_OFFSET = ETH_HLEN + 10
_UDP_OFFSET = ETH_HLEN + IP_MIN_HLEN
_UDP_CHECKSUM_OFFSET = _UDP_OFFSET + 6
_PSEUDO_ADDRS_OFFSET = ETH_HLEN + 12
_TPACKET_STATS = struct.Struct("=II")


@dataclass(slots=True)
class Received:
    """One batch read from the queue."""

    # UDP payloads to port 67 with where they came from, for the codec to judge.
    frames: list[tuple[bytes, Ingress]] = field(default_factory=list)
    malformed: int = 0  # below DHCP: fragments, bad IHL or header checksum, truncated IP/UDP
    stale: int = 0  # arrived before the caller's `stale_before`
    # The first `aged` of `frames` arrived before the caller's `aged_before` (FIFO).
    aged: int = 0
    error: OSError | None = None  # what ended the batch early, other than an empty queue


class PacketIO:
    """DHCP server I/O on one interface; see the module docstring for why it is built so."""

    def __init__(self, ifname: str, server_ip: int) -> None:
        try:
            self.ifindex = socket.if_nametoindex(ifname)
        except OSError as exc:
            raise OSError(errno.ENODEV, f"interface {ifname!r}: {exc.strerror or exc}") from exc
        self.ifname = ifname
        self.server_ip = server_ip
        self._raw = self._open_raw(ifname)
        try:
            self._udp = self._open_udp(server_ip)
        except BaseException:
            self._raw.close()
            raise
        self.mac: bytes = self._raw.getsockname()[4]
        self._poll = select.poll()
        self._poll.register(self._raw, select.POLLIN)
        self._recv_buf = bytearray(SNAPLEN)
        self._send_buf = bytearray(SNAPLEN)
        self._send_view = memoryview(self._send_buf)
        self._ip_id = 0

    @staticmethod
    def _open_raw(ifname: str) -> socket.socket:
        # Protocol 0 until bound: the socket receives nothing before the filter is in place,
        # so no unfiltered frame can be queued in between.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            attach_filter(sock, DHCP_SERVER_FILTER)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            grow_receive_buffer(sock)
            try:
                sock.bind((ifname, ETH_P_ALL))
            except OSError as exc:
                raise OSError(exc.errno, f"interface {ifname!r}: {exc.strerror or exc}") from exc
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _open_udp(server_ip: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            attach_filter(sock, DROP_ALL_FILTER)
            # One PacketIO per served interface, and interfaces may share a server_id.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind((socket.inet_ntoa(server_ip.to_bytes(4, "big")), SERVER_PORT))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def fileno(self) -> int:
        return self._raw.fileno()

    def pending(self) -> bool:
        """Whether a frame is queued now (a poll, no read)."""
        return bool(self._poll.poll(0))

    def receive_batch(
        self, limit: int, stale_before: float = 0.0, aged_before: float = 0.0
    ) -> Received:
        """Drain up to `limit` queued frames without blocking; frames the kernel received
        before `stale_before` (Unix seconds) are counted, not returned, and those received
        before `aged_before` (not earlier than `stale_before`) are counted in `aged`."""
        received = Received()
        frames = received.frames
        recvmsg_into = self._raw.recvmsg_into
        buffers = [self._recv_buf]
        buf = self._recv_buf
        ifindex = self.ifindex
        aged = True  # until the first frame received at or after `aged_before`
        for _ in range(limit):
            try:
                length, ancillary, _flags, _addr = recvmsg_into(buffers, _CMSG_SPACE)
            except BlockingIOError:
                break
            except OSError as exc:
                received.error = exc
                break
            if aged:
                at = received_at(ancillary)
                if at < stale_before:
                    received.stale += 1
                    continue
                aged = at < aged_before
            parsed = parse_frame(buf, length, ifindex, outer_tag(ancillary))
            if parsed is None:
                received.malformed += 1
            else:
                frames.append(parsed)
                received.aged += aged
        return received

    def send(self, payload: bytes, dest: Destination, ingress: Ingress) -> None:
        if ingress.ifindex != self.ifindex:
            raise ValueError(f"reply for ingress {ingress} cannot leave via {self.ifname}")
        kind = dest.kind
        if kind is DestKind.RELAY or (kind is DestKind.UNICAST and not ingress.tags):
            self._udp.sendto(payload, (socket.inet_ntoa(dest.ip.to_bytes(4, "big")), dest.port))
            return
        if kind is DestKind.UNICAST:
            mac = ingress.src_mac
        elif kind is DestKind.BROADCAST:
            mac = _BROADCAST_MAC
        elif len(dest.mac) == 6:
            mac = dest.mac
        else:
            raise ValueError(f"link unicast needs a 6-byte MAC, got {dest.mac.hex()!r}")
        self._raw.send(self._build_frame(payload, mac, dest.ip, dest.port, ingress.tags))

    def _build_frame(
        self, payload: bytes, mac: bytes, ip: int, port: int, tags: bytes = b""
    ) -> memoryview:
        """The reply frame in the send buffer: Ethernet, `tags` as given (outer first),
        IPv4, UDP, `payload`."""
        buf = self._send_buf
        l2 = len(tags)
        udp_len = UDP_HLEN + len(payload)
        headers = l2 + _FRAME_HEADERS
        end = headers + len(payload)
        if end > SNAPLEN:
            raise ValueError(f"payload of {len(payload)} bytes does not fit one IPv4 datagram")
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        # Packed after room for the tags; the MACs then move to the front and the tags
        # go between them and the ethertype.
        _REPLY_HEADERS.pack_into(
            buf,
            l2,
            mac,
            self.mac,
            ETH_P_IP,
            0x45,  # version 4, no options
            0,  # DSCP/ECN
            IP_MIN_HLEN + udp_len,
            self._ip_id,
            0,  # flags: DF off, so a path with a smaller MTU may still fragment
            _TTL,
            IPPROTO_UDP,
            0,  # header checksum, filled in below
            self.server_ip,
            ip,
            SERVER_PORT,
            port,
            udp_len,
            0,  # checksum, filled in below
        )
        if tags:
            buf[:12] = buf[l2 : l2 + 12]
            buf[12 : 12 + l2] = tags
        buf[headers:end] = payload
        view = self._send_view
        ip_residue = internet_checksum_residue(view[l2 + ETH_HLEN : l2 + _UDP_OFFSET])
        _CHECKSUM.pack_into(buf, l2 + _IP_CHECKSUM_OFFSET, checksum_field(ip_residue))
        # Pseudo-header: the two addresses sit in the IP header right before the UDP header,
        # so one residue covers them, the UDP header and the payload; add protocol and length.
        residue = internet_checksum_residue(view[l2 + _PSEUDO_ADDRS_OFFSET : end])
        udp_sum = checksum_field((residue + IPPROTO_UDP + udp_len) % 0xFFFF)
        _CHECKSUM.pack_into(buf, l2 + _UDP_CHECKSUM_OFFSET, udp_sum)
        return view[:end]

    def kernel_drops(self) -> int:
        """Frames the kernel dropped for this socket since the previous call.

        Reading PACKET_STATISTICS resets the kernel's counters, so each call sees only what
        happened since the last one.
        """
        stats = self._raw.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
        _packets, drops = _TPACKET_STATS.unpack(stats)
        return int(drops)

    def close(self) -> None:
        self._raw.close()
        self._udp.close()
