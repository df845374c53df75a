"""Appliance energy data, anomaly features and fault injection (torch-free).

The data is UCI *Appliances Energy Prediction*, read from the shared data directory
(never copied into the repository). Features go through the serving code path:
every row becomes one :data:`~models.anomaly.spec.ANOMALY_V1` snapshot via
``models.features.snapshot`` and the model input is the last ``WINDOW`` snapshots,
exactly what ``models.features.FeatureWindow`` holds when it is fed the readings in
time order (:func:`feature_window_tensors` does that; the unit tests prove the two
identical).

Faults are injected into copies of the appliance energy readings, before the
features are built, so a faulted window is what the hub would see from a faulty
meter or a faulty appliance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.anomaly.spec import ANOMALY_V1, WINDOW
from models.datasets import appliances_path, load_appliances_table
from models.features import FeatureWindow, snapshot

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]

CADENCE_SECONDS = 600.0

# Dataset column -> sensor kind of ANOMALY_V1 (RH_1 is the kitchen's humidity).
COLUMNS: dict[str, str] = {
    "Appliances": "energy",
    "lights": "light_energy",
    "RH_1": "humidity",
}

# Chronological split by the row a window ends on: train | validation | test.
TRAIN_FRACTION = 0.6
VALIDATION_FRACTION = 0.2


# --- Loading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplianceData:
    """UCI Appliances Energy Prediction, in time order. Timestamps are the house's wall
    time stored as epoch seconds as if UTC (so hour-of-day features read the local hour);
    one row every 10 minutes. ``readings[kind]`` is each used column by sensor kind."""

    ts: F64Array
    readings: dict[str, F64Array]
    sha256: str

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def energy(self) -> F64Array:
        return self.readings["energy"]


def load_appliances(data_dir: Path | None) -> ApplianceData:
    """The columns the anomaly model uses, by sensor kind (``models.datasets`` reads
    the zipped CSV from ``data_dir``); rows must be exactly one every 10 minutes."""
    table = load_appliances_table(appliances_path(data_dir))
    if np.any(np.diff(table.ts) != CADENCE_SECONDS):
        raise ValueError(f"rows are not one every {CADENCE_SECONDS:g} s in time order")
    return ApplianceData(
        ts=table.ts,
        readings={kind: table.columns[name] for name, kind in COLUMNS.items()},
        sha256=table.sha256,
    )


# --- Features (the serving code path) --------------------------------------------------


def _latest(data: ApplianceData, energy: F64Array, i: int) -> dict[str, float]:
    latest = {kind: float(values[i]) for kind, values in data.readings.items()}
    latest["energy"] = float(energy[i])
    return latest


def snapshot_rows(
    data: ApplianceData, energy: F64Array | None = None, start: int = 0, stop: int | None = None
) -> F32Array:
    """One ANOMALY_V1 snapshot per row in ``[start, stop)``, via ``features.snapshot``.

    ``energy`` replaces the appliance energy readings (a faulted copy)."""
    energy = data.energy if energy is None else energy
    stop = len(data) if stop is None else stop
    rows: list[list[float]] = []
    for i in range(start, stop):
        row = snapshot(ANOMALY_V1, _latest(data, energy, i), float(data.ts[i]))
        if row is None:  # cannot happen: every sensor kind is present
            raise ValueError(f"row {i}: incomplete features")
        rows.append(row)
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(ANOMALY_V1.feature_names))


def windows(rows: F32Array) -> F32Array:
    """``[n - WINDOW + 1, WINDOW, features]``: window ``k`` ends on row ``k + WINDOW - 1``."""
    if len(rows) < WINDOW:
        raise ValueError(f"{len(rows)} rows, a window needs {WINDOW}")
    view = np.lib.stride_tricks.sliding_window_view(rows, WINDOW, axis=0)
    out = np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)
    if out.shape[1:] != ANOMALY_V1.input_shape:
        raise ValueError(f"window shape {out.shape[1:]} != spec {ANOMALY_V1.input_shape}")
    return out


def window_inputs(
    data: ApplianceData, start: int, stop: int, energy: F64Array | None = None
) -> F32Array:
    """The model inputs of the windows ending on rows ``[start, stop)`` (``start >=
    WINDOW - 1``): what the hub's feature window holds after each energy reading."""
    if start < WINDOW - 1:
        raise ValueError(f"the first window ends on row {WINDOW - 1}, not {start}")
    return windows(snapshot_rows(data, energy, start - (WINDOW - 1), stop))


