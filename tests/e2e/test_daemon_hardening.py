"""brushtaild against what a subscriber can send and what can happen to the box: the loop must
go on serving (review findings 2, 4 and 16, and the stale-request drop), on the wire."""

import re
import signal
import time
from pathlib import Path

from brushtaild.daemon.main import MAX_QUEUE_AGE
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from tests.e2e.clients import UdhcpcProcess, run_perfdhcp
from tests.e2e.daemon import PYTHON, Brushtaild, sum_samples
from tests.e2e.netns import RELAY_IP, SERVER_IF, SERVER_IP, Link, ip
from tests.e2e.test_packet_io import (
    BROADCAST_IP,
    BROADCAST_MAC,
    client_raw,
    discover,
    server_io,
    udp_frame,
)

# In 198.18.0.0/15 like everything here, but routed nowhere from the server's namespace.
UNROUTABLE_RELAY = "198.19.77.1"
START_TIMEOUT = 120.0  # the fast path's compile on a loaded 2-core box


def send_from_relay(link: Link, payloads: list[bytes]) -> None:
    """UDP datagrams from the client end's relay address to the server's port 67."""
    script = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('{RELAY_IP}', 67))\n"
        f"for p in {payloads!r}: s.sendto(p, ('{SERVER_IP}', 67))\n"
    )
    link.run_in(link.client_ns, [PYTHON, "-c", script])


def client_message(n: int, giaddr: str = "0.0.0.0", extra: dict[int, bytes] | None = None) -> bytes:
    msg = Message(
        op=1,
        xid=n,
        hops=1,
        giaddr=opt.parse_ip(giaddr),
        chaddr=b"\x02\xdd" + n.to_bytes(4, "big") + bytes(10),
        options={OptionCode.MESSAGE_TYPE: bytes((MessageType.DISCOVER,)), **(extra or {})},
    )
    return encode(msg, max_size=1500)


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def serves_a_relayed_client(link: Link) -> bool:
    result = run_perfdhcp(link, rate=20, duration=1, clients=5)
    return result.exchanges["REQUEST-ACK"].received > 0


def test_an_unroutable_relay_does_not_stop_the_daemon(relay_link: Link, tmp_path: Path) -> None:
    """Review finding 4: the OFFER to giaddr fails with ENETUNREACH (no route, no default
    route); the reply is dropped and counted, and the next client is served."""
    selector = {OptionCode.SUBNET_SELECTION: opt.ip(opt.parse_ip("198.18.0.0"))}
    payloads = [client_message(n, UNROUTABLE_RELAY, selector) for n in range(1, 4)]
    with Brushtaild(relay_link, tmp_path, trusted_relays=[UNROUTABLE_RELAY]).start() as daemon:
        send_from_relay(relay_link, payloads)
        wait_for(lambda: daemon.metric('dhcp_packets_dropped_total{reason="send_failed"}') >= 3)
        assert daemon.proc is not None and daemon.proc.poll() is None
        samples = daemon.samples()
        errors = 'dhcp_socket_errors_total{error="ENETUNREACH",operation="send"}'
        assert samples[errors] == 3
        assert serves_a_relayed_client(relay_link)
        # One warning line for the three, with the reason.
        warnings = [line for line in daemon.log().splitlines() if "reason=send_failed" in line]
        assert len(warnings) == 1 and "Network is unreachable" in warnings[0], warnings


def test_repeated_option_82_does_not_stop_the_daemon(relay_link: Link, tmp_path: Path) -> None:
    """Review finding 2: ten DISCOVERs each with option 82 twice (255 bytes each) and no
    option 57 stopped the daemon, and under systemd left the unit failed."""
    agent = b"\x01\xfd" + b"A" * 253 + b"\x02\xfd" + b"B" * 253
    payloads = [client_message(n, extra={OptionCode.RELAY_AGENT_INFO: agent}) for n in range(10)]
    # The encoder splits the 510-byte value into two options of 255, as the review's packet.
    assert payloads[0].count(b"\x52\xff\x01\xfd") == 1
    assert payloads[0].count(b"\x52\xff\x02\xfd") == 1
    with Brushtaild(relay_link, tmp_path).start() as daemon:
        send_from_relay(relay_link, payloads)
        wait_for(lambda: daemon.metric("dhcp_packets_dropped_total") >= 10)
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert serves_a_relayed_client(relay_link)


def test_the_link_going_down_and_up_does_not_stop_the_daemon(link: Link, tmp_path: Path) -> None:
    """`ip link set down` makes the packet socket report ENETDOWN on its next read."""
    with Brushtaild(link, tmp_path).start() as daemon:
        ip("-n", link.server_ns, "link", "set", SERVER_IF, "down")
        wait_for(
            lambda: (
                daemon.metric('dhcp_socket_errors_total{error="ENETDOWN",operation="receive"}') >= 1
            )
        )
        ip("-n", link.server_ns, "link", "set", SERVER_IF, "up")
        assert daemon.proc is not None and daemon.proc.poll() is None
        client = UdhcpcProcess(link, tmp_path / "udhcpc", discovers=10, quit_when_bound=True)
        with client.start():
            assert client.wait_exit(20).address is not None
        assert "receive error on sub0" in daemon.log()


