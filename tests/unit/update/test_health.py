"""The health gate's verdicts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.update.health import HealthPolicy, RoleHealth, judge

POLICY = HealthPolicy(min_compared=100)
ACTIVE = RoleHealth("1.0.0", predictions=1000, errors=2, p99_seconds=0.002, latency_calls=1000)


def candidate(**kw: object) -> RoleHealth:
    base: dict[str, object] = {
        "version": "1.1.0",
        "predictions": 500,
        "errors": 1,
        "p99_seconds": 0.002,
        "agreement": 0.95,
        "compared": 500,
        "latency_calls": 500,
    }
    base.update(kw)
    return RoleHealth(**base)  # type: ignore[arg-type]


def test_too_little_data_is_undecided() -> None:
    v = judge(ACTIVE, candidate(compared=98, errors=1, predictions=98), "shadow", POLICY)
    assert v.healthy is None
    assert v.summary() == "undecided: 99 of 100 rows compared in shadow so far"


def test_zero_compared_is_never_healthy() -> None:
    nothing = candidate(compared=0, errors=0, predictions=0, agreement=1.0)
    assert judge(ACTIVE, nothing, "shadow", POLICY).healthy is None
    assert judge(ACTIVE, nothing, "ab", POLICY).healthy is None


def test_a_p99_over_a_handful_of_calls_is_not_judged() -> None:
    """A/B after a few 200-row calls: the candidate's rows are plenty, its p99 is the
    maximum of 3 calls, one of them stalled 30 ms by the scheduler (a loaded CI machine
    rolled back a healthy candidate on that). Undecided until it has enough calls."""
    stalled = candidate(compared=0, predictions=300, p99_seconds=0.030, latency_calls=3)
    v = judge(ACTIVE, stalled, "ab", POLICY)
    assert v.healthy is None
    assert "p99 latency: 3 candidate and 1,000 active calls, too few to judge (needs 50)" in (
        v.summary()
    )
    slow = replace(stalled, latency_calls=50)
    assert judge(ACTIVE, slow, "ab", POLICY).healthy is False
    # A failing check still fails at once, however few the calls.
    broken = replace(stalled, errors=300)
    assert judge(ACTIVE, broken, "ab", POLICY).healthy is False


def test_failed_calls_count_against_the_candidate() -> None:
    """A candidate whose every shadow run fails (e.g. its graph wants 7 inputs where the
    manifest says 6) compares nothing: the failures alone decide, it is not undecided."""
    broken = candidate(compared=0, predictions=0, errors=15_952, agreement=1.0)
    v = judge(ACTIVE, broken, "shadow", POLICY)
    assert v.healthy is False
    assert "errors 100.00% (15,952 of 15,952 rows)" in v.summary()


def test_non_finite_outputs_are_errors_and_said_so() -> None:
    nan = candidate(compared=400, predictions=400, errors=100, non_finite=100)
    v = judge(ACTIVE, nan, "shadow", POLICY)
    assert v.healthy is False
    assert "errors 20.00% (100 of 500 rows, 100 non-finite)" in v.summary()


def test_a_candidate_that_failed_to_load_fails_at_once() -> None:
    v = judge(ACTIVE, candidate(loaded=False, compared=0, predictions=0, errors=0), "ab", POLICY)
    assert v.healthy is False
    assert v.summary() == "unhealthy: candidate 1.1.0 failed to load in inference"


def test_ab_judges_only_rows_served_live() -> None:
    """Compared shadow rows do not count in A/B: only what the candidate served."""
    shadowed = candidate(compared=5000, predictions=0, errors=0)
    v = judge(ACTIVE, shadowed, "ab", POLICY)
    assert v.healthy is None
    assert v.summary() == "undecided: 0 of 100 rows served live in A/B so far"


def test_shadow_latency_is_judged_against_the_active_on_the_same_batches() -> None:
    # Coalesced shadow batches are bigger than live calls: 8 ms for the candidate is
    # fine when it takes 1.3x the active's time on the same batches (a stall or two
    # in its p99 included), whatever the active takes live.
    fair = candidate(p99_seconds=0.008, paired_latency_ratio=1.3)
    assert judge(ACTIVE, fair, "shadow", POLICY).healthy is True
    slow = candidate(p99_seconds=0.008, paired_latency_ratio=25.0)
    v = judge(ACTIVE, slow, "shadow", POLICY)
    assert v.healthy is False
    assert "25.0x the active's time on the same batches (median; candidate p99 8.00 ms)" in (
        v.summary()
    )


def test_a_shifted_output_distribution_fails_without_any_label() -> None:
    inverted = candidate(predictions=500, output_psi=7.5, output_ks=0.9, output_samples=500)
    v = judge(ACTIVE, inverted, "ab", POLICY)
    assert v.healthy is False
    assert "output distribution PSI 7.50, KS 0.90 over 500 rows (max PSI 0.25)" in v.summary()
    few = candidate(predictions=500, output_psi=7.5, output_samples=50)
    assert judge(ACTIVE, few, "ab", POLICY).healthy is True  # too few rows to compare


def test_a_collapsed_confidence_fails_although_every_label_is_kept() -> None:
    """A classifier with the active model's label shares (output PSI 0) but its
    confidence collapsed: the calibration check fails it, naming the figures."""
    collapsed = candidate(
        predictions=500,
        output_psi=0.0,
        output_samples=500,
        confidence_psi=8.3,
        confidence_ks=0.9,
        confidence_samples=500,
    )
    # By default the shift is reported, not judged.
    v = judge(ACTIVE, collapsed, "ab", POLICY)
    assert v.healthy is True
    assert "confidence PSI 8.30, KS 0.90 over 500 rows (reported, not judged)" in v.summary()
    judging = replace(POLICY, max_confidence_psi=0.25)
    v = judge(ACTIVE, collapsed, "ab", judging)
    assert v.healthy is False
    assert v.reasons == ("confidence PSI 8.30, KS 0.90 over 500 rows (max PSI 0.25)",)
    calibrated = candidate(
        predictions=500, output_samples=500, confidence_psi=0.05, confidence_samples=500
    )
    v = judge(ACTIVE, calibrated, "ab", judging)
    assert v.healthy is True
    assert "; confidence PSI 0.05, KS 0.00 over 500 rows (max PSI 0.25); feedback" in v.summary()
    few = candidate(predictions=500, confidence_psi=8.3, confidence_samples=50)
    assert judge(ACTIVE, few, "ab", judging).healthy is True  # too few rows to compare
    # A regressor (no confidence samples) is not judged on it, nor says it was.
    assert "confidence" not in judge(ACTIVE, candidate(predictions=500), "ab", POLICY).summary()


def test_the_healthy_verdict_says_what_it_rests_on() -> None:
    good = candidate(predictions=4884, compared=4884, errors=0, output_samples=4884)
    text = judge(ACTIVE, good, "shadow", POLICY).summary()
    assert text.startswith("healthy: agrees with active on 95.0% of 4,884 inputs compared")
    for part in ("; errors 0.00% (0 of 4,884 rows)", "; p99 latency", "over 4,884 rows"):
        assert part in text
    assert "; feedback: 0 labels (needs 20)" in text


@pytest.mark.parametrize(
    ("kw", "stage", "reason"),
    [
        ({"errors": 30}, "ab", "errors 5.66% (30 of 530 rows) vs active 0.20%"),
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
        latency_calls=1000,
    )
    v = judge(active, candidate(**kw), stage, POLICY)
    assert v.healthy is False
    assert reason in v.summary()


def test_a_good_candidate_passes_and_tiny_latencies_are_ignored() -> None:
    good = judge(ACTIVE, candidate(), "shadow", POLICY)
    assert good.healthy is True
    assert good.summary().startswith("healthy: ")  # the audited reason reads as a sentence
    fast_active = RoleHealth(
        "1.0.0", predictions=1000, errors=0, p99_seconds=0.0002, latency_calls=1000
    )
    assert judge(fast_active, candidate(p99_seconds=0.001, errors=0), "ab", POLICY).healthy
    # Disagreement does not matter in A/B (it serves different entities).
    assert judge(ACTIVE, candidate(agreement=0.1), "ab", POLICY).healthy is True
