"""The XDP program under fuzzing, through BPF_PROG_TEST_RUN (tests/bpf/harness.py).

The frames the kernel answers for the captured clients, each with a lease (one DISCOVER
and a REQUEST in each RFC 2131 state: tests/bpf/test_malformed.good_frames), mutated as an
input's choices say: the DHCP payload edited (tests.fuzz.mutate: flips, truncation,
extension, options inserted, deleted, duplicated, given a wrong length) in headers made
consistent again, or the frame itself edited (flips, cuts, trailing bytes, IPv4 and UDP
length fields). Every verdict is allowed except an answer (XDP_TX) that is not exactly the
slow path's answer to the same frame, and XDP_ABORTED.
"""

import struct
from collections import Counter
from dataclasses import dataclass, field

from brushtaild.xdp.loader import Program
from tests.bpf.frames import ip_offset, udp_checksum, with_ip_header
from tests.bpf.harness import ETH_HLEN, XDP_TX, Fastpath, RenewalLog, assert_same_reply
from tests.bpf.test_malformed import good_frames
from tests.bpf.test_vectors import CAPTURED_CLIENTS, Client
from tests.fuzz.mutate import Draw, mutate

XDP_ABORTED = 0
VERDICTS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}
# Inputs run against one engine and map state before both start over (renewals the
# kernel answers keep moving its entries' expiry; the engine does not hear of them).
INPUTS_PER_STATE = 500


def reframed(frame: bytes, payload: bytes) -> bytes:
    """`frame` (Ethernet, tags, IPv4 with any options, UDP) carrying `payload` instead,
    with the IPv4 and UDP lengths and checksums made right for it."""
    ip = ip_offset(frame)
    ihl = (frame[ip] & 0x0F) * 4
    udp = bytearray(frame[ip + ihl : ip + ihl + 8]) + payload
    struct.pack_into("!HH", udp, 4, len(udp), 0)
    src, dst = frame[ip + 12 : ip + 16], frame[ip + 16 : ip + 20]
    struct.pack_into("!H", udp, 6, udp_checksum(src, dst, bytes(udp)) or 0xFFFF)
    return with_ip_header(frame[: ip + ihl] + udp, tot_len=ihl + len(udp))


def udp_payload(frame: bytes) -> bytes:
    ip = ip_offset(frame)
    return frame[ip + (frame[ip] & 0x0F) * 4 + 8 :]


def mutated(draw: Draw, frame: bytes) -> bytes:
    """One mutation of a well-formed request frame, as `draw` chooses."""
    kind = draw.below(8)
    if kind < 4:  # the payload, in consistent headers
        frame = reframed(frame, mutate(udp_payload(frame), draw))
        if not draw.chance(4):
            return frame
    if kind < 6:  # bytes of the frame: flips and writes (half in the headers), cut, trailer
        out = bytearray(frame)
        for _ in range(1 + draw.below(3)):
            where = draw.below(64 if draw.chance(2) else len(out))
            if where < len(out):
                out[where] = (
                    out[where] ^ (1 << draw.below(8)) if draw.chance(2) else draw.below(256)
                )
        if draw.chance(3):
            del out[ETH_HLEN + draw.below(len(out) - ETH_HLEN + 1) :]
        if draw.chance(3):
            out += draw.raw(draw.below(48))
        return bytes(out)
    # the length fields: IPv4 total length and UDP length, near the truth or anywhere
    ip = ip_offset(frame)
    ihl = (frame[ip] & 0x0F) * 4
    tot_len = len(frame) - ip
    fields: dict[str, int] = {}
    if draw.chance(2):
        fields["tot_len"] = draw.pick((tot_len + draw.below(9) - 4, draw.below(65536)))
    if draw.chance(2) or not fields:
        udp_len = tot_len - ihl
        fields["udp_len"] = draw.pick((udp_len + draw.below(9) - 4, draw.below(65536)))
    if draw.chance(6):
        fields["ihl"] = draw.below(16)
    return with_ip_header(frame, checksum=not draw.chance(8), **fields)


class Disagreement(AssertionError):
    """The kernel answered a frame, and not as the slow path would."""


@dataclass
class XdpFuzz:
    """Runs mutated frames against the program; counts the verdicts."""

    program: Program
    renewal_log: RenewalLog
    verdicts: Counter[str] = field(default_factory=Counter)
    inputs: int = 0
    _fastpath: Fastpath | None = None
    _bases: list[tuple[Client, bytes]] = field(default_factory=list)

    def state(self) -> tuple[Fastpath, list[tuple[Client, bytes]]]:
        """The engine and maps, with leases for the captured clients, and the frames the
        kernel answers them: new every INPUTS_PER_STATE inputs."""
        if self._fastpath is None or self.inputs % INPUTS_PER_STATE == 0:
            self._fastpath = Fastpath(self.program, self.renewal_log)
            self._bases = [
                (client, frame)
                for client in CAPTURED_CLIENTS
                for frame in good_frames(self._fastpath, client)
            ]
        return self._fastpath, self._bases

    def run(self, data: bytes) -> bytes:
        """Runs the input's frame; returns it. Raises Disagreement."""
        fastpath, bases = self.state()
        self.inputs += 1
        draw = Draw(data)
        _, base = draw.pick(bases)
        frame = mutated(draw, base)
        if len(frame) < ETH_HLEN:  # BPF_PROG_TEST_RUN takes no shorter frame
            frame = frame.ljust(ETH_HLEN, b"\0")
        result = fastpath.run(frame)
        self.verdicts[VERDICTS.get(result.retval, str(result.retval))] += 1
        if result.retval == XDP_ABORTED:
            raise Disagreement(f"XDP_ABORTED for {frame.hex()}")
        if result.retval == XDP_TX:
            try:
                assert_same_reply(result, frame, fastpath.slow_path(frame, apply=False))
            except AssertionError as exc:
                raise Disagreement(f"{exc}; frame {frame.hex()}") from exc
            fastpath.renewals()  # drained, so the ring never fills
        return frame
