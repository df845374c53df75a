"""van Kasteren 2008 data for the routine model: loading, 60 s slices, labels, folds.

Torch-free. The data stays in the shared data directory (``data_dir``, see
:func:`models.datasets.find_data_dir`) and is never copied into the repository.
Features are built by replaying the sensor events through
:class:`models.routine.spec.RoutineWindow`, the serving code path.

Labels (one per 60 s slice ``[t, t + 60)``, features taken at the slice end ``t + 60``):

* the annotated activity that overlaps the slice, mapped to a class
  (leave house = ``away``, go to bed = ``asleep``, ...); ``idle`` when none does;
* when several annotations overlap a slice, the **shortest annotation wins**, so a
  toilet visit at night beats the enclosing "go to bed" and a drink beats the dinner
  it interrupts; ties go to the earlier start, then to the lower class index.
  (In this data set every overlap is a short activity nested in a long one.)

Folds: leave-days-out over whole calendar days (local midnight to midnight), in
consecutive blocks, so a fold's test days were never seen in training.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.datasets import NOT_HERE, DatasetMissing
from models.routine.spec import (
    KASTEREN_MAPPING,
    STEP_SECONDS,
    V1_VOCABULARY,
    HomeMapping,
    RoutineWindow,
    SensorRef,
    Vocabulary,
)

SENSE_FILE = "kasterenSenseData.txt"
ACT_FILE = "kasterenActData.txt"

CLASSES: tuple[str, ...] = (
    "away",
    "asleep",
    "toilet",
    "shower",
    "breakfast",
    "dinner",
    "drink",
    "idle",
)
IDLE = CLASSES.index("idle")
# Annotation NAME (header of kasterenActData.txt) -> class.
KASTEREN_ACTIVITIES: dict[str, str] = {
    "leave house": "away",
    "go to bed": "asleep",
    "use toilet": "toilet",
    "take shower": "shower",
    "prepare breakfast": "breakfast",
    "prepare dinner": "dinner",
    "get drink": "drink",
}
DAY_SECONDS = 86_400.0

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]

_STAMP = re.compile(r"^\d{2}-[A-Za-z]{3}-\d{4} \d{2}:\d{2}:\d{2}$")
_SENSOR_NAME = re.compile(r"^\s*\[\s*(\d+)\]\s*'([^']+)'")
_ACTIVITY_NAME = re.compile(r"^\s*(\d+)\s*:\s*'([^']+)'")


@dataclass(frozen=True)
class Interval:
    start: float
    end: float
    name: str  # the sensor or activity NAME from the file header, not its id


@dataclass(frozen=True)
class KasterenData:
    """Sensor firing intervals and annotated activities; local wall time as if UTC."""

    sensors: tuple[Interval, ...]
    activities: tuple[Interval, ...]
    sha256: str  # of kasterenSenseData.txt followed by kasterenActData.txt

    @property
    def start(self) -> float:
        return min(i.start for i in (*self.sensors, *self.activities))

    @property
    def end(self) -> float:
        return max(i.end for i in (*self.sensors, *self.activities))


def kasteren_dir(data_dir: Path | None) -> Path:
    if data_dir is None:
        raise DatasetMissing(f"{NOT_HERE} (van Kasteren 2008 in ../shared/data/kasteren)")
    folder = data_dir / "kasteren"
    for name in (SENSE_FILE, ACT_FILE):
        if not (folder / name).is_file():
            raise DatasetMissing(f"{folder / name} is missing (van Kasteren 2008 data set)")
    return folder


def _stamp(text: str) -> float:
    return datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S").replace(tzinfo=UTC).timestamp()


def _parse(text: str, header: re.Pattern[str], where: str) -> list[Interval]:
    names: dict[int, str] = {}
    out: list[Interval] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) >= 3 and _STAMP.match(parts[0]) and _STAMP.match(parts[1]):
            ident = int(parts[2])
            if ident not in names:
                raise ValueError(f"{where}: id {ident} is not listed in the header")
            out.append(Interval(_stamp(parts[0]), _stamp(parts[1]), names[ident]))
        elif m := header.match(line):
            names[int(m.group(1))] = m.group(2).strip()
    if not out:
        raise ValueError(f"{where}: no intervals found")
    return out


def load_kasteren(data_dir: Path | None) -> KasterenData:
    """Read both files from ``data_dir``; ids are resolved to the names listed in each
    file's header."""
    folder = kasteren_dir(data_dir)
    sense_raw = (folder / SENSE_FILE).read_bytes()
    act_raw = (folder / ACT_FILE).read_bytes()
    sensors = _parse(sense_raw.decode(), _SENSOR_NAME, SENSE_FILE)
    activities = _parse(act_raw.decode(), _ACTIVITY_NAME, ACT_FILE)
    unknown = {i.name for i in activities if i.name.lower() not in KASTEREN_ACTIVITIES}
    if unknown:
        raise ValueError(f"{ACT_FILE}: unknown activities {sorted(unknown)}")
    unmapped = {i.name for i in sensors} - set(KASTEREN_MAPPING)
    if unmapped:
        raise ValueError(f"{SENSE_FILE}: sensors without a SensorRef {sorted(unmapped)}")
    return KasterenData(
        sensors=tuple(sorted(sensors, key=lambda i: (i.start, i.end, i.name))),
        activities=tuple(sorted(activities, key=lambda i: (i.start, i.end, i.name))),
        sha256=hashlib.sha256(sense_raw + act_raw).hexdigest(),
    )


