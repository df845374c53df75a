"""Rate-limited logging: one line per reason per interval, bounded memory under floods."""

from __future__ import annotations

import logging

import pytest

from services.kit.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_one_reason_logs_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("t.flood"), interval=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.flood"):
        logged = [
            log("bad_json", "dropped a reading on %s: bad JSON", "roost/x") for _ in range(10_000)
        ]
        assert sum(logged) == 1
        clock.now += 61
        assert log("bad_json", "dropped a reading on %s: bad JSON", "roost/x")
    assert len(caplog.records) == 2
    assert "and 9999 more like it" in caplog.records[1].getMessage()


def test_reasons_are_limited_independently(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger("t.reasons"), interval=60, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="t.reasons"):
        assert log("a", "one")
        assert log("b", "two")
        assert not log("a", "one again")
    assert [r.getMessage() for r in caplog.records] == ["one", "two"]


def test_memory_stays_bounded_when_the_reason_varies() -> None:
    log = RateLimitedLog(logging.getLogger("t.bounded"), max_reasons=100, clock=Clock())
    for i in range(50_000):
        log(f"topic-{i}", "dropped")
    assert log.tracked == 100


def test_nothing_is_logged_below_the_level(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger("t.level"), logging.DEBUG, clock=Clock())
    with caplog.at_level(logging.INFO, logger="t.level"):
        assert not log("r", "quiet")
    assert caplog.records == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        RateLimitedLog(logging.getLogger("t"), interval=0)
