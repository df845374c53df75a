"""Validation of inbound readings. Bad input is counted, logged (rate-limited), dropped.

The parsers never raise anything but :class:`InvalidReading` on a payload, whatever its
bytes, and never log a payload (household data): only the topic and the reason. An
accepted value is finite in float32 (the models' dtype) and, when its sensor kind has
one, inside the kind's plausible range (``HubConfig.sensor_ranges``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from prometheus_client import Counter

from hub.topics import MAX_NAME_CHARS, valid_segment
from services.kit.ratelog import DEFAULT_INTERVAL_SECONDS, RateLimitedLog

log = logging.getLogger(__name__)


class DropReason(StrEnum):
    OVERSIZED = "oversized"
    NOT_UTF8 = "not_utf8"
    BAD_JSON = "bad_json"
    WRONG_TYPE = "wrong_type"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_ID = "bad_id"
    NAME_TOO_LONG = "name_too_long"
    BAD_NAME = "bad_name"
    UNKNOWN_TOPIC = "unknown_topic"
    UNKNOWN_SENSOR = "unknown_sensor"
    UNAVAILABLE = "unavailable"
    OWN_ENTITY = "own_entity"
    OUT_OF_ORDER = "out_of_order"
    TOO_MANY_AREAS = "too_many_areas"
    TOO_MANY_ENTITIES = "too_many_entities"
    OVERLOADED = "overloaded"
    INTERNAL = "internal_error"


READINGS = Counter("roost_hub_readings_total", "Readings accepted by the hub.")
DROPPED = Counter("roost_hub_readings_dropped_total", "Readings dropped, by reason.", ["reason"])
for _r in DropReason:
    DROPPED.labels(_r.value)

MAX_ID_CHARS = MAX_NAME_CHARS
# The largest finite float32: a value beyond it would become infinity in the model input.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Accept reading times from 1990 up to a day ahead of the hub's clock.
MIN_TS = 631_152_000.0
FUTURE_SLACK_SECONDS = 86_400.0
# Home Assistant states that mean "no value now"; dropped quietly (still counted).
HA_NO_VALUE = frozenset({"unavailable", "unknown", "none", ""})
# Home Assistant binary_sensor / cover states, as the 1/0 the models take.
HA_BINARY = {"on": 1.0, "open": 1.0, "detected": 1.0, "off": 0.0, "closed": 0.0, "clear": 0.0}
# Topics longer than this are shortened in log lines.
MAX_LOGGED_TOPIC_CHARS = 120


# Counted, never logged: expected on the normal path.
QUIET_DROPS = frozenset({DropReason.UNAVAILABLE, DropReason.OWN_ENTITY})


class InvalidReading(ValueError):
    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Reading:
    value: float
    ts: float | None
    reading_id: str


@dataclass(frozen=True)
class ValueRange:
    """The plausible values of one sensor kind, both ends included."""

    kind: str
    low: float
    high: float

    def check(self, value: float, what: str) -> float:
        if not self.low <= value <= self.high:
            raise InvalidReading(
                DropReason.OUT_OF_RANGE,
                f"{what} is outside the plausible range of {self.kind} "
                f"[{self.low:g}, {self.high:g}]",
            )
        return value


def parse_ranges(entries: Iterable[str]) -> dict[str, ValueRange]:
    """``("temperature=-40:85", ...)`` -> {kind: ValueRange}; a later entry of a kind wins.

    ValueError (naming the entry) unless each is ``<kind>=<low>:<high>`` with a valid
    kind and finite float32 bounds, ``low <= high``."""
    ranges: dict[str, ValueRange] = {}
    for entry in entries:
        kind, sep, bounds = entry.partition("=")
        low_text, colon, high_text = bounds.partition(":")
        kind = kind.strip()
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            low = high = math.nan
        if not (sep and colon and valid_segment(kind) and _in_float32(low, high) and low <= high):
            raise ValueError(
                f"sensor_ranges: '{entry}' must look like 'temperature=-40:85' "
                "(low <= high, finite numbers)"
            )
        ranges[kind] = ValueRange(kind, low, high)
    return ranges


def _in_float32(*values: float) -> bool:
    """Finite in float32 (NaN fails the comparison, infinity the bound)."""
    return all(abs(v) <= FLOAT32_MAX for v in values)


def _reject_constant(name: str) -> Any:
    raise InvalidReading(DropReason.NOT_FINITE, f"JSON constant {name} is not a number")


# Integers are read as floats: a 400-digit integer becomes infinity (dropped as not
# finite) instead of an int that overflows later, and no digit limit applies.
_JSON = json.JSONDecoder(parse_constant=_reject_constant, parse_int=float)


def _number(value: Any, what: str, bounds: ValueRange | None = None) -> float:
    """``value`` as a float that is finite in float32 and within ``bounds``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReading(DropReason.WRONG_TYPE, f"{what} must be a number")
    try:
        f = float(value)
    except OverflowError:
        f = math.inf
    if not abs(f) <= FLOAT32_MAX:  # NaN, infinity, or beyond float32
        raise InvalidReading(DropReason.NOT_FINITE, f"{what} must be finite in float32")
    return f if bounds is None else bounds.check(f, what)


