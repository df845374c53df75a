"""The routine/v1 feature spec: a home-agnostic view of binary sensor events (torch-free).

A home's binary sensors (doors, cupboards, appliances, toilet flush, motion) are
described by where they are and what they are: a :class:`SensorRef` of an *area*
(``kitchen``, ``toilet`` ...) and a sensor *kind* (``door``, ``cupboard`` ...), in
the spirit of Home Assistant's area and ``device_class``. Features are computed per
(area, kind) *group* and per area, never per sensor id, and the vector has one slot
for every group of the fixed vocabulary (unused groups stay zero). So any home whose
sensors are mapped onto the vocabulary produces inputs of the same shape and meaning,
and the same base model applies to it.

:class:`RoutineWindow` is the one implementation of the features: training replays
the recorded events through it in time order and takes a snapshot every 60 s, and
the hub's serving path feeds it live events. Timestamps are epoch seconds; the hour
of day is read in the window's ``tz`` (the data sets store local wall time as if UTC).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, tzinfo

import numpy as np
import numpy.typing as npt

from models.features import time_of_day_features

SPEC_ID = "routine/v1"

AREAS: tuple[str, ...] = (
    "entrance",
    "hall",
    "kitchen",
    "bathroom",
    "toilet",
    "bedroom",
    "living_room",
    "laundry",
)
KINDS: tuple[str, ...] = (
    "door",
    "cupboard",
    "fridge",
    "freezer",
    "microwave",
    "dishwasher",
    "washing_machine",
    "toilet_flush",
    "motion",
)

# Activation counts look back this far (minutes); the longest is also the warm-up.
COUNT_WINDOWS_MIN: tuple[int, ...] = (1, 10, 60)
# Counts are clipped here before log1p, so a chattering sensor cannot blow up an input.
COUNT_CAP = 100
# Recency saturates at this age: older than a day looks like "never".
RECENCY_CAP_MIN = 1440.0
WARMUP_SECONDS = 60.0 * max(COUNT_WINDOWS_MIN)
STEP_SECONDS = 60.0

_AREA_INDEX = {a: i for i, a in enumerate(AREAS)}
_KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
_LOG_RECENCY_CAP = math.log1p(RECENCY_CAP_MIN)
_HORIZON_S = WARMUP_SECONDS
_LOG1P_COUNT = tuple(math.log1p(n) for n in range(COUNT_CAP + 1))
_RECENCY_SLOT = 1 + len(COUNT_WINDOWS_MIN)


@dataclass(frozen=True, order=True)
class SensorRef:
    """What a binary sensor is, independent of its id: its area and its kind."""

    area: str
    kind: str

    def __post_init__(self) -> None:
        if self.area not in _AREA_INDEX:
            raise ValueError(f"unknown area '{self.area}'; known: {', '.join(AREAS)}")
        if self.kind not in _KIND_INDEX:
            raise ValueError(f"unknown sensor kind '{self.kind}'; known: {', '.join(KINDS)}")

    @property
    def group(self) -> int:
        """Index of the (area, kind) group in the vocabulary."""
        return _AREA_INDEX[self.area] * len(KINDS) + _KIND_INDEX[self.kind]

    @property
    def area_index(self) -> int:
        return _AREA_INDEX[self.area]


# A home's mapping: its own sensor ids (or names) -> what they are.
HomeMapping = Mapping[str, SensorRef]

# van Kasteren 2008: sensor NAME (header of kasterenSenseData.txt) -> SensorRef. The
# ids in the data are resolved to names by the loader and never reach the features.
# The washing machine's room is not documented; a bathroom is assumed.
KASTEREN_MAPPING: dict[str, SensorRef] = {
    "Microwave": SensorRef("kitchen", "microwave"),
    "Hall-Toilet door": SensorRef("toilet", "door"),
    "Hall-Bathroom door": SensorRef("bathroom", "door"),
    "Cups cupboard": SensorRef("kitchen", "cupboard"),
    "Fridge": SensorRef("kitchen", "fridge"),
    "Plates cupboard": SensorRef("kitchen", "cupboard"),
    "Frontdoor": SensorRef("entrance", "door"),
    "Dishwasher": SensorRef("kitchen", "dishwasher"),
    "ToiletFlush": SensorRef("toilet", "toilet_flush"),
    "Freezer": SensorRef("kitchen", "freezer"),
    "Pans Cupboard": SensorRef("kitchen", "cupboard"),
    "Washingmachine": SensorRef("bathroom", "washing_machine"),
    "Groceries Cupboard": SensorRef("kitchen", "cupboard"),
    "Hall-Bedroom door": SensorRef("bedroom", "door"),
}

# --- Feature layout ---------------------------------------------------------------------

# Per (area, kind) group, per area ("<area>.any") and for the whole home ("home.any"):
_TRACK_FEATURES: tuple[tuple[str, str], ...] = (
    ("active", "bool"),
    *((f"fired_{m}m", "log1p(count)") for m in COUNT_WINDOWS_MIN),
    ("recency", "1-log1p(min)/log1p(1440)"),
)
# Per area only: the area of the home's most recent state change.
_AREA_EXTRA: tuple[tuple[str, str], ...] = (("last", "bool"),)
_TIME_FEATURES: tuple[tuple[str, str], ...] = (("hour_sin", ""), ("hour_cos", ""))

N_GROUPS = len(AREAS) * len(KINDS)
_PER_TRACK = len(_TRACK_FEATURES)
_PER_AREA = _PER_TRACK + len(_AREA_EXTRA)
_GROUP_OFFSET = 0
_AREA_OFFSET = N_GROUPS * _PER_TRACK
_HOME_OFFSET = _AREA_OFFSET + len(AREAS) * _PER_AREA
_TIME_OFFSET = _HOME_OFFSET + _PER_TRACK


def _layout() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for area in AREAS:
        for kind in KINDS:
            out += [(f"{area}.{kind}.{n}", u) for n, u in _TRACK_FEATURES]
    for area in AREAS:
        out += [(f"{area}.any.{n}", u) for n, u in (*_TRACK_FEATURES, *_AREA_EXTRA)]
    out += [(f"home.any.{n}", u) for n, u in _TRACK_FEATURES]
    out += list(_TIME_FEATURES)
    return out


_LAYOUT = _layout()
FEATURE_NAMES: tuple[str, ...] = tuple(n for n, _ in _LAYOUT)
FEATURE_UNITS: tuple[str, ...] = tuple(u for _, u in _LAYOUT)
INPUT_SHAPE: tuple[int, ...] = (len(FEATURE_NAMES),)
assert _TIME_OFFSET + len(_TIME_FEATURES) == len(FEATURE_NAMES)


@dataclass(frozen=True)
class RoutineSpec:
    """The spec object of :class:`RoutineWindow` (mirrors ``models.features.FeatureSpec``)."""

    spec_id: str = SPEC_ID
    step_seconds: float = STEP_SECONDS
    warmup_seconds: float = WARMUP_SECONDS

    @property
    def feature_names(self) -> list[str]:
        return list(FEATURE_NAMES)

    @property
    def units(self) -> list[str]:
        return list(FEATURE_UNITS)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return INPUT_SHAPE


ROUTINE_V1 = RoutineSpec()


def group_feature_names(ref: SensorRef) -> list[str]:
    """The names of the features of ``ref``'s group (for tests and explanations)."""
    return [f"{ref.area}.{ref.kind}.{n}" for n, _ in _TRACK_FEATURES]


