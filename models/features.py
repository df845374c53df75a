"""Feature specs: the one definition of each model's inputs.

Training (``models/<task>/train.py``) and serving (the hub's feature windows) both
build input tensors through :class:`FeatureWindow`, so they cannot compute features
differently. A spec names sensor *kinds* (Home Assistant device_class style:
``temperature``, ``humidity``, ``illuminance``, ``carbon_dioxide``) per area, never
device ids, plus derived time-of-day features. Torch-free.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Literal

import numpy as np
import numpy.typing as npt

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class SensorFeature:
    """The latest value of one kind of sensor in the area."""

    name: str
    sensor_kind: str
    unit: str


HistoryKind = Literal["slope", "steady", "min", "max"]


@dataclass(frozen=True)
class HistoryFeature:
    """A feature of one sensor kind's recent readings (reading time, not wall clock).

    - ``slope``: (latest - the last reading at least ``seconds`` older) per minute;
      with less history, against the oldest reading (0 when it is under a minute old).
    - ``steady``: minutes since a reading last differed from the latest by more than
      ``delta`` (how long the value has held), at most ``seconds / 60``.
    - ``min`` / ``max``: over the readings of the last ``seconds``.
    """

    name: str
    sensor_kind: str
    kind: HistoryKind
    seconds: float
    unit: str
    delta: float = 0.0


@dataclass(frozen=True)
class FeatureSpec:
    """Inputs of one model: ``window`` snapshots of the sensor and time features.

    A snapshot holds the latest value of each sensor kind (forward-filled) plus
    ``hour_sin``/``hour_cos`` when ``time_of_day`` is set. With ``window > 1`` a new
    snapshot is taken every ``step_seconds`` of reading time.
    """

    spec_id: str
    sensors: tuple[SensorFeature, ...]
    time_of_day: bool = True
    window: int = 1
    step_seconds: float = 60.0
    # A sensor value older than this (reading time) makes the window not ready.
    max_staleness_seconds: float = 900.0
    # With ``window > 1``: the sensor kind whose reading takes the step's snapshot
    # (e.g. the meter the model forecasts), so the snapshot does not depend on which
    # sensor happens to report first in a step. None: any reading.
    step_kind: str | None = None
    # Features of each kind's recent readings, after the time of day (window 1 only).
    history: tuple[HistoryFeature, ...] = ()

    def __post_init__(self) -> None:
        if self.history and self.window != 1:
            raise ValueError(f"{self.spec_id}: history features need window 1")
        unknown = {h.sensor_kind for h in self.history} - self.sensor_kinds
        if unknown:
            raise ValueError(f"{self.spec_id}: history of unknown sensor kinds {sorted(unknown)}")

    @property
    def feature_names(self) -> list[str]:
        names = [s.name for s in self.sensors]
        if self.time_of_day:
            names += ["hour_sin", "hour_cos"]
        return names + [h.name for h in self.history]

    @property
    def units(self) -> list[str]:
        units = [s.unit for s in self.sensors]
        if self.time_of_day:
            units += ["", ""]
        return units + [h.unit for h in self.history]

    @property
    def history_seconds(self) -> float:
        """How far back the history features look (0: a snapshot needs no history)."""
        return max((h.seconds for h in self.history), default=0.0)

    @property
    def input_shape(self) -> tuple[int, ...]:
        n = len(self.feature_names)
        return (n,) if self.window == 1 else (self.window, n)

    @functools.cached_property
    def sensor_kinds(self) -> frozenset[str]:
        return frozenset(s.sensor_kind for s in self.sensors)


def time_of_day_features(ts: float, tz: tzinfo = UTC) -> tuple[float, float]:
    """(sin, cos) of the local hour of day of epoch time ``ts``."""
    local = datetime.fromtimestamp(ts, tz)
    seconds = local.hour * 3600 + local.minute * 60 + local.second
    angle = 2.0 * math.pi * seconds / SECONDS_PER_DAY
    return math.sin(angle), math.cos(angle)


def history_value(feature: HistoryFeature, readings: Sequence[tuple[float, float]]) -> float:
    """``feature`` of one kind's readings ``(ts, value)``, oldest first, latest last."""
    now, latest = readings[-1]
    if feature.kind == "slope":
        ref_ts, ref = readings[0]
        for t, v in reversed(readings):
            if now - t >= feature.seconds:
                ref_ts, ref = t, v
                break
        minutes = (now - ref_ts) / 60.0
        return (latest - ref) / minutes if minutes >= 1.0 else 0.0
    if feature.kind == "steady":
        since = readings[0][0]
        for t, v in reversed(readings):
            if abs(v - latest) > feature.delta:
                since = t
                break
        return min(now - since, feature.seconds) / 60.0
    recent = [v for t, v in readings if now - t <= feature.seconds]
    return min(recent) if feature.kind == "min" else max(recent)


