"""The readings waiting for a decision: a bounded queue that forgets no reading while the
services are away, and decides no reading twice.

While inference or audit is down, the pipeline keeps what arrives here and decides it
when the service is back. The queue is bounded (``max_pending``): beyond it the oldest
item is dropped and handed back to the caller, who counts it. A reading that comes again
with the same id (the broker redelivers an unacknowledged message after a reconnect, a
sensor retries a QoS 1 publish) is recognised by its ``(model, area, reading id)`` among
the last ``recent_ids`` and not queued again. Both bounds are fixed: memory stays flat
whatever arrives.

Fresh readings first: while more are waiting than one batch takes (a backlog after an
outage), a batch is the newest half of a batch, then the oldest; so decisions on what
happens now resume at once while the backlog drains. An item taken after a newer one of
its (model, area) is *late* (:meth:`Backlog.take`); without a backlog nothing is late.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar


class Item(Protocol):
    @property
    def model(self) -> str: ...
    @property
    def area(self) -> str: ...
    @property
    def trigger_id(self) -> str: ...  # the reading's id; "" if it has none


T = TypeVar("T", bound=Item)


class RecentIds:
    """The last ``size`` keys seen (first in, first forgotten)."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self._size = size
        self._seen: dict[tuple[str, str, str], None] = {}

    def add(self, key: tuple[str, str, str]) -> bool:
        """Remember ``key``; False if it was already among the recent ones."""
        if key in self._seen:
            return False
        if self._size == 0:
            return True
        self._seen[key] = None
        if len(self._seen) > self._size:
            del self._seen[next(iter(self._seen))]
        return True

    def __len__(self) -> int:
        return len(self._seen)


class Duplicate(Exception):
    """The item's reading was queued recently already."""


class Backlog(Generic[T]):
    """A FIFO of at most ``max_items``; items whose reading id was seen are refused."""

    def __init__(self, max_items: int, recent_ids: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self._items: deque[tuple[int, T]] = deque()
        self._max = max_items
        self._recent = RecentIds(recent_ids)
        self._arrivals = 0
        # Per (model, area): the arrival number of the newest item taken (at most one
        # entry per entity the hub decides for, bounded by its caps).
        self._newest_taken: dict[tuple[str, str], int] = {}

    def add(self, item: T) -> T | None:
        """Queue ``item``; the oldest item, if one was dropped to make room.

        Raises :class:`Duplicate` (and queues nothing) for a reading id seen recently."""
        if item.trigger_id and not self._recent.add((item.model, item.area, item.trigger_id)):
            raise Duplicate
        dropped = self._items.popleft()[1] if len(self._items) >= self._max else None
        self._arrivals += 1
        self._items.append((self._arrivals, item))
        return dropped

    def remember(self, model: str, area: str, reading_id: str) -> None:
        """Note a reading id as seen (decided before) without queueing anything."""
        if reading_id:
            self._recent.add((model, area, reading_id))

    def take(self, n: int) -> list[tuple[T, bool]]:
        """Up to ``n`` items, each with whether it is late. All of them, oldest first, if
        there are at most ``n``; else the newest ``n // 2``, then the oldest."""
        items = self._items
        if len(items) <= n:
            taken = list(items)
            items.clear()
        else:
            newest = [items.pop() for _ in range(n // 2)][::-1]
            taken = newest + [items.popleft() for _ in range(n - len(newest))]
        out: list[tuple[T, bool]] = []
        for arrival, item in taken:
            key = (item.model, item.area)
            late = arrival < self._newest_taken.get(key, 0)
            if not late and not getattr(item, "late", False):  # late when queued: older
                self._newest_taken[key] = arrival
            out.append((item, late))
        return out

    def __len__(self) -> int:
        return len(self._items)
