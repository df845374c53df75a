"""The cheap canary audit of ``make test`` (the full one is ``python -m bench.privacy_audit``):
the service's day-level recipe at the default budget keeps membership inference on canary
days far below the AUC bound of its (ε, δ), while the same recipe without privacy finds
them, so the audit can fail. One torch thread and fixed seeds: deterministic."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("opacus")

from bench.privacy_audit import DEFAULT_EPSILON, Audit, auc_bound, run_audit, summarize

SEEDS = (0, 1)


def test_the_auc_bound_of_pure_dp_is_e_eps_over_1_plus_e_eps() -> None:
    assert auc_bound(0.0, 0.0) == pytest.approx(0.5, abs=1e-6)
    for eps in (0.5, 1.0, 4.0):
        assert auc_bound(eps, 0.0) == pytest.approx(math.exp(eps) / (1 + math.exp(eps)), abs=1e-4)
    assert auc_bound(1.0, 1e-3) > auc_bound(1.0, 0.0)


def test_canary_days_stay_hidden_at_the_default_budget_and_are_found_without_it() -> None:
    private = Audit(epsilon=DEFAULT_EPSILON, unit="day")
    control = Audit(epsilon=None, unit="day")
    dp = summarize(private, [run_audit(private, seed) for seed in SEEDS])
    plain = summarize(control, [run_audit(control, seed) for seed in SEEDS])
    assert dp["canaries"] == plain["canaries"] == 2 * private.canaries
    assert dp["runs"][0]["delta"] == 1e-3
    # The non-private recipe memorises canary days: the attack works.
    assert plain["auc_pooled"] >= 0.75
    # At ε = 4 per household-day the attack is well below what (ε, δ) allows ...
    assert dp["auc_pooled"] <= dp["auc_bound"] - 0.2
    # ... and below the non-private run's.
    assert dp["auc_pooled"] < plain["auc_pooled"] - 0.1
