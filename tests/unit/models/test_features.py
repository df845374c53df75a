"""History features of FeatureWindow: computed from the readings as they arrive, so
the hub (reading by reading, any cadence) and training (one row a minute) agree."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.features import (
    OCCUPANCY_V1,
    FeatureSpec,
    FeatureWindow,
    HistoryFeature,
    SensorFeature,
    history_value,
)

CO2 = SensorFeature("co2", "carbon_dioxide", "ppm")
SLOPE = HistoryFeature("co2_slope", "carbon_dioxide", "slope", 600.0, "ppm/min")
STEADY = HistoryFeature("co2_steady", "carbon_dioxide", "steady", 1800.0, "min", delta=5.0)
LOW = HistoryFeature("co2_min", "carbon_dioxide", "min", 600.0, "ppm")
HIGH = HistoryFeature("co2_max", "carbon_dioxide", "max", 600.0, "ppm")
SPEC = FeatureSpec("test/h", (CO2,), time_of_day=False, history=(SLOPE, STEADY, LOW, HIGH))


def _feed(window: FeatureWindow, readings: list[tuple[float, float]]) -> np.ndarray:
    for ts, v in readings:
        window.update("carbon_dioxide", v, ts)
    return window.tensor(readings[-1][0])


def test_slope_uses_the_last_reading_at_least_the_horizon_old() -> None:
    # 400 ppm at t=0, 430 at t=300, 460 at t=600, 520 at t=900: 10 minutes back from
    # t=900 is t=300 (the t=0 reading is older than needed).
    row = _feed(FeatureWindow(SPEC), [(0, 400), (300, 430), (600, 460), (900, 520)])
    assert row[1] == pytest.approx((520 - 430) / 10.0)


def test_slope_with_less_history_uses_the_oldest_reading_and_is_zero_within_a_minute() -> None:
    w = FeatureWindow(SPEC)
    assert _feed(w, [(0, 400)])[1] == 0.0
    assert _feed(w, [(30, 500)])[1] == 0.0
    assert _feed(w, [(120, 420)])[1] == pytest.approx(10.0)


def test_steady_counts_minutes_since_a_reading_left_the_band_and_is_capped() -> None:
    w = FeatureWindow(SPEC)
    readings = [(0.0, 400.0), (60.0, 480.0)] + [(60.0 * i, 482.0) for i in range(2, 12)]
    row = _feed(w, readings)
    assert row[2] == pytest.approx(11.0)  # 400 at t=0 was the last reading out of 480 +- 5
    for i in range(12, 100):  # the value holds for far longer than the 30-minute cap
        w.update("carbon_dioxide", 482.0, 60.0 * i)
    assert w.tensor(60.0 * 99)[2] == pytest.approx(30.0)


def test_min_and_max_cover_only_the_horizon() -> None:
    row = _feed(FeatureWindow(SPEC), [(0, 1000), (300, 500), (600, 700), (900, 600)])
    assert (row[3], row[4]) == (500.0, 700.0)  # 1000 at t=0 is 15 minutes old


def test_an_out_of_order_reading_does_not_enter_the_history() -> None:
    w = FeatureWindow(SPEC)
    before = _feed(w, [(0, 400), (300, 430), (600, 460)])
    w.update("carbon_dioxide", 9999.0, 100.0)
    assert np.array_equal(w.tensor(600.0), before)


def test_history_of_a_kind_the_spec_does_not_read_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown sensor kinds"):
        FeatureSpec("bad", (CO2,), history=(HistoryFeature("t", "temperature", "max", 60, ""),))
    with pytest.raises(ValueError, match="window 1"):
        FeatureSpec("bad", (CO2,), window=3, history=(SLOPE,))


def test_a_snapshot_spec_is_unchanged_by_history_support() -> None:
    assert OCCUPANCY_V1.history == ()
    assert OCCUPANCY_V1.feature_names[-2:] == ["hour_sin", "hour_cos"]
    assert OCCUPANCY_V1.input_shape == (6,)


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(1.0, 400.0), min_size=1, max_size=60),
    values=st.lists(st.floats(300.0, 3000.0), min_size=60, max_size=60),
)
def test_window_history_equals_the_features_of_all_readings(
    gaps: list[float], values: list[float]
) -> None:
    """Pruning old readings never changes a feature: the window equals
    ``history_value`` over every reading seen, at any reading cadence."""
    ts = np.cumsum([0.0, *gaps])
    readings = [(float(t), v) for t, v in zip(ts, values, strict=False)]
    w = FeatureWindow(SPEC)
    for i, (t, v) in enumerate(readings):
        w.update("carbon_dioxide", v, t)
        expected = [v] + [history_value(h, readings[: i + 1]) for h in SPEC.history]
        assert w.tensor(t) == pytest.approx(np.asarray(expected, dtype=np.float32))
