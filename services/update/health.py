"""The health gate: is a candidate in shadow or A/B doing worse than the active model?

Pure functions over the rolling statistics the inference service keeps per model and
role (see ``GetModelStatus``). A verdict needs at least ``min_compared`` candidate
predictions; until then it is *undecided* (never a rollback on too little data). The
candidate fails when any of these holds (each threshold is configurable):

* its error rate exceeds the active model's by more than ``max_error_rate_increase``;
* its p99 latency exceeds ``max_p99_ratio`` x the active model's (ignored while both
  stay under ``latency_floor_seconds``, where ratios of microseconds mean nothing);
* in shadow, it agrees with the active model on fewer than ``min_agreement`` of the
  compared inputs (a local candidate is meant to differ a little, not wildly);
* where feedback labels exist (``min_feedback`` of them at least), its accuracy against
  them is more than ``max_feedback_accuracy_drop`` below the active model's.
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

    @property
    def error_rate(self) -> float:
        return self.errors / self.predictions if self.predictions else 0.0


@dataclass(frozen=True)
class HealthPolicy:
    min_compared: int = 200
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 3.0
    latency_floor_seconds: float = 0.005
    min_agreement: float = 0.6
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


def judge(active: RoleHealth, candidate: RoleHealth, stage: str, policy: HealthPolicy) -> Verdict:
    """The health verdict of ``candidate`` against ``active`` in ``stage`` (shadow/ab)."""
    seen = candidate.compared if stage == "shadow" else candidate.predictions
    if seen < policy.min_compared:
        return Verdict(None, (f"{seen} of {policy.min_compared} candidate predictions so far",))
    problems: list[str] = []
    if candidate.error_rate > active.error_rate + policy.max_error_rate_increase:
        problems.append(
            f"error rate {candidate.error_rate:.2%} vs active {active.error_rate:.2%}"
            f" (allowed +{policy.max_error_rate_increase:.2%})"
        )
    slow = max(candidate.p99_seconds, active.p99_seconds) > policy.latency_floor_seconds
    if slow and candidate.p99_seconds > policy.max_p99_ratio * active.p99_seconds:
        problems.append(
            f"p99 latency {candidate.p99_seconds * 1e3:.2f} ms vs active"
            f" {active.p99_seconds * 1e3:.2f} ms (allowed x{policy.max_p99_ratio:g})"
        )
    if stage == "shadow" and candidate.agreement < policy.min_agreement:
        problems.append(
            f"agrees with active on {candidate.agreement:.1%} of {candidate.compared} inputs"
            f" (minimum {policy.min_agreement:.0%})"
        )
    if (
        candidate.feedback_accuracy is not None
        and active.feedback_accuracy is not None
        and min(candidate.feedback_count, active.feedback_count) >= policy.min_feedback
        and candidate.feedback_accuracy
        < active.feedback_accuracy - policy.max_feedback_accuracy_drop
    ):
        problems.append(
            f"feedback accuracy {candidate.feedback_accuracy:.1%} vs active"
            f" {active.feedback_accuracy:.1%}"
        )
    if problems:
        return Verdict(False, tuple(problems))
    return Verdict(True, (f"{seen} predictions compared",))


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
