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
from dataclasses import dataclass, replace
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

# What an installer may say a binary sensor is: the served vocabulary (routine/v1)
# plus the sensors real homes have that it lacks (bed and seat pressure mats, light
# switches, faucets, a shower seat, drawers, stove, small appliances, media). A
# vocabulary counts the sensors of its own areas and kinds and ignores the rest.
INSTALLER_AREAS: tuple[str, ...] = (*AREAS, "office", "dining_room")
INSTALLER_KINDS: tuple[str, ...] = (
    *KINDS,
    "bed",
    "seat",
    "light",
    "faucet",
    "shower",
    "drawer",
    "stove",
    "appliance",
    "media",
)
_LOG_RECENCY_CAP = math.log1p(RECENCY_CAP_MIN)
_HORIZON_S = WARMUP_SECONDS
_LOG1P_COUNT = tuple(math.log1p(n) for n in range(COUNT_CAP + 1))
_RECENCY_SLOT = 1 + len(COUNT_WINDOWS_MIN)
_INSTALLER_AREA_SET = frozenset(INSTALLER_AREAS)
_INSTALLER_KIND_SET = frozenset(INSTALLER_KINDS)


@dataclass(frozen=True, order=True)
class SensorRef:
    """What a binary sensor is, independent of its id: its area and its kind."""

    area: str
    kind: str

    def __post_init__(self) -> None:
        if self.area not in _INSTALLER_AREA_SET:
            raise ValueError(f"unknown area '{self.area}'; known: {', '.join(INSTALLER_AREAS)}")
        if self.kind not in _INSTALLER_KIND_SET:
            raise ValueError(
                f"unknown sensor kind '{self.kind}'; known: {', '.join(INSTALLER_KINDS)}"
            )


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

# Per (area, kind) group, per area ("<area>.any"), optionally per kind across areas
# ("any.<kind>") and per union of areas ("<union>.any"), and for the whole home
# ("home.any"):
_TRACK_FEATURES: tuple[tuple[str, str], ...] = (
    ("active", "bool"),
    *((f"fired_{m}m", "log1p(count)") for m in COUNT_WINDOWS_MIN),
    ("recency", "1-log1p(min)/log1p(1440)"),
)
# Per area only: the area of the home's most recent state change.
_AREA_EXTRA: tuple[tuple[str, str], ...] = (("last", "bool"),)
# Since the home's entrance last opened (``Vocabulary.since_entrance``): what the home
# has done since someone last came or went. A sensor that fires by itself while
# nobody is in (a PIR in the sun, a chattering switch) is one sensor; a person coming
# home sets off several within half an hour. Activations within ENTRANCE_SETTLE_S of
# the entrance are the person leaving or arriving and are not counted.
_SINCE_ENTRANCE_FEATURES: tuple[tuple[str, str], ...] = (
    ("since_entrance.fired", "log1p(count)"),
    ("since_entrance.sensors", "log1p(distinct sensors)"),
    ("since_entrance.minutes", "log1p(min), capped at 2 days; 0 before any"),
    ("since_entrance.first30m_fired", "log1p(count)"),
    ("since_entrance.first30m_sensors", "log1p(distinct sensors)"),
)
ENTRANCE_AREA = "entrance"
ENTRANCE_SETTLE_S = 120.0
ENTRANCE_FIRST_S = 1800.0
ENTRANCE_MINUTES_CAP = 2880.0
_TIME_FEATURES: tuple[tuple[str, str], ...] = (("hour_sin", ""), ("hour_cos", ""))
_PER_TRACK = len(_TRACK_FEATURES)
_PER_AREA = _PER_TRACK + len(_AREA_EXTRA)


