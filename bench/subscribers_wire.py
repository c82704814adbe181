"""The client side of bench/subscribers.py: known subscribers' renewals paced out of the
client veth, their answers counted and stamped in the kernel on the way back.

One BCC object holds xdp_answers (below) after the text of bench/xdp_floor.c, so the trivial
responder (xdp_floor) and the live-frames generator (xdp_gen) come from the same object and
fastpath.generate drives it as it drives fastpath.Refs.

xdp_answers runs on the client veth. Each measured phase gets a tag; the pacer writes
tag << 20 | n into the xid of its n-th renewal. An answer (UDP to port 68, or a request the
trivial responder reflected) whose xid carries the current tag is counted by DHCP message
type (ACK and NAK apart) and its arrival stamped with bpf_ktime_get_ns (CLOCK_MONOTONIC) in
slot n of an mmapable array, then dropped; an answer to another phase's xid is counted as
stale. Everything else passes: perfdhcp's relayed answers (to port 67) and, between phases
(tag 0), whatever the binding DORAs get back. Counting in the kernel keeps up with any rate
the servers reach; the stamp is taken when the reply reaches the client veth's driver hook,
before the client stack, so it is earlier than a socket's SO_TIMESTAMPNS by the time the
stack takes to queue the frame to a socket.
"""

import contextlib
import ctypes
import itertools
import mmap
import socket
import struct
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import fastpath  # bench/ is the script's sys.path[0]
import flood

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType
from tests.bpf.frames import client_frame
from tests.e2e.netns import CLIENT_IF, SERVER_IP, Link, in_netns

TAG_SHIFT = 20
STAMP_SLOTS = 1 << TAG_SHIFT  # renewals one phase can send
MAX_TAG = (1 << (32 - TAG_SHIFT)) - 1
XID_AT = flood.XID_OFFSET
UDP_CHECKSUM_AT = 14 + 20 + 6
SLOT_ACK, SLOT_NAK, SLOT_ECHO = int(MessageType.ACK), int(MessageType.NAK), fastpath.SLOT_REQUEST
SLOT_STALE = fastpath.SLOTS  # one past xdp_floor.c's slots

ANSWERS_C = f"""
#define TAG_SHIFT {TAG_SHIFT}
#define STAMP_SLOTS {STAMP_SLOTS}
BPF_F_TABLE("array", __u32, __u64, stamps, STAMP_SLOTS, BPF_F_MMAPABLE);
BPF_ARRAY(phase, __u32, 1);
BPF_PERCPU_ARRAY(answers, __u64, SLOTS + 1);

int xdp_answers(struct xdp_md *ctx)
{{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct udphdr *udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	__u8 *bootp = (void *)(udp + 1);
	__u32 zero = 0, slot, xid, index, *tag;
	__u64 *count, *stamp;

	tag = phase.lookup(&zero);
	if (!tag || !*tag)
		return XDP_PASS;
	slot = dhcp_slot(data, data_end);
	if (slot == SLOT_OTHER || (void *)(bootp + 8) > data_end)
		return XDP_PASS;
	if (slot != SLOT_REQUEST && udp->dest != htons(68))
		return XDP_PASS; /* an answer to a relay: perfdhcp's */
	xid = ntohl(*(__be32 *)(bootp + 4));
	if (xid >> TAG_SHIFT != *tag)
		slot = SLOTS;
	count = answers.lookup(&slot);
	if (count)
		*count += 1;
	if (slot != SLOTS) {{
		index = xid & (STAMP_SLOTS - 1);
		stamp = stamps.lookup(&index);
		if (stamp && !*stamp)
			*stamp = bpf_ktime_get_ns();
	}}
	return XDP_DROP;
}}
"""


