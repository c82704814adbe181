"""The hybrid logical clock: monotonic whatever the wall clock does, bounded against peers."""

from hypothesis import given
from hypothesis import strategies as st

from brushtaild.replication.hlc import Hlc, HybridClock


def test_stamps_follow_the_wall_clock_when_it_moves_on() -> None:
    clock = HybridClock("a", max_skew_ms=1000)
    assert clock.now(5000) == Hlc(5000, 0, "a")
    assert clock.now(5000) == Hlc(5000, 1, "a")
    assert clock.now(6000) == Hlc(6000, 0, "a")


def test_a_wall_clock_stepped_back_never_takes_the_clock_back() -> None:
    clock = HybridClock("a", max_skew_ms=1000)
    first = clock.now(10_000)
    assert clock.now(2_000) > first
    assert clock.now(2_000).wall == 10_000


def test_a_restart_from_the_persisted_stamp_stamps_after_it() -> None:
    before = HybridClock("a", 1000)
    last = before.now(9000)
    after = HybridClock("a", 1000, before.last)
    assert after.now(1000) > last


def test_a_received_stamp_orders_later_local_stamps_after_it() -> None:
    clock = HybridClock("a", max_skew_ms=1000)
    remote = Hlc(5500, 7, "b")
    assert clock.observe(remote, 5000)
    assert clock.now(5000) > remote


def test_a_peer_too_far_ahead_is_refused_and_not_adopted() -> None:
    clock = HybridClock("a", max_skew_ms=1000)
    clock.now(5000)
    assert not clock.observe(Hlc(6001, 0, "b"), 5000)
    assert clock.now(5000).wall == 5000
    assert clock.observe(Hlc(6000, 0, "b"), 5000)


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 50), st.integers(0, 60), st.integers(0, 3)),
        max_size=40,
    )
)
def test_stamps_strictly_increase_and_pass_every_accepted_one(
    steps: list[tuple[bool, int, int, int]],
) -> None:
    clock = HybridClock("a", max_skew_ms=10)
    previous = clock.last
    for local, wall, remote_wall, remote_logical in steps:
        if local:
            stamp = clock.now(wall)
            assert stamp > previous
            previous = stamp
        else:
            remote = Hlc(remote_wall, remote_logical, "b")
            if clock.observe(remote, wall):
                assert clock.now(wall) > remote
                previous = clock.last
