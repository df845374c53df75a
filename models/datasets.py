"""Loaders for the real household data sets in ``../shared/data`` (never copied here).

Where the data is, is configuration, resolved once by an entry point and passed to
every loader as ``data_dir``: the configured directory (``--data-dir`` of the training
and evaluation CLIs, or ``$ROOST_DATA_DIR``, which the entry points that read the
environment pass through :func:`data_dir_from_env`) if it holds the data, else
``../shared/data`` next to the repository (:func:`find_data_dir`). ``None`` means the
data is not on this machine: loaders raise :class:`DatasetMissing`, and callers that
can do without the data fall back (the simulator uses its generator; tests skip with
a reason). Nothing in ``models`` reads the environment itself.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

REPO_ROOT = Path(__file__).resolve().parent.parent
# The environment variable that overrides the data directory (read by entry points only).
DATA_DIR_ENV = "ROOST_DATA_DIR"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
NOT_HERE = (
    f"the shared data sets are not here: set {DATA_DIR_ENV} (or --data-dir) "
    "or place them in ../shared/data"
)


def find_data_dir(configured: Path | None = None) -> Path | None:
    """Where the shared data sets are: ``configured`` if it holds them, else the default
    ``../shared/data`` if it does, else None (not on this machine)."""
    candidates = [configured] if configured is not None else []
    candidates.append(DEFAULT_DATA_DIR)
    for c in candidates:
        if (c / "README.md").is_file() or (c / "occupancy").is_dir():
            return c
    return None


def data_dir_from_env(env: Mapping[str, str]) -> Path | None:
    """:func:`find_data_dir` with the override ``$ROOST_DATA_DIR`` of ``env``: an entry
    point passes its process environment once, at start-up."""
    configured = env.get(DATA_DIR_ENV)
    return find_data_dir(Path(configured) if configured else None)


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` for a CLI that reads the shared data (resolve with find_data_dir)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"the shared data sets (roost passes ${DATA_DIR_ENV}; default ../shared/data)",
    )


class DatasetMissing(FileNotFoundError):
    """The shared data set is not on this machine."""


@dataclass(frozen=True)
class OccupancyData:
    """UCI Occupancy Detection, one split. Timestamps are the room's local wall time,
    stored as epoch seconds as if UTC (so hour-of-day features read the local hour)."""

    ts: npt.NDArray[np.float64]
    temperature: npt.NDArray[np.float64]
    humidity: npt.NDArray[np.float64]
    light: npt.NDArray[np.float64]
    co2: npt.NDArray[np.float64]
    humidity_ratio: npt.NDArray[np.float64]
    occupancy: npt.NDArray[np.int64]
    sha256: str

    def __len__(self) -> int:
        return len(self.ts)


OCCUPANCY_FILES = {"train": "datatraining.txt", "test": "datatest.txt"}


def occupancy_path(split: Literal["train", "test"], data_dir: Path | None) -> Path:
    if data_dir is None:
        raise DatasetMissing(NOT_HERE)
    path = data_dir / "occupancy" / OCCUPANCY_FILES[split]
    if not path.is_file():
        raise DatasetMissing(f"{path} is missing")
    return path


def load_occupancy(split: Literal["train", "test"], data_dir: Path | None) -> OccupancyData:
    """Read one split. The header names 7 columns; every row starts with a quoted row number."""
    path = occupancy_path(split, data_dir)
    raw = path.read_bytes()
    rows = list(csv.reader(raw.decode().splitlines()))[1:]
    cols: list[list[float]] = [[] for _ in range(7)]
    for r in rows:
        if len(r) != 8:
            continue
        stamp = datetime.strptime(r[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        cols[0].append(stamp.timestamp())
        for i in range(2, 8):
            cols[i - 1].append(float(r[i]))
    return OccupancyData(
        ts=np.asarray(cols[0]),
        temperature=np.asarray(cols[1]),
        humidity=np.asarray(cols[2]),
        light=np.asarray(cols[3]),
        co2=np.asarray(cols[4]),
        humidity_ratio=np.asarray(cols[5]),
        occupancy=np.asarray(cols[6], dtype=np.int64),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


APPLIANCES_ZIP = Path("appliances") / "energydata_complete.csv.zip"
APPLIANCES_CSV = "energydata_complete.csv"


@dataclass(frozen=True)
class AppliancesTable:
    """UCI Appliances Energy Prediction: every numeric column by its CSV name, in time
    order, one row every 10 minutes. Timestamps are the house's wall time stored as
    epoch seconds as if UTC (so hour-of-day features read the local hour)."""

    ts: npt.NDArray[np.float64]
    columns: dict[str, npt.NDArray[np.float64]]
    sha256: str

    def __len__(self) -> int:
        return len(self.ts)


def appliances_path(data_dir: Path | None) -> Path:
    if data_dir is None:
        raise DatasetMissing(f"{NOT_HERE} (needs {APPLIANCES_ZIP})")
    path = data_dir / APPLIANCES_ZIP
    if not path.is_file():
        raise DatasetMissing(f"{path} is missing (UCI Appliances Energy Prediction)")
    return path


def load_appliances_table(path: Path) -> AppliancesTable:
    """Read the zipped CSV (:func:`appliances_path`) in memory: dates ``dd-mm-yyyy HH:MM``,
    some values in E-notation."""
    raw = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        text = zf.read(APPLIANCES_CSV).decode()
    rows = csv.reader(text.splitlines())
    header = next(rows)
    stamps: list[float] = []
    cols: list[list[float]] = [[] for _ in header[1:]]
    for r in rows:
        if not r:
            continue
        stamp = datetime.strptime(r[0], "%d-%m-%Y %H:%M").replace(tzinfo=UTC)
        stamps.append(stamp.timestamp())
        for col, value in zip(cols, r[1:], strict=True):
            col.append(float(value))  # float() reads E-notation
    ts = np.asarray(stamps, dtype=np.float64)
    if np.any(np.diff(ts) <= 0):
        raise ValueError(f"{path}: rows are not in time order")
    return AppliancesTable(
        ts=ts,
        columns={
            name: np.asarray(c, dtype=np.float64) for name, c in zip(header[1:], cols, strict=True)
        },
        sha256=hashlib.sha256(raw).hexdigest(),
    )
