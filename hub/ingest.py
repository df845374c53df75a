"""From an MQTT message to pending decisions: route, validate, update feature windows.

Every model is fed through the one :class:`hub.windows.Window` interface: a per-area
model gets an :class:`AreaWindow` per area it hears from (weather kinds feed each of
them), a home-wide model one :class:`HomeEventWindow` for the whole home.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import Protocol

from hub.payloads import (
    READINGS,
    DropLog,
    DropReason,
    InvalidReading,
    Reading,
    parse_reading,
    parse_statestream,
)
from hub.pipeline import Pending
from hub.topics import parse_reading_topic, parse_statestream_topic, valid_segment
from hub.windows import HOME_AREA, AreaWindow, HomeEventWindow, OutOfOrder, Window
from models.features import FeatureSpec

HOUSEHOLD_WIDE_PREFIXES = ("outdoor_", "wind_")


def is_household_wide(sensor_kind: str) -> bool:
    """Readings that describe the whole home (weather), whatever area publishes them."""
    return sensor_kind.startswith(HOUSEHOLD_WIDE_PREFIXES)


@dataclass(frozen=True)
class SensorRef:
    area: str
    sensor_kind: str


class DecisionQueue(Protocol):
    """Where complete windows go (the :class:`hub.pipeline.DecisionPipeline`)."""

    def submit(self, item: Pending) -> None: ...


def parse_entity_map(entries: tuple[str, ...]) -> dict[str, SensorRef]:
    """``("sensor.office_temp=office/temperature", ...)`` -> {entity_id: SensorRef}."""
    mapping: dict[str, SensorRef] = {}
    for entry in entries:
        entity, sep, target = entry.partition("=")
        area, slash, kind = target.partition("/")
        if not sep or not slash or not (valid_segment(area) and valid_segment(kind)):
            raise ValueError(
                f"statestream_entities: '{entry}' must look like "
                "'sensor.office_temperature=office/temperature'"
            )
        mapping[entity.strip()] = SensorRef(area, kind)
    return mapping


class Ingest:
    def __init__(
        self,
        *,
        specs: Mapping[str, FeatureSpec],
        pipeline: DecisionQueue,
        max_payload_bytes: int,
        statestream_base: str,
        statestream_entities: Mapping[str, SensorRef],
        tz: tzinfo = UTC,
        home_models: Iterable[str] = (),
    ) -> None:
        self._specs = specs
        self._pipeline = pipeline
        self._max_bytes = max_payload_bytes
        self._base = statestream_base
        self._entities = statestream_entities
        self._tz = tz
        # Per (model, area): an AreaWindow per area heard from, or the home's window.
        self._windows: dict[tuple[str, str], Window] = {}
        # Latest household-wide reading per (model, kind), e.g. outdoor temperature.
        self._outdoor: dict[tuple[str, str], tuple[float, float]] = {}
        self._models_by_kind: dict[str, list[str]] = {}
        for name, spec in specs.items():
            for kind in spec.sensor_kinds:
                self._models_by_kind.setdefault(kind, []).append(name)
        # Models over the whole home's binary sensors (routine/v1), one window each.
        self._home = frozenset(home_models)
        for name in self._home:
            self._windows[(name, HOME_AREA)] = HomeEventWindow(tz)
            for kind in HomeEventWindow.kinds:
                self._models_by_kind.setdefault(kind, []).append(name)
        self.drops = DropLog()

    def set_entity_map(self, entities: Mapping[str, SensorRef]) -> None:
        """Replace the statestream mapping (e.g. a refreshed Home Assistant auto mapping)."""
        self._entities = entities

    def handle(self, topic: str, payload: bytes) -> None:
        """Never raises: bad input is counted and dropped."""
        received = time.perf_counter()
        now = time.time()
        try:
            ref, reading = self._parse(topic, payload, now)
        except InvalidReading as e:
            self.drops.drop(topic, e.reason, str(e))
            return
        models = self._models_by_kind.get(ref.sensor_kind)
        if not models:
            self.drops.drop(topic, DropReason.UNKNOWN_SENSOR, "no model uses this sensor kind")
            return
        READINGS.inc()
        ts = reading.ts if reading.ts is not None else now
        for model in models:
            for area, window in self._targets(model, ref, reading, ts):
                try:
                    ready = window.update(ref.area, ref.sensor_kind, reading.value, ts, topic)
                except OutOfOrder as e:
                    self.drops.drop(topic, DropReason.OUT_OF_ORDER, str(e))
                    continue
                if ready:
                    self._pipeline.submit(
                        Pending(
                            model=model,
                            area=area,
                            features=window.tensor(ts),
                            feature_names=window.feature_names,
                            reading_ts=ts,
                            trigger_id=reading.reading_id,
                            received_at=received,
                        )
                    )

    def _targets(
        self, model: str, ref: SensorRef, reading: Reading, ts: float
    ) -> list[tuple[str, Window]]:
        """The (area, window) pairs of ``model`` that a reading from ``ref`` feeds."""
        if model in self._home:
            return [(HOME_AREA, self._windows[(model, HOME_AREA)])]
        if is_household_wide(ref.sensor_kind):
            # Weather is the same for every room: feed it to each area's window.
            self._outdoor[(model, ref.sensor_kind)] = (reading.value, ts)
            return [(a, w) for (m, a), w in self._windows.items() if m == model]
        return [(ref.area, self._area_window(model, ref.area))]

    def _parse(self, topic: str, payload: bytes, now: float) -> tuple[SensorRef, Reading]:
        rt = parse_reading_topic(topic)
        if rt is not None:
            return SensorRef(rt.area, rt.sensor_kind), parse_reading(
                payload, max_bytes=self._max_bytes, now=now
            )
        entity = parse_statestream_topic(self._base, topic)
        if entity is not None:
            ref = self._entities.get(entity)
            if ref is None:
                raise InvalidReading(DropReason.UNKNOWN_SENSOR, "entity is not mapped to an area")
            return ref, parse_statestream(payload, max_bytes=self._max_bytes)
        raise InvalidReading(DropReason.UNKNOWN_TOPIC, "topic is not in the Roost schema")

    def _area_window(self, model: str, area: str) -> Window:
        key = (model, area)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = AreaWindow(self._specs[model], self._tz)
            # A new room starts with the latest household-wide readings (weather).
            for (m, kind), (value, ts) in self._outdoor.items():
                if m == model:
                    window.update(area, kind, value, ts)
        return window
