"""From an MQTT message to pending decisions: route, validate, update feature windows."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, tzinfo

from hub.decisions import DecisionPipeline, Pending
from hub.home_windows import HOME_AREA, HomeEventWindow, OutOfOrder
from hub.payloads import (
    READINGS,
    DropLog,
    DropReason,
    InvalidReading,
    Reading,
    parse_reading,
    parse_statestream,
)
from hub.topics import parse_reading_topic, parse_statestream_topic, valid_segment
from models.features import FeatureSpec, FeatureWindow

HOUSEHOLD_WIDE_PREFIXES = ("outdoor_", "wind_")


def is_household_wide(sensor_kind: str) -> bool:
    """Readings that describe the whole home (weather), whatever area publishes them."""
    return sensor_kind.startswith(HOUSEHOLD_WIDE_PREFIXES)


@dataclass(frozen=True)
class SensorRef:
    area: str
    sensor_kind: str


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
        pipeline: DecisionPipeline,
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
        self._windows: dict[tuple[str, str], FeatureWindow] = {}
        # Latest household-wide reading per (model, kind), e.g. outdoor temperature.
        self._outdoor: dict[tuple[str, str], tuple[float, float]] = {}
        self._models_by_kind: dict[str, list[str]] = {}
        for name, spec in specs.items():
            for kind in spec.sensor_kinds:
                self._models_by_kind.setdefault(kind, []).append(name)
        # Models over the whole home's binary sensors (routine/v1), one window each.
        self._home = {name: HomeEventWindow(tz) for name in home_models}
        for name in self._home:
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
            if model in self._home:
                self._home_event(model, topic, ref, reading, ts, received)
                continue
            if is_household_wide(ref.sensor_kind):
                # Weather is the same for every room: feed it to each area's window.
                windows = [(a, w) for (m, a), w in self._windows.items() if m == model]
                self._outdoor[(model, ref.sensor_kind)] = (reading.value, ts)
            else:
                windows = [(ref.area, self._window(model, ref.area))]
            for area, window in windows:
                if window.update(ref.sensor_kind, reading.value, ts):
                    self._submit(
                        model, area, window, ts, trigger=reading.reading_id, received=received
                    )

    def _home_event(  # noqa: PLR0917
        self,
        model: str,
        topic: str,
        ref: SensorRef,
        reading: Reading,
        ts: float,
        received: float,
    ) -> None:
        window = self._home[model]
        if not HomeEventWindow.accepts(ref.area, ref.sensor_kind):
            return
        try:
            ready = window.update(ref.area, ref.sensor_kind, reading.value, ts, source=topic)
        except OutOfOrder as e:
            self.drops.drop(topic, DropReason.OUT_OF_ORDER, str(e))
            return
        if ready:
            self._pipeline.submit(
                Pending(
                    model=model,
                    area=HOME_AREA,
                    features=window.tensor(ts),
                    feature_names=window.feature_names,
                    reading_ts=ts,
                    trigger_id=reading.reading_id,
                    received_at=received,
                )
            )

    def _submit(
        self,
        model: str,
        area: str,
        window: FeatureWindow,
        ts: float,
        *,
        trigger: str,
        received: float,
    ) -> None:
        self._pipeline.submit(
            Pending(
                model=model,
                area=area,
                features=window.tensor(ts),
                feature_names=tuple(self._specs[model].feature_names),
                reading_ts=ts,
                trigger_id=trigger,
                received_at=received,
            )
        )

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

    def _window(self, model: str, area: str) -> FeatureWindow:
        key = (model, area)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = FeatureWindow(self._specs[model], self._tz)
            # A new room starts with the latest household-wide readings (weather).
            for (m, kind), (value, ts) in self._outdoor.items():
                if m == model:
                    window.update(kind, value, ts)
        return window
