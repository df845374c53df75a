"""UCI Appliances Energy Prediction as comfort-model samples (torch-free).

Each indoor room's readings are fed, in time order, into the hub's own
:class:`models.features.FeatureWindow` on :data:`COMFORT_V1`, and every input tensor
is what that window returns: training, evaluation and serving build features with
one code path. Training (``train``), ``evaluate`` and the artifact tests use this.

The dataset: one low-energy house in Belgium, a row every 10 minutes from
2016-01-11 17:00 to 2016-05-27 18:00 (19,735 rows, no gaps). ``T1..T9``/``RH_1..RH_9``
are rooms, except ``T6``/``RH_6`` (outside the building, north side); ``T_out`` and
``RH_out`` are the weather station's outdoor readings. Dates are ``dd-mm-yyyy HH:MM``
(the house's wall time, stored as epoch seconds as if UTC so that hour-of-day
features read the local hour); some values use E-notation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.comfort.spec import COMFORT_V1, HORIZON_STEPS, TEMPERATURE
from models.datasets import appliances_path, load_appliances_table
from models.features import FeatureWindow

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


# The eight indoor rooms: (temperature column, humidity column, room). T6/RH_6 is
# outside the building and is not a room.
ROOMS: dict[str, tuple[str, str, str]] = {
    "T1": ("T1", "RH_1", "kitchen"),
    "T2": ("T2", "RH_2", "living room"),
    "T3": ("T3", "RH_3", "laundry room"),
    "T4": ("T4", "RH_4", "office"),
    "T5": ("T5", "RH_5", "bathroom"),
    "T7": ("T7", "RH_7", "ironing room"),
    "T8": ("T8", "RH_8", "teenager room 2"),
    "T9": ("T9", "RH_9", "parents room"),
}
OUTDOOR_COLUMNS = {"outdoor_temperature": "T_out", "outdoor_humidity": "RH_out"}

# Within one 10-minute row the readings reach the window in this order. FeatureWindow
# takes a snapshot at the FIRST reading of each new step, so every snapshot holds the
# room temperature of its own row and the other sensors' values of the row before
# (10 minutes old): the freshest room temperature, which the forecast is anchored to.
FEED_ORDER = ("temperature", "humidity", "outdoor_temperature", "outdoor_humidity")

# Chronological split by calendar day: the last TEST_FRACTION of the days are the
# test set, the VAL_FRACTION before them validation, the rest training.
TEST_FRACTION = 0.2
VAL_FRACTION = 0.1
SECONDS_PER_DAY = 86_400
SPLITS = ("train", "val", "test")
# Rows fed before the first wanted forecast origin (see build_samples).
WARMUP_ROWS = COMFORT_V1.window


@dataclass(frozen=True)
class AppliancesData:
    """The columns the comfort model uses, in time order."""

    ts: F64Array
    columns: dict[str, F64Array]
    sha256: str

    def __len__(self) -> int:
        return len(self.ts)

    def room_series(self, room: str) -> dict[str, F64Array]:
        """One room's readings by sensor kind (room plus the outdoor weather)."""
        t_col, rh_col, _ = ROOMS[room]
        series = {"temperature": self.columns[t_col], "humidity": self.columns[rh_col]}
        series |= {kind: self.columns[col] for kind, col in OUTDOOR_COLUMNS.items()}
        return series


def load_appliances(data_dir: Path | None) -> AppliancesData:
    """The columns the comfort model uses (``models.datasets`` reads the zipped CSV from
    ``data_dir``, see :func:`models.datasets.find_data_dir`)."""
    table = load_appliances_table(appliances_path(data_dir))
    wanted = [c for room in ROOMS.values() for c in room[:2]] + list(OUTDOOR_COLUMNS.values())
    return AppliancesData(
        ts=table.ts, columns={name: table.columns[name] for name in wanted}, sha256=table.sha256
    )


# --- Feature windows ---------------------------------------------------------------------


@dataclass(frozen=True)
class RoomWindows:
    """The window's input at every row where it is ready, and that row's index."""

    x: F32Array  # [n, WINDOW, n_features]
    rows: I64Array  # [n] index of the data row the input was taken at


def room_windows(data: AppliancesData, room: str, start: int = 0) -> RoomWindows:
    """Feed one room's readings, from row ``start`` on, through a fresh FeatureWindow,
    row by row, as the hub would; keep the window's input wherever it is ready."""
    series = room_series_lists(data, room)
    window = FeatureWindow(COMFORT_V1)
    xs: list[F32Array] = []
    rows: list[int] = []
    for i, ts in enumerate(data.ts[start:].tolist(), start=start):
        ready = False
        for kind in FEED_ORDER:
            ready = window.update(kind, series[kind][i], ts)
        if ready:
            xs.append(window.tensor(ts))
            rows.append(i)
    x = np.stack(xs) if xs else np.empty((0, *COMFORT_V1.input_shape), dtype=np.float32)
    return RoomWindows(x=x, rows=np.asarray(rows, dtype=np.int64))