# --- The event window ------------------------------------------------------------------


class _Track:
    """State of one group, one area or the whole home: sensors on, activations, last change."""

    __slots__ = ("activations", "last_change", "on")

    def __init__(self) -> None:
        self.on: dict[str, int] = {}
        self.activations: deque[float] = deque()
        self.last_change: float | None = None

    def apply(self, key: str, idempotent: bool, value: float, ts: float) -> bool:
        """Apply one event of sensor ``key``; returns whether the state changed."""
        count = self.on.get(key, 0)
        if value > 0.5:
            if idempotent and count > 0:
                return False  # a repeated "on" report, not a new activation
            self.on[key] = 1 if idempotent else count + 1
            self.activations.append(ts)
        else:
            if idempotent and count == 0:
                return False
            if count > 1:
                self.on[key] = count - 1
            else:
                self.on.pop(key, None)
        self.last_change = ts
        return True

    def prune(self, ts: float) -> None:
        horizon = ts - _HORIZON_S
        while self.activations and self.activations[0] <= horizon:
            self.activations.popleft()

    def write(self, out: npt.NDArray[np.float32], offset: int, ts: float) -> None:
        """Write this track's features at ``out[offset:offset + 5]`` (zeros are left alone)."""
        if self.on:
            out[offset] = 1.0
        acts = self.activations
        if acts:
            n_total = len(acts)
            for j, minutes in enumerate(COUNT_WINDOWS_MIN):
                # Activations in (ts - window, ts]; the deque is in time order.
                n = n_total - bisect_right(acts, ts - 60.0 * minutes)
                if n:
                    out[offset + 1 + j] = _LOG1P_COUNT[min(n, COUNT_CAP)]
        if self.last_change is not None:
            age_min = (ts - self.last_change) / 60.0
            if age_min < RECENCY_CAP_MIN:
                out[offset + _RECENCY_SLOT] = 1.0 - math.log1p(max(0.0, age_min)) / _LOG_RECENCY_CAP


