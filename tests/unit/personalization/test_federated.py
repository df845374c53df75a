"""The fleet delta: clipped to C whatever the input, noised with the hub's share, and
charged to the household's ledger before anything is computed (refused when over budget).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from services.kit.errors import FailedPrecondition, InvalidArgument
from services.personalization.federated import (
    JOB_PREFIX,
    RoundParams,
    clip_to_norm,
    encode,
    noised_delta,
    reserve_round,
)
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_records import BudgetPolicy

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[PrivacyLedger]:
    policy = BudgetPolicy(epsilon=4.0, delta=1e-5, accountant="rdp")
    with PrivacyLedger.open(tmp_path / "ledger.db", policy) as led:
        yield led


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e30])
def test_clipping_bounds_any_delta(scale: float) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        d = rng.standard_normal(1314) * scale
        out = clip_to_norm(d, 0.5)
        assert np.linalg.norm(out.astype(np.float64)) <= 0.5
        # Small deltas pass unchanged (up to float32).
        if np.linalg.norm(d) <= 0.5:
            np.testing.assert_allclose(out, d.astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_delta_is_refused(bad: float) -> None:
    d = np.zeros(10)
    d[3] = bad
    with pytest.raises(InvalidArgument):
        clip_to_norm(d, 1.0)


def test_the_shares_of_t_hubs_sum_to_sigma_c_noise() -> None:
    params = RoundParams("r1", clip_norm=2.0, noise_multiplier=0.8, min_participants=4)
    rng = np.random.default_rng(7)
    zero = np.zeros(20_000)
    total = sum(noised_delta(zero, params, rng).astype(np.float64) for _ in range(4))
    # Sum of 4 shares: std sigma * C = 1.6 (within sampling error of 20k draws).
    assert abs(float(np.std(total)) - 1.6) < 0.03
    # One share alone carries only sigma * C / sqrt(t).
    assert abs(float(np.std(noised_delta(zero, params, rng))) - 0.8) < 0.02


def test_the_wire_form_is_float32_little_endian() -> None:
    d = np.array([1.5, -2.0], dtype=np.float32)
    assert encode(d) == np.array([1.5, -2.0], dtype="<f4").tobytes()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"round_id": ""},
        {"round_id": "a/b"},
        {"clip_norm": 0.0},
        {"clip_norm": float("nan")},
        {"noise_multiplier": -1.0},
        {"noise_multiplier": float("inf")},
        {"min_participants": 0},
    ],
)
def test_bad_round_parameters_are_refused(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "round_id": "r1",
        "clip_norm": 1.0,
        "noise_multiplier": 1.0,
        "min_participants": 2,
    }
    with pytest.raises(InvalidArgument):
        RoundParams(**{**base, **kwargs})  # type: ignore[arg-type]


def test_each_round_is_charged_once_and_an_over_budget_round_is_refused(
    ledger: PrivacyLedger,
) -> None:
    params = [RoundParams(f"r{i}", 1.0, 2.0, 4) for i in range(20)]
    charged = []
    refused_at = None
    for i, p in enumerate(params):
        try:
            charged.append(reserve_round(ledger, "household", p, privacy_unit="day", now=NOW))
        except FailedPrecondition:
            refused_at = i
            break
    assert refused_at is not None, "a budget of 4 must run out"
    assert refused_at >= 1
    entries = ledger.history("household")
    assert [e.job_id for e in entries] == [JOB_PREFIX + f"r{i}" for i in range(refused_at)]
    assert all(e.mechanism.kind == "gaussian" for e in entries)
    # A retried round returns its reservation: never charged twice.
    again = reserve_round(ledger, "household", params[0], privacy_unit="day", now=NOW)
    assert again.id == charged[0].id
    assert len(ledger.history("household")) == refused_at
    assert charged[-1].epsilon_after <= 4.0
