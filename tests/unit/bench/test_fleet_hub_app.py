"""The fleet bench's light hub sends what a real hub sends: the delta clipped to C plus
its share of the noise, the same arithmetic as the personalization service's."""

from __future__ import annotations

import numpy as np
import pytest

from bench.fleet_hub_app import clipped_noised
from services.personalization.federated import RoundParams, clip_to_norm, noised_delta


@pytest.mark.parametrize(
    ("scale", "clip", "sigma", "t"), [(0.5, 1.0, 1.0, 25), (0.01, 1.0, 0.5, 2)]
)
def test_it_matches_the_personalization_service(
    scale: float, clip: float, sigma: float, t: int
) -> None:
    delta = np.random.default_rng(1).normal(0, scale, 66)
    ours = clipped_noised(delta, clip, sigma, t, np.random.default_rng(7))
    theirs = noised_delta(delta, RoundParams("r-1", clip, sigma, t), np.random.default_rng(7))
    assert np.array_equal(ours, theirs)


def test_the_clipped_part_is_bounded_and_the_noise_is_the_hub_share() -> None:
    rng = np.random.default_rng(3)
    big = rng.normal(0, 100, 66)
    assert np.linalg.norm(clip_to_norm(big, 1.0).astype(np.float64)) <= 1.0
    assert np.linalg.norm(clipped_noised(big, 1.0, 1e-9, 1, rng).astype(np.float64)) <= 1.0 + 1e-6
    draws = np.stack([clipped_noised(np.zeros(66), 1.0, 1.0, 25, rng) for _ in range(400)])
    assert abs(draws.std() - 1.0 / 5) < 0.01  # sigma C / sqrt(t)
