"""Reading validation: every malformed payload maps to a precise drop reason, nothing else
is ever raised, and accepted values are finite float32 within their kind's range."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.config import DEFAULT_SENSOR_RANGES
from hub.payloads import (
    DROPPED,
    FLOAT32_MAX,
    DropLog,
    DropReason,
    InvalidReading,
    Reading,
    ValueRange,
    parse_ranges,
    parse_reading,
    parse_statestream,
)
from tests.support.properties import PROPERTIES

NOW = 1_764_000_000.0
TEMPERATURE = ValueRange("temperature", -40.0, 85.0)
RANGES = parse_ranges(DEFAULT_SENSOR_RANGES)


def reason(payload: bytes, max_bytes: int = 1024, bounds: ValueRange | None = None) -> DropReason:
    with pytest.raises(InvalidReading) as e:
        parse_reading(payload, max_bytes=max_bytes, now=NOW, bounds=bounds)
    return e.value.reason


def test_valid_object_and_bare_number() -> None:
    r = parse_reading(b'{"value": 21.5, "ts": 1764000000, "id": "r-1"}', max_bytes=1024, now=NOW)
    assert (r.value, r.ts, r.reading_id) == (21.5, 1_764_000_000.0, "r-1")
    assert parse_reading(b"400", max_bytes=1024, now=NOW).value == 400.0


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{not json", DropReason.BAD_JSON),
        (b"", DropReason.BAD_JSON),
        (b"\xff\xfe", DropReason.NOT_UTF8),
        (b'{"value": NaN}', DropReason.NOT_FINITE),
        (b'{"value": Infinity}', DropReason.NOT_FINITE),
        (b'{"value": -Infinity}', DropReason.NOT_FINITE),
        (b"1e999", DropReason.NOT_FINITE),
        (b'{"value": "21.5"}', DropReason.WRONG_TYPE),
        (b'{"value": true}', DropReason.WRONG_TYPE),
        (b'{"value": null}', DropReason.WRONG_TYPE),
        (b'{"temp": 1}', DropReason.WRONG_TYPE),
        (b"[1, 2]", DropReason.WRONG_TYPE),
        (b'{"value": 1, "ts": "yesterday"}', DropReason.WRONG_TYPE),
        (b'{"value": 1, "ts": 5}', DropReason.BAD_TIMESTAMP),
        (b'{"value": 1, "ts": 9e12}', DropReason.BAD_TIMESTAMP),
        (b'{"value": 1, "id": 7}', DropReason.BAD_ID),
        (b'{"value": 1, "id": "' + b"x" * 65 + b'"}', DropReason.BAD_ID),
        (b'{"value": 1, "id": "r-1\\nFAKE LOG LINE"}', DropReason.BAD_ID),
        (b'{"value": 1, "id": "\\ud800"}', DropReason.BAD_ID),
        (b"[" * 100_000, DropReason.OVERSIZED),
    ],
)
def test_bad_payloads(payload: bytes, expected: DropReason) -> None:
    assert reason(payload, max_bytes=1024) is expected


def test_deep_nesting_within_size_is_bad_json() -> None:
    assert reason(b"[" * 1000, max_bytes=10_000) is DropReason.BAD_JSON
    assert reason(b"[" * 100_000 + b"]" * 100_000, max_bytes=1_000_000) is DropReason.BAD_JSON


@pytest.mark.parametrize(
    "payload",
    [
        b'{"value": 1' + b"0" * 400 + b"}",  # the poison: the hub exited with OverflowError
        b"1" + b"0" * 400,
        b"-1" + b"0" * 400,
        b'{"value": 21.5, "ts": 1' + b"0" * 400 + b"}",
        b"9" * 5000,  # beyond Python's int digit limit (a ValueError inside json)
    ],
)
def test_the_poison_integer_is_dropped_not_raised(payload: bytes) -> None:
    assert reason(payload, max_bytes=10_000) is DropReason.NOT_FINITE


@pytest.mark.parametrize(
    "payload", [b'{"value": 1e39}', b'{"value": 1e308}', b"-1e39", b"3.5e38", b"-3.41e38"]
)
def test_values_that_overflow_float32_are_not_finite(payload: bytes) -> None:
    # Finite in float64, infinite in the models' float32: they failed whole batches.
    assert reason(payload) is DropReason.NOT_FINITE


def test_the_largest_float32_passes_without_a_range() -> None:
    assert parse_reading(b"3.4e38", max_bytes=64, now=NOW).value == 3.4e38


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"3e38", False), (b"85.01", False), (b"-40.5", False), (b"85", True), (b"-40", True)],
)
def test_values_are_checked_against_the_kind_range(payload: bytes, expected: bool) -> None:
    if expected:
        assert parse_reading(payload, max_bytes=64, now=NOW, bounds=TEMPERATURE).value in (85, -40)
    else:
        assert reason(payload, bounds=TEMPERATURE) is DropReason.OUT_OF_RANGE


def test_range_error_names_the_kind_never_the_value() -> None:
    with pytest.raises(InvalidReading) as e:
        parse_reading(b'{"value": 4242.4242}', max_bytes=64, now=NOW, bounds=TEMPERATURE)
    assert str(e.value) == "'value' is outside the plausible range of temperature [-40, 85]"


def test_statestream_states() -> None:
    assert parse_statestream(b"21.5", max_bytes=64).value == 21.5
    assert parse_statestream(b'"21.5"', max_bytes=64).value == 21.5
    for state in (b"unavailable", b"unknown", b""):
        with pytest.raises(InvalidReading) as e:
            parse_statestream(state, max_bytes=64)
        assert e.value.reason is DropReason.UNAVAILABLE
    assert parse_statestream(b"on", max_bytes=64).value == 1.0
    assert parse_statestream(b"closed", max_bytes=64).value == 0.0
    for state in (b"heat", b"nan", b"inf", b"1e39", b"-1e308", b"\xff"):
        with pytest.raises(InvalidReading):
            parse_statestream(state, max_bytes=64)
    with pytest.raises(InvalidReading) as e:
        parse_statestream(b"120", max_bytes=64, bounds=RANGES["humidity"])
    assert e.value.reason is DropReason.OUT_OF_RANGE


def test_default_ranges() -> None:
    assert (RANGES["temperature"].low, RANGES["temperature"].high) == (-40, 85)
    assert (RANGES["humidity"].low, RANGES["humidity"].high) == (0, 100)
    assert (RANGES["illuminance"].low, RANGES["illuminance"].high) == (0, 200_000)
    assert (RANGES["carbon_dioxide"].low, RANGES["carbon_dioxide"].high) == (0, 10_000)
    assert (RANGES["door"].low, RANGES["door"].high) == (0, 1)


def test_parse_ranges_later_entries_win() -> None:
    ranges = parse_ranges(("temperature=-40:85", "temperature=-50:100", "co2=0:5e3"))
    assert (ranges["temperature"].low, ranges["temperature"].high) == (-50, 100)
    assert ranges["co2"].high == 5000


@pytest.mark.parametrize(
    "entry",
    [
        "temperature",
        "temperature=-40",
        "temperature=85:-40",
        "temperature=nan:1",
        "temperature=-inf:1",
        "temperature=0:1e39",
        "Temperature=0:1",
        "=0:1",
        "temperature=a:b",
    ],
)
def test_parse_ranges_refuses_malformed_entries(entry: str) -> None:
    with pytest.raises(ValueError, match=r"sensor_ranges: .* must look like"):
        parse_ranges((entry,))


# --------------------------------------------------------------- logging of drops


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_drop_log_counts_every_drop_logs_once_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    drops = DropLog(interval=60, clock=clock)
    before = DROPPED.labels("bad_json")._value.get()
    with caplog.at_level(logging.WARNING):
        for i in range(5):
            drops.drop(f"roost/readings/room_{i}/co2", DropReason.BAD_JSON, "not valid JSON")
        drops.drop("roost/readings/kitchen/co2", DropReason.NOT_UTF8, "payload is not UTF-8")
        drops.drop("roost/readings/kitchen/co2", DropReason.UNAVAILABLE, "no value")
        clock.now = 61
        drops.drop("roost/readings/office/co2", DropReason.BAD_JSON, "not valid JSON")
    assert DROPPED.labels("bad_json")._value.get() - before == 6
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "roost/readings/room_0/co2: bad_json" in lines[0]
    assert "and 4 more like it" in lines[2]


def test_drop_log_stays_quiet_and_bounded_with_many_topics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The old log remembered each topic (up to 10,000) and logged every new one."""
    drops = DropLog(interval=60, clock=FakeClock())
    with caplog.at_level(logging.WARNING):
        for i in range(20_000):
            drops.drop(f"roost/readings/area_{i}/temperature", DropReason.BAD_JSON, "x")
    assert len(caplog.records) == 1
    assert drops.tracked_reasons == 1