# --- Homes: sensor ids -> SensorRef ----------------------------------------------------


@dataclass(frozen=True)
class Home:
    """One home's binary sensor stream: firing intervals by the home's own sensor id."""

    name: str
    sensors: tuple[Interval, ...]  # Interval.name is the home's sensor id
    mapping: HomeMapping

    def events(self) -> Iterator[tuple[float, SensorRef, float, str]]:
        """(ts, SensorRef, value, sensor id) in time order; each interval's on before its off."""
        raw: list[tuple[float, int, SensorRef, float, str]] = []
        for i, iv in enumerate(self.sensors):
            ref = self.mapping[iv.name]
            raw.append((iv.start, 2 * i, ref, 1.0, iv.name))
            raw.append((iv.end, 2 * i + 1, ref, 0.0, iv.name))
        raw.sort(key=lambda e: (e[0], e[1]))
        for ts, _, ref, value, sid in raw:
            yield ts, ref, value, sid


def kasteren_home(data: KasterenData) -> Home:
    """The recorded apartment, with its sensor names as ids."""
    return Home("kasteren", data.sensors, dict(KASTEREN_MAPPING))


# The "other home": 4 sensors fewer, the 4 cupboards are one generic kitchen cupboard,
# every id is different. Same vocabulary, so the same model input shape.
OTHER_HOME_DROPPED: tuple[str, ...] = ("Microwave", "Dishwasher", "Washingmachine", "Freezer")
OTHER_HOME_MERGED: tuple[str, ...] = (
    "Cups cupboard",
    "Plates cupboard",
    "Pans Cupboard",
    "Groceries Cupboard",
)
OTHER_HOME_IDS: dict[str, str] = {
    "Hall-Toilet door": "binary_sensor.wc_door",
    "Hall-Bathroom door": "binary_sensor.bath_door_contact",
    "Fridge": "binary_sensor.fridge_door",
    "Frontdoor": "binary_sensor.front_door",
    "ToiletFlush": "binary_sensor.flush",
    "Hall-Bedroom door": "binary_sensor.bedroom_door",
}
OTHER_HOME_CUPBOARD = "binary_sensor.kitchen_cabinet"


def _union(intervals: Iterable[Interval], name: str) -> list[Interval]:
    merged: list[Interval] = []
    for iv in sorted(intervals, key=lambda i: (i.start, i.end)):
        if merged and iv.start <= merged[-1].end:
            last = merged[-1]
            merged[-1] = Interval(last.start, max(last.end, iv.end), name)
        else:
            merged.append(Interval(iv.start, iv.end, name))
    return merged


def other_home(data: KasterenData) -> Home:
    """A perturbed home from the same recording, for the home-agnostic check.

    Microwave, dishwasher, washing machine and freezer are removed; the four
    cupboards become ONE physical cupboard sensor (their intervals united, so
    overlapping openings count once); every remaining sensor gets a new id.
    """
    kept = [iv for iv in data.sensors if iv.name in OTHER_HOME_IDS]
    cupboard = _union(
        (iv for iv in data.sensors if iv.name in OTHER_HOME_MERGED), OTHER_HOME_CUPBOARD
    )
    sensors = [Interval(iv.start, iv.end, OTHER_HOME_IDS[iv.name]) for iv in kept] + cupboard
    mapping = {new: KASTEREN_MAPPING[old] for old, new in OTHER_HOME_IDS.items()}
    mapping[OTHER_HOME_CUPBOARD] = SensorRef("kitchen", "cupboard")
    return Home(
        "other_home",
        tuple(sorted(sensors, key=lambda i: (i.start, i.end, i.name))),
        mapping,
    )


# --- Slices, features, labels, folds ---------------------------------------------------


def slice_starts(data: KasterenData) -> F64Array:
    """Starts of the 60 s slices covering the recording (minute-aligned)."""
    first = np.floor(data.start / STEP_SECONDS) * STEP_SECONDS
    last = np.ceil(data.end / STEP_SECONDS) * STEP_SECONDS
    return np.arange(first, last, STEP_SECONDS, dtype=np.float64)


