"""Reading validation: every malformed payload maps to a precise drop reason."""

from __future__ import annotations

import logging

import pytest

from hub.payloads import (
    DROPPED,
    DropLog,
    DropReason,
    InvalidReading,
    parse_reading,
    parse_statestream,
)

NOW = 1_764_000_000.0


def reason(payload: bytes, max_bytes: int = 1024) -> DropReason:
    with pytest.raises(InvalidReading) as e:
        parse_reading(payload, max_bytes=max_bytes, now=NOW)
    return e.value.reason


def test_valid_object_and_bare_number() -> None:
    r = parse_reading(b'{"value": 21.5, "ts": 1764000000, "id": "r-1"}', max_bytes=1024, now=NOW)
    assert (r.value, r.ts, r.reading_id) == (21.5, 1_764_000_000.0, "r-1")
    assert parse_reading(b"400", max_bytes=1024, now=NOW).value == 400.0


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{not json", DropReason.BAD_JSON),
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
        (b"[" * 100_000, DropReason.OVERSIZED),
    ],
)
def test_bad_payloads(payload: bytes, expected: DropReason) -> None:
    assert reason(payload, max_bytes=1024) is expected


def test_deep_nesting_within_size_is_bad_json() -> None:
    assert reason(b"[" * 1000, max_bytes=10_000) is DropReason.BAD_JSON


def test_statestream_states() -> None:
    assert parse_statestream(b"21.5", max_bytes=64).value == 21.5
    assert parse_statestream(b'"21.5"', max_bytes=64).value == 21.5
    for state in (b"unavailable", b"unknown", b""):
        with pytest.raises(InvalidReading) as e:
            parse_statestream(state, max_bytes=64)
        assert e.value.reason is DropReason.UNAVAILABLE
    assert parse_statestream(b"on", max_bytes=64).value == 1.0
    assert parse_statestream(b"closed", max_bytes=64).value == 0.0
    for state in (b"heat", b"nan", b"inf"):
        with pytest.raises(InvalidReading):
            parse_statestream(state, max_bytes=64)


def test_drop_log_counts_every_drop_logs_once_per_topic(caplog: pytest.LogCaptureFixture) -> None:
    drops = DropLog()
    before = DROPPED.labels("bad_json")._value.get()
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            drops.drop(
                "roost/readings/office/co2", DropReason.BAD_JSON, "payload is not valid JSON"
            )
        drops.drop("roost/readings/kitchen/co2", DropReason.BAD_JSON, "payload is not valid JSON")
    assert DROPPED.labels("bad_json")._value.get() - before == 6
    assert len(caplog.records) == 2


def test_log_never_contains_the_payload(caplog: pytest.LogCaptureFixture) -> None:
    secret = b'{"value": "4242.4242"}'
    drops = DropLog()
    with caplog.at_level(logging.DEBUG):
        try:
            parse_reading(secret, max_bytes=1024, now=NOW)
        except InvalidReading as e:
            drops.drop("roost/readings/x/y", e.reason, str(e))
    assert "4242" not in caplog.text
