"""The backlog: bounded, oldest dropped first, a recent reading id never queued twice,
fresh readings first when there is a backlog (the older ones then late), and memory
bounded whatever arrives."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.backlog import Backlog, Duplicate, RecentIds


@dataclass(frozen=True)
class Item:
    model: str
    area: str
    trigger_id: str


def test_fifo_and_the_oldest_is_dropped_beyond_the_bound() -> None:
    b: Backlog[Item] = Backlog(3, recent_ids=100)
    dropped = [b.add(Item("m", "a", f"r{i}")) for i in range(5)]
    assert [d.trigger_id if d else None for d in dropped] == [None, None, None, "r0", "r1"]
    assert len(b) == 3
    assert ids(b.take(3)) == ["r2", "r3", "r4"]  # no backlog: all, in arrival order
    assert b.take(1) == []


def ids(taken: list[tuple[Item, bool]]) -> list[str]:
    return [i.trigger_id + ("(late)" if late else "") for i, late in taken]


def test_with_a_backlog_the_newest_come_first_and_the_older_ones_are_late() -> None:
    b: Backlog[Item] = Backlog(100, recent_ids=100)
    for i in range(10):
        b.add(Item("m", "a", f"a{i}"))
    b.add(Item("m", "b", "b0"))  # another entity: its only reading is never late
    # The newest half of the batch first (in order), then the oldest.
    assert ids(b.take(4)) == ["a9", "b0", "a0(late)", "a1(late)"]
    b.add(Item("m", "a", "a10"))
    assert ids(b.take(4)) == ["a8(late)", "a10", "a2(late)", "a3(late)"]
    assert ids(b.take(10)) == [f"a{i}(late)" for i in range(4, 8)]
    # Drained: the next readings are not late.
    b.add(Item("m", "a", "a11"))
    assert ids(b.take(4)) == ["a11"]


def test_a_recent_reading_id_is_refused_per_model_and_area() -> None:
    b: Backlog[Item] = Backlog(10, recent_ids=100)
    b.add(Item("m", "a", "r1"))
    with pytest.raises(Duplicate):
        b.add(Item("m", "a", "r1"))
    assert ids(b.take(1)) == ["r1"]
    with pytest.raises(Duplicate):  # also once it left the queue (decided)
        b.add(Item("m", "a", "r1"))
    b.add(Item("m", "b", "r1"))  # another area, another model: their own readings
    b.add(Item("n", "a", "r1"))
    b.add(Item("m", "a", ""))  # no id: never merged
    b.add(Item("m", "a", ""))
    assert len(b) == 4


def test_zero_recent_ids_disables_the_check() -> None:
    b: Backlog[Item] = Backlog(10, recent_ids=0)
    b.add(Item("m", "a", "r1"))
    b.add(Item("m", "a", "r1"))
    assert len(b) == 2


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_items"):
        Backlog(0, recent_ids=1)
    with pytest.raises(ValueError, match="size"):
        RecentIds(-1)


@given(st.lists(st.text(max_size=8), max_size=300), st.integers(1, 20))
def test_memory_is_bounded_whatever_ids_arrive(ids: list[str], size: int) -> None:
    recent = RecentIds(size)
    for i in ids:
        recent.add(("m", "a", i))
        assert len(recent) <= size
    if len(set(ids)) <= size:  # nothing had to be forgotten: every id is refused again
        assert not any(recent.add(("m", "a", i)) for i in set(ids))
