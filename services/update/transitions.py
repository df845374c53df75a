"""The rollout's allowed transitions, as pure functions of a model's slots.

Each either refuses (``FailedPrecondition``, with the reason an operator sees) or
returns the :class:`Step` to take; :class:`services.update.rollout.Rollout` takes the
steps (audited first). :func:`gate_action` is the health gate's automatic step for a
verdict: roll back an unhealthy candidate, move a healthy one on when the schedule
says it is due, otherwise wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from services.kit.errors import FailedPrecondition
from services.modelstore.bundle import parse_version
from services.modelstore.reader import SlotState, VersionInfo
from services.modelstore.reader import Stage as StageName
from services.update.health import RolloutSchedule, Verdict

#: The stages in which a candidate serves (shadow: compared only; ab: answers for some).
RUNNING: tuple[StageName, ...] = ("shadow", "ab")


@dataclass(frozen=True)
class Step:
    """One allowed change of a model's slots, as the audit log records it."""

    action: str  # update.stage | update.shadow | update.ab | update.promote | update.rollback
    version: str  # the version the step concerns
    summary: str
    reason: str

    @property
    def name(self) -> str:
        """The step without its ``update.`` prefix (the metrics label)."""
        return self.action.removeprefix("update.")


def refuse_stage(name: str, state: SlotState, version: str) -> None:
    """Raises FailedPrecondition when ``version`` cannot become the candidate now."""
    if state.candidate == version:
        return
    if state.active is not None and parse_version(version) <= parse_version(state.active):
        raise FailedPrecondition(
            f"model {name}: {version} is not newer than active {state.active}"
            " (rollback protection; use Rollback to go back)"
        )
    if state.candidate is not None and state.stage in RUNNING:
        raise FailedPrecondition(
            f"model {name}: candidate {state.candidate} is in {state.stage}; promote or"
            " roll it back before staging another"
        )


def stage_step(name: str, state: SlotState, info: VersionInfo) -> Step | None:
    """Staging ``info`` as the candidate; None when it already is the candidate."""
    version = info.version
    if state.candidate == version:
        return None
    refuse_stage(name, state, version)
    return Step(
        "update.stage",
        version,
        f"{version} staged ({info.source})",
        f"candidate {version} staged beside active {state.active}",
    )


def start_step(
    name: str, state: SlotState, stage: StageName, share: float, reason: str = ""
) -> Step:
    """Moving the candidate into shadow, or A/B serving ``share`` of entities."""
    if state.candidate is None:
        raise FailedPrecondition(f"model {name} has no candidate: stage one first")
    what = "shadow" if stage == "shadow" else f"A/B with {share:.0%} of entities"
    return Step(
        f"update.{stage}",
        state.candidate,
        f"{state.candidate} in {what}",
        reason or f"candidate {state.candidate} moves to {what}; active {state.active}",
    )


def ab_entry_check(name: str, state: SlotState, verdict: Verdict | None) -> None:
    """A/B only after shadow: the candidate must be in shadow (or already in A/B, to
    change its share) with a healthy verdict, i.e. at least the minimum number of inputs
    compared with the active version and nothing crossed."""
    if state.stage == "ab":
        return
    if state.stage != "shadow":
        raise FailedPrecondition(
            f"model {name}: candidate {state.candidate} is {state.stage}; run it in shadow"
            " first (A/B needs a healthy shadow verdict on enough compared inputs)"
        )
    if verdict is None:
        raise FailedPrecondition(
            f"model {name}: candidate {state.candidate} has no shadow verdict yet (inference"
            " has not reported it); A/B needs a healthy one"
        )
    if not verdict.healthy:
        raise FailedPrecondition(
            f"model {name}: A/B needs a healthy shadow verdict; it is {verdict.summary()}"
        )


def promote_step(name: str, state: SlotState, reason: str) -> Step:
    """Making the candidate active; only after it ran in shadow or A/B."""
    if state.candidate is None:
        raise FailedPrecondition(f"model {name} has no candidate to promote")
    if state.stage not in RUNNING:
        raise FailedPrecondition(
            f"model {name}: candidate {state.candidate} is only {state.stage}; run it"
            " in shadow or A/B before promoting it"
        )
    return Step(
        "update.promote",
        state.candidate,
        f"{state.candidate} active (was {state.active})",
        reason,
    )


def owner_promote_check(
    name: str, state: SlotState, verdict: Verdict | None, *, force: bool
) -> str:
    """What an owner's (admin's) promotion records of the health gate: the verdict's
    word (``gate: healthy|undecided|no verdict yet``); FailedPrecondition while the
    verdict is failing, unless ``force`` (recorded as forced)."""
    if verdict is None:
        return "gate: no verdict yet"
    if verdict.healthy is None:
        return "gate: undecided"
    if verdict.healthy:
        return "gate: healthy"
    if not force:
        raise FailedPrecondition(
            f"model {name}: the health gate's verdict on candidate {state.candidate} is"
            f" failing ({verdict.summary()}), so the gate will roll it back; promote it"
            " anyway only with force (admin: roost models promote --force)"
        )
    return "FORCED over the health gate's failing verdict"


def rollback_step(name: str, state: SlotState, reason: str) -> Step:
    """Withdrawing the candidate; without one, restoring the previous version."""
    if state.candidate is not None:
        target, summary = state.candidate, f"candidate {state.candidate} withdrawn"
    elif state.previous is not None:
        target = state.active or state.previous
        summary = f"{state.previous} active again (was {state.active})"
    else:
        raise FailedPrecondition(f"model {name} has nothing to roll back to")
    return Step("update.rollback", target, summary, reason)


@dataclass(frozen=True)
class GateAction:
    """What the health gate does about a candidate: roll it back, or move it on."""

    step: Literal["rollback", "ab", "promote"]
    reason: str
    share: float = 0.0


def gate_action(
    state: SlotState, verdict: Verdict, schedule: RolloutSchedule, now: datetime
) -> GateAction | None:
    """The automatic step for a candidate in shadow or A/B with ``verdict`` at ``now``:
    an unhealthy one is rolled back; a healthy one moves on once it has been healthy in
    its stage for as long as ``schedule`` asks; an undecided one waits."""
    if verdict.healthy is False:
        return GateAction("rollback", "health gate: " + "; ".join(verdict.reasons))
    if not verdict.healthy or not schedule.enabled or not state.stage_started_at:
        return None
    started = datetime.fromisoformat(state.stage_started_at)
    elapsed = (now - started).total_seconds()
    reason = f"healthy for {elapsed / 60:.0f} min ({verdict.summary()})"
    if state.stage == "shadow" and elapsed >= schedule.shadow_seconds:
        return GateAction("ab", reason, schedule.ab_share)
    if state.stage == "ab" and elapsed >= schedule.ab_seconds:
        return GateAction("promote", reason)
    return None