class RoutineWindow:
    """Rolling routine/v1 inputs of one home, updated event by event.

    ``update(sensor, value, ts)`` records a state change of a binary sensor (``value``
    1 = on/open, 0 = off/closed) at epoch time ``ts``; events must arrive in time
    order. ``source`` is an optional opaque per-home handle of the physical sensor
    (e.g. its entity id): it only tells which sensors of a group are on, so repeated
    state reports are not counted twice, and never enters the features. Without it,
    "on" and "off" events of a group are counted up and down.

    The input is ready once the window has observed ``warmup_seconds`` (60 min, the
    longest count window) since ``started_at`` (default: the first event).
    """

    spec = ROUTINE_V1

    def __init__(self, tz: tzinfo = UTC, started_at: float | None = None) -> None:
        self._tz = tz
        self._started_at = started_at
        self._groups: dict[int, _Track] = {}
        self._areas: dict[int, _Track] = {}
        self._home = _Track()
        self._last_area: int | None = None
        self._last_ts: float | None = None

    def update(self, sensor: SensorRef, value: float, ts: float, source: str = "") -> bool:
        """Record one state change. Returns True when the model's input is ready."""
        if self._last_ts is not None and ts < self._last_ts:
            raise ValueError(f"event at {ts} is older than the previous one at {self._last_ts}")
        if self._started_at is None:
            self._started_at = ts
        self._last_ts = ts
        key = f"{sensor.area}/{sensor.kind}/{source}"
        group = self._groups.get(sensor.group)
        if group is None:
            group = self._groups[sensor.group] = _Track()
        area = self._areas.get(sensor.area_index)
        if area is None:
            area = self._areas[sensor.area_index] = _Track()
        changed = False
        for track in (group, area, self._home):
            changed = track.apply(key, bool(source), value, ts)
            track.prune(ts)
        if changed:
            self._last_area = sensor.area_index
        return self.ready(ts)

    def ready(self, ts: float) -> bool:
        return self._started_at is not None and ts - self._started_at >= WARMUP_SECONDS

    def tensor(self, ts: float) -> npt.NDArray[np.float32]:
        """The model input at ``ts`` (not earlier than the last event), shape ``INPUT_SHAPE``."""
        if self._last_ts is not None and ts < self._last_ts:
            raise ValueError(f"tensor at {ts} is older than the last event at {self._last_ts}")
        out = np.zeros(INPUT_SHAPE, dtype=np.float32)
        for g, track in self._groups.items():
            track.prune(ts)
            track.write(out, _GROUP_OFFSET + g * _PER_TRACK, ts)
        for a, track in self._areas.items():
            track.prune(ts)
            track.write(out, _AREA_OFFSET + a * _PER_AREA, ts)
        self._home.prune(ts)
        self._home.write(out, _HOME_OFFSET, ts)
        if self._last_area is not None:
            out[_AREA_OFFSET + self._last_area * _PER_AREA + _PER_TRACK] = 1.0
        out[_TIME_OFFSET : _TIME_OFFSET + 2] = time_of_day_features(ts, self._tz)
        return out
