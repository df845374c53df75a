"""Decision ids: version-7 UUIDs that sort by their millisecond."""

from __future__ import annotations

import uuid

import pytest

from hub import ids
from hub.ids import uuid7


def test_decision_ids_are_time_ordered_uuid7(monkeypatch: pytest.MonkeyPatch) -> None:
    now_ns = 1_764_000_000_123_456_789
    monkeypatch.setattr(ids.time, "time_ns", lambda: now_ns)
    first = uuid7()
    now_ns += 1_000_000  # the next millisecond
    later = [uuid7() for _ in range(500)]
    assert len(set(later)) == 500
    assert all(first < x for x in later)  # a later millisecond sorts after
    parsed = uuid.UUID(first)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == 1_764_000_000_123  # the unix milliseconds lead


def test_random_bits_differ_within_a_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_764_000_000_000_000_000)
    same_ms = {uuid7() for _ in range(1000)}
    assert len(same_ms) == 1000
    assert len({x[:12] for x in same_ms}) == 1
