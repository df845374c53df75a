"""The ledger's values: mechanisms and budget policies are validated when made (errors
name the field, with INVALID_ARGUMENT), and budget periods are fixed UTC windows counted
from the Unix epoch, whatever the time zone of the instant asked about."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest

from services.kit.errors import InvalidArgument
from services.personalization.ledger_records import BudgetPolicy, Mechanism


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "laplace", "noise_multiplier": 1.0}, "mechanism.kind"),
        ({"kind": "dp_sgd", "noise_multiplier": 0.0}, "mechanism.noise_multiplier"),
        ({"kind": "dp_sgd", "noise_multiplier": -1.0}, "mechanism.noise_multiplier"),
        ({"kind": "dp_sgd", "noise_multiplier": float("nan")}, "mechanism.noise_multiplier"),
        ({"kind": "dp_sgd", "noise_multiplier": "1.0"}, "mechanism.noise_multiplier"),
        ({"kind": "dp_sgd", "noise_multiplier": 1.0, "sample_rate": 0.0}, "mechanism.sample_rate"),
        ({"kind": "dp_sgd", "noise_multiplier": 1.0, "sample_rate": 1.5}, "mechanism.sample_rate"),
        ({"kind": "dp_sgd", "noise_multiplier": 1.0, "steps": 0}, "mechanism.steps"),
        ({"kind": "dp_sgd", "noise_multiplier": 1.0, "steps": 2.0}, "mechanism.steps"),
        ({"kind": "dp_sgd", "noise_multiplier": 1.0, "steps": True}, "mechanism.steps"),
        ({"kind": "dp_sgd", "noise_multiplier": 1.0, "steps": 10**9}, "mechanism.steps"),
        ({"kind": "gaussian", "noise_multiplier": 1.0, "steps": 2}, "mechanism.sample_rate/steps"),
    ],
)
def test_invalid_mechanisms(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field.replace(".", r"\.")) as exc:
        Mechanism(**kwargs)
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"epsilon": 0.0, "delta": 1e-5}, "policy.epsilon"),
        ({"epsilon": 1.0, "delta": 0.0}, "policy.delta"),
        ({"epsilon": 1.0, "delta": 1.0}, "policy.delta"),
        ({"epsilon": 1.0, "delta": 1e-5, "period_days": 0}, "policy.period_days"),
        ({"epsilon": 1.0, "delta": 1e-5, "accountant": "gdp"}, "policy.accountant"),
    ],
)
def test_invalid_policies(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field.replace(".", r"\.")):
        BudgetPolicy(**kwargs)


def test_the_window_is_period_days_long() -> None:
    assert BudgetPolicy(epsilon=1.0, delta=1e-5, period_days=7).window == timedelta(days=7)


def test_gaussian_is_one_unsampled_release() -> None:
    assert Mechanism.gaussian(noise_multiplier=6) == Mechanism("gaussian", 6.0, 1.0, 1)
    assert isinstance(Mechanism.gaussian(noise_multiplier=6).noise_multiplier, float)
