"""The five real binary-sensor homes (van Kasteren A-C, MIT D-E), mapped as an installer would.

Torch-free. The recordings stay in the shared data directory
(``<data_dir>/homes/houseX.*``, see its README) and are never copied into the
repository. How each home's sensors and activity labels map onto Roost's vocabulary
is data in the repository: ``models/routine/homes/houseX.toml``:

* ``[sensors]``: sensor name (from ``houseX.sensor_names``) -> ``[area, kind]`` of
  :mod:`models.routine.spec`, or ``"ignore"``;
* ``[activities]``: activity name -> a class of :data:`models.routine.data.CLASSES`,
  ``"idle"`` (counts as unannotated time) or ``"unknown"`` (its minutes are left out
  of training and scoring);
* ``[sensor_ids]``: ids the data use that the names file does not list -> the name
  they stand for, or ``"ignore"`` (unnamed sensors);
* ``unannotated``: what time without any annotation is: ``"idle"`` or ``"unknown"``
  (the MIT homes annotate only some activities and never sleep).

Every sensor and activity name of a home must be in its file (a home whose data has
a name its mapping lacks is an error), so nothing is silently dropped. Timestamps are
local wall time stored as if UTC, like the 2008 van Kasteren files.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.datasets import NOT_HERE, DatasetMissing
from models.routine.data import (
    CLASSES,
    IDLE,
    Dataset,
    F64Array,
    Home,
    I64Array,
    Interval,
    build_features,
    day_index,
)
from models.routine.spec import (
    INSTALLER_AREAS,
    INSTALLER_KINDS,
    STEP_SECONDS,
    V1_VOCABULARY,
    SensorRef,
    Vocabulary,
)

# What an installer may say a sensor is (models.routine.spec): the served vocabulary
# (routine/v1) plus the sensors these homes have that it lacks. Sensors of the extra
# kinds or areas are mapped in the files; the v1 features leave them out (the hub
# ignores them too), the cross-home vocabulary counts them.
__all__ = ["INSTALLER_AREAS", "INSTALLER_KINDS"]
MAPPINGS_DIR = Path(__file__).resolve().parent / "homes"
HOMES: tuple[str, ...] = ("houseA", "houseB", "houseC", "houseD", "houseE")
IGNORE = "ignore"
UNKNOWN_LABEL = "unknown"
# Label of a slice left out of training and scoring.
UNKNOWN = -1
_FILES = ("sensors", "sensor_names", "activities", "activity_names")


@dataclass(frozen=True)
class HomeMappingFile:
    """One home's installer mapping (``homes/<name>.toml``)."""

    name: str
    source: str
    unannotated: str  # "idle" or "unknown"
    sensors: dict[str, tuple[str, str] | None]  # (area, kind); None: ignored
    activities: dict[str, str]  # class, "idle" or "unknown"
    sensor_ids: dict[int, str]  # unlisted id -> name or "ignore"

    def label(self, activity: str) -> int:
        target = self.activities[activity]
        return UNKNOWN if target == UNKNOWN_LABEL else CLASSES.index(target)


def load_mapping(name: str, folder: Path = MAPPINGS_DIR) -> HomeMappingFile:
    """Parse and check ``<folder>/<name>.toml`` (unknown areas, kinds or classes raise)."""
    path = folder / f"{name}.toml"
    raw = tomllib.loads(path.read_text())
    sensors: dict[str, tuple[str, str] | None] = {}
    for sensor, target in raw["sensors"].items():
        if target == IGNORE:
            sensors[sensor] = None
        elif (
            isinstance(target, list)
            and len(target) == 2
            and target[0] in INSTALLER_AREAS
            and target[1] in INSTALLER_KINDS
        ):
            sensors[sensor] = (str(target[0]), str(target[1]))
        else:
            raise ValueError(
                f"{path}: sensor '{sensor}' maps to {target!r}, not [area, kind] of "
                "INSTALLER_AREAS x INSTALLER_KINDS"
            )
    activities: dict[str, str] = {}
    for activity, target in raw["activities"].items():
        if target != UNKNOWN_LABEL and target not in CLASSES:
            raise ValueError(f"{path}: activity '{activity}' maps to unknown class {target!r}")
        activities[activity] = str(target)
    unannotated = str(raw.get("unannotated", "idle"))
    if unannotated not in ("idle", UNKNOWN_LABEL):
        raise ValueError(f"{path}: unannotated must be 'idle' or 'unknown', not {unannotated!r}")
    sensor_ids = {int(k): str(v) for k, v in raw.get("sensor_ids", {}).items()}
    for ident, target in sensor_ids.items():
        if target != IGNORE and target not in sensors:
            raise ValueError(f"{path}: sensor id {ident} stands for unmapped '{target}'")
    return HomeMappingFile(
        str(raw["name"]), str(raw["source"]), unannotated, sensors, activities, sensor_ids
    )


@dataclass(frozen=True)
class HomeRecording:
    """One home's firing intervals and annotations, by NAME; local wall time as if UTC."""

    name: str
    sensors: tuple[Interval, ...]
    activities: tuple[Interval, ...]
    sensor_names: tuple[str, ...]  # every name the home's header lists
    activity_names: tuple[str, ...]
    sha256: str  # of the four files, in _FILES order

    @property
    def start(self) -> float:
        return min(i.start for i in (*self.sensors, *self.activities))

    @property
    def end(self) -> float:
        return max(i.end for i in (*self.sensors, *self.activities))


