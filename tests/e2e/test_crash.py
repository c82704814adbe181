"""Crash safety (issue 9, must-have 7), short form: SIGKILL brushtaild at random moments
while perfdhcp and real clients obtain and renew leases on both paths; after each restart
every ACK any client received is in the store for that client with at least the expiry it
was told, and no address was ACKed to two clients at once. tests/e2e/crash.py has the
run and the checks; `bench/crash.py --rounds 20` is the long form.

The first tests check the checks themselves on made-up captures and stores.
"""

import os
import random
import struct
from pathlib import Path

import pytest

from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.options import parse_ip, u32
from brushtaild.engine.leases import Lease, LeaseState
from tests.e2e import capture, crash
from tests.e2e.capture import Seen
from tests.e2e.crash import CLOCK_SLACK, Ack, CrashRun, Plan, acks_from
from tests.e2e.netns import RELAY_IP, SERVER_IP, available
from tests.environment import unavailable

MAC_A = bytes.fromhex("02aa00000001")
MAC_B = bytes.fromhex("02bb00000002")
ADDRESS = parse_ip("198.18.1.10")
T0 = 1_800_000_000.0


def _message(op: int, mtype: MessageType, mac: bytes, xid: int, **options: bytes) -> Message:
    opts: dict[int, bytes] = {OptionCode.MESSAGE_TYPE: bytes((mtype,))}
    opts.update({int(getattr(OptionCode, k)): v for k, v in options.items()})
    return Message(op=op, xid=xid, chaddr=mac + bytes(10), options=opts)


def _request(at: float, mac: bytes, xid: int, **options: bytes) -> Seen:
    return Seen(at, parse_ip(RELAY_IP), _message(1, MessageType.REQUEST, mac, xid, **options))


def _ack(at: float, mac: bytes, xid: int, lease_time: int = 60) -> Seen:
    msg = _message(2, MessageType.ACK, mac, xid, LEASE_TIME=u32(lease_time))
    msg.yiaddr = ADDRESS
    return Seen(at, parse_ip(SERVER_IP), msg)


def _lease(mac: bytes, expires: float, state: LeaseState = LeaseState.BOUND) -> Lease:
    return Lease(ADDRESS, b"\x01" + mac, mac, "residential", state, expires, expires - 60)


def test_an_ack_is_matched_with_the_first_copy_of_its_request() -> None:
    seen = [
        _request(T0, MAC_A, 7),
        _request(T0 + 1, MAC_A, 7),  # a retransmission: the server may have answered the first
        _ack(T0 + 1.002, MAC_A, 7),
        _ack(T0 + 2, MAC_B, 9),  # its REQUEST was not captured
    ]
    found = acks_from(seen)
    first, second = found.acks
    assert first == Ack(T0 + 1.002, T0, b"\x01" + MAC_A, MAC_A, ADDRESS, 60, 7)
    assert first.floor == pytest.approx(T0 + 60 - CLOCK_SLACK)
    assert second.asked_at == T0 + 2 - crash.RETRY_WINDOW and found.unmatched == 1


def test_an_ack_is_keyed_by_the_client_id_its_request_sent() -> None:
    seen = [_request(T0, MAC_A, 7, CLIENT_ID=b"\xffsub-1"), _ack(T0 + 0.01, MAC_A, 7)]
    assert acks_from(seen).acks[0].client == b"\xffsub-1"


def test_recorded_passes_at_the_floor_and_fails_below_it() -> None:
    (ack,) = acks_from([_request(T0, MAC_A, 7), _ack(T0 + 0.2, MAC_A, 7)]).acks
    ok = crash.check_recorded([ack], [_lease(MAC_A, ack.floor)], received_before=T0 + 1, now=T0)
    assert ok.checked == 1 and not ok.violations
    assert ok.max_lag == pytest.approx(0.2 + CLOCK_SLACK)
    short = crash.check_recorded(
        [ack], [_lease(MAC_A, ack.floor - 0.001)], received_before=T0 + 1, now=T0
    )
    assert [v.check for v in short.violations] == ["recorded"]
    assert "short of the floor" in short.violations[0].detail


@pytest.mark.parametrize(
    ("leases", "problem"),
    [
        ([], "not in the store"),
        ([_lease(MAC_B, T0 + 100)], "another client"),
        ([_lease(MAC_A, T0 + 100, LeaseState.EXPIRED)], "stored as EXPIRED"),
    ],
)
def test_recorded_names_what_is_wrong(leases: list[Lease], problem: str) -> None:
    (ack,) = acks_from([_request(T0, MAC_A, 7), _ack(T0 + 0.01, MAC_A, 7)]).acks
    result = crash.check_recorded([ack], leases, received_before=T0 + 1, now=T0)
    assert len(result.violations) == 1 and problem in result.violations[0].detail


def test_recorded_skips_later_and_expiring_acks() -> None:
    (ack,) = acks_from([_request(T0, MAC_A, 7), _ack(T0 + 0.01, MAC_A, 7)]).acks
    # Received after the cut: may still be only in the ring.
    assert crash.check_recorded([ack], [], received_before=ack.at, now=T0).checked == 0
    # Running out: the daemon may be expiring it as we read.
    late = ack.floor - crash.EXPIRY_MARGIN
    assert crash.check_recorded([ack], [], received_before=T0 + 1, now=late).checked == 0


