"""The fleet accountant: cumulative epsilon of the global model, and where it stops."""

from __future__ import annotations

import pytest

from fleet.accountant import FleetAccountant, rounds_epsilon


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    one, three = rounds_epsilon(1.0, 1, 1e-5), rounds_epsilon(1.0, 3, 1e-5)
    assert 0 < one < three < 3 * one  # composition, tighter than adding up
    assert rounds_epsilon(2.0, 3, 1e-5) < three
    assert rounds_epsilon(1.0, 0, 1e-5) == 0.0


def test_it_stops_before_the_round_that_would_exceed_the_budget() -> None:
    acc = FleetAccountant(noise_multiplier=1.0, epsilon_budget=10.0, delta=1e-5)
    released = []
    while acc.allows_next():
        released.append(acc.record_round())
    assert len(released) == 3  # 4.73, 7.08, 9.01; a 4th would be 10.73
    assert released[-1] <= 10.0 < rounds_epsilon(1.0, 4, 1e-5)
    with pytest.raises(RuntimeError):
        acc.record_round()
    assert acc.rounds == 3


def test_a_budget_below_one_round_allows_none() -> None:
    acc = FleetAccountant(noise_multiplier=1.0, epsilon_budget=1.0, delta=1e-5)
    assert not acc.allows_next()


@pytest.mark.parametrize(
    ("sigma", "budget", "delta"),
    [(0.0, 1.0, 1e-5), (float("nan"), 1.0, 1e-5), (1.0, -1.0, 1e-5), (1.0, 1.0, 1.0)],
)
def test_nonsense_is_refused(sigma: float, budget: float, delta: float) -> None:
    with pytest.raises(ValueError):
        FleetAccountant(sigma, budget, delta)
