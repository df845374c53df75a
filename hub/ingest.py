"""From an MQTT message to pending decisions: route, validate, update feature windows.

Names (areas, sensor kinds, entity ids) are checked before anything is kept, values
against their kind's plausible range (:mod:`hub.payloads`), and the state is bounded
(:class:`InputLimits`): at most ``max_areas`` areas and ``max_entities`` per-area model
windows; a reading that would need more is dropped and counted, the others decide on.

Every model is fed through the one :class:`hub.windows.Window` interface: a per-area
model gets an :class:`AreaWindow` per area it hears from (weather kinds feed each of
them), a home-wide model one :class:`HomeEventWindow` for the whole home.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, tzinfo
from typing import Protocol

from prometheus_client import Gauge

from hub.config import DEFAULT_SENSOR_RANGES, HubConfig
from hub.payloads import (
    READINGS,
    DropLog,
    DropReason,
    InvalidReading,
    Reading,
    ValueRange,
    check_ts,
    parse_ranges,
    parse_reading,
    parse_statestream,
)
from hub.pipeline import Pending
from hub.topics import (
    MAX_ENTITY_CHARS,
    MAX_NAME_CHARS,
    is_roost_entity,
    parse_statestream_topic,
    reading_segments,
    valid_segment,
)
from hub.windows import HOME_AREA, AreaWindow, HomeEventWindow, OutOfOrder, Window
from models.features import FeatureSpec

log = logging.getLogger(__name__)

AREAS = Gauge("roost_hub_areas", "Areas the hub keeps feature windows for (at most max_areas).")
ENTITIES = Gauge(
    "roost_hub_entities", "Per-area model windows the hub keeps (at most max_entities)."
)

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

    def remember(self, model: str, area: str, reading_id: str) -> None:
        """A reading replayed into the windows only: it was decided before."""
        ...


@dataclass(frozen=True)
class InputLimits:
    """What the hub accepts (``HubConfig``): plausible ranges, and caps on its state."""

    ranges: Mapping[str, ValueRange] = field(
        default_factory=lambda: parse_ranges(DEFAULT_SENSOR_RANGES)
    )
    max_areas: int = HubConfig.max_areas
    max_entities: int = HubConfig.max_entities

    @classmethod
    def from_config(cls, config: HubConfig) -> InputLimits:
        """ValueError naming the field if a range or cap is malformed."""
        if config.max_areas < 1 or config.max_entities < 1:
            raise ValueError("max_areas and max_entities must be >= 1")
        # Configured ranges replace the default of their kind; the other kinds keep theirs.
        ranges = parse_ranges((*DEFAULT_SENSOR_RANGES, *config.sensor_ranges))
        return cls(ranges, config.max_areas, config.max_entities)


def _check_length(name: str, what: str, limit: int) -> None:
    if len(name) > limit:
        raise InvalidReading(DropReason.NAME_TOO_LONG, f"{what} is longer than {limit} characters")


def _check_segment(name: str, what: str) -> None:
    """An area or sensor kind from a topic: at most 64 characters of snake_case."""
    _check_length(name, what, MAX_NAME_CHARS)
    if not valid_segment(name):
        raise InvalidReading(DropReason.BAD_NAME, f"{what} must be lowercase snake_case")


def parse_entity_map(entries: tuple[str, ...]) -> dict[str, SensorRef]:
    """``("sensor.office_temp=office/temperature", ...)`` -> {entity_id: SensorRef}."""
    mapping: dict[str, SensorRef] = {}
    for entry in entries:
        entity, sep, target = entry.partition("=")
        area, slash, kind = target.partition("/")
        entity = entity.strip()
        if (
            not sep
            or not slash
            or not (valid_segment(area) and valid_segment(kind))
            or not 0 < len(entity) <= MAX_ENTITY_CHARS
        ):
            raise ValueError(
                f"statestream_entities: '{entry[:MAX_ENTITY_CHARS]}' must look like "
                "'sensor.office_temperature=office/temperature'"
            )
        mapping[entity] = SensorRef(area, kind)
    return mapping


def usable_entities(entities: Mapping[str, SensorRef]) -> dict[str, SensorRef]:
    """The entries of a statestream mapping (e.g. proposed from Home Assistant's
    registries) whose entity id and area/kind the hub can hold; the others are left out."""
    usable = {
        e: r
        for e, r in entities.items()
        if len(e) <= MAX_ENTITY_CHARS and valid_segment(r.area) and valid_segment(r.sensor_kind)
    }
    if len(usable) < len(entities):
        log.warning(
            "statestream mapping: %d entities left out (entity id longer than %d "
            "characters, or area/kind not lowercase snake_case of at most %d)",
            len(entities) - len(usable),
            MAX_ENTITY_CHARS,
            MAX_NAME_CHARS,
        )
    return usable


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
        limits: InputLimits | None = None,
    ) -> None:
        self._specs = specs
        self._pipeline = pipeline
        self._max_bytes = max_payload_bytes
        self._base = statestream_base
        self._entities = usable_entities(statestream_entities)
        # Per mapped entity: when its latest statestream message arrived (hub clock).
        self._heard: dict[str, float] = {}
        self._tz = tz
        self._limits = limits if limits is not None else InputLimits()
        # Per (model, area): an AreaWindow per area heard from, or the home's window.
        self._windows: dict[tuple[str, str], Window] = {}
        # Areas with at least one AreaWindow (bounded by max_areas), and their windows'
        # count (bounded by max_entities).
        self._areas: set[str] = set()
        self._area_windows = 0
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
        unranged = sorted(set(self._models_by_kind) - set(self._limits.ranges))
        if unranged:
            log.warning(
                "no plausible range for sensor kinds %s (sensor_ranges): their readings "
                "are only checked finite",
                unranged,
            )
        self.drops = DropLog()
        # The reading being handled: its journal id, whether to decide, decisions asked.
        self._journal_id, self._decide, self._submitted = 0, True, 0
        # While a restarted hub catches up (hub.catchup): the (model, area) pairs this
        # ingest asked decisions for, and whether a decision here is late (a newer one
        # of its entity was asked for elsewhere).
        self.asked: set[tuple[str, str]] = set()
        self.late_when: Callable[[str, str], bool] | None = None
        self._publish_sizes()

    @property
    def areas(self) -> int:
        """Areas the hub keeps feature windows for."""
        return len(self._areas)

    @property
    def entities(self) -> int:
        """Per-area model windows the hub keeps."""
        return self._area_windows

    def set_entity_map(self, entities: Mapping[str, SensorRef]) -> None:
        """Replace the statestream mapping (e.g. a refreshed Home Assistant auto mapping)."""
        self._entities = usable_entities(entities)
        self._heard = {e: t for e, t in self._heard.items() if e in self._entities}

    @property
    def mapped_entities(self) -> frozenset[str]:
        """The Home Assistant entities the statestream mapping feeds to models."""
        return frozenset(self._entities)

    def heard_since(self, entity_id: str, since: float) -> bool:
        """Whether a statestream message of ``entity_id`` arrived at or after ``since``."""
        return self._heard.get(entity_id, -1.0) >= since

    def handle_state(self, entity_id: str, state: str, ts: float) -> int:
        """A state read from Home Assistant's API, as its statestream message would have
        been, at HA's time ``ts`` (validated like a reading's ``ts``)."""
        domain, _, object_id = entity_id.partition(".")
        topic = f"{self._base}/{domain}/{object_id}/state"
        return self.handle(topic, state.encode(), ts=ts)

    def handle(
        self,
        topic: str,
        payload: bytes,
        *,
        journal_id: int = 0,
        decide: bool = True,
        ts: float | None = None,
    ) -> int:
        """How many decisions the reading asked for. Never raises: bad input is counted
        and dropped. ``decide=False`` (a journal replay of a decided reading): the
        windows are updated, nothing is submitted (the ids are remembered), nothing is
        counted again. ``ts``: the reading's time as its source knows it (a statestream
        payload has none: the arrival time is used)."""
        self._journal_id, self._decide = journal_id, decide
        self._submitted = 0
        try:
            self._handle(topic, payload, ts)
        except Exception as e:
            # A bug must not stop the hub: count and log it (the type only; the
            # traceback may hold values, so it goes to DEBUG).
            self._drop(topic, DropReason.INTERNAL, type(e).__name__)
            log.debug("reading on %s failed", topic, exc_info=True)
        return self._submitted

    def _handle(self, topic: str, payload: bytes, source_ts: float | None) -> None:
        received = time.perf_counter()
        now = time.time()
        try:
            ref, reading = self._parse(topic, payload, now, source_ts)
            models = self._models_by_kind.get(ref.sensor_kind)
            if not models:
                raise InvalidReading(DropReason.UNKNOWN_SENSOR, "no model uses this sensor kind")
            self._admit_area(ref, models)
        except InvalidReading as e:
            self._drop(topic, e.reason, str(e))
            return
        if self._decide:
            READINGS.inc()
        ts = reading.ts if reading.ts is not None else now
        for model in models:
            for area, window in self._targets(topic, model, ref, reading, ts):
                try:
                    ready = window.update(ref.area, ref.sensor_kind, reading.value, ts, topic)
                except OutOfOrder as e:
                    self._drop(topic, DropReason.OUT_OF_ORDER, str(e))
                    continue
                if ready:
                    self._submit(model, area, window, ts, reading.reading_id, received=received)

    def _submit(
        self, model: str, area: str, window: Window, ts: float, reading_id: str, *, received: float
    ) -> None:
        if not self._decide:
            self._pipeline.remember(model, area, reading_id)  # no features: not decided
            return
        self._submitted += 1
        self.asked.add((model, area))
        late = self.late_when is not None and self.late_when(model, area)
        self._pipeline.submit(
            Pending(
                model=model,
                area=area,
                features=window.tensor(ts),
                feature_names=window.feature_names,
                reading_ts=ts,
                trigger_id=reading_id,
                received_at=received,
                journal_id=self._journal_id,
                late=late,
            )
        )

    def _drop(self, topic: str, reason: DropReason, detail: str) -> None:
        """Count and log a dropped reading, once: not again when the journal replays it."""
        if self._decide:
            self.drops.drop(topic, reason, detail)

    def _admit_area(self, ref: SensorRef, models: list[str]) -> None:
        """TOO_MANY_AREAS if the reading would start a new area beyond ``max_areas``."""
        if (
            ref.area in self._areas
            or is_household_wide(ref.sensor_kind)
            or len(self._areas) < self._limits.max_areas
        ):
            return
        if any(m not in self._home for m in models):
            raise InvalidReading(
                DropReason.TOO_MANY_AREAS,
                f"the hub keeps at most {self._limits.max_areas} areas (max_areas)",
            )

    def _targets(
        self, topic: str, model: str, ref: SensorRef, reading: Reading, ts: float
    ) -> list[tuple[str, Window]]:
        """The (area, window) pairs of ``model`` that a reading from ``ref`` feeds."""
        if model in self._home:
            return [(HOME_AREA, self._windows[(model, HOME_AREA)])]
        if is_household_wide(ref.sensor_kind):
            # Weather is the same for every room: feed it to each area's window.
            self._outdoor[(model, ref.sensor_kind)] = (reading.value, ts)
            return [(a, w) for (m, a), w in self._windows.items() if m == model]
        window = self._area_window(model, ref.area)
        if window is None:
            self._drop(
                topic,
                DropReason.TOO_MANY_ENTITIES,
                f"the hub keeps at most {self._limits.max_entities} entities (max_entities)",
            )
            return []
        return [(ref.area, window)]

    def _parse(
        self, topic: str, payload: bytes, now: float, source_ts: float | None
    ) -> tuple[SensorRef, Reading]:
        segments = reading_segments(topic)
        if segments is not None:
            area, kind = segments
            _check_segment(area, "area")
            _check_segment(kind, "sensor kind")
            return SensorRef(area, kind), parse_reading(
                payload, max_bytes=self._max_bytes, now=now, bounds=self._limits.ranges.get(kind)
            )
        entity = parse_statestream_topic(self._base, topic)
        if entity is not None:
            _check_length(entity, "entity id", MAX_ENTITY_CHARS)
            ref = self._entities.get(entity)
            if ref is None:
                if is_roost_entity(entity):  # Roost's own entities never feed Roost
                    raise InvalidReading(DropReason.OWN_ENTITY, "a Roost entity")
                raise InvalidReading(DropReason.UNKNOWN_SENSOR, "entity is not mapped to an area")
            reading = parse_statestream(
                payload, max_bytes=self._max_bytes, bounds=self._limits.ranges.get(ref.sensor_kind)
            )
            if source_ts is None:
                self._heard[entity] = now
                return ref, reading
            return ref, replace(reading, ts=check_ts(source_ts, now, "the state's time"))
        raise InvalidReading(DropReason.UNKNOWN_TOPIC, "topic is not in the Roost schema")

    def _area_window(self, model: str, area: str) -> Window | None:
        """``model``'s window of ``area``, created if the caps allow (None if not)."""
        key = (model, area)
        window = self._windows.get(key)
        if window is not None:
            return window
        if self._area_windows >= self._limits.max_entities:
            return None
        window = self._windows[key] = AreaWindow(self._specs[model], self._tz)
        self._areas.add(area)
        self._area_windows += 1
        self._publish_sizes()
        # A new room starts with the latest household-wide readings (weather).
        for (m, kind), (value, ts) in self._outdoor.items():
            if m == model:
                window.update(area, kind, value, ts)
        return window

    def _publish_sizes(self) -> None:
        AREAS.set(len(self._areas))
        ENTITIES.set(self._area_windows)
