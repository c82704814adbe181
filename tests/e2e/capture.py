"""DHCP as the clients saw it: tcpdump on the client end of a Link, read back with the codec.

The capture runs on `cli0` in the client namespace, so it sees every frame that crosses
the veth, whichever path answered: the kernel's XDP_TX replies never enter the server
namespace's stack (a capture on `sub0` would miss them), but they arrive at `cli0` like
any other frame. Frames of clients on macvlans stacked on `cli0` cross it too.

Timestamps are the kernel's (CLOCK_REALTIME, nanoseconds: `--time-stamp-precision=nano`),
taken as the frame leaves or arrives at `cli0`, so they compare directly with the wall
clock the daemon keeps its expiries in. `-U --immediate-mode` writes each frame as soon as
it is seen: a reader gets every frame captured up to a moment shortly after it.
"""

import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.options import parse_ip
from brushtaild.dhcp.reasons import MalformedPacket
from tests.e2e.netns import CLIENT_IF, SERVER_IP, Link, terminate

# pcap with nanosecond timestamps, as tcpdump writes it on a little-endian host.
PCAP_MAGIC_NS = 0xA1B23C4D
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
LINKTYPE_ETHERNET = 1
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
IPPROTO_UDP = 17
SERVER_PORT = 67
_SERVER = parse_ip(SERVER_IP)
# How long tcpdump may take to write a frame it has seen (immediate mode: microseconds
# unless the machine is loaded); a reader that wants every frame up to a moment waits this.
FLUSH_DELAY = 0.3


@dataclass(frozen=True, slots=True)
class Seen:
    """One DHCP message that crossed the link, with the kernel's timestamp."""

    at: float
    src: int  # IPv4 source address
    message: Message

    @property
    def from_server(self) -> bool:
        return self.src == _SERVER and self.message.op == 2


def read_pcap(path: Path, offset: int = 0) -> tuple[list[tuple[float, bytes]], int]:
    """The frames of a pcap file from byte `offset` on (0: the start, header included) and
    their times, and the offset to read on from next time; a record tcpdump is still
    writing (the file's incomplete tail) is left for then."""
    with path.open("rb") as f:
        if offset == 0:
            header = f.read(_GLOBAL.size)
            if len(header) < _GLOBAL.size:
                return [], 0
            magic, _, _, _, _, _, linktype = _GLOBAL.unpack(header)
            if magic != PCAP_MAGIC_NS or linktype != LINKTYPE_ETHERNET:
                raise ValueError(f"{path}: not a nanosecond Ethernet pcap (magic {magic:#x})")
            offset = _GLOBAL.size
        f.seek(offset)
        data = f.read()
    frames = []
    pos = 0
    while pos + _RECORD.size <= len(data):
        sec, nsec, incl, _ = _RECORD.unpack_from(data, pos)
        start = pos + _RECORD.size
        if start + incl > len(data):
            break
        frames.append((sec + nsec / 1e9, data[start : start + incl]))
        pos = start + incl
    return frames, offset + pos


def udp_payload(frame: bytes) -> tuple[int, int, int, bytes] | None:
    """(source address, source port, destination port, payload) of a UDP/IPv4 frame."""
    ethertype = int.from_bytes(frame[12:14])
    offset = 14
    while ethertype == ETH_P_8021Q and len(frame) >= offset + 4:
        ethertype = int.from_bytes(frame[offset + 2 : offset + 4])
        offset += 4
    if ethertype != ETH_P_IP or len(frame) < offset + 20:
        return None
    ihl = (frame[offset] & 0x0F) * 4
    if frame[offset + 9] != IPPROTO_UDP or len(frame) < offset + ihl + 8:
        return None
    src = int.from_bytes(frame[offset + 12 : offset + 16])
    udp = offset + ihl
    sport, dport, length = struct.unpack_from("!HHH", frame, udp)
    return src, sport, dport, frame[udp + 8 : udp + max(length, 8)]


def dhcp_messages(frames: list[tuple[float, bytes]]) -> list[Seen]:
    """The DHCP messages among `frames` (to or from port 67), in capture order; what the
    codec refuses is left out (it is no ACK a client could have taken)."""
    seen = []
    for at, frame in frames:
        udp = udp_payload(frame)
        if udp is None or SERVER_PORT not in (udp[1], udp[2]):
            continue
        try:
            seen.append(Seen(at, udp[0], parse(udp[3])))
        except MalformedPacket:
            continue
    return seen


class Capture:
    """tcpdump on the client end of `link`, writing `path`; use as a context manager."""

    def __init__(self, link: Link, path: Path, ifname: str = CLIENT_IF) -> None:
        self.link = link
        self.path = path
        self.ifname = ifname
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = path.with_suffix(".log")
        self._seen: list[Seen] = []
        self._offset = 0

    def start(self, timeout: float = 10.0) -> Self:
        with self.log_file.open("ab") as log:
            self.proc = self.link.popen_in(
                self.link.client_ns,
                [
                    "tcpdump", "-i", self.ifname, "-n", "-U", "--immediate-mode",
                    "--time-stamp-precision=nano", "-B", "8192", "-s", "2048",
                    "-Z", "root", "-w", str(self.path), "udp port 67 or udp port 68",
                ],
                stderr=log,
            )  # fmt: skip
        # tcpdump says "listening on" once its filter is attached: frames from then on are
        # captured.
        deadline = time.monotonic() + timeout
        while "listening on" not in self.log_file.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump did not start: {self.log_file.read_text()}")
            time.sleep(0.05)
        return self

    def seen(self) -> list[Seen]:
        """Every DHCP message captured so far (read on from where the last call stopped)."""
        if self.path.exists():
            frames, self._offset = read_pcap(self.path, self._offset)
            self._seen += dhcp_messages(frames)
        return list(self._seen)

    def dropped(self) -> str:
        """tcpdump's closing report (captured / dropped by kernel), once stopped."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