def test_a_long_topic_is_cut_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    topic = "roost/readings/" + "a" * 100_000 + "/temperature"
    with caplog.at_level(logging.WARNING):
        DropLog().drop(topic, DropReason.NAME_TOO_LONG, "area is longer than 64 characters")
    assert len(caplog.text) < 500
    assert "(100027 characters)" in caplog.text


def test_log_never_contains_the_payload(caplog: pytest.LogCaptureFixture) -> None:
    drops = DropLog()
    with caplog.at_level(logging.DEBUG):
        for secret in (b'{"value": "4242.4242"}', b"4242.4242e39", b"4242.4242"):
            try:
                parse_reading(secret, max_bytes=1024, now=NOW, bounds=TEMPERATURE)
            except InvalidReading as e:
                drops.drop("roost/readings/x/y", e.reason, str(e))
    assert "4242" not in caplog.text


# --------------------------------------------------------------- properties

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
number_text = st.from_regex(r"-?[0-9]{1,450}(\.[0-9]{0,40})?([eE][+-]?[0-9]{1,4})?", fullmatch=True)
bounds = st.sampled_from([None, *RANGES.values()])


def readings_like() -> st.SearchStrategy[bytes]:
    """Payloads near the schema: a reading object with arbitrary fields, or a number."""
    objects = st.fixed_dictionaries(
        {},
        optional={
            "value": json_value | number_text.map(float),
            "ts": json_value,
            "id": json_value,
        },
    ).map(lambda d: json.dumps(d).encode())
    return objects | number_text.map(str.encode) | json_value.map(lambda v: json.dumps(v).encode())