class ClientPrograms(fastpath.Refs):
    """xdp_answers, xdp_floor and xdp_gen from one object; Refs' helpers work on it."""

    def __init__(self) -> None:
        from bcc import BPF

        # xdp_floor.c's text first: BCC loads only functions of the text it compiles.
        text = fastpath.FLOOR_C.read_text() + ANSWERS_C
        self._bpf = BPF(text=text.encode(), cflags=["-Wno-unused-function"])
        self.fns = {n: self._bpf.load_func(n.encode(), BPF.XDP)
                    for n in ("xdp_answers", "xdp_floor", "xdp_gen")}  # fmt: skip
        self.clients = self._bpf[b"floor_clients"]
        self.counts = self._bpf[b"counts"]
        self._gen_frames = self._bpf[b"gen_frames"]
        self._answers = self._bpf[b"answers"]
        self._phase = self._bpf[b"phase"]
        self._stamps = mmap.mmap(self._bpf[b"stamps"].map_fd, STAMP_SLOTS * 8, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
        self._tags = itertools.count(1)
        self._used = STAMP_SLOTS
        self._before: list[int] = []

    def begin(self) -> int:
        """A new phase: a fresh tag, its stamps cleared, its counts from zero."""
        self._set_tag(0)
        self._stamps[: self._used * 8] = bytes(self._used * 8)
        tag = next(self._tags) % MAX_TAG + 1
        self._before = self._read()
        self._set_tag(tag)
        return tag

    def end(self, sent: int) -> "Answers":
        """Counts and stamps of the phase, for the `sent` renewals it sent."""
        counts = [a - b for a, b in zip(self._read(), self._before, strict=True)]
        self._used = max(1, min(sent, STAMP_SLOTS))
        stamps = memoryview(self._stamps).cast("Q")[:sent].tolist()
        self._set_tag(0)
        return Answers(counts[SLOT_ACK], counts[SLOT_NAK], counts[SLOT_ECHO],
                       counts[SLOT_STALE], stamps)  # fmt: skip

    def peek_acks(self) -> int:
        return self._read()[SLOT_ACK] - self._before[SLOT_ACK]

    def _read(self) -> list[int]:
        return [sum(self._answers[ctypes.c_int(i)]) for i in range(SLOT_STALE + 1)]

    def _set_tag(self, tag: int) -> None:
        self._phase[ctypes.c_int(0)] = ctypes.c_uint32(tag)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stamps.close()
        super().close()


@dataclass
class Answers:
    acks: int
    naks: int
    echoes: int  # requests the trivial responder reflected
    stale: int  # answers to an earlier phase's renewals
    stamps: list[int]  # arrival (ns, CLOCK_MONOTONIC) of renewal n's answer, 0: none


# --- renewals --------------------------------------------------------------------------------


def renewal_frames(server_mac: bytes, bound: Sequence[tuple[bytes, str]]) -> list[bytearray]:
    """A RENEWING-state DHCPREQUEST (ciaddr, unicast to the server) per subscriber, as they
    bound (bench/flood.py's parameter request list). The UDP checksum is 0 (none, which IPv4
    allows), as the pacer rewrites the xid of each frame it sends."""
    frames = []
    for mac, address in bound:
        msg = flood.request(MessageType.REQUEST, 0, mac, ciaddr=opt.parse_ip(address))
        frame = bytearray(client_frame(encode(msg), src_mac=mac, dst_mac=server_mac,
                                       src_ip=address, dst_ip=SERVER_IP))  # fmt: skip
        frame[UDP_CHECKSUM_AT : UDP_CHECKSUM_AT + 2] = b"\0\0"
        frames.append(frame)
    return frames


SPIN_NS = 300_000  # closer to its due time than this, a renewal is waited for spinning


@dataclass
class Sent:
    count: int
    seconds: float
    errors: int  # sends the kernel refused (counted as offered: never answered)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


class Pacer:
    """Sends the subscribers' renewals in turn from a raw socket at a steady rate: renewal n
    is due at start + n / rate and sent when due (sleeping until 0.15 ms before, then
    spinning, so the spacing is even), its send time read right before the send call; a
    pacer that falls behind sends back to back until it catches up."""

    def __init__(self, link: Link, frames: list[bytearray]) -> None:
        with in_netns(link.client_ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.bind((CLIENT_IF, 0))
        self.frames = frames
        self.sent_ns = array("q", bytes(8 * STAMP_SLOTS))

    def run(
        self, tag: int, rate: float, seconds: float, stop: threading.Event | None = None
    ) -> Sent:
        frames, count = self.frames, len(self.frames)
        send, clock, pack, sent = self.sock.send, time.monotonic_ns, struct.pack_into, self.sent_ns
        base = tag << TAG_SHIFT
        period = 1e9 / rate
        start = clock()
        end = start + int(seconds * 1e9)
        n = errors = 0
        while n < STAMP_SLOTS:
            now = clock()
            if now >= end or (stop is not None and stop.is_set()):
                break
            due = start + int(n * period)
            if due > now:
                if due - now > SPIN_NS:
                    time.sleep((due - now - SPIN_NS // 2) / 1e9)
                continue
            frame = frames[n % count]
            pack("!I", frame, XID_AT, base | n)
            t = clock()
            try:
                send(frame)
            except OSError:
                # ENOBUFS: the receive backlog in front of the server is full, the frame
                # dropped in the kernel. It was offered and is never answered.
                errors += 1
            sent[n] = t
            n += 1
        return Sent(n, (clock() - start) / 1e9, errors)

    def latencies_us(self, answers: Answers) -> list[float]:
        """Send to answer, microseconds, for every renewal answered."""
        sent = self.sent_ns
        return [(s - sent[i]) / 1000 for i, s in enumerate(answers.stamps) if s]

    def close(self) -> None:
        self.sock.close()
