"""The health gate's verdicts."""

from __future__ import annotations

import pytest

from services.update.health import HealthPolicy, RoleHealth, judge

POLICY = HealthPolicy(min_compared=100)
ACTIVE = RoleHealth("1.0.0", predictions=1000, errors=2, p99_seconds=0.002)


def candidate(**kw: object) -> RoleHealth:
    base: dict[str, object] = {
        "version": "1.1.0",
        "predictions": 500,
        "errors": 1,
        "p99_seconds": 0.002,
        "agreement": 0.95,
        "compared": 500,
    }
    base.update(kw)
    return RoleHealth(**base)  # type: ignore[arg-type]


def test_too_little_data_is_undecided() -> None:
    v = judge(ACTIVE, candidate(compared=99, errors=99, predictions=99), "shadow", POLICY)
    assert v.healthy is None
    assert "99 of 100" in v.summary()


@pytest.mark.parametrize(
    ("kw", "stage", "reason"),
    [
        ({"errors": 30}, "ab", "error rate 6.00%"),
        ({"p99_seconds": 0.05}, "ab", "p99 latency 50.00 ms"),
        ({"agreement": 0.3}, "shadow", "agrees with active on 30.0%"),
        (
            {"feedback_accuracy": 0.70, "feedback_count": 50},
            "ab",
            "feedback accuracy 70.0%",
        ),
    ],
)
def test_each_threshold_fails_the_candidate(kw: dict[str, object], stage: str, reason: str) -> None:
    active = RoleHealth(
        "1.0.0",
        predictions=1000,
        errors=2,
        p99_seconds=0.002,
        feedback_accuracy=0.9,
        feedback_count=50,
    )
    v = judge(active, candidate(**kw), stage, POLICY)
    assert v.healthy is False
    assert reason in v.summary()


def test_a_good_candidate_passes_and_tiny_latencies_are_ignored() -> None:
    good = judge(ACTIVE, candidate(), "shadow", POLICY)
    assert good.healthy is True
    assert good.summary().startswith("healthy: ")  # the audited reason reads as a sentence
    fast_active = RoleHealth("1.0.0", predictions=1000, errors=0, p99_seconds=0.0002)
    assert judge(fast_active, candidate(p99_seconds=0.001, errors=0), "ab", POLICY).healthy
    # Disagreement does not matter in A/B (it serves different entities).
    assert judge(ACTIVE, candidate(agreement=0.1), "ab", POLICY).healthy is True