def test_unique_flags_an_address_acked_to_two_clients_at_once() -> None:
    seen = [
        _request(T0, MAC_A, 1),
        _ack(T0 + 0.01, MAC_A, 1),
        _request(T0 + 30, MAC_B, 2),
        _ack(T0 + 30.01, MAC_B, 2),
    ]
    (violation,) = crash.check_unique(acks_from(seen).acks)
    assert violation.ack.hwaddr == MAC_B and (b"\x01" + MAC_A).hex() in violation.detail
    # Once the first client's lease has run out, the address may go to another.
    seen[2:] = [_request(T0 + 61, MAC_B, 2), _ack(T0 + 61.01, MAC_B, 2)]
    assert crash.check_unique(acks_from(seen).acks) == []


def _frame(payload: bytes, *, vlan: int | None = None) -> bytes:
    """An Ethernet/IPv4/UDP frame from the server's port 67 to a client's port 68."""
    udp = struct.pack("!HHHH", 67, 68, 8 + len(payload), 0) + payload
    ip_header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
        bytes(map(int, SERVER_IP.split("."))), bytes(4),
    )  # fmt: skip
    tag = b"" if vlan is None else b"\x81\x00" + vlan.to_bytes(2)
    return bytes(6) + MAC_A + tag + b"\x08\x00" + ip_header + udp


def test_a_capture_reads_back_as_dhcp_messages_up_to_its_incomplete_tail(
    tmp_path: Path,
) -> None:
    reply = encode(_ack(T0, MAC_A, 7).message)
    frames = [_frame(reply), _frame(reply, vlan=10), _frame(b"not dhcp")]
    data = struct.pack("<IHHiIII", capture.PCAP_MAGIC_NS, 2, 4, 0, 0, 65535, 1)
    for n, frame in enumerate(frames):
        data += struct.pack("<IIII", int(T0) + n, 500_000_000, len(frame), len(frame)) + frame
    path = tmp_path / "c.pcap"
    # A record tcpdump is still writing: its header, part of its frame.
    path.write_bytes(data + struct.pack("<IIII", int(T0) + 3, 0, 300, 300) + bytes(10))
    read, offset = capture.read_pcap(path)
    assert [at for at, _ in read] == [T0 + 0.5, T0 + 1.5, T0 + 2.5] and offset == len(data)
    assert capture.read_pcap(path, offset) == ([], offset)
    seen = capture.dhcp_messages(read)
    assert [s.at for s in seen] == [T0 + 0.5, T0 + 1.5]
    assert all(s.from_server and s.message.xid == 7 for s in seen)


# --- against the real daemon ----------------------------------------------------------


def _seed() -> int:
    return int(os.environ.get("BT_CRASH_SEED", random.randrange(1 << 31)))


def _run_clean(tmp_path: Path, plan: Plan) -> list[crash.Round]:
    """Runs `plan` and fails with every round's line and each violation (with the daemon's
    log lines about its address) if any check failed."""
    reason = available()
    if reason is not None:
        unavailable(reason)
    with CrashRun(tmp_path, plan) as run:
        lines = [run.round().line() for _ in range(plan.rounds)]
        report = "\n".join([f"seed {plan.seed} (BT_CRASH_SEED repeats it)", *lines, run.summary()])
        failures = [
            f"round {number}: {v}\n    " + "\n    ".join(run.daemon_lines(v.ack.address)[-6:])
            for number, v in run.violations()[:10]
        ]
    assert not failures, report + "\n" + "\n".join(failures)
    assert all(r.at_start.checked > 0 and r.settled.checked > 0 for r in run.rounds), report
    return run.rounds


def test_sigkill_at_random_moments_loses_no_acknowledged_lease(tmp_path: Path) -> None:
    """3 rounds of: clients busy for 3-6 s, SIGKILL, restart (about one in three killed
    again in start-up), check at "started" and once settled. About 50 s."""
    plan = Plan(rounds=3, seed=_seed(), run=(3.0, 6.0), startup_kill=0.34, churn_rate=0)
    rounds = _run_clean(tmp_path, plan)
    # Both paths answered in every round.
    assert all(r.fast > 0 and r.slow > 0 for r in rounds), [r.line() for r in rounds]


# Runs only on request: its clients need two lease times (two minutes) to come round, well
# beyond the short form's budget; bench/crash.py runs the same clients in every round.
CHURN = os.environ.get("BT_CRASH_CHURN") == "1"


@pytest.mark.skipif(
    not CHURN,
    reason="about 150 s (two lease cycles): run with BT_CRASH_CHURN=1; bench/crash.py runs "
    "the same clients in every round",
)
def test_clients_renewing_at_their_expiry_through_crashes_keep_their_address(
    tmp_path: Path,
) -> None:
    """Clients that come back exactly at their lease's expiry (perfdhcp cycling 600 clients
    at 10/s, 60 s leases) in a pool too small for everyone, so freed addresses are handed
    out again at once; a SIGKILL as the first cycle comes round, another as the second
    does."""
    plan = Plan(rounds=2, seed=_seed(), run=(58.0, 62.0), startup_kill=0.0)
    _run_clean(tmp_path, plan)
