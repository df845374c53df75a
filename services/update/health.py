"""The health gate: is a candidate in shadow or A/B doing worse than the active model?

Pure functions over the rolling statistics the inference service keeps per model and
version (see ``GetModelStatus``). Every call the candidate was given counts: what it
answered, and what failed (exceptions, inputs its graph refuses, NaN or infinite
outputs). A candidate inference could not load fails at once. Otherwise a verdict
needs ``min_compared`` judged rows (in shadow: compared with active, plus failed; in
A/B: served live since A/B started, plus failed); until then it is *undecided*, and
"0 compared" is never healthy. The candidate fails when any of these holds (each
threshold is configurable):

* its error rate (failed / (answered + failed)) exceeds the active model's by more
  than ``max_error_rate_increase``;
* it is slower than ``max_p99_ratio`` x the active model: in A/B its p99 latency against
  the active's; in shadow the median ratio of its time to the active version's on the
  very same batches (shadow batches are coalesced, unlike live calls, and a median
  shrugs off one scheduling stall); ignored while the candidate's p99 stays under
  ``latency_floor_seconds``, where ratios of microseconds mean nothing. A p99 is
  judged only over ``min_latency_calls`` session.run calls of each version (a batch is
  one call): over fewer it is their maximum, and one scheduling stall would decide it;
  until then the verdict stays undecided (a failing check still fails at once);
* in shadow, it agrees with the active model on fewer than ``min_agreement`` of the
  compared inputs (a local candidate is meant to differ a little, not wildly);
* its output distribution differs from the active model's (label shares of a
  classifier, quantile bins of a regressor) by a PSI above ``max_output_psi``, on at
  least ``min_compared`` answered rows — what catches a label-inverted model in A/B,
  where no row is compared and homeowners' labels are few;
* for a classifier, its confidence distribution (the largest class probability per
  row, ten quantile bins of the active's) differs from the active model's by a PSI
  above ``max_confidence_psi``, on at least ``min_compared`` rows — a model that keeps
  every label but not its calibration (0.51 where the active said 0.95). Off by default
  (0: reported in the verdict, not judged): a DP-trained fleet release with the active
  model's accuracy differed by PSI 4.6 (KS 0.5) in confidence, so the bins of a
  near-saturated active distribution are too brittle to fail on by default;
* where feedback labels exist (``min_feedback`` of them at least), its accuracy against
  them is more than ``max_feedback_accuracy_drop`` below the active model's.

The verdict's text says what it rests on, with counts (``Verdict.summary``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoleHealth:
    """Rolling statistics of one model version serving one role."""

    version: str
    predictions: int
    errors: int
    p99_seconds: float
    # Candidate only: share of compared inputs where it agreed with active.
    agreement: float = 1.0
    compared: int = 0
    # Against homeowners' feedback labels, when the task has them.
    feedback_accuracy: float | None = None
    feedback_count: int = 0
    # Whether inference has this version loaded; ``generation``: the registry generation
    # inference applied when it answered (a candidate not loaded at the registry's
    # generation failed to load).
    loaded: bool = True
    generation: int = 0
    # Rows answered NaN or infinity (also in ``errors``).
    non_finite: int = 0
    # Candidate in shadow: median of its run time over the active's on the same batches.
    paired_latency_ratio: float = 0.0
    # Candidate: output distribution against the active version's.
    output_psi: float = 0.0
    output_ks: float = 0.0
    output_samples: int = 0
    # Candidate classifier: its confidence distribution against the active version's
    # (samples 0: not a classifier).
    confidence_psi: float = 0.0
    confidence_ks: float = 0.0
    confidence_samples: int = 0
    # session.run calls its p99 rests on.
    latency_calls: int = 0

    @property
    def error_rate(self) -> float:
        total = self.predictions + self.errors
        return self.errors / total if total else 0.0


@dataclass(frozen=True)
class HealthPolicy:
    min_compared: int = 200
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 3.0
    latency_floor_seconds: float = 0.005
    min_latency_calls: int = 50
    min_agreement: float = 0.6
    max_output_psi: float = 0.25
    # 0: the confidence shift is reported in the verdict, not judged (see the config).
    max_confidence_psi: float = 0.0
    min_feedback: int = 20
    max_feedback_accuracy_drop: float = 0.05


@dataclass(frozen=True)
class Verdict:
    # True: healthy, False: roll back, None: not enough data yet.
    healthy: bool | None
    reasons: tuple[str, ...]

    def summary(self) -> str:
        if self.healthy is None:
            return "undecided: " + "; ".join(self.reasons)
        return ("healthy: " if self.healthy else "unhealthy: ") + "; ".join(self.reasons)


def judged_rows(candidate: RoleHealth, stage: str) -> int:
    """Rows a verdict rests on: compared (shadow) or served live (A/B), plus failed."""
    answered = candidate.compared if stage == "shadow" else candidate.predictions
    return answered + candidate.errors


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _errors(active: RoleHealth, candidate: RoleHealth, policy: HealthPolicy) -> tuple[bool, str]:
    text = (
        f"errors {candidate.error_rate:.2%} ({candidate.errors:,} of"
        f" {candidate.predictions + candidate.errors:,} rows"
        + (f", {candidate.non_finite:,} non-finite" if candidate.non_finite else "")
        + f") vs active {active.error_rate:.2%} (allowed +{policy.max_error_rate_increase:.2%})"
    )
    return candidate.error_rate > active.error_rate + policy.max_error_rate_increase, text


def _latency(
    active: RoleHealth, candidate: RoleHealth, stage: str, policy: HealthPolicy
) -> tuple[bool | None, str]:
    """(failed, text); failed is None while a p99 would rest on too few calls."""
    allowed = f"(allowed x{policy.max_p99_ratio:g})"
    slow_enough = candidate.p99_seconds > policy.latency_floor_seconds
    if stage == "shadow" and candidate.paired_latency_ratio > 0:
        ratio = candidate.paired_latency_ratio
        text = (
            f"{ratio:.1f}x the active's time on the same batches (median; candidate p99"
            f" {_ms(candidate.p99_seconds)}) {allowed}"
        )
        return slow_enough and ratio > policy.max_p99_ratio, text
    if min(candidate.latency_calls, active.latency_calls) < policy.min_latency_calls:
        return None, (
            f"p99 latency: {candidate.latency_calls:,} candidate and"
            f" {active.latency_calls:,} active calls, too few to judge"
            f" (needs {policy.min_latency_calls})"
        )
    text = f"p99 latency {_ms(candidate.p99_seconds)} vs active {_ms(active.p99_seconds)} {allowed}"
    return slow_enough and candidate.p99_seconds > policy.max_p99_ratio * active.p99_seconds, text


def _outputs(candidate: RoleHealth, policy: HealthPolicy) -> tuple[bool, str]:
    if candidate.output_samples < policy.min_compared:
        return False, f"output distribution: {candidate.output_samples:,} rows, too few to compare"
    text = (
        f"output distribution PSI {candidate.output_psi:.2f}, KS {candidate.output_ks:.2f}"
        f" over {candidate.output_samples:,} rows (max PSI {policy.max_output_psi:g})"
    )
    return candidate.output_psi > policy.max_output_psi, text


def _confidence(candidate: RoleHealth, policy: HealthPolicy) -> tuple[bool, str] | None:
    """A classifier's confidence distribution (calibration); None for a regressor."""
    if not candidate.confidence_samples:
        return None
    if candidate.confidence_samples < policy.min_compared:
        return False, f"confidence: {candidate.confidence_samples:,} rows, too few to compare"
    text = (
        f"confidence PSI {candidate.confidence_psi:.2f}, KS {candidate.confidence_ks:.2f}"
        f" over {candidate.confidence_samples:,} rows"
    )
    if policy.max_confidence_psi <= 0:
        return False, f"{text} (reported, not judged)"
    text += f" (max PSI {policy.max_confidence_psi:g})"
    return candidate.confidence_psi > policy.max_confidence_psi, text


