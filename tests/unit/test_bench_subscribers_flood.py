"""bench/subscribers.py's part flood: its recovery time and its scenario id."""

import sys
from pathlib import Path

# The bench scripts import their siblings by name (bench/ is a script's sys.path[0]).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import subscribers

T_END = 10**12  # the flood's end, ns
STEP = 100_000_000  # a renewal every 0.1 s


def sends(count: int) -> list[int]:
    return [T_END + i * STEP for i in range(count)]


def test_recovery_is_zero_when_renewals_never_stopped_being_answered() -> None:
    assert subscribers.recovery(sends(20), [True] * 20, 20, T_END) == 0.0


def test_recovery_ends_at_the_first_renewal_of_a_fully_answered_half_second() -> None:
    ok = [False, True, False, *[True] * 17]
    assert subscribers.recovery(sends(20), ok, 20, T_END) == 0.3


def test_no_recovery_while_fewer_than_half_a_second_of_renewals_follow() -> None:
    ok = [*[False] * 17, True, True, True]
    assert subscribers.recovery(sends(20), ok, 20, T_END) is None


def test_renewals_sent_during_the_flood_do_not_count() -> None:
    sent = [T_END - STEP, *sends(10)]
    assert subscribers.recovery(sent, [False, *[True] * 10], 11, T_END) == 0.0


def test_report_asks_for_the_part_by_its_scenario_id() -> None:
    args = subscribers.parse_args(["--part", "restart,flood_peers", "--quick"])
    assert args.parts == ["restart", "flood"]
    assert args.flood_seconds == 5.0
    assert "flood" not in subscribers.parse_args([]).parts