def _names(text: str, where: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in text.splitlines():
        if line.strip():
            ident, name = line.split("\t", 1) if "\t" in line else line.split(None, 1)
            out[int(ident)] = name.strip()
    if len(set(out.values())) != len(out):
        raise ValueError(f"{where}: names are not unique")
    return out


def _intervals(
    text: str, names: dict[int, str], where: str, aliases: dict[int, str] | None = None
) -> list[Interval]:
    """Intervals by name; ``aliases`` resolves ids the names file lacks ("ignore": skip)."""
    out: list[Interval] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            start, duration, ident = float(parts[0]), float(parts[1]), int(parts[2])
            name = names.get(ident) or (aliases or {}).get(ident)
            if name is None:
                raise ValueError(f"{where}: id {ident} is neither named nor in [sensor_ids]")
            if name != IGNORE:
                out.append(Interval(start, start + duration, name))
    return sorted(out, key=lambda i: (i.start, i.end, i.name))


def load_home(data_dir: Path | None, name: str, mapping: HomeMappingFile) -> HomeRecording:
    """Read ``<data_dir>/homes/<name>.*``; ids are resolved to names (``mapping``'s
    ``[sensor_ids]`` for the ones the names file lacks)."""
    if data_dir is None:
        raise DatasetMissing(f"{NOT_HERE} (the homes in ../shared/data/homes)")
    folder = data_dir / "homes"
    raw: dict[str, bytes] = {}
    for suffix in _FILES:
        path = folder / f"{name}.{suffix}"
        if not path.is_file():
            raise DatasetMissing(f"{path} is missing (see ../shared/data/homes/README.md)")
        raw[suffix] = path.read_bytes()
    sensor_names = _names(raw["sensor_names"].decode(), f"{name}.sensor_names")
    activity_names = _names(raw["activity_names"].decode(), f"{name}.activity_names")
    return HomeRecording(
        name=name,
        sensors=tuple(
            _intervals(raw["sensors"].decode(), sensor_names, f"{name}.sensors", mapping.sensor_ids)
        ),
        activities=tuple(
            _intervals(raw["activities"].decode(), activity_names, f"{name}.activities")
        ),
        sensor_names=tuple(sensor_names.values()),
        activity_names=tuple(activity_names.values()),
        sha256=hashlib.sha256(b"".join(raw[s] for s in _FILES)).hexdigest(),
    )


def unmapped(rec: HomeRecording, mapping: HomeMappingFile) -> list[str]:
    """Names of the recording that its mapping neither maps nor ignores."""
    return sorted(
        [f"sensor '{n}'" for n in rec.sensor_names if n not in mapping.sensors]
        + [f"activity '{n}'" for n in rec.activity_names if n not in mapping.activities]
    )


def served_refs(
    mapping: HomeMappingFile, vocabulary: Vocabulary = V1_VOCABULARY
) -> dict[str, SensorRef]:
    """The mapped sensors ``vocabulary`` (default: the served routine/v1) counts."""
    return {
        n: SensorRef(*r)
        for n, r in mapping.sensors.items()
        if r is not None and r[0] in vocabulary.areas and r[1] in vocabulary.kinds
    }


def as_home(
    rec: HomeRecording, mapping: HomeMappingFile, vocabulary: Vocabulary = V1_VOCABULARY
) -> Home:
    """The recording's sensors of ``vocabulary`` as a :class:`Home` (ignored sensors
    and those of kinds or areas it lacks left out, as the hub does)."""
    missing = unmapped(rec, mapping)
    if missing:
        raise ValueError(f"{rec.name}: not in its mapping file: {', '.join(missing)}")
    refs = served_refs(mapping, vocabulary)
    return Home(rec.name, tuple(iv for iv in rec.sensors if iv.name in refs), refs)


def home_labels(rec: HomeRecording, mapping: HomeMappingFile, starts: F64Array) -> I64Array:
    """One label per slice (``UNKNOWN`` = left out); overlaps: the shortest annotation
    wins, as in :func:`models.routine.data.labels`.

    Only the annotated span (first annotation start to last annotation end) is
    labelled: the sensors of house B run 3 days before and 10 days after its
    annotations, and those days were no more "idle" than the annotated ones (the
    person slept and went out). Slices outside the span are ``UNKNOWN``; their
    events still feed the window."""
    fill = IDLE if mapping.unannotated == "idle" else UNKNOWN
    y = np.full(len(starts), fill, dtype=np.int64)
    if not rec.activities:
        y[:] = UNKNOWN
        return y
    first = min(iv.start for iv in rec.activities)
    last = max(iv.end for iv in rec.activities)
    y[(starts + STEP_SECONDS <= first) | (starts >= last)] = UNKNOWN
    ranked = sorted(
        rec.activities, key=lambda iv: (iv.end - iv.start, iv.start, mapping.label(iv.name))
    )
    assigned = np.zeros(len(starts), dtype=bool)
    for iv in ranked:
        lo = int(np.searchsorted(starts, iv.start - STEP_SECONDS, side="right"))
        hi = int(np.searchsorted(starts, iv.end, side="left"))
        idx = np.arange(lo, min(hi, len(starts)))
        idx = idx[~assigned[idx]]
        y[idx] = mapping.label(iv.name)
        assigned[idx] = True
    return y


def home_dataset(
    rec: HomeRecording, mapping: HomeMappingFile, vocabulary: Vocabulary = V1_VOCABULARY
) -> Dataset:
    """Ready slices of a home (features through RoutineWindow), labels may be UNKNOWN."""
    first = np.floor(rec.start / STEP_SECONDS) * STEP_SECONDS
    last = np.ceil(rec.end / STEP_SECONDS) * STEP_SECONDS
    starts = np.arange(first, last, STEP_SECONDS, dtype=np.float64)
    x, ready = build_features(as_home(rec, mapping, vocabulary), starts, vocabulary)
    y = home_labels(rec, mapping, starts)
    return Dataset(starts=starts[ready], x=x[ready], y=y[ready], days=day_index(starts)[ready])
