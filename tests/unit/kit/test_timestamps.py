"""services.kit.timestamps: a caller's Timestamp is converted only when valid; anything
else is INVALID_ARGUMENT naming the field, never protobuf's ValueError (INTERNAL)."""

from __future__ import annotations

from datetime import UTC

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from services.kit import timestamps
from services.kit.errors import InvalidArgument

_INT64 = st.integers(-(2**63), 2**63 - 1)
_INT32 = st.integers(-(2**31), 2**31 - 1)


@given(seconds=_INT64, nanos=_INT32)
def test_never_raises_anything_but_invalid_argument(seconds: int, nanos: int) -> None:
    ts = Timestamp(seconds=seconds, nanos=nanos)
    if timestamps.is_valid(ts):
        assert timestamps.to_datetime(ts, "x.at") == ts.ToDatetime(tzinfo=UTC)
        assert timestamps.timestamp_us(ts, "x.at") == ts.ToMicroseconds()
        return
    with pytest.raises(InvalidArgument) as refused:
        timestamps.to_datetime(ts, "x.at")
    assert str(refused.value) == f"x.at: {timestamps.PROBLEM}"
    with pytest.raises(ValueError):  # what the kit's check stands in front of
        ts.ToDatetime(tzinfo=UTC)


@given(
    seconds=st.integers(timestamps.MIN_TIMESTAMP_SECONDS, timestamps.MAX_TIMESTAMP_SECONDS),
    nanos=st.integers(0, 999_999_999),
)
def test_every_valid_timestamp_converts_like_protobuf(seconds: int, nanos: int) -> None:
    ts = Timestamp(seconds=seconds, nanos=nanos)
    assert timestamps.to_datetime(ts, "at") == ts.ToDatetime(tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (timestamps.MAX_TIMESTAMP_SECONDS + 1, 0),
        (timestamps.MIN_TIMESTAMP_SECONDS - 1, 0),
        (0, -1),
        (0, 1_000_000_000),
    ],
)
def test_one_past_each_edge_is_refused(seconds: int, nanos: int) -> None:
    with pytest.raises(InvalidArgument, match=r"^observed_at: not a valid timestamp"):
        timestamps.to_datetime(Timestamp(seconds=seconds, nanos=nanos), "observed_at")