def _decode(payload: bytes, max_bytes: int) -> str:
    if len(payload) > max_bytes:
        raise InvalidReading(
            DropReason.OVERSIZED, f"payload is {len(payload)} bytes, limit {max_bytes}"
        )
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidReading(DropReason.NOT_UTF8, "payload is not UTF-8") from None


def _load_json(text: str) -> Any:
    try:
        return _JSON.decode(text)
    except RecursionError:
        raise InvalidReading(DropReason.BAD_JSON, "payload nests too deeply") from None
    except ValueError as e:  # JSONDecodeError and anything else json refuses
        if isinstance(e, InvalidReading):
            raise
        raise InvalidReading(DropReason.BAD_JSON, "payload is not valid JSON") from None


def _reading_id(doc: dict[str, Any]) -> str:
    reading_id = doc.get("id", "")
    if not isinstance(reading_id, str) or not reading_id.isprintable():
        raise InvalidReading(DropReason.BAD_ID, "'id' must be a string of printable characters")
    if len(reading_id) > MAX_ID_CHARS:
        raise InvalidReading(DropReason.BAD_ID, f"'id' is longer than {MAX_ID_CHARS} characters")
    return reading_id


def parse_reading(
    payload: bytes, *, max_bytes: int, now: float, bounds: ValueRange | None = None
) -> Reading:
    """A Roost reading: ``{"value": n, "ts": t, "id": s}`` or a bare JSON number.

    ``bounds``: the plausible range of the reading's sensor kind, if it has one."""
    doc = _load_json(_decode(payload, max_bytes))
    if not isinstance(doc, dict):
        return Reading(_number(doc, "payload", bounds), None, "")
    if "value" not in doc:
        raise InvalidReading(DropReason.WRONG_TYPE, "object has no 'value'")
    value = _number(doc["value"], "'value'", bounds)
    ts = None if doc.get("ts") is None else check_ts(doc["ts"], now, "'ts'")
    return Reading(value, ts, _reading_id(doc))


def check_ts(ts: Any, now: float, what: str) -> float:
    """A reading time: a finite number from 1990 up to a day ahead of ``now``."""
    value = _number(ts, what)
    if not MIN_TS <= value <= now + FUTURE_SLACK_SECONDS:
        raise InvalidReading(DropReason.BAD_TIMESTAMP, f"{what} is out of range")
    return value


def parse_statestream(
    payload: bytes, *, max_bytes: int, bounds: ValueRange | None = None
) -> Reading:
    """A Home Assistant statestream state: the raw state string, e.g. ``21.5`` or ``on``."""
    text = _decode(payload, max_bytes).strip().strip('"')
    if text.lower() in HA_NO_VALUE:
        raise InvalidReading(DropReason.UNAVAILABLE, "entity has no value")
    if text.lower() in HA_BINARY:
        return Reading(_number(HA_BINARY[text.lower()], "state", bounds), None, "")
    try:
        value = float(text)
    except ValueError:
        raise InvalidReading(DropReason.WRONG_TYPE, "state is not numeric") from None
    return Reading(_number(value, "state", bounds), None, "")


def shown_topic(topic: str) -> str:
    """``topic`` for a log line: long ones are cut (a topic can be 64 KB)."""
    if len(topic) <= MAX_LOGGED_TOPIC_CHARS:
        return topic
    return f"{topic[:MAX_LOGGED_TOPIC_CHARS]}... ({len(topic)} characters)"


class DropLog:
    """Counts every drop; logs at most one line per reason per ``interval`` (bounded
    memory, whatever the number of topics). ``unavailable`` states, and Roost's own
    entities coming back through ``mqtt_statestream``, are only counted."""

    def __init__(
        self,
        *,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = RateLimitedLog(log, logging.WARNING, interval=interval, clock=clock)

    def drop(self, topic: str, reason: DropReason, detail: str) -> None:
        DROPPED.labels(reason.value).inc()
        if reason in QUIET_DROPS:
            return
        self._log(
            reason.value,
            "dropped a reading on %s: %s (%s)",
            shown_topic(topic),
            reason.value,
            detail,
        )

    @property
    def tracked_reasons(self) -> int:
        """Reasons the log remembers (bounded by the number of reasons)."""
        return self._log.tracked
