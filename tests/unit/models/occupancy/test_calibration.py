"""Platt scaling and the per-split figures the rule comparison reports."""

from __future__ import annotations

import numpy as np
import pytest

from models.occupancy.calibration import (
    expected_calibration_error,
    fit_platt,
    span_days,
    split_figures,
)


def test_platt_recovers_the_scaling_of_a_known_calibrated_model() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, 20_000)
    y = (rng.uniform(size=z.shape) < 1.0 / (1.0 + np.exp(-(0.5 * z - 1.0)))).astype(np.int64)
    platt = fit_platt(z, y)
    assert platt.a == pytest.approx(0.5, abs=0.03)
    assert platt.b == pytest.approx(-1.0, abs=0.06)
    # Calibrated probabilities of an over-confident margin: far lower error than raw.
    raw = 1.0 / (1.0 + np.exp(-z))
    assert expected_calibration_error(platt.probability(z), y) < 0.02
    assert expected_calibration_error(raw, y) > 0.1


def test_platt_stays_finite_on_perfectly_separated_rows() -> None:
    platt = fit_platt(np.array([-2.0, -1.0, 1.0, 2.0]), np.array([0, 0, 1, 1]))
    assert np.isfinite([platt.a, platt.b]).all()
    assert platt.probability([-2.0, 2.0]).tolist() == pytest.approx([0.0, 1.0], abs=0.01)


def test_platt_refuses_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="one label per margin"):
        fit_platt(np.zeros(3), np.zeros(2))


def test_split_figures_count_false_alarms_per_day() -> None:
    ts = np.arange(2880, dtype=np.float64) * 60.0  # two days of one-minute rows
    y = np.zeros(2880, dtype=np.int64)
    pred = y.copy()
    pred[:10] = 1
    y[-4:] = 1
    f = split_figures(pred, y, ts)
    assert span_days(ts) == pytest.approx(2.0)
    assert (f["false_occupied"], f["false_vacant"]) == (10.0, 4.0)
    assert f["false_alarms_per_day"] == pytest.approx(5.0)
    assert f["accuracy"] == pytest.approx(1 - 14 / 2880)
