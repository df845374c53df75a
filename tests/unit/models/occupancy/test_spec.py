"""``occupancy/v2``: the hub builds the features training builds, from the readings
as they arrive (the spec is picked by a manifest's ``feature_spec``)."""

from __future__ import annotations

from datetime import UTC

import numpy as np
import pytest

from hub.windows import AreaWindow
from models.datasets import load_occupancy
from models.features import OCCUPANCY_V1, spec_by_id
from models.occupancy.data import build_features, readings
from models.occupancy.spec import OCCUPANCY_V2
from tests.support.shared_data import DATA_DIR, MISSING

ROWS = 1200  # the first evening, night and working morning


def test_v2_is_v1_followed_by_history_features() -> None:
    assert spec_by_id("occupancy/v2") is OCCUPANCY_V2
    assert OCCUPANCY_V2.feature_names[:6] == OCCUPANCY_V1.feature_names
    assert OCCUPANCY_V2.feature_names[6:] == ["co2_slope", "light_steady", "light_min", "light_max"]
    assert len(OCCUPANCY_V2.units) == len(OCCUPANCY_V2.feature_names)


def test_the_hub_window_reproduces_the_training_rows() -> None:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    data = load_occupancy("train", DATA_DIR)
    trained = build_features(data, OCCUPANCY_V2)[:ROWS]
    window = AreaWindow(spec_by_id(OCCUPANCY_V2.spec_id), UTC)
    served = []
    for i in range(ROWS):
        ts = float(data.ts[i])
        # The hub gets each kind as its own message, in any order within the minute.
        for kind, value in reversed(readings(data, i)):
            window.update("office", kind, value, ts)
        served.append(window.tensor(ts))
    assert np.array_equal(np.asarray(served, dtype=np.float32), trained)
    # The history features move: CO2 rises and falls, the light goes on and off.
    assert trained[:, 6].min() < -1.0 < 1.0 < trained[:, 6].max()
    assert (trained[:, 8] < trained[:, 9]).any()


def test_v1_rows_through_the_window_are_the_snapshot_rows() -> None:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    data = load_occupancy("test", DATA_DIR)
    x = build_features(data)
    assert x.shape == (len(data), 6)
    assert np.array_equal(x[:, 2], data.light.astype(np.float32))
    assert np.array_equal(x[:, 3], data.co2.astype(np.float32))
