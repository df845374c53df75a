"""cli.household_stream: the synthetic and replay sources of ``roost simulate``."""

from __future__ import annotations

import itertools
import logging
import operator
from pathlib import Path

import pytest

import cli.household_stream as household_stream
from cli.household_stream import (
    DEFAULT_SYNTHETIC_START,
    SENSOR_KINDS,
    SimReading,
    default_source,
    replay_source,
    synthetic_rows,
    synthetic_source,
)
from models.datasets import DatasetMissing
from models.features import OCCUPANCY_V1
from tests.support.shared_data import DATA_DIR, MISSING

DAY_ROWS = 1440  # one day at one-minute cadence


def test_sensor_kinds_match_the_occupancy_spec() -> None:
    assert frozenset(SENSOR_KINDS) == OCCUPANCY_V1.sensor_kinds


# --- synthetic source ------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed() -> None:
    a = list(synthetic_source(seed=7, start_ts=0.0, rows=500))
    b = list(synthetic_source(seed=7, start_ts=0.0, rows=500))
    c = list(synthetic_source(seed=8, start_ts=0.0, rows=500))
    assert a == b
    assert a != c


def test_synthetic_shape_and_cadence() -> None:
    readings = list(synthetic_source(seed=1, start_ts=DEFAULT_SYNTHETIC_START, rows=120))
    assert len(readings) == 120 * 4
    assert all(isinstance(r, SimReading) and r.area == "office" for r in readings)
    rows = [readings[i : i + 4] for i in range(0, len(readings), 4)]
    for row in rows:
        assert tuple(r.sensor_kind for r in row) == SENSOR_KINDS
        assert len({r.ts for r in row}) == 1
    stamps = [row[0].ts for row in rows]
    assert stamps[0] == DEFAULT_SYNTHETIC_START
    assert all(b - a == 60.0 for a, b in itertools.pairwise(stamps))


def test_synthetic_endless_without_rows_and_sized_with_rows() -> None:
    endless = synthetic_source(seed=0, rows=None)
    assert len(list(itertools.islice(endless, 10_000))) == 10_000
    sized = synthetic_source(seed=0, rows=10)
    assert operator.length_hint(sized) == 40
    next(sized)
    assert operator.length_hint(sized) == 39


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_synthetic_values_are_plausible(seed: int) -> None:
    rows = list(synthetic_rows(seed=seed, start_ts=DEFAULT_SYNTHETIC_START, rows=14 * DAY_ROWS))
    occupied = [r for r in rows if r.occupied]
    vacant = [r for r in rows if not r.occupied]
    # Two weeks of office life: people are in some of the time, not most of it.
    assert 0.1 < len(occupied) / len(rows) < 0.5
    for r in rows:
        assert 19.0 <= r.temperature <= 25.0
        assert 20.0 <= r.humidity <= 35.0
        assert 0.0 <= r.light <= 700.0
        assert 400.0 <= r.co2 <= 1300.0
    assert all(400.0 <= r.light <= 700.0 for r in occupied)
    night = [r for r in vacant if (r.ts % 86_400) / 3600 < 6 or (r.ts % 86_400) / 3600 > 19]
    assert night
    assert all(r.light <= 30.0 for r in night)
    assert max(r.light for r in vacant) < 300.0

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    # Occupied: CO2 up, warmer; vacant nights: CO2 near outdoor air.
    assert mean([r.co2 for r in occupied]) > mean([r.co2 for r in vacant]) + 200
    assert mean([r.temperature for r in occupied]) > mean([r.temperature for r in vacant])
    assert max(r.co2 for r in occupied) >= 700.0
    late_night = [r for r in vacant if 3 <= (r.ts % 86_400) / 3600 < 5]
    assert 400.0 <= mean([r.co2 for r in late_night]) <= 470.0


def test_synthetic_area_is_configurable() -> None:
    assert {r.area for r in synthetic_source(seed=0, rows=3, area="kitchen")} == {"kitchen"}


def test_default_source_synthetic_when_asked() -> None:
    first = next(default_source("synthetic", seed=5))
    assert first == next(synthetic_source(seed=5))


def _no_data(split: str, data_dir: Path | None) -> Path:
    raise DatasetMissing("not here")


def test_default_source_falls_back_without_data(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(household_stream, "occupancy_path", _no_data)
    with caplog.at_level(logging.INFO, logger="cli.household_stream"):
        src = default_source("auto", seed=2, rows=5, data_dir=DATA_DIR)
    assert list(src) == list(synthetic_source(seed=2, rows=5))
    assert "synthetic" in caplog.text
    with pytest.raises(DatasetMissing):
        default_source("replay", data_dir=DATA_DIR)


def test_default_source_logs_no_values(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="cli.household_stream"):
        readings = list(default_source("auto", rows=3, data_dir=DATA_DIR))
    for r in readings[:8]:
        assert repr(r.value) not in caplog.text


# --- replay source ---------------------------------------------------------------------

needs_data = pytest.mark.skipif(DATA_DIR is None, reason=MISSING)


@needs_data
def test_replay_four_readings_per_row() -> None:
    from models.datasets import load_occupancy  # noqa: PLC0415

    data = load_occupancy("test", DATA_DIR)
    readings = list(replay_source("test", data_dir=DATA_DIR))
    assert len(readings) == 4 * len(data)
    for i in (0, len(data) // 2, len(data) - 1):
        row = readings[4 * i : 4 * i + 4]
        assert [r.sensor_kind for r in row] == list(SENSOR_KINDS)
        assert all(r.ts == float(data.ts[i]) and r.area == "office" for r in row)
        assert [r.value for r in row] == [
            float(data.temperature[i]),
            float(data.humidity[i]),
            float(data.light[i]),
            float(data.co2[i]),
        ]
    stamps = [r.ts for r in readings]
    assert stamps == sorted(stamps)


@needs_data
def test_replay_is_sized_and_default_picks_it() -> None:
    src = replay_source("test", area="lab", data_dir=DATA_DIR)
    assert operator.length_hint(src) > 0
    assert next(src).area == "lab"
    assert next(default_source("auto", data_dir=DATA_DIR)) == next(
        replay_source("test", data_dir=DATA_DIR)
    )
