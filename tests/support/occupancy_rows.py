"""Synthetic, clearly separable occupancy rows (features in the manifest's order) for
tests that need labelled examples without ../shared/data: lights on and CO2 up when
occupied."""

from __future__ import annotations

import math

import numpy as np


def synthetic_occupancy(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    occupied = rng.random(n) < 0.4
    hour = rng.uniform(0, 24, n)
    x = np.stack(
        [
            rng.normal(21.37, 0.8, n),
            rng.normal(27.13, 2.0, n),
            np.where(occupied, rng.normal(481.7, 40.0, n), rng.uniform(0.3, 15.0, n)),
            np.where(occupied, rng.normal(923.9, 90.0, n), rng.normal(455.1, 20.0, n)),
            np.sin(2 * math.pi * hour / 24),
            np.cos(2 * math.pi * hour / 24),
        ],
        axis=1,
    ).astype(np.float32)
    return x, ["occupied" if o else "vacant" for o in occupied]
