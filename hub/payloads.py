"""Validation of inbound readings. Bad input is counted, logged once per topic, dropped.

Never raises on a payload and never logs a payload (household data): only the topic
and the reason.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from prometheus_client import Counter

log = logging.getLogger(__name__)


class DropReason(StrEnum):
    OVERSIZED = "oversized"
    NOT_UTF8 = "not_utf8"
    BAD_JSON = "bad_json"
    WRONG_TYPE = "wrong_type"
    NOT_FINITE = "not_finite"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_ID = "bad_id"
    UNKNOWN_TOPIC = "unknown_topic"
    UNKNOWN_SENSOR = "unknown_sensor"
    UNAVAILABLE = "unavailable"
    OUT_OF_ORDER = "out_of_order"
    OVERLOADED = "overloaded"


READINGS = Counter("roost_hub_readings_total", "Readings accepted by the hub.")
DROPPED = Counter("roost_hub_readings_dropped_total", "Readings dropped, by reason.", ["reason"])
for _r in DropReason:
    DROPPED.labels(_r.value)

MAX_ID_CHARS = 64
# Accept reading times from 1990 up to a day ahead of the hub's clock.
MIN_TS = 631_152_000.0
FUTURE_SLACK_SECONDS = 86_400.0
# Home Assistant states that mean "no value now"; dropped quietly (still counted).
HA_NO_VALUE = frozenset({"unavailable", "unknown", "none", ""})
# Home Assistant binary_sensor / cover states, as the 1/0 the models take.
HA_BINARY = {"on": 1.0, "open": 1.0, "detected": 1.0, "off": 0.0, "closed": 0.0, "clear": 0.0}


class InvalidReading(ValueError):
    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Reading:
    value: float
    ts: float | None
    reading_id: str


def _reject_constant(name: str) -> Any:
    raise InvalidReading(DropReason.NOT_FINITE, f"JSON constant {name} is not a number")


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReading(DropReason.WRONG_TYPE, f"{what} must be a number")
    f = float(value)
    if not math.isfinite(f):
        raise InvalidReading(DropReason.NOT_FINITE, f"{what} must be finite")
    return f


def _decode(payload: bytes, max_bytes: int) -> str:
    if len(payload) > max_bytes:
        raise InvalidReading(
            DropReason.OVERSIZED, f"payload is {len(payload)} bytes, limit {max_bytes}"
        )
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidReading(DropReason.NOT_UTF8, "payload is not UTF-8") from None


def parse_reading(payload: bytes, *, max_bytes: int, now: float) -> Reading:
    """A Roost reading: ``{"value": n, "ts": t, "id": s}`` or a bare JSON number."""
    text = _decode(payload, max_bytes)
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError:
        raise InvalidReading(DropReason.BAD_JSON, "payload is not valid JSON") from None
    except RecursionError:
        raise InvalidReading(DropReason.BAD_JSON, "payload nests too deeply") from None
    if not isinstance(doc, dict):
        return Reading(_finite(doc, "payload"), None, "")
    if "value" not in doc:
        raise InvalidReading(DropReason.WRONG_TYPE, "object has no 'value'")
    value = _finite(doc["value"], "'value'")
    ts = None
    if doc.get("ts") is not None:
        ts = _finite(doc["ts"], "'ts'")
        if not MIN_TS <= ts <= now + FUTURE_SLACK_SECONDS:
            raise InvalidReading(DropReason.BAD_TIMESTAMP, "'ts' is out of range")
    reading_id = doc.get("id", "")
    if not isinstance(reading_id, str) or len(reading_id) > MAX_ID_CHARS:
        raise InvalidReading(DropReason.BAD_ID, f"'id' must be a string of <= {MAX_ID_CHARS}")
    return Reading(value, ts, reading_id)


def parse_statestream(payload: bytes, *, max_bytes: int) -> Reading:
    """A Home Assistant statestream state: the raw state string, e.g. ``21.5`` or ``on``."""
    text = _decode(payload, max_bytes).strip().strip('"')
    if text.lower() in HA_NO_VALUE:
        raise InvalidReading(DropReason.UNAVAILABLE, "entity has no value")
    if text.lower() in HA_BINARY:
        return Reading(HA_BINARY[text.lower()], None, "")
    try:
        value = float(text)
    except ValueError:
        raise InvalidReading(DropReason.WRONG_TYPE, "state is not numeric") from None
    return Reading(_finite(value, "state"), None, "")


class DropLog:
    """Counts every drop; logs the first drop per (topic, reason) only."""

    def __init__(self, max_remembered: int = 10_000) -> None:
        self._seen: set[tuple[str, DropReason]] = set()
        self._max = max_remembered

    def drop(self, topic: str, reason: DropReason, detail: str) -> None:
        DROPPED.labels(reason.value).inc()
        key = (topic, reason)
        if key in self._seen or reason is DropReason.UNAVAILABLE:
            return
        if len(self._seen) < self._max:
            self._seen.add(key)
        log.warning(
            "dropping readings on %s: %s (%s); further drops here are only counted",
            topic,
            reason.value,
            detail,
        )
