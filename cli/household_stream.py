"""The household sensor stream ``roost simulate`` replays: readings in timestamp order.

Sources yield :class:`SimReading` in timestamp order:

* :func:`replay_source` reads the real UCI Occupancy data (``models.datasets``; the data
  stays in ``../shared/data``), four readings per row: temperature, humidity,
  illuminance (the Light column) and carbon_dioxide (the CO2 column).
* :func:`synthetic_source` is a seeded generator with the same shape and similar
  statistics, used when the data is not on this machine.
* :func:`default_source` picks one of the two.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from models.datasets import DatasetMissing, load_occupancy, occupancy_path

logger = logging.getLogger(__name__)

# The sensor kinds of one row, in publish order (models.features.OCCUPANCY_V1).
SENSOR_KINDS = ("temperature", "humidity", "illuminance", "carbon_dioxide")
# Monday 2015-02-02 00:00 (room wall time stored as if UTC, like the real data).
DEFAULT_SYNTHETIC_START = 1422835200.0
SYNTHETIC_STEP_SECONDS = 60.0

Split = Literal["train", "test"]
SourceKind = Literal["auto", "replay", "synthetic"]


@dataclass(frozen=True)
class SimReading:
    area: str
    sensor_kind: str
    value: float
    ts: float


class _CountedIterator(Iterator[SimReading]):
    """An iterator that knows how many items it will yield (``operator.length_hint``)."""

    def __init__(self, items: Iterator[SimReading], total: int) -> None:
        self._items = items
        self._left = total

    def __iter__(self) -> _CountedIterator:
        return self

    def __next__(self) -> SimReading:
        item = next(self._items)
        self._left -= 1
        return item

    def __length_hint__(self) -> int:
        return max(self._left, 0)


def replay_source(
    split: Split = "test", *, area: str = "office", data_dir: Path | None
) -> Iterator[SimReading]:
    """The real occupancy data in ``data_dir``, 4 readings per row. Raises
    DatasetMissing if absent."""
    data = load_occupancy(split, data_dir)  # eager: a missing data set fails here
    columns = (data.temperature, data.humidity, data.light, data.co2)

    def rows() -> Iterator[SimReading]:
        for i in range(len(data)):
            ts = float(data.ts[i])
            for kind, col in zip(SENSOR_KINDS, columns, strict=True):
                yield SimReading(area, kind, float(col[i]), ts)

    return _CountedIterator(rows(), len(data) * len(SENSOR_KINDS))


@dataclass(frozen=True)
class SyntheticRow:
    """One minute of the synthetic process (``occupied`` is its ground truth)."""

    ts: float
    temperature: float
    humidity: float
    light: float
    co2: float
    occupied: bool


def _day_sessions(rng: random.Random, weekday: int) -> list[tuple[float, float]]:
    """Occupied intervals of one day, in hours since midnight."""
    if weekday >= 5:  # weekend: now and then a short visit
        if rng.random() < 0.25:
            start = rng.uniform(10.0, 15.0)
            return [(start, start + rng.uniform(0.5, 2.5))]
        return []
    if rng.random() < 0.05:  # a weekday off
        return []
    arrive = min(max(rng.gauss(8.5, 0.5), 7.0), 10.0)
    leave = min(max(rng.gauss(17.5, 0.7), 15.5), 20.0)
    if rng.random() < 0.6:  # out for lunch
        out = rng.uniform(12.0, 13.0)
        back = out + rng.uniform(0.5, 1.0)
        return [(arrive, out), (back, leave)]
    return [(arrive, leave)]


def _daylight(hour: float) -> float:
    """0 at night, up to 1 around 12:30 (an office window in February)."""
    if not 7.0 <= hour <= 18.0:
        return 0.0
    return math.sin(math.pi * (hour - 7.0) / 11.0)


def synthetic_rows(
    seed: int, start_ts: float = DEFAULT_SYNTHETIC_START, rows: int | None = None
) -> Iterator[SyntheticRow]:
    """A seeded day/night, occupied/vacant process at one-minute cadence.

    Occupied: lights on (400-700 lx), CO2 rising towards 700-1200 ppm, temperature
    about 1-1.8 degC higher. Vacant: 0 lx at night, some daylight by day, CO2 decaying
    towards outdoor 420-450 ppm. Humidity wanders in 20-35 %. ``rows=None``: endless.
    """
    rng = random.Random(seed)
    outdoor_co2 = rng.uniform(420.0, 450.0)
    base_temp = rng.uniform(20.3, 20.9)
    window_lux = rng.uniform(40.0, 160.0)
    co2 = outdoor_co2 + rng.uniform(0.0, 20.0)
    temp = base_temp
    humidity = rng.uniform(22.0, 30.0)
    day_index: int | None = None
    sessions: list[tuple[float, float]] = []
    session_co2 = 0.0
    session_lux = 0.0
    session_warm = 0.0
    was_occupied = False
    i = 0
    while rows is None or i < rows:
        ts = start_ts + i * SYNTHETIC_STEP_SECONDS
        day = int(ts // 86_400)
        hour = (ts % 86_400) / 3600.0
        if day != day_index:
            day_index = day
            sessions = _day_sessions(rng, datetime.fromtimestamp(ts, UTC).weekday())
        occupied = any(a <= hour < b for a, b in sessions)
        if occupied and not was_occupied:  # people come in: new plateau levels
            session_co2 = rng.uniform(700.0, 1200.0)
            session_lux = rng.uniform(420.0, 660.0)
            session_warm = rng.uniform(1.0, 1.8)
        was_occupied = occupied

        if occupied:
            co2 += (session_co2 - co2) / 40.0 + rng.gauss(0.0, 4.0)
            target_temp = base_temp + session_warm
            light = min(max(session_lux + rng.gauss(0.0, 12.0), 400.0), 700.0)
            target_hum = 29.0
        else:
            co2 += (outdoor_co2 - co2) / 90.0 + rng.gauss(0.0, 1.5)
            target_temp = base_temp + 0.3 * _daylight(hour)
            sun = _daylight(hour)
            light = 0.0 if sun == 0.0 else max(0.0, window_lux * sun + rng.gauss(0.0, 5.0))
            target_hum = 24.0
        temp += (target_temp - temp) / 60.0 + rng.gauss(0.0, 0.01)
        humidity += (target_hum - humidity) / 240.0 + rng.gauss(0.0, 0.05)
        co2 = max(co2, 400.0)
        humidity = min(max(humidity, 20.0), 35.0)
        yield SyntheticRow(
            ts=ts,
            temperature=round(temp, 3),
            humidity=round(humidity, 3),
            light=round(light, 1),
            co2=round(co2, 1),
            occupied=occupied,
        )
        i += 1


def synthetic_source(
    seed: int = 0,
    start_ts: float = DEFAULT_SYNTHETIC_START,
    rows: int | None = None,
    *,
    area: str = "office",
) -> Iterator[SimReading]:
    """:func:`synthetic_rows` flattened to 4 readings per row (the replay's order)."""

    def readings() -> Iterator[SimReading]:
        for row in synthetic_rows(seed, start_ts, rows):
            values = (row.temperature, row.humidity, row.light, row.co2)
            for kind, value in zip(SENSOR_KINDS, values, strict=True):
                yield SimReading(area, kind, value, row.ts)

    if rows is None:
        return readings()
    return _CountedIterator(readings(), rows * len(SENSOR_KINDS))


def default_source(
    kind: SourceKind = "auto",
    *,
    split: Split = "test",
    seed: int = 0,
    start_ts: float = DEFAULT_SYNTHETIC_START,
    rows: int | None = None,
    area: str = "office",
    data_dir: Path | None = None,
) -> Iterator[SimReading]:
    """Replay the real data in ``data_dir`` if it is there (``auto``/``replay``), else
    the generator.

    ``data_dir`` is the resolved data directory (``models.datasets.data_dir_from_env``;
    None: not on this machine). ``kind="replay"`` raises DatasetMissing when the data
    is absent; ``rows`` only bounds the synthetic source (``None``: endless).
    """
    if kind in ("auto", "replay"):
        try:
            occupancy_path(split, data_dir)
        except DatasetMissing:
            if kind == "replay":
                raise
            logger.info("occupancy data not found; using the synthetic source (seed %s)", seed)
        else:
            logger.info("replaying the occupancy '%s' split", split)
            return replay_source(split, area=area, data_dir=data_dir)
    else:
        logger.info("using the synthetic source (seed %s)", seed)
    return synthetic_source(seed, start_ts, rows, area=area)
