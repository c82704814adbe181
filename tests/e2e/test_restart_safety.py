"""Review finding 1 on the wire: a lease the kernel renewed while the daemon was down, and
whose stored expiry passed before the daemon came back, must not go to a second client.

The clients are played by a relay in the client namespace (one request, one reply at a
time), so two client MACs share one veth and the kernel's relayed replies come back to it.
"""

import contextlib
import ipaddress
import json
import time
from pathlib import Path

from tests.e2e.daemon import PYTHON, REPO
from tests.e2e.netns import RELAY_IP, SERVER_IP, Link
from tests.e2e.test_fastpath import (
    FAST_ACK,
    START_TIMEOUT,
    _lease_db,
    fast_daemon,
    scrape,
    stored_expiry,
    wait_until,
)

# One relayed request, one reply (or none within a second), printed as JSON.
_EXCHANGE = """
import json, socket, sys
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode, parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
mtype, n, requested, server = (int(a) for a in sys.argv[1:5])
options = {OptionCode.MESSAGE_TYPE: bytes((mtype,))}
if requested:
    options[OptionCode.REQUESTED_ADDRESS] = opt.ip(requested)
if server:
    options[OptionCode.SERVER_ID] = opt.ip(server)
chaddr = bytes((2, 0xDD, 0, 0, 0, n)) + bytes(10)
msg = Message(op=1, xid=n, hops=1, giaddr=opt.parse_ip(sys.argv[5]), chaddr=chaddr,
              options=options)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[5], 67))
s.settimeout(1.0)
s.sendto(encode(msg), (sys.argv[6], 67))
try:
    reply = parse(s.recv(2048))
except TimeoutError:
    print(json.dumps(None))
else:
    print(json.dumps([int(reply.message_type or 0), reply.yiaddr]))
"""


def exchange(
    link: Link, mtype: int, n: int, requested: int = 0, server: int = 0
) -> tuple[int, int] | None:
    argv = ["env", f"PYTHONPATH={REPO}", PYTHON, "-c", _EXCHANGE]
    argv += [str(mtype), str(n), str(requested), str(server), RELAY_IP, SERVER_IP]
    reply = json.loads(link.run_in(link.client_ns, argv).stdout)
    return None if reply is None else (reply[0], reply[1])


def test_a_lease_renewed_in_the_kernel_while_down_is_not_given_away(
    relay_link: Link, tmp_path: Path
) -> None:
    discover, request, offer, ack, nak = 1, 3, 2, 5, 6
    server = int(ipaddress.IPv4Address(SERVER_IP))
    with fast_daemon(relay_link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        offered = exchange(relay_link, discover, 1)
        assert offered is not None and offered[0] == offer
        address = offered[1]
        assert exchange(relay_link, request, 1, address, server) == (ack, address)
        dotted = str(ipaddress.IPv4Address(address))
        wait_until("lease entry", lambda: scrape(daemon)["dhcp_cache_entries"] == 1)
        assert daemon.stop() == 0
        # The stored lease ends in a few seconds; the kernel's entry, an hour from now.
        ends = time.time() + 4
        with contextlib.closing(_lease_db(daemon.state_dir, "rw")) as db, db:
            db.execute("UPDATE lease SET expires = ? WHERE address = ?", (ends, address))
        # With no daemon, the program renews the client (INIT-REBOOT through the relay).
        assert exchange(relay_link, request, 1, address) == (ack, address)
        while time.time() < ends + 1:
            time.sleep(0.2)
        daemon.start(START_TIMEOUT)
        # The renewal was recorded, and the address stays the first client's.
        wait_until("recorded renewal", lambda: stored_expiry(daemon.state_dir, dotted) > ends)
        other = exchange(relay_link, discover, 2, requested=address)
        assert other is not None and other[0] == offer and other[1] != address
        assert exchange(relay_link, request, 2, address, server) == (nak, 0)
        assert scrape(daemon)[FAST_ACK] >= 1
