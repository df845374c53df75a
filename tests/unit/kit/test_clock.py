"""Instants as microseconds since the epoch: exact both ways, aware, any time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from services.kit.clock import EPOCH, from_us, to_us


def test_the_epoch_is_zero_and_a_round_trip_is_exact() -> None:
    assert to_us(EPOCH) == 0
    assert from_us(0) == EPOCH
    t = datetime(2026, 11, 1, 12, 0, 0, 123457, tzinfo=UTC)
    assert to_us(t) == 1_793_534_400_123_457
    assert from_us(to_us(t)) == t
    assert from_us(to_us(t)).tzinfo is UTC
    before = EPOCH - timedelta(microseconds=5)
    assert to_us(before) == -5
    assert from_us(-5) == before


def test_an_instant_in_another_time_zone_is_the_same_count() -> None:
    t = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    elsewhere = t.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert to_us(elsewhere) == to_us(t)
    assert from_us(to_us(elsewhere)) == t
