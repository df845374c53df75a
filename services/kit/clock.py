"""Instants as integer microseconds since the Unix epoch, one way for every service.

SQLite rows store times as ``INTEGER`` microseconds (``*_us`` columns): exact,
sortable and free of time-zone text. ``to_us`` and ``from_us`` convert aware
``datetime`` values both ways without going through floats, so a round trip is
exact to the microsecond.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

#: 1970-01-01T00:00:00Z, the origin of every ``*_us`` value.
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def to_us(t: datetime) -> int:
    """Microseconds from :data:`EPOCH` to the aware instant ``t`` (floored)."""
    return (t - EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    """The aware UTC instant ``us`` microseconds after :data:`EPOCH`."""
    return EPOCH + timedelta(microseconds=us)