@dataclass(frozen=True)
class Vocabulary:
    """Which sensors count and how they are pooled: optionally the (area, kind)
    groups of ``areas`` x ``kinds`` (``group_tracks``), every area, optionally every
    kind across areas (``kind_tracks``), named unions of areas (``area_unions``),
    and the home. Sensors outside ``areas`` x ``kinds`` are ignored."""

    spec_id: str
    areas: tuple[str, ...]
    kinds: tuple[str, ...]
    group_tracks: bool = True
    kind_tracks: bool = False
    area_unions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    since_entrance: bool = False

    @property
    def _n_groups(self) -> int:
        return len(self.areas) * len(self.kinds) if self.group_tracks else 0

    def layout(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for area in self.areas if self.group_tracks else ():
            for kind in self.kinds:
                out += [(f"{area}.{kind}.{n}", u) for n, u in _TRACK_FEATURES]
        for area in self.areas:
            out += [(f"{area}.any.{n}", u) for n, u in (*_TRACK_FEATURES, *_AREA_EXTRA)]
        if self.kind_tracks:
            for kind in self.kinds:
                out += [(f"any.{kind}.{n}", u) for n, u in _TRACK_FEATURES]
        for union, _ in self.area_unions:
            out += [(f"{union}.any.{n}", u) for n, u in _TRACK_FEATURES]
        out += [(f"home.any.{n}", u) for n, u in _TRACK_FEATURES]
        if self.since_entrance:
            out += list(_SINCE_ENTRANCE_FEATURES)
        out += list(_TIME_FEATURES)
        return out

    def offsets(self, ref: SensorRef) -> tuple[int, ...] | None:
        """Feature offsets of the tracks ``ref`` counts in (area first, home last),
        or None when the vocabulary does not count it."""
        if ref.area not in self.areas or ref.kind not in self.kinds:
            return None
        a, k = self.areas.index(ref.area), self.kinds.index(ref.kind)
        area_offset = self._n_groups * _PER_TRACK
        kind_offset = area_offset + len(self.areas) * _PER_AREA
        union_offset = kind_offset + (len(self.kinds) * _PER_TRACK if self.kind_tracks else 0)
        home_offset = union_offset + len(self.area_unions) * _PER_TRACK
        out = [area_offset + a * _PER_AREA]
        if self.group_tracks:
            out.append((a * len(self.kinds) + k) * _PER_TRACK)
        if self.kind_tracks:
            out.append(kind_offset + k * _PER_TRACK)
        out += [
            union_offset + u * _PER_TRACK
            for u, (_, members) in enumerate(self.area_unions)
            if ref.area in members
        ]
        out.append(home_offset)
        return tuple(out)


# The served vocabulary (routine/v1): 8 areas x 9 kinds, no kind tracks or unions.
V1_VOCABULARY = Vocabulary(SPEC_ID, AREAS, KINDS)
# The cross-home candidate: every kind and area an installer may map, pooled per area
# and per kind across areas (a home's only door sensor may sit in another room than
# the training homes'), never per (area, kind) group (few homes share a group), and
# the bathroom and toilet as one "washroom" (in some homes the toilet is in the
# bathroom). Not served yet (see docs/models.md).
CROSS_HOME_VOCABULARY_X1 = Vocabulary(
    "routine/x1",
    INSTALLER_AREAS,
    INSTALLER_KINDS,
    group_tracks=False,
    kind_tracks=True,
    area_unions=(("washroom", ("bathroom", "toilet")),),
)
# routine/x1 and what the home did since its entrance last opened (house B's PIRs fire
# while nobody is in: 1-2 sensors over hours, where a person coming home sets off
# several): the cross-home candidate.
CROSS_HOME_VOCABULARY = replace(CROSS_HOME_VOCABULARY_X1, spec_id="routine/x2", since_entrance=True)

_LAYOUT = V1_VOCABULARY.layout()
FEATURE_NAMES: tuple[str, ...] = tuple(n for n, _ in _LAYOUT)
FEATURE_UNITS: tuple[str, ...] = tuple(u for _, u in _LAYOUT)
INPUT_SHAPE: tuple[int, ...] = (len(FEATURE_NAMES),)


@dataclass(frozen=True)
class RoutineSpec:
    """The spec object of :class:`RoutineWindow` (mirrors ``models.features.FeatureSpec``)."""

    vocabulary: Vocabulary = V1_VOCABULARY
    step_seconds: float = STEP_SECONDS
    warmup_seconds: float = WARMUP_SECONDS

    @property
    def spec_id(self) -> str:
        return self.vocabulary.spec_id

    @property
    def feature_names(self) -> list[str]:
        return [n for n, _ in self.vocabulary.layout()]

    @property
    def units(self) -> list[str]:
        return [u for _, u in self.vocabulary.layout()]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (len(self.vocabulary.layout()),)


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


class _SinceEntrance:
    """Activations of the home's other sensors since its entrance last activated."""

    __slots__ = ("first_keys", "first_n", "keys", "n", "opened")

    def __init__(self) -> None:
        self.opened: float | None = None
        self.n = 0
        self.keys: set[str] = set()
        self.first_n = 0
        self.first_keys: set[str] = set()

    def activation(self, entrance: bool, key: str, ts: float) -> None:
        if entrance:
            self.opened = ts
            self.n = self.first_n = 0
            self.keys.clear()
            self.first_keys.clear()
            return
        if self.opened is None or ts - self.opened <= ENTRANCE_SETTLE_S:
            return
        self.n += 1
        self.keys.add(key)
        if ts - self.opened <= ENTRANCE_FIRST_S:
            self.first_n += 1
            self.first_keys.add(key)

    def write(self, out: npt.NDArray[np.float32], ts: float) -> None:
        """The five features into ``out`` (all 0 before the entrance ever activated)."""
        if self.opened is None:
            return
        minutes = min(max(0.0, ts - self.opened) / 60.0, ENTRANCE_MINUTES_CAP)
        out[:] = (
            _LOG1P_COUNT[min(self.n, COUNT_CAP)],
            math.log1p(len(self.keys)),
            math.log1p(minutes),
            _LOG1P_COUNT[min(self.first_n, COUNT_CAP)],
            math.log1p(len(self.first_keys)),
        )


class RoutineWindow:
    """Rolling routine inputs of one home, updated event by event.

    ``update(sensor, value, ts)`` records a state change of a binary sensor (``value``
    1 = on/open, 0 = off/closed) at epoch time ``ts``; events must arrive in time
    order. ``source`` is an optional opaque per-home handle of the physical sensor
    (e.g. its entity id): it only tells which sensors of a group are on, so repeated
    state reports are not counted twice, and never enters the features. Without it,
    "on" and "off" events of a group are counted up and down. Sensors outside the
    window's vocabulary (default: the served routine/v1) are ignored.

    The input is ready once the window has observed ``warmup_seconds`` (60 min, the
    longest count window) since ``started_at`` (default: the first event).
    """

    spec = ROUTINE_V1

    def __init__(
        self,
        tz: tzinfo = UTC,
        started_at: float | None = None,
        vocabulary: Vocabulary = V1_VOCABULARY,
    ) -> None:
        self.spec = RoutineSpec(vocabulary)
        self._vocabulary = vocabulary
        self._shape = self.spec.input_shape
        self._offsets: dict[SensorRef, tuple[int, ...] | None] = {}
        self._tz = tz
        self._started_at = started_at
        self._tracks: dict[int, _Track] = {}  # by feature offset
        self._last_area: int | None = None  # offset of the area track
        self._last_ts: float | None = None
        self._entrance = _SinceEntrance() if vocabulary.since_entrance else None

    def update(self, sensor: SensorRef, value: float, ts: float, source: str = "") -> bool:
        """Record one state change. Returns True when the model's input is ready."""
        if self._last_ts is not None and ts < self._last_ts:
            raise ValueError(f"event at {ts} is older than the previous one at {self._last_ts}")
        if sensor not in self._offsets:
            self._offsets[sensor] = self._vocabulary.offsets(sensor)
        offsets = self._offsets[sensor]
        if offsets is None:
            return self.ready(ts)
        if self._started_at is None:
            self._started_at = ts
        self._last_ts = ts
        key = f"{sensor.area}/{sensor.kind}/{source}"
        changed = False
        for offset in offsets:  # the home's track is last: it decides "changed"
            track = self._tracks.get(offset)
            if track is None:
                track = self._tracks[offset] = _Track()
            changed = track.apply(key, bool(source), value, ts)
            track.prune(ts)
        if changed:
            self._last_area = offsets[0]
            if self._entrance is not None and value > 0.5:
                self._entrance.activation(sensor.area == ENTRANCE_AREA, key, ts)
        return self.ready(ts)

    def ready(self, ts: float) -> bool:
        return self._started_at is not None and ts - self._started_at >= WARMUP_SECONDS

    def tensor(self, ts: float) -> npt.NDArray[np.float32]:
        """The model input at ``ts`` (not before the last event), of ``spec.input_shape``."""
        if self._last_ts is not None and ts < self._last_ts:
            raise ValueError(f"tensor at {ts} is older than the last event at {self._last_ts}")
        out = np.zeros(self._shape, dtype=np.float32)
        for offset, track in self._tracks.items():
            track.prune(ts)
            track.write(out, offset, ts)
        if self._last_area is not None:
            out[self._last_area + _PER_TRACK] = 1.0
        if self._entrance is not None:
            n_time = len(_TIME_FEATURES)
            self._entrance.write(out[-n_time - len(_SINCE_ENTRANCE_FEATURES) : -n_time], ts)
        out[-2:] = time_of_day_features(ts, self._tz)
        return out
