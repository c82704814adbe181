"""Re-capture the client vectors in this directory (root; see SOURCES.md).

    .venv/bin/python -m tests.vectors.capture [--dhcrelay /path/to/dhcrelay]

Builds throwaway network namespaces joined by veths, answers DISCOVER and REQUEST from a tiny
responder so the clients also send a REQUEST, records port 67 with tcpdump on the server
side, and writes each client's DHCP payloads as hex. Nothing leaves the namespaces; they are
deleted on the way out whatever happens.

    btcap-c  btcap-c0 ---- btcap-s0 198.18.0.1/24   btcap-s
    btcap-rc btcap-rc0 --- btcap-rd 198.18.3.1/24   btcap-r (ISC dhcrelay)
                           btcap-ru 198.18.2.2/24 ---- btcap-s1 198.18.2.1/24  btcap-s
"""

import argparse
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from brushtaild.dhcp.codec import encode, parse
from brushtaild.dhcp.constants import MessageType, Op, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.options import format_ip, ip, parse_ip, u32

SERVER_NS = "btcap-s"
CLIENT_NS = "btcap-c"
RELAY_NS = "btcap-r"
RELAYED_CLIENT_NS = "btcap-rc"
SERVER_IP = "198.18.0.1"
# The server's address on the relay's link; the relay has no route to SERVER_IP.
RELAY_SERVER_IP = "198.18.2.1"
OFFERED_IP = "198.18.0.100"
# perfdhcp poses as a relay: it needs an address to bind port 67 and to use as giaddr.
PERFDHCP_IP = "198.18.0.2"
# Locally administered, so the vectors never carry this machine's real MACs.
CLIENT_MAC = "02:00:c6:12:00:02"
RELAYED_CLIENT_MAC = "02:00:c6:12:03:02"
# dhclient sends gethostname(); a private UTS namespace keeps the real one out of the vectors.
CLIENT_HOSTNAME = "btcap-client"
VECTOR_DIR = Path(__file__).parent

ETH_HEADER_LEN = 14
UDP_HEADER_LEN = 8
PCAP_HEADER_LEN = 24
PCAP_RECORD = struct.Struct("<IIII")


@dataclass(frozen=True)
class Client:
    name: str
    argv: list[str]
    namespace: str
    server_if: str


def run(*argv: str) -> None:
    subprocess.run(["timeout", "10", *argv], check=True)


def in_ns(ns: str, seconds: int, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, "timeout", str(seconds), *argv]


def veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    run("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
        "netns", ns_b)  # fmt: skip
    for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
        run("ip", "-n", ns, "link", "set", ifname, "up")


def setup() -> None:
    for ns in (SERVER_NS, CLIENT_NS, RELAY_NS, RELAYED_CLIENT_NS):
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
    veth(SERVER_NS, "btcap-s0", CLIENT_NS, "btcap-c0")
    veth(SERVER_NS, "btcap-s1", RELAY_NS, "btcap-ru")
    veth(RELAY_NS, "btcap-rd", RELAYED_CLIENT_NS, "btcap-rc0")
    run("ip", "-n", CLIENT_NS, "link", "set", "btcap-c0", "address", CLIENT_MAC)
    run("ip", "-n", RELAYED_CLIENT_NS, "link", "set", "btcap-rc0", "address", RELAYED_CLIENT_MAC)
    run("ip", "-n", SERVER_NS, "addr", "add", f"{SERVER_IP}/24", "dev", "btcap-s0")
    run("ip", "-n", SERVER_NS, "addr", "add", f"{RELAY_SERVER_IP}/24", "dev", "btcap-s1")
    run("ip", "-n", SERVER_NS, "route", "add", "198.18.3.0/24", "via", "198.18.2.2")
    run("ip", "-n", RELAY_NS, "addr", "add", "198.18.2.2/24", "dev", "btcap-ru")
    run("ip", "-n", RELAY_NS, "addr", "add", "198.18.3.1/24", "dev", "btcap-rd")


def teardown() -> None:
    for ns in (RELAYED_CLIENT_NS, RELAY_NS, CLIENT_NS, SERVER_NS):
        subprocess.run(["timeout", "10", "ip", "netns", "del", ns], check=False,
                       stderr=subprocess.DEVNULL)  # fmt: skip