def feature_window_tensors(
    data: ApplianceData, start: int, stop: int, energy: F64Array | None = None
) -> tuple[I64Array, F32Array]:
    """Replay rows ``[start, stop)`` through ``FeatureWindow`` as the hub would receive
    them, and collect the input after every energy reading once the window is ready.

    Each row's context sensors report one second before its energy reading, and the
    energy reading takes the snapshot (it is the first reading a full step after the
    previous snapshot). Returns (row index of each tensor, tensors)."""
    energy = data.energy if energy is None else energy
    window = FeatureWindow(ANOMALY_V1, tz=UTC)
    ends: list[int] = []
    tensors: list[F32Array] = []
    for i in range(start, stop):
        ts = float(data.ts[i])
        for kind, values in data.readings.items():
            if kind != "energy":
                window.update(kind, float(values[i]), ts - 1.0)
        if window.update("energy", float(energy[i]), ts):
            ends.append(i)
            tensors.append(window.tensor(ts))
    shape = (len(tensors), *ANOMALY_V1.input_shape)
    return np.asarray(ends, dtype=np.int64), np.asarray(tensors, dtype=np.float32).reshape(shape)


# --- Splits ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Row ranges ``[start, stop)`` of the windows' last rows, in time order."""

    train: tuple[int, int]
    validation: tuple[int, int]
    test: tuple[int, int]


def split(n_rows: int) -> Split:
    n1 = round(n_rows * TRAIN_FRACTION)
    n2 = round(n_rows * (TRAIN_FRACTION + VALIDATION_FRACTION))
    return Split(train=(WINDOW - 1, n1), validation=(n1, n2), test=(n2, n_rows))


# --- Fault injection -------------------------------------------------------------------

FaultKind = Literal["stuck_on", "surge", "dropout", "frozen"]
FAULT_KINDS: tuple[FaultKind, ...] = ("stuck_on", "surge", "dropout", "frozen")
FAULT_SEED = 20160527
EVENTS_PER_KIND = 40
# At least this many clean steps before, between and after events (> WINDOW, so no
# window holds two events).
MIN_GAP_STEPS = 18
# Duration ranges in 10-minute steps (inclusive).
DURATION_STEPS: dict[FaultKind, tuple[int, int]] = {
    "stuck_on": (12, 48),  # 2-8 h
    "surge": (1, 3),  # 10-30 min
    "dropout": (6, 36),  # 1-6 h
    "frozen": (6, 36),  # 1-6 h
}
STUCK_ON_WH = (150.0, 400.0)  # extra Wh per 10 min (0.9-2.4 kW)
SURGE_FACTOR = (3.0, 6.0)


@dataclass(frozen=True)
class FaultEvent:
    """One injected fault on rows ``[start, stop)``. ``magnitude``: extra Wh per step
    (stuck_on), the factor (surge), 0 (dropout: the meter reads 0) or the frozen
    reading (frozen: the meter repeats its last value)."""

    kind: FaultKind
    start: int
    stop: int
    magnitude: float

    @property
    def steps(self) -> int:
        return self.stop - self.start


def place_events(
    start: int,
    stop: int,
    count: int,
    *,
    durations: tuple[int, int],
    rng: np.random.Generator,
    gap: int = MIN_GAP_STEPS,
) -> list[tuple[int, int]]:
    """``count`` non-overlapping ``[a, b)`` in ``[start, stop)`` with at least ``gap`` clean
    rows before, between and after them, at random positions."""
    lengths = rng.integers(durations[0], durations[1] + 1, size=count)
    slack = (stop - start) - gap * (count + 1) - int(lengths.sum())
    if slack < 0:
        raise ValueError(f"{count} events of {durations} steps do not fit in {stop - start} rows")
    cuts = np.sort(rng.integers(0, slack + 1, size=count))
    extra = np.diff(np.concatenate([[0], cuts]))
    spans: list[tuple[int, int]] = []
    pos = start
    for length, more in zip(lengths, extra, strict=True):
        pos += gap + int(more)
        spans.append((pos, pos + int(length)))
        pos += int(length)
    return spans


def inject(
    energy: F64Array,
    kind: FaultKind,
    start: int,
    stop: int,
    *,
    seed: int = FAULT_SEED,
    count: int = EVENTS_PER_KIND,
) -> tuple[F64Array, list[FaultEvent]]:
    """A copy of the energy readings with ``count`` faults of one kind in rows
    ``[start, stop)``; deterministic for a seed."""
    rng = np.random.default_rng([seed, FAULT_KINDS.index(kind)])
    out = np.array(energy, dtype=np.float64, copy=True)
    events: list[FaultEvent] = []
    for a, b in place_events(start, stop, count, durations=DURATION_STEPS[kind], rng=rng):
        if kind == "stuck_on":
            magnitude = float(rng.uniform(*STUCK_ON_WH))
            out[a:b] += magnitude
        elif kind == "surge":
            magnitude = float(rng.uniform(*SURGE_FACTOR))
            out[a:b] *= magnitude
        elif kind == "dropout":
            magnitude = 0.0
            out[a:b] = 0.0
        else:
            magnitude = float(out[a - 1])
            out[a:b] = magnitude
        events.append(FaultEvent(kind, a, b, magnitude))
    return out, events
