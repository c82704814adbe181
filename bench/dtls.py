"""Replication transport benchmark: DTLS handshake time, bytes per message, messages/s.

Two transports (brushtaild/net/dtls.py) in two fresh network namespaces joined by a veth
(tests/e2e/netns.Link: site a on 198.18.0.1, site b on 198.18.0.2), certificates from a
fresh CA (brushtail pki), driven by one thread with select as the daemon's loop will:

1. handshake: `a` closes the session (close_notify), then sends one payload; the time from
   `send` to its delivery at `b`: the cookie exchange, the full mutual-certificate handshake
   (3 round trips) and the payload, both ends' CPU included. --handshakes of them.
2. overhead: UDP payload bytes on the wire per message, for payloads of 1 byte, 100, 1000
   and the largest one (MAX_PAYLOAD), from the transport's counters.
3. throughput: --messages payloads of 1000 bytes from a to b in windows of 64 (the socket's
   default receive buffer holds about 100), each read before the next is sent; messages
   delivered per second.

Run as root from the checkout:

    /work/main/.venv/bin/python bench/dtls.py [--handshakes 200] [--messages 20000]
"""

import argparse
import select
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a plain script from a checkout: the harness lives in tests/.
sys.path.insert(0, str(REPO))

from brushtaild.config.model import Peer, Replication  # noqa: E402
from brushtaild.net.dtls import MAX_PAYLOAD, DtlsTransport  # noqa: E402
from brushtaild.replication import pki  # noqa: E402
from tests.e2e import netns  # noqa: E402

PORT = 7000
WINDOW = 64
Delivered = list[tuple[str, bytes]]


def transport(ns: str, site: str, ip: str, peer: str, peer_ip: str, root: Path) -> DtlsTransport:
    files = root / site
    settings = Replication(
        peers=(Peer(peer, IPv4Address(peer_ip), PORT),),
        listen=(IPv4Address(ip), PORT),
        ca=files / "ca.crt",
        certificate=files / "site.crt",
        key=files / "site.key",
        crl=root / "ca" / "ca.crl",
    )
    with netns.in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, PORT))
    return DtlsTransport(site, settings, time.monotonic(), sock=sock)


def pump(
    transports: Sequence[DtlsTransport], done: Callable[[Delivered], bool], limit: float = 10.0
) -> Delivered:
    """Drive both until `done(delivered to the last transport)`; raise after `limit` s."""
    delivered: Delivered = []
    end = time.monotonic() + limit
    while not done(delivered):
        now = time.monotonic()
        if now > end:
            raise TimeoutError("nothing more arrives")
        wait = min(t.next_deadline() for t in transports) - now
        readable, _, _ = select.select(transports, [], [], max(0.0, min(wait, 0.05)))
        now = time.monotonic()
        for t in transports:
            if t in readable:
                got = t.on_readable(now)
                if t is transports[-1]:
                    delivered += got
            if now >= t.next_deadline():
                t.on_timer(now)
    return delivered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    reason = netns.available()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, netns.Link(client_ip="198.18.0.2") as link:
        root = Path(tmp)
        now = datetime.now(UTC).replace(tzinfo=None)
        ca = pki.create_ca(root / "ca", "bench", 2, now)
        for site in ("a", "b"):
            ca.issue(site, 1, root / site, now)
        a = transport(link.server_ns, "a", "198.18.0.1", "b", "198.18.0.2", root)
        b = transport(link.client_ns, "b", "198.18.0.2", "a", "198.18.0.1", root)
        pair = [a, b]
        try:
            times = []
            for _ in range(args.handshakes):
                a.disconnect("b")
                pump(pair, lambda _: not b.peers_up())
                started = time.monotonic()
                a.send("b", b"x", started)
                pump(pair, bool)
                times.append(time.monotonic() - started)
            ms = sorted(1000 * t for t in times)
            print(
                f"handshake + first payload, {len(ms)} runs: "
                f"median {statistics.median(ms):.2f} ms, "
                f"p90 {ms[int(0.9 * len(ms))]:.2f} ms, min {ms[0]:.2f} ms, max {ms[-1]:.2f} ms; "
                f"{(a.counters.bytes_sent + b.counters.bytes_sent) / len(ms):.0f} B on the wire "
                "each, both ways (close_notify and payload included)"
            )
            for size in (1, 100, 1000, MAX_PAYLOAD):
                before = a.counters.bytes_sent, a.counters.datagrams_sent
                for _ in range(10):
                    a.send("b", bytes(size), time.monotonic())
                pump(pair, lambda d: len(d) == 10)
                wire = (a.counters.bytes_sent - before[0]) / 10
                datagrams = (a.counters.datagrams_sent - before[1]) / 10
                print(
                    f"payload {size:5d} B: {wire:.0f} B of UDP payload ({wire - size:.0f} B "
                    f"overhead), {datagrams:.0f} datagram"
                )
            payload = bytes(1000)
            started = time.monotonic()
            received = 0
            while received < args.messages:
                window = min(WINDOW, args.messages - received)
                for _ in range(window):
                    a.send("b", payload, time.monotonic())
                received += len(pump(pair, lambda d, n=window: len(d) == n))
            elapsed = time.monotonic() - started
            print(
                f"{received} messages of 1000 B in {elapsed:.2f} s: {received / elapsed:.0f}/s "
                "(both ends in one thread)"
            )
        finally:
            a.close()
            b.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
