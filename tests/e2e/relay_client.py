"""A relay-style DHCP load client for crash tests: records every ACK the moment it arrives.

Run in a Link's client namespace (which holds RELAY_IP): it plays a relay agent, as perfdhcp
does, keeping up to `--window` four-way exchanges in flight, each for a distinct client MAC.
Each ACK is written to `--out` as "<mac hex> <address>" and flushed at once, so that a test
killing the server knows exactly which leases were acknowledged.
"""

import argparse
import select
import socket
import time

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode, parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.reasons import MalformedPacket

RETRY_AFTER = 1.0


def client_mac(n: int) -> bytes:
    return b"\x02\xcc" + n.to_bytes(4, "big")


def build(mtype: MessageType, n: int, giaddr: int, requested: int = 0, server: int = 0) -> bytes:
    options = {OptionCode.MESSAGE_TYPE: bytes((mtype,))}
    if requested:
        options[OptionCode.REQUESTED_ADDRESS] = opt.ip(requested)
        options[OptionCode.SERVER_ID] = opt.ip(server)
    msg = Message(op=1, xid=n, hops=1, giaddr=giaddr, chaddr=client_mac(n) + bytes(10),
                  options=options)  # fmt: skip
    return encode(msg)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--relay", required=True)
    parser.add_argument("--server", required=True)
    clients = parser.add_mutually_exclusive_group(required=True)
    clients.add_argument("--count", type=int, help="clients 1..COUNT")
    clients.add_argument("--replay", help="the clients of an earlier --out file, in order")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    giaddr = opt.parse_ip(args.relay)
    server = (args.server, 67)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.relay, 67))
    if args.replay:
        with open(args.replay) as f:
            todo = [int.from_bytes(bytes.fromhex(line.split()[0])[2:]) for line in f]
    else:
        todo = list(range(1, args.count + 1))
    todo.reverse()
    pending: dict[int, tuple[int, float, bytes]] = {}  # xid -> (stage, sent at, packet)
    deadline = time.monotonic() + args.seconds
    with open(args.out, "w", buffering=1) as out:
        while time.monotonic() < deadline and (todo or pending):
            while len(pending) < args.window and todo:
                n = todo.pop()
                packet = build(MessageType.DISCOVER, n, giaddr)
                sock.sendto(packet, server)
                pending[n] = (1, time.monotonic(), packet)
            now = time.monotonic()
            for xid, (stage, sent, packet) in list(pending.items()):
                if now - sent > RETRY_AFTER:
                    sock.sendto(packet, server)
                    pending[xid] = (stage, now, packet)
            if not select.select([sock], [], [], 0.1)[0]:
                continue
            try:
                reply = parse(sock.recv(2048))
            except MalformedPacket:
                continue
            entry = pending.get(reply.xid)
            if entry is None:
                continue
            if reply.message_type is MessageType.OFFER and entry[0] == 1:
                server_id = opt.decode_ip(reply.options[OptionCode.SERVER_ID])
                packet = build(MessageType.REQUEST, reply.xid, giaddr, reply.yiaddr, server_id)
                sock.sendto(packet, server)
                pending[reply.xid] = (2, time.monotonic(), packet)
            elif reply.message_type is MessageType.ACK and entry[0] == 2:
                out.write(f"{client_mac(reply.xid).hex()} {opt.format_ip(reply.yiaddr)}\n")
                del pending[reply.xid]
            elif reply.message_type is MessageType.NAK:
                del pending[reply.xid]


if __name__ == "__main__":
    main()