def respond(ifname: str) -> None:
    """Offer and acknowledge one fixed address to whoever asks on ifname, until killed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    sock.bind(("0.0.0.0", 67))
    print("ready", flush=True)
    answers = {MessageType.DISCOVER: MessageType.OFFER, MessageType.REQUEST: MessageType.ACK}
    while True:
        request = parse(sock.recv(4096))
        answer = answers.get(request.message_type) if request.message_type else None
        if answer is None:
            continue
        options: dict[int, bytes] = {
            OptionCode.MESSAGE_TYPE: bytes((answer,)),
            OptionCode.SERVER_ID: ip(parse_ip(SERVER_IP)),
            OptionCode.LEASE_TIME: u32(600),
            OptionCode.SUBNET_MASK: ip(0xFFFFFF00),
        }
        agent_info = request.options.get(OptionCode.RELAY_AGENT_INFO)
        if agent_info is not None:
            # RFC 3046 section 2.2: the relay expects its option back.
            options[OptionCode.RELAY_AGENT_INFO] = agent_info
        reply = Message(
            Op.BOOTREPLY,
            request.xid,
            htype=request.htype,
            hlen=request.hlen,
            flags=request.flags,
            giaddr=request.giaddr,
            yiaddr=parse_ip(OFFERED_IP),
            siaddr=parse_ip(SERVER_IP),
            chaddr=request.chaddr,
            options=options,
        )
        if request.giaddr:
            sock.sendto(encode(reply), (format_ip(request.giaddr), 67))
        else:
            # dhclient and udhcpc listen on raw sockets, so broadcast reaches them unbound.
            sock.sendto(encode(reply), ("255.255.255.255", 68))


def bootrequests(pcap: bytes) -> list[bytes]:
    """The BOOTREQUEST payloads in an Ethernet pcap of port 67 traffic."""
    out = []
    pos = PCAP_HEADER_LEN
    while pos + PCAP_RECORD.size <= len(pcap):
        _, _, caplen, _ = PCAP_RECORD.unpack_from(pcap, pos)
        frame = pcap[pos + PCAP_RECORD.size : pos + PCAP_RECORD.size + caplen]
        pos += PCAP_RECORD.size + caplen
        payload = ETH_HEADER_LEN + (frame[ETH_HEADER_LEN] & 0x0F) * 4 + UDP_HEADER_LEN
        # Replies to a relay also go to port 67: keep only what came from the client side.
        if frame[payload] == Op.BOOTREQUEST:
            out.append(frame[payload:])
    return out


def capture(client: Client, workdir: Path) -> list[bytes]:
    pcap = workdir / f"{client.name}.pcap"
    # --immediate-mode: without it packets still in the kernel ring are lost when we stop.
    dump = subprocess.Popen(
        in_ns(SERVER_NS, 30, "tcpdump", "-i", client.server_if, "-U", "--immediate-mode",
              "-s", "0", "-w", str(pcap), "udp port 67"),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    responder = subprocess.Popen(
        in_ns(SERVER_NS, 30, sys.executable, "-m", "tests.vectors.capture", "--respond",
              client.server_if),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert dump.stderr is not None and responder.stdout is not None
        dump.stderr.readline()  # "listening on ...": the capture is open
        responder.stdout.readline()  # "ready": port 67 is bound
        subprocess.run(in_ns(client.namespace, 8, *client.argv), check=False)
    finally:
        responder.terminate()
        dump.terminate()
        responder.wait()
        dump.wait()
    return bootrequests(pcap.read_bytes())


def clients(workdir: Path, dhcrelay: str | None) -> list[Client]:
    udhcpc = ["udhcpc", "-f", "-n", "-q", "-t", "1", "-s", "/bin/true", "-i"]
    found = [
        Client("dhclient", ["unshare", "--uts", "sh", "-c",
               f"hostname {CLIENT_HOSTNAME} && exec dhclient -1 -v -d -sf /bin/true "
               f"-lf {workdir}/dhclient.leases -pf {workdir}/dhclient.pid btcap-c0"],
               CLIENT_NS, "btcap-s0"),
        Client("udhcpc", [*udhcpc, "btcap-c0"], CLIENT_NS, "btcap-s0"),
        Client("perfdhcp", ["sh", "-c", f"ip addr add {PERFDHCP_IP}/24 dev btcap-c0 && "
               "exec perfdhcp -4 -l btcap-c0 -n 1 -r 1 -R 1 -W 2000000"],
               CLIENT_NS, "btcap-s0"),
    ]  # fmt: skip
    if dhcrelay is not None:
        # -a adds circuit-id, -U the RFC 3527 link selection (giaddr becomes btcap-ru's).
        # Naming btcap-ru in -iu as well makes dhcrelay 4.4.3 segfault on the first packet.
        relay = ["sh", "-c", f"timeout 7 {dhcrelay} -4 -d -a -U btcap-ru -id btcap-rd "
                 f"--no-pid {RELAY_SERVER_IP} & sleep 1; ip netns exec "
                 f"{RELAYED_CLIENT_NS} {' '.join(udhcpc)} btcap-rc0; kill $!"]  # fmt: skip
        found.append(Client("dhcrelay_udhcpc", relay, RELAY_NS, "btcap-s1"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dhcrelay", help="ISC dhcrelay binary, for the option 82 vectors")
    parser.add_argument("--respond", metavar="IFNAME", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.respond:
        respond(args.respond)
        return
    teardown()
    vectors: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="btcap-") as tmp:
        try:
            setup()
            for client in clients(Path(tmp), args.dhcrelay):
                for packet in capture(client, Path(tmp)):
                    kind = parse(packet).message_type
                    assert kind is not None
                    # Retransmissions differ only in secs (and xid): the first is enough.
                    vectors.setdefault(f"{client.name}_{kind.name.lower()}", packet)
                time.sleep(0.5)
        finally:
            teardown()
    for stem, packet in vectors.items():
        (VECTOR_DIR / f"{stem}.hex").write_text(packet.hex() + "\n")
        print(f"{stem}.hex: {len(packet)} bytes")


if __name__ == "__main__":
    main()