def _feedback(active: RoleHealth, candidate: RoleHealth, policy: HealthPolicy) -> tuple[bool, str]:
    if (
        candidate.feedback_accuracy is None
        or active.feedback_accuracy is None
        or min(candidate.feedback_count, active.feedback_count) < policy.min_feedback
    ):
        return False, f"feedback: {candidate.feedback_count:,} labels (needs {policy.min_feedback})"
    text = (
        f"feedback accuracy {candidate.feedback_accuracy:.1%} vs active"
        f" {active.feedback_accuracy:.1%} on {candidate.feedback_count:,} labels"
    )
    drop = (
        candidate.feedback_accuracy < active.feedback_accuracy - policy.max_feedback_accuracy_drop
    )
    return drop, text


def judge(active: RoleHealth, candidate: RoleHealth, stage: str, policy: HealthPolicy) -> Verdict:
    """The health verdict of ``candidate`` against ``active`` in ``stage`` (shadow/ab)."""
    if not candidate.loaded:
        return Verdict(False, (f"candidate {candidate.version} failed to load in inference",))
    seen = judged_rows(candidate, stage)
    if seen < policy.min_compared:
        what = "compared in shadow" if stage == "shadow" else "served live in A/B"
        return Verdict(None, (f"{seen:,} of {policy.min_compared:,} rows {what} so far",))
    checks: list[tuple[bool | None, str]]
    if stage == "shadow":
        checks = [
            (
                candidate.agreement < policy.min_agreement,
                f"agrees with active on {candidate.agreement:.1%} of {candidate.compared:,}"
                f" inputs compared in shadow (minimum {policy.min_agreement:.0%})",
            )
        ]
    else:
        checks = [(False, f"{candidate.predictions:,} rows served live in A/B")]
    checks += [
        _errors(active, candidate, policy),
        _latency(active, candidate, stage, policy),
        _outputs(candidate, policy),
        _feedback(active, candidate, policy),
    ]
    confidence = _confidence(candidate, policy)
    if confidence is not None:
        checks.insert(-1, confidence)
    problems = tuple(text for failed, text in checks if failed)
    if problems:
        return Verdict(False, problems)
    unjudged = tuple(text for failed, text in checks if failed is None)
    if unjudged:
        return Verdict(None, unjudged)
    return Verdict(True, tuple(text for _, text in checks))


@dataclass(frozen=True)
class RolloutSchedule:
    """How a healthy candidate moves on without an operator: after ``shadow_seconds`` of
    healthy shadow it serves ``ab_share`` of entities; after ``ab_seconds`` of healthy A/B
    it becomes active. Each step needs a *healthy* verdict (enough data, no threshold
    crossed) at that moment; ``enabled = False`` leaves every step to people."""

    enabled: bool = True
    shadow_seconds: float = 3600.0
    ab_share: float = 0.25
    ab_seconds: float = 4 * 3600.0