def assert_accepted(r: Reading, bound: ValueRange | None) -> None:
    assert math.isfinite(r.value)
    assert abs(r.value) <= FLOAT32_MAX
    assert np.isfinite(np.float32(r.value))
    if bound is not None:
        assert bound.low <= r.value <= bound.high
    assert r.ts is None or math.isfinite(r.ts)
    assert len(r.reading_id) <= 64
    assert r.reading_id.isprintable()


def parse_or_reject(fn: Any, payload: bytes, bound: ValueRange | None, **kw: Any) -> None:
    reason = None
    try:
        r = fn(payload, max_bytes=1024, bounds=bound, **kw)
    except InvalidReading as e:
        reason = e.reason
    if reason is None:
        assert_accepted(r, bound)
    else:
        assert isinstance(reason, DropReason)


@PROPERTIES
@given(payload=st.binary(max_size=1100), bound=bounds)
def test_parse_reading_never_raises_on_any_bytes(payload: bytes, bound: ValueRange | None) -> None:
    parse_or_reject(parse_reading, payload, bound, now=NOW)


@PROPERTIES
@given(payload=readings_like(), bound=bounds)
def test_parse_reading_never_raises_on_json(payload: bytes, bound: ValueRange | None) -> None:
    parse_or_reject(parse_reading, payload, bound, now=NOW)


@PROPERTIES
@given(payload=st.binary(max_size=300) | number_text.map(str.encode), bound=bounds)
def test_parse_statestream_never_raises(payload: bytes, bound: ValueRange | None) -> None:
    parse_or_reject(parse_statestream, payload, bound)
