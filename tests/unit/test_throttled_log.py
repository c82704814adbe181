"""ThrottledLog: the one rate limit on log lines, used for the daemon's drops and the map
sync's warnings."""

import logging

import pytest

from brushtaild.daemon.throttled_log import ThrottledLog

log = logging.getLogger("brushtaild.test")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_one_line_per_kind_and_interval_with_the_count_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttled = ThrottledLog(log, 10.0)
    with caplog.at_level(logging.WARNING, logger=log.name):
        throttled.report("full", "map full", 100.0)
        throttled.report("full", "map full", 101.0)
        throttled.report("full", "map full", 109.9)
        throttled.report("write", "write refused", 102.0)
        throttled.report("full", "map full", 110.0)
        throttled.report("full", "map full", 120.0)
    assert lines(caplog) == [
        "map full",
        "write refused",
        "map full (2 more since last report)",
        "map full",
    ]
    assert {record.levelno for record in caplog.records} == {logging.WARNING}


def test_the_first_report_goes_out_at_any_time(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=log.name):
        ThrottledLog(log, 60.0).report("batch", "bulk write failed", 0.0)
    assert lines(caplog) == ["bulk write failed"]


def test_a_bug_is_an_error_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise KeyError("lost")
    except KeyError as exc:
        bug = exc
    with caplog.at_level(logging.WARNING, logger=log.name):
        ThrottledLog(log, 10.0).report("internal_error", "drop reason=internal_error", 5.0, bug)
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "KeyError" in caplog.text and "Traceback" in caplog.text