def room_series_lists(data: AppliancesData, room: str) -> dict[str, list[float]]:
    return {kind: v.tolist() for kind, v in data.room_series(room).items()}


@dataclass(frozen=True)
class Samples:
    """Every (room, forecast origin) with a ready window and both targets, all rooms."""

    x: F32Array  # [n, WINDOW, n_features], raw units, as served
    y: F32Array  # [n, 2] room temperature (degC) at +30 and +60 minutes
    room: I64Array  # [n] index into ROOMS
    ts: F64Array  # [n] forecast origin (reading time)

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, mask: BoolArray) -> Samples:
        return Samples(x=self.x[mask], y=self.y[mask], room=self.room[mask], ts=self.ts[mask])

    @property
    def current_temperature(self) -> F32Array:
        """The room temperature in the window's last snapshot (the persistence forecast)."""
        return self.x[:, -1, TEMPERATURE]


def build_samples(data: AppliancesData, since: float | None = None) -> Samples:
    """All rooms' samples, room by room, each in time order.

    With ``since``, only forecast origins at or after it: the windows are fed from
    :data:`WARMUP_ROWS` rows earlier, which gives exactly the inputs of a run fed from
    the first row (the first snapshot of a fresh window differs, and it has rolled out
    of the window by then), at a fraction of the cost.
    """
    start, first_origin = 0, 0
    if since is not None:
        first_origin = int(np.searchsorted(data.ts, since))
        start = max(0, first_origin - WARMUP_ROWS)
    xs, ys, rooms, tss = [], [], [], []
    horizons = np.asarray(HORIZON_STEPS, dtype=np.int64)
    for r, room in enumerate(ROOMS):
        w = room_windows(data, room, start=start)
        keep = (w.rows >= first_origin) & (w.rows + horizons.max() < len(data))
        rows = w.rows[keep]
        target_rows = rows[:, None] + horizons[None, :]
        # Targets must be exactly the horizon ahead (the data has no gaps; be sure).
        dt = data.ts[target_rows] - data.ts[rows][:, None]
        if not np.allclose(dt, horizons[None, :] * COMFORT_V1.step_seconds):
            raise ValueError(f"room {room}: rows are not evenly spaced")
        xs.append(w.x[keep])
        ys.append(data.room_series(room)["temperature"][target_rows].astype(np.float32))
        rooms.append(np.full(len(rows), r, dtype=np.int64))
        tss.append(data.ts[rows])
    return Samples(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        room=np.concatenate(rooms),
        ts=np.concatenate(tss),
    )


# --- Chronological split -----------------------------------------------------------------


def split_bounds(data: AppliancesData) -> dict[str, tuple[float, float]]:
    """[start, end) of each split in reading time, at midnights, by calendar day."""
    first_day = int(data.ts[0]) // SECONDS_PER_DAY
    last_day = int(data.ts[-1]) // SECONDS_PER_DAY
    n_days = last_day - first_day + 1
    test_days = round(n_days * TEST_FRACTION)
    val_days = round(n_days * VAL_FRACTION)
    test_start = float((last_day + 1 - test_days) * SECONDS_PER_DAY)
    val_start = test_start - val_days * SECONDS_PER_DAY
    return {
        "train": (float(data.ts[0]), val_start),
        "val": (val_start, test_start),
        "test": (test_start, float(data.ts[-1]) + 1.0),
    }


def split_masks(samples: Samples, data: AppliancesData) -> dict[str, BoolArray]:
    """Which samples belong to each split: the forecast origin AND the +60 min target
    lie in the split (samples whose target crosses into the next split are dropped)."""
    horizon = max(HORIZON_STEPS) * COMFORT_V1.step_seconds
    return {
        name: (samples.ts >= start) & (samples.ts + horizon < end)
        for name, (start, end) in split_bounds(data).items()
    }


def day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


# --- Baselines -----------------------------------------------------------------------------


def persistence(samples: Samples) -> F32Array:
    """The room temperature stays as it is: [n, 2]."""
    t = samples.current_temperature
    return np.stack([t] * len(HORIZON_STEPS), axis=1)


def _design(x: F32Array) -> F64Array:
    flat = x.reshape(len(x), -1).astype(np.float64)
    return np.concatenate([flat, np.ones((len(x), 1))], axis=1)


def fit_linear(train: Samples) -> F64Array:
    """Least squares from the flattened raw window (+ bias) to both targets."""
    coef, *_ = np.linalg.lstsq(_design(train.x), train.y.astype(np.float64), rcond=None)
    return np.asarray(coef, dtype=np.float64)


def predict_linear(coef: F64Array, samples: Samples) -> F32Array:
    return (_design(samples.x) @ coef).astype(np.float32)


def mae(pred: npt.NDArray[np.floating], y: npt.NDArray[np.floating]) -> F64Array:
    """Mean absolute error per output column (degC), in float64."""
    return np.asarray(
        np.mean(np.abs(pred.astype(np.float64) - y.astype(np.float64)), axis=0), dtype=np.float64
    )
