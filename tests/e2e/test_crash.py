"""Crash safety (issue 9, must-have 7), short form: SIGKILL brushtaild at random moments
while perfdhcp and real clients obtain and renew leases on both paths; after each restart
every ACK any client received is in the store for that client with at least the expiry it
was told, and no address was ACKed to two clients at once. tests/e2e/crash.py has the
run and the checks; `bench/crash.py --rounds 20` is the long form.

The first tests check the checks themselves on made-up captures and stores.
"""

import os
import random
from pathlib import Path

import pytest

from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.options import parse_ip, u32
from brushtaild.engine.leases import Lease, LeaseState
from tests.e2e import crash
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


# --- against the real daemon ----------------------------------------------------------

ROUNDS = 3


def test_sigkill_at_random_moments_loses_no_acknowledged_lease(tmp_path: Path) -> None:
    """3 rounds of: clients busy for 3-6 s, SIGKILL, restart (one in three killed again
    in start-up), check at "started" and once settled. About a minute in all."""
    reason = available()
    if reason is not None:
        unavailable(reason)
    seed = int(os.environ.get("BT_CRASH_SEED", random.randrange(1 << 31)))
    plan = Plan(rounds=ROUNDS, seed=seed, run=(3.0, 6.0), startup_kill=0.34)
    with CrashRun(tmp_path, plan) as run:
        lines = [run.round().line() for _ in range(ROUNDS)]
        report = "\n".join([f"seed {seed} (BT_CRASH_SEED repeats it)", *lines, run.summary()])
        failures = [
            f"round {number}: {v}\n    " + "\n    ".join(run.daemon_lines(v.ack.address)[-6:])
            for number, v in run.violations()
        ]
    assert not failures, report + "\n" + "\n".join(failures)
    # The run exercised both paths and checked something after every restart.
    assert all(r.fast > 0 and r.slow > 0 for r in run.rounds), report
    assert all(r.at_start.checked > 0 and r.settled.checked > 0 for r in run.rounds), report