def build_features(
    home: Home, starts: F64Array, vocabulary: Vocabulary = V1_VOCABULARY
) -> tuple[F32Array, npt.NDArray[np.bool_]]:
    """Features at each slice end through :class:`RoutineWindow`, and whether it was ready.

    Events are fed in time order; every event with ``ts <= slice end`` is applied
    before the snapshot. The window counts as started at the first slice start.
    """
    window = RoutineWindow(started_at=float(starts[0]), vocabulary=vocabulary)
    events = list(home.events())
    x = np.zeros((len(starts), *window.spec.input_shape), dtype=np.float32)
    ready = np.zeros(len(starts), dtype=bool)
    j = 0
    for i, start in enumerate(starts):
        t = float(start) + STEP_SECONDS
        while j < len(events) and events[j][0] <= t:
            ts, ref, value, sid = events[j]
            window.update(ref, value, ts, source=sid)
            j += 1
        ready[i] = window.ready(t)
        x[i] = window.tensor(t)
    return x, ready


def labels(data: KasterenData, starts: F64Array) -> I64Array:
    """One class per slice; overlaps resolved by the shortest annotation (module doc)."""
    y = np.full(len(starts), IDLE, dtype=np.int64)
    # Rank of each annotation: shorter first, then earlier start, then class index.
    ranked = sorted(
        data.activities,
        key=lambda iv: (iv.end - iv.start, iv.start, CLASSES.index(_activity_class(iv.name))),
    )
    assigned = np.zeros(len(starts), dtype=bool)
    for iv in ranked:
        # Slices [s, s + 60) that overlap [start, end]: s < end and s + 60 > start.
        lo = int(np.searchsorted(starts, iv.start - STEP_SECONDS, side="right"))
        hi = int(np.searchsorted(starts, iv.end, side="left"))
        idx = np.arange(lo, min(hi, len(starts)))
        idx = idx[~assigned[idx]]
        y[idx] = CLASSES.index(_activity_class(iv.name))
        assigned[idx] = True
    return y


def _activity_class(name: str) -> str:
    return KASTEREN_ACTIVITIES[name.lower()]


def day_index(starts: F64Array) -> I64Array:
    """Calendar day of each slice, counted from the first day (0, 1, ...)."""
    day = np.floor(starts / DAY_SECONDS).astype(np.int64)
    out: I64Array = day - day.min()
    return out


def leave_days_out_folds(days: I64Array, n_folds: int) -> I64Array:
    """Fold of each slice: the days are split into ``n_folds`` consecutive blocks."""
    n_days = int(days.max()) + 1
    if not 1 < n_folds <= n_days:
        raise ValueError(f"n_folds must be in 2..{n_days}, got {n_folds}")
    block = np.array_split(np.arange(n_days), n_folds)
    fold_of_day = np.empty(n_days, dtype=np.int64)
    for f, block_days in enumerate(block):
        fold_of_day[block_days] = f
    return fold_of_day[days]


@dataclass(frozen=True)
class Dataset:
    """Ready slices of one home with features, labels, days and folds."""

    starts: F64Array
    x: F32Array
    y: I64Array
    days: I64Array

    def __len__(self) -> int:
        return len(self.y)

    def folds(self, n_folds: int) -> I64Array:
        return leave_days_out_folds(self.days, n_folds)


def build_dataset(data: KasterenData, home: Home | None = None) -> Dataset:
    """Features of ``home`` (default: the recorded apartment) with the annotated labels.

    Slices whose window is not ready yet (the first hour) are dropped.
    """
    starts = slice_starts(data)
    x, ready = build_features(home or kasteren_home(data), starts)
    y = labels(data, starts)
    return Dataset(starts=starts[ready], x=x[ready], y=y[ready], days=day_index(starts)[ready])


def class_counts(y: I64Array) -> dict[str, int]:
    counts = np.bincount(y, minlength=len(CLASSES))
    return {c: int(n) for c, n in zip(CLASSES, counts, strict=True)}


def time_of_day_bins(starts: F64Array, bins: int = 48) -> I64Array:
    """Slot of the day (``bins`` per day) of each slice: the time-only baseline's input."""
    seconds = np.mod(starts, DAY_SECONDS)
    return np.minimum((seconds * bins / DAY_SECONDS).astype(np.int64), bins - 1)


def fit_time_of_day(starts: F64Array, y: I64Array, bins: int = 48) -> I64Array:
    """Most frequent class per slot of the day (ties to the lower class index)."""
    slot = time_of_day_bins(starts, bins)
    table = np.zeros((bins, len(CLASSES)), dtype=np.int64)
    np.add.at(table, (slot, y), 1)
    overall = int(np.argmax(np.bincount(y, minlength=len(CLASSES))))
    best = np.argmax(table, axis=1)
    best[table.sum(axis=1) == 0] = overall
    out: I64Array = best.astype(np.int64)
    return out


def predict_time_of_day(table: I64Array, starts: F64Array) -> I64Array:
    return table[time_of_day_bins(starts, len(table))]
