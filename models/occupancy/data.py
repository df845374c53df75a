"""Occupancy features from the UCI data, through the serving code path (torch-free).

Training and the artifact tests build their inputs here by feeding each one-minute
row's readings, in time order, to a :class:`models.features.FeatureWindow`: the class
the hub's windows feed reading by reading. A spec with history features (``occupancy/v2``)
therefore sees exactly the history the hub would.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.datasets import OccupancyData
from models.features import OCCUPANCY_V1, FeatureSpec, FeatureWindow


def readings(data: OccupancyData, i: int) -> tuple[tuple[str, float], ...]:
    """Row ``i`` as (sensor kind, value) readings, in the order training feeds them."""
    return (
        ("temperature", float(data.temperature[i])),
        ("humidity", float(data.humidity[i])),
        ("illuminance", float(data.light[i])),
        ("carbon_dioxide", float(data.co2[i])),
    )


def build_features(
    data: OccupancyData, spec: FeatureSpec = OCCUPANCY_V1
) -> npt.NDArray[np.float32]:
    """One ``spec`` row per data row, through the serving ``FeatureWindow`` code path."""
    if np.any(np.diff(data.ts) < 0):
        raise ValueError("occupancy rows are not in time order")
    window = FeatureWindow(spec)
    rows: list[npt.NDArray[np.float32]] = []
    for i in range(len(data)):
        ts = float(data.ts[i])
        for kind, value in readings(data, i):
            window.update(kind, value, ts)
        if not window.ready(ts):  # cannot happen: every sensor kind is present
            raise ValueError(f"row {i}: incomplete features")
        rows.append(window.tensor(ts))
    x = np.asarray(rows, dtype=np.float32)
    if x.shape[1:] != spec.input_shape:
        raise ValueError(f"feature shape {x.shape[1:]} != spec {spec.input_shape}")
    return x