def test_no_kernel_headers_means_the_slow_path_alone(link: Link, tmp_path: Path) -> None:
    """Review finding 16: BCC cannot compile (no kernel headers after a kernel upgrade):
    the daemon serves on the slow path, says so, and removes the program an earlier run
    left attached, which nothing would keep up to date."""
    daemon = Brushtaild(link, tmp_path, fastpath=True)
    try:
        with daemon.start(START_TIMEOUT):
            assert daemon.metric("dhcp_fastpath_up") == 1
            assert daemon.stop() == 0
        assert "xdp" in ip("-n", link.server_ns, "link", "show", "dev", SERVER_IF)
        # BCC's way to name the headers' directory: here, one that does not exist.
        daemon.env["BCC_KERNEL_SOURCE"] = str(tmp_path / "no-headers")
        with daemon.start(START_TIMEOUT):
            log = daemon.log()
            assert re.search(r"ERROR fast path FAILED, serving on the slow path alone: .+", log)
            samples = daemon.samples()
            assert samples["dhcp_fastpath_up"] == 0
            assert sum_samples(samples, "dhcp_fastpath_requests_total") == 0
            assert "xdp" not in ip("-n", link.server_ns, "link", "show", "dev", SERVER_IF)
            assert not (daemon.pin_dir / "leases").exists()
            client = UdhcpcProcess(link, tmp_path / "udhcpc", discovers=10, quit_when_bound=True)
            with client.start():
                assert client.wait_exit(20).address is not None
            assert daemon.metric('dhcp_slowpath_requests_total{result="ack"}') >= 1
    finally:
        daemon.remove_pins()


def caught(pid: int, signum: int) -> bool:
    """Whether `pid` has a handler for `signum` (SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return bool(mask >> (signum - 1) & 1)


def test_signals_during_the_compile(link: Link, tmp_path: Path) -> None:
    """Review finding 16: a SIGHUP while the fast path compiles is a reload once started
    (it used to kill the daemon); a SIGTERM then is a clean exit."""
    daemon = Brushtaild(link, tmp_path, fastpath=True)
    try:
        for signum in (signal.SIGHUP, signal.SIGTERM):
            proc = daemon.spawn().proc
            assert proc is not None
            wait_for(lambda p=proc.pid, s=signum: caught(p, s), 20)
            assert "brushtaild 0" not in daemon.log(), "started before the signal"
            proc.send_signal(signum)
            if signum == signal.SIGHUP:
                daemon.wait_started(START_TIMEOUT)
                wait_for(lambda: "config reloaded" in daemon.log())
                assert daemon.stop() == 0
            else:
                assert proc.wait(START_TIMEOUT) == 0
                assert "stopped" in daemon.log()
    finally:
        daemon.kill()
        daemon.remove_pins()


def test_frames_older_than_the_threshold_are_counted_stale(link: Link) -> None:
    """Kernel receive stamps: frames queued before `stale_before` are counted, not read;
    the frames behind a fresh one are returned."""
    mac = link.client_mac
    frame = udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac))
    with server_io(link) as io, client_raw(link) as cli:
        for _ in range(3):
            cli.send(frame)
        time.sleep(0.2)
        cut = time.time()
        time.sleep(0.05)
        for _ in range(2):
            cli.send(frame)
        time.sleep(0.2)
        received = io.receive_batch(16, stale_before=cut)
        assert (received.stale, len(received.frames), received.error) == (3, 2, None)


def test_frames_older_than_the_aged_threshold_are_returned_and_counted(link: Link) -> None:
    """Frames received before `aged_before` come first in the batch and are counted in
    `aged`; those older than `stale_before` still are not returned."""
    mac = link.client_mac
    frame = udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac))
    with server_io(link) as io, client_raw(link) as cli:
        cli.send(frame)
        time.sleep(0.2)
        stale_cut = time.time()
        time.sleep(0.05)
        for _ in range(3):
            cli.send(frame)
        time.sleep(0.2)
        aged_cut = time.time()
        time.sleep(0.05)
        for _ in range(2):
            cli.send(frame)
        time.sleep(0.2)
        received = io.receive_batch(16, stale_before=stale_cut, aged_before=aged_cut)
        assert (received.stale, received.aged, len(received.frames)) == (1, 3, 5)


def test_pending_says_whether_a_frame_is_queued(link: Link) -> None:
    mac = link.client_mac
    frame = udp_frame(mac, BROADCAST_MAC, 0, BROADCAST_IP, discover(mac))
    with server_io(link) as io, client_raw(link) as cli:
        assert not io.pending()
        cli.send(frame)
        time.sleep(0.2)
        assert io.pending()
        assert len(io.receive_batch(16).frames) == 1
        assert not io.pending()


def test_requests_that_waited_too_long_are_dropped_as_stale(
    relay_link: Link, tmp_path: Path
) -> None:
    """A daemon held up (here: stopped) past MAX_QUEUE_AGE finds its queue full of requests
    whose clients have retransmitted since; it counts them stale and answers the rest."""
    old = [client_message(n, RELAY_IP) for n in range(1, 4)]
    fresh = [client_message(n, RELAY_IP) for n in range(4, 6)]
    with Brushtaild(relay_link, tmp_path).start() as daemon:
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            send_from_relay(relay_link, old)
            time.sleep(MAX_QUEUE_AGE + 0.5)
            send_from_relay(relay_link, fresh)
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: daemon.metric('dhcp_slowpath_requests_total{result="offer"}') >= 2)
        samples = daemon.samples()
        assert samples['dhcp_packets_dropped_total{reason="stale"}'] == 3
        assert samples['dhcp_slowpath_requests_total{result="offer"}'] == 2
