"""CPU time per new subscriber (DISCOVER, OFFER, REQUEST, ACK) in the daemon's batch loop,
without sockets: the real Daemon, engine and lease store, fed encoded requests through a
fake PacketIO that keeps the replies. Process CPU time (not wall time) is what it reports,
so a machine shared with other tenants changes it far less than a perfdhcp run; use it to
compare revisions of the slow path's per-request work, bench/slowpath.py for the figures.

    PYTHONPATH=. /work/main/.venv/bin/python bench/slowpath_cpu.py [--clients 20000]
        [--batch 128] [--runs 5] [--profile FILE]
"""

import argparse
import cProfile
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brushtaild.config import model as config_module
from brushtaild.daemon import main
from brushtaild.daemon.main import Daemon, Signals
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode, parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.engine.decisions import Destination, Ingress
from brushtaild.net.packet_io import Received
from tests.engine_helpers import make_config, make_pool

RELAY = opt.parse_ip("198.18.0.2")
SERVER = opt.parse_ip("198.18.0.1")
INGRESS = Ingress(ifindex=2, src_mac=b"\x02\x00\x00\x00\x00\x02", src_ip=RELAY, dst_ip=SERVER)
PRL = bytes((1, 3, 6, 15, 28, 51, 58, 59))


@dataclass
class FakeIO:
    batches: list[Received] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    mac: bytes = b"\x02\x00\x00\x00\x00\x01"

    def fileno(self) -> int:
        return -1

    def pending(self) -> bool:
        return False

    def receive_batch(
        self, limit: int, stale_before: float = 0.0, aged_before: float = 0.0
    ) -> Received:
        return self.batches.pop(0) if self.batches else Received()

    def send(self, payload: bytes, dest: Destination, ingress: Ingress) -> None:
        self.sent.append(payload)

    def kernel_drops(self) -> int:
        return 0

    def close(self) -> None:
        pass


def message(mtype: MessageType, n: int, options: dict[int, bytes]) -> bytes:
    chaddr = b"\x02\xbd" + n.to_bytes(4, "big")
    options = {OptionCode.MESSAGE_TYPE: bytes((mtype,)), 55: PRL, **options}
    msg = Message(op=1, xid=n, giaddr=RELAY, hops=1, chaddr=chaddr + bytes(10), options=options)
    return encode(msg, max_size=1500)


def one_run(clients: int, batch: int, profile: cProfile.Profile | None) -> float:
    """CPU seconds per DORA over `clients` new subscribers, `batch` requests a batch."""
    fake = FakeIO()
    main.PacketIO = lambda _ifname, _server_id: fake  # type: ignore[assignment,misc]
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="slowpath-cpu-") as tmp:
        pool = make_pool("bench", "198.18.0.0/15", "198.18.1.0", "198.19.255.254")
        config = replace(
            make_config(pool),
            state_dir=Path(tmp) / "state",
            control_socket=Path(tmp) / "control.sock",
            fastpath=config_module.FastPath(enabled=False, pin_dir=Path(tmp) / "pins"),
            trusted_relays=(IPv4Network("198.18.0.0/15"),),
        )
        signals = Signals()
        daemon = Daemon(config, Path(tmp) / "brushtail.yaml", signals)
        try:
            cpu = 0.0
            for first in range(0, clients, batch):
                numbers = range(first, min(first + batch, clients))
                discovers = [(message(MessageType.DISCOVER, n, {}), INGRESS) for n in numbers]
                fake.batches.append(Received(frames=discovers))
                cpu += serve(daemon, profile)
                offers = [parse(payload) for payload in fake.sent]
                fake.sent.clear()
                requests = [
                    (
                        message(
                            MessageType.REQUEST,
                            int.from_bytes(offer.chaddr[2:6], "big"),
                            {
                                OptionCode.REQUESTED_ADDRESS: opt.ip(offer.yiaddr),
                                OptionCode.SERVER_ID: opt.ip(SERVER),
                            },
                        ),
                        INGRESS,
                    )
                    for offer in offers
                ]
                fake.batches.append(Received(frames=requests))
                cpu += serve(daemon, profile)
                fake.sent.clear()
            leases = len(daemon.store.load())
            if leases != clients:
                raise SystemExit(f"{leases} leases for {clients} clients: the run is wrong")
        finally:
            daemon._close()
            signals.close()
    return cpu / clients


def serve(daemon: Daemon, profile: cProfile.Profile | None) -> float:
    start = time.process_time()
    if profile is not None:
        profile.enable()
    daemon._serve_batch()
    daemon._housekeeping()
    if profile is not None:
        profile.disable()
    return time.process_time() - start


def main_() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="write cProfile stats of every run here")
    args = parser.parse_args()
    profile = cProfile.Profile() if args.profile else None
    logging_off()
    per_dora = [one_run(args.clients, args.batch, profile) for _ in range(args.runs)]
    runs = " ".join(f"{x * 1e6:.0f}" for x in per_dora)
    best, middle = min(per_dora) * 1e6, statistics.median(per_dora) * 1e6
    print(f"CPU us per DORA: min {best:.1f} median {middle:.1f} (runs: {runs})")
    if profile is not None:
        profile.dump_stats(args.profile)
    return 0


def logging_off() -> None:
    """The lease log writes one line per ACK to stderr at INFO, as in production; here to
    /dev/null, so the figure includes formatting the lines but not a terminal's cost."""
    sys.stderr = open("/dev/null", "w")  # noqa: SIM115
    logging.getLogger().setLevel(logging.INFO)


if __name__ == "__main__":
    raise SystemExit(main_())
