"""Occupancy features from the UCI data, through the serving code path (torch-free).

Training and the artifact tests build their inputs here, with the same
``models.features.snapshot`` the hub's feature windows use.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.datasets import OccupancyData
from models.features import OCCUPANCY_V1, snapshot


def build_features(data: OccupancyData) -> npt.NDArray[np.float32]:
    """One OCCUPANCY_V1 row per data row, through the serving ``snapshot`` code path."""
    rows: list[list[float]] = []
    for i in range(len(data)):
        latest = {
            "temperature": float(data.temperature[i]),
            "humidity": float(data.humidity[i]),
            "illuminance": float(data.light[i]),
            "carbon_dioxide": float(data.co2[i]),
        }
        row = snapshot(OCCUPANCY_V1, latest, float(data.ts[i]))
        if row is None:  # cannot happen: every sensor kind is present
            raise ValueError(f"row {i}: incomplete features")
        rows.append(row)
    x = np.asarray(rows, dtype=np.float32)
    if x.shape[1:] != OCCUPANCY_V1.input_shape:
        raise ValueError(f"feature shape {x.shape[1:]} != spec {OCCUPANCY_V1.input_shape}")
    return x
