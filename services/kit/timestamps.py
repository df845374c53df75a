"""``google.protobuf.Timestamp`` fields of requests, checked before they are used.

A Timestamp on the wire can hold any int64 seconds and int32 nanos, but only years
1 to 9999 and nanos 0 to 999,999,999 are valid; protobuf's own conversions
(``ToDatetime``, ``ToMicroseconds``...) raise ``ValueError`` on anything else, which a
servicer would turn into ``INTERNAL``. Every service converts a caller's Timestamp
through this module instead, so a bad one is ``INVALID_ARGUMENT`` naming the field
(never the value).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from services.kit.errors import InvalidArgument

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800
MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799
PROBLEM: Final = "not a valid timestamp (years 1 to 9999, nanos 0 to 999999999)"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def is_valid(ts: Timestamp) -> bool:
    """Whether ``ts`` is within the range a Timestamp may hold."""
    return MIN_TIMESTAMP_SECONDS <= ts.seconds <= MAX_TIMESTAMP_SECONDS and 0 <= ts.nanos < 10**9


def timestamp_us(ts: Timestamp, field: str) -> int:
    """``ts`` in microseconds since the epoch; InvalidArgument naming ``field`` unless valid."""
    if not is_valid(ts):
        raise InvalidArgument(f"{field}: {PROBLEM}")
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def to_datetime(ts: Timestamp, field: str) -> datetime:
    """``ts`` as an aware UTC datetime; InvalidArgument naming ``field`` unless valid."""
    return _EPOCH + timedelta(microseconds=timestamp_us(ts, field))
