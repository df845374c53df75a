"""Comfort samples (``models.comfort.data``): parity with the hub's own FeatureWindow
and the chronological split.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.comfort.data import (
    FEED_ORDER,
    ROOMS,
    AppliancesData,
    Samples,
    build_samples,
    split_bounds,
)
from models.comfort.spec import COMFORT_V1, HORIZON_STEPS
from models.features import FeatureWindow, time_of_day_features


def _feed(data: AppliancesData, room: str, start: int, stop: int) -> FeatureWindow:
    """A fresh hub FeatureWindow fed one room's raw readings, rows start..stop-1."""
    window = FeatureWindow(COMFORT_V1)
    series = data.room_series(room)
    for i in range(start, stop):
        ts = float(data.ts[i])
        for kind in FEED_ORDER:
            window.update(kind, float(series[kind][i]), ts)
    return window


@pytest.mark.parametrize("room", ["T2", "T5", "T9"])
def test_feature_window_parity(data: AppliancesData, test_set: Samples, room: str) -> None:
    """The evaluation tensors are exactly what the serving FeatureWindow returns."""
    r = list(ROOMS).index(room)
    index = np.flatnonzero(test_set.room == r)
    series = data.room_series(room)
    for k in (index[0], index[len(index) // 2], index[-1]):
        ts = float(test_set.ts[k])
        row = int(np.searchsorted(data.ts, ts))
        window = _feed(data, room, row - 40, row + 1)
        assert window.ready(ts)
        np.testing.assert_array_equal(window.tensor(ts), test_set.x[k])
        # The documented layout: snapshot j has the room temperature of row j and the
        # other sensors' readings of row j-1 (the step is taken at the first reading).
        expected = [
            [
                series["temperature"][j],
                series["humidity"][j - 1],
                series["outdoor_temperature"][j - 1],
                series["outdoor_humidity"][j - 1],
                *time_of_day_features(float(data.ts[j])),
            ]
            for j in range(row - COMFORT_V1.window + 1, row + 1)
        ]
        np.testing.assert_array_equal(test_set.x[k], np.asarray(expected, dtype=np.float32))
        targets = [series["temperature"][row + h] for h in HORIZON_STEPS]
        np.testing.assert_array_equal(test_set.y[k], np.asarray(targets, dtype=np.float32))


def test_warm_start_matches_full_feed(data: AppliancesData) -> None:
    """build_samples(since=...) gives the inputs of a feed from the first row."""
    n = 400
    head = replace(data, ts=data.ts[:n], columns={k: v[:n] for k, v in data.columns.items()})
    since = float(head.ts[150])
    full = build_samples(head)
    part = build_samples(head, since=since)
    keep = full.ts >= since
    assert len(part) == int(keep.sum()) > 0
    np.testing.assert_array_equal(part.x, full.x[keep])
    np.testing.assert_array_equal(part.y, full.y[keep])
    np.testing.assert_array_equal(part.room, full.room[keep])


def test_split_is_chronological(data: AppliancesData, test_set: Samples) -> None:
    bounds = split_bounds(data)
    assert bounds["train"][1] == bounds["val"][0] < bounds["val"][1] == bounds["test"][0]
    assert test_set.ts.min() >= bounds["test"][0]
    assert np.all(test_set.ts + max(HORIZON_STEPS) * COMFORT_V1.step_seconds < bounds["test"][1])
    assert set(np.unique(test_set.room)) == set(range(len(ROOMS)))
