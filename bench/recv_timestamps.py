"""What reading the kernel's receive stamp and VLAN tag costs the slow path, per frame.

PacketIO drops requests that waited in the socket queue longer than a client waits for its
answer, using the stamp the kernel puts on each frame (SO_TIMESTAMPNS), and reads the outer VLAN
tag the kernel took off (PACKET_AUXDATA). Both take recvmsg_into and its control messages
instead of recv_into. This measures, on the
daemon's real packet socket (AF_PACKET with its classic-BPF filter, on a veth in a
namespace of our own), the time per frame of:

  recv_into      the plain read (what a socket without VLANs could use)
  recvmsg_into   the read with stamp and auxdata, control messages parsed as PacketIO does
  receive_batch  PacketIO.receive_batch on full batches of 256: every frame read with its
                 auxdata, the stamp looked at for the first frame only, the queue being FIFO
                 (frames are parsed too)
  receive_all    the same batches with every frame's stamp looked at

Each round fills the queue with --frames copies of a 342-byte DHCPDISCOVER from the client
namespace, then drains it with one method; methods alternate, and the figure is the median
over --rounds rounds. Time is the reading thread's CPU time (user and system), so that the
other tenants of a shared machine do not count, as they would in wall time.

Run as root from a checkout:

    /work/main/.venv/bin/python bench/recv_timestamps.py [--rounds 15] [--frames 2000]

Namespaces are bt-<pid>-<n>-s/-c (tests/e2e/netns.py), removed on exit.
"""

import argparse
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from brushtaild.dhcp import options as opt  # noqa: E402
from brushtaild.net import packet_io  # noqa: E402
from brushtaild.net.packet_io import PacketIO  # noqa: E402
from tests.e2e import netns  # noqa: E402
from tests.e2e.test_packet_io import BROADCAST_IP, BROADCAST_MAC, discover, udp_frame  # noqa: E402

BATCH = 256


def fill(sender: socket.socket, frame: bytes, count: int) -> None:
    for _ in range(count):
        sender.send(frame)
    time.sleep(0.05)  # let the veth deliver the last ones


def drain(read: Callable[[], int]) -> tuple[int, float]:
    """Frames read until the queue is empty, and the seconds it took."""
    count = 0
    started = time.thread_time()
    while True:
        try:
            n = read()
        except BlockingIOError:
            break
        count += n
        if n == 0:
            break
    return count, time.thread_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args()
    with netns.Link() as link:
        with netns.in_netns(link.server_ns):
            io = PacketIO(netns.SERVER_IF, opt.parse_ip(netns.SERVER_IP))
        with netns.in_netns(link.client_ns):
            sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sender.bind((netns.CLIENT_IF, 0))
        mac = link.client_mac
        frame = udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac))
        raw = io._raw
        buf = bytearray(packet_io.SNAPLEN)

        def plain() -> int:
            raw.recv_into(buf)
            return 1

        def stamped() -> int:
            _length, ancillary, _flags, _addr = raw.recvmsg_into([buf], packet_io._CMSG_SPACE)
            packet_io.received_at(ancillary)
            packet_io.outer_tag(ancillary)
            return 1

        def batch_first() -> int:
            return len(io.receive_batch(BATCH, stale_before=1.0).frames)

        def batch_all() -> int:
            # Every frame's stamp read: a threshold no frame meets keeps each one "stale".
            return io.receive_batch(BATCH, stale_before=float("inf")).stale

        methods = {
            "recv_into": plain,
            "recvmsg_into": stamped,
            "receive_batch": batch_first,
            "receive_all": batch_all,
        }
        per_frame: dict[str, list[float]] = {name: [] for name in methods}
        try:
            for _ in range(args.rounds):
                for name, read in methods.items():
                    fill(sender, frame, args.frames)
                    count, seconds = drain(read)
                    if count:
                        per_frame[name].append(seconds / count * 1e9)
        finally:
            io.close()
            sender.close()
    print(f"ns per frame, median of {args.rounds} rounds of {args.frames} frames (min-max):")
    for name, values in per_frame.items():
        print(
            f"  {name:14} {statistics.median(values):7.0f}  ({min(values):.0f}-{max(values):.0f})"
        )
    plain_ns = statistics.median(per_frame["recv_into"])
    stamped_ns = statistics.median(per_frame["recvmsg_into"])
    print(
        f"  stamp and auxdata read cost {stamped_ns - plain_ns:.0f} ns per frame more than"
        " recv_into"
    )


if __name__ == "__main__":
    main()