def snapshot(
    spec: FeatureSpec,
    latest: Mapping[str, float],
    ts: float,
    tz: tzinfo = UTC,
    history: Mapping[str, Sequence[tuple[float, float]]] | None = None,
) -> list[float] | None:
    """One row of features from the latest value of each sensor kind (and, for a spec
    with history features, each kind's recent readings), or None if any is missing."""
    row: list[float] = []
    for s in spec.sensors:
        v = latest.get(s.sensor_kind)
        if v is None:
            return None
        row.append(float(v))
    if spec.time_of_day:
        row.extend(time_of_day_features(ts, tz))
    for h in spec.history:
        readings = (history or {}).get(h.sensor_kind)
        if not readings:
            return None
        row.append(history_value(h, readings))
    return row


class FeatureWindow:
    """Rolling inputs of one model for one area, updated reading by reading."""

    def __init__(self, spec: FeatureSpec, tz: tzinfo = UTC) -> None:
        self.spec = spec
        self._tz = tz
        self._latest: dict[str, float] = {}
        self._seen_at: dict[str, float] = {}
        self._rows: deque[list[float]] = deque(maxlen=spec.window)
        self._last_step: float | None = None
        self._history: dict[str, deque[tuple[float, float]]] = {
            h.sensor_kind: deque() for h in spec.history
        }

    def update(self, sensor_kind: str, value: float, ts: float) -> bool:
        """Record a reading. Returns True when the model's input is complete and fresh.

        A reading older than the kind's latest one is ignored by a spec with history
        features (its history stays in time order)."""
        if sensor_kind not in self.spec.sensor_kinds:
            return False
        past = self._history.get(sensor_kind)
        if past is not None:
            if past and ts < past[-1][0]:
                return self.ready(ts)
            past.append((ts, value))
            # Keep one reading older than the horizon: a slope's reference.
            while len(past) > 2 and ts - past[1][0] > self.spec.history_seconds:
                past.popleft()
        self._latest[sensor_kind] = value
        self._seen_at[sensor_kind] = ts
        if self.spec.window > 1 and self.spec.step_kind in (None, sensor_kind):
            self._maybe_step(ts)
        return self.ready(ts)

    def _maybe_step(self, ts: float) -> None:
        if self._last_step is not None and ts - self._last_step < self.spec.step_seconds:
            return
        row = snapshot(self.spec, self._latest, ts, self._tz)
        if row is not None:
            self._rows.append(row)
            self._last_step = ts

    def ready(self, ts: float) -> bool:
        if len(self._latest) < len(self.spec.sensor_kinds):
            return False
        oldest = min(self._seen_at.values())
        if ts - oldest > self.spec.max_staleness_seconds:
            return False
        return self.spec.window == 1 or len(self._rows) == self.spec.window

    def tensor(self, ts: float) -> npt.NDArray[np.float32]:
        """The model input at reading time ``ts``; call only when :meth:`ready`."""
        if self.spec.window == 1:
            row = snapshot(self.spec, self._latest, ts, self._tz, self._history)
            if row is None:
                raise ValueError("feature window is not ready")
            return np.asarray(row, dtype=np.float32)
        return np.asarray(list(self._rows), dtype=np.float32)


# --- The specs of the shipped models -------------------------------------------------

OCCUPANCY_V1 = FeatureSpec(
    spec_id="occupancy/v1",
    sensors=(
        SensorFeature("temperature", "temperature", "degC"),
        SensorFeature("humidity", "humidity", "%"),
        SensorFeature("light", "illuminance", "lx"),
        SensorFeature("co2", "carbon_dioxide", "ppm"),
    ),
    time_of_day=True,
)

SPECS: dict[str, FeatureSpec] = {OCCUPANCY_V1.spec_id: OCCUPANCY_V1}
# Specs defined beside their recipes (models/<task>/spec.py), imported on first use.
_SPEC_MODULES: dict[str, tuple[str, str]] = {
    "comfort/v1": ("models.comfort.spec", "COMFORT_V1"),
    "anomaly/v1": ("models.anomaly.spec", "ANOMALY_V1"),
    "occupancy/v2": ("models.occupancy.spec", "OCCUPANCY_V2"),
}


def spec_by_id(spec_id: str) -> FeatureSpec:
    """The FeatureSpec a model's manifest names; KeyError if the hub cannot build it."""
    if spec_id in SPECS:
        return SPECS[spec_id]
    if spec_id in _SPEC_MODULES:
        module, name = _SPEC_MODULES[spec_id]
        spec = getattr(importlib.import_module(module), name)
        if isinstance(spec, FeatureSpec):
            SPECS[spec_id] = spec
            return spec
    known = sorted({*SPECS, *_SPEC_MODULES})
    raise KeyError(f"no FeatureSpec '{spec_id}' (the hub builds: {', '.join(known)})")
