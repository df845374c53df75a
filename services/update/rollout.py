"""The rollout state machine: a candidate's way from staged through shadow and A/B to
active, or back out.

The states are the registry's stages (``SlotState.stage``)::

    none --stage--> staged --start--> shadow <--start--> ab --promote--> none (candidate active)
                      |                 |                 |
                      +----------------rollback-----------+--> none (candidate withdrawn)
    none --rollback--> none (previous active again), when there is a previous version

The allowed transitions are the pure ``*_step`` functions of
:mod:`services.update.transitions`: each either refuses
(``FailedPrecondition``, with the reason an operator sees) or returns the :class:`Step`
to take. :class:`Rollout` takes steps one at a time per model: it records each step in
the audit log first (``services.update.trail``), then applies it to the registry (which
re-checks the slot rules under its cross-process lock); a recorded step that then fails
gets a compensating ``update.failed`` entry. A promotion is recorded right after the
flip instead (the log never holds one that did not happen) and undone if the audit log
does not take it. Nothing stays applied that the audit log did not acknowledge.

The health gate (:meth:`Rollout.check_health`, run every ``health_check_seconds`` by
:func:`run_health_gate`) judges every candidate in shadow or A/B against the active
model (``services.update.health``), with the homeowners' labels where personalization
scores them; :func:`gate_action` turns the verdict into the automatic step: roll back
an unhealthy candidate, move a healthy one on when the :class:`RolloutSchedule` says
it is due (shadow -> A/B -> active), otherwise wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import Counter, Gauge

from roost.common.v1 import common_pb2
from roost.update.v1 import update_service_pb2 as pb
from services.kit.errors import NotFound, RoostError, echo
from services.modelstore.reader import SlotState, VersionInfo
from services.modelstore.reader import Stage as StageName
from services.modelstore.registry import Registry
from services.update.health import HealthPolicy, RoleHealth, RolloutSchedule, Verdict, judge
from services.update.trail import Trail
from services.update.transitions import (
    RUNNING,
    Step,
    ab_entry_check,
    gate_action,
    owner_promote_check,
    promote_step,
    refuse_stage,
    rollback_step,
    stage_step,
    start_step,
)

logger = logging.getLogger(__name__)

STEPS = Counter(
    "roost_update_rollout_steps_total", "Rollout steps taken.", ["model", "step", "actor"]
)
STAGE = Gauge(
    "roost_update_rollout_stage",
    "Rollout stage per model: 0 none, 1 staged, 2 shadow, 3 A/B.",
    ["model"],
)
AUTO_ROLLBACKS = Counter(
    "roost_update_auto_rollbacks_total", "Candidates rolled back by the health gate.", ["model"]
)

#: The compensating entry of a recorded step that did not take effect.
FAILED_ACTION = "update.failed"
_STAGE_NUMBERS = {"none": 0, "staged": 1, "shadow": 2, "ab": 3}


class ModelStatusSource(Protocol):
    """Where rolling health and drift come from (the inference service)."""

    async def health(self, name: str) -> tuple[RoleHealth | None, RoleHealth | None]: ...

    async def drift(self, name: str) -> list[pb.FeatureDrift]: ...


class FeedbackSource(Protocol):
    """Accuracy of versions against homeowners' labels (the personalization service):
    ``version -> (accuracy, labels scored)``; versions it could not score are missing."""

    async def accuracy(
        self, name: str, versions: Sequence[str], since: datetime | None
    ) -> Mapping[str, tuple[float, int]]: ...


# --------------------------------------------------------------------------- taking steps


class Rollout:
    """Takes rollout steps on the registry, each audited first, one at a time per model;
    runs the health gate."""

    def __init__(
        self,
        registry: Registry,
        trail: Trail,
        *,
        status: ModelStatusSource | None,
        health_policy: HealthPolicy,
        feedback: FeedbackSource | None = None,
        schedule: RolloutSchedule | None = None,
    ) -> None:
        self._registry = registry
        self._trail = trail
        self.status = status
        self.policy = health_policy
        self.feedback = feedback
        self.schedule = schedule or RolloutSchedule()
        # One lifecycle change at a time per model (the registry locks across processes).
        self._locks: dict[str, asyncio.Lock] = {}

    async def state(self, name: str) -> SlotState:
        """The slots of ``name``; NotFound when the registry does not know the model."""
        state = await asyncio.to_thread(self._registry.state, name)
        if state.active is None and state.candidate is None:
            raise NotFound(f"model_name: {echo(name)} is not in the registry")
        return state

    async def stage(
        self,
        name: str,
        install: Callable[[], Awaitable[VersionInfo]],
        *,
        version: str | None = None,
        note: str = "",
    ) -> tuple[VersionInfo, SlotState]:
        """Installs a version (``install``, under the model's lock) and stages it as the
        candidate; staging the current candidate again changes nothing. With
        ``version``, a version that could not be staged is refused before ``install``
        writes anything. ``note`` is added to the audited reason."""
        async with self._lock(name):
            if version is not None:
                refuse_stage(name, await self.state(name), version)
            info = await install()
            state = await self.state(name)
            step = stage_step(name, state, info)
            if step is None:
                return info, state
            step = replace(step, reason=step.reason + note)
            state = await self._recorded(
                ref(info), step, lambda: self._registry.stage(name, info.version), automatic=False
            )
        self._stepped(name, step, state, automatic=False)
        return info, state

    async def start(
        self, name: str, stage: StageName, share: float, *, automatic: bool, reason: str = ""
    ) -> SlotState:
        """Moves the candidate into shadow or A/B (``share`` of entities)."""
        async with self._lock(name):
            current = await self.state(name)
            step = start_step(name, current, stage, share, reason)
            if stage == "ab":
                ab_entry_check(name, current, await self.verdict(name, current))
            state = await self._recorded(
                await self._ref(name, step.version),
                step,
                lambda: self._registry.start_rollout(name, stage, share),
                automatic=automatic,
            )
        self._stepped(name, step, state, automatic=automatic)
        return state

    async def promote(
        self, name: str, *, automatic: bool, reason: str, force: bool = False
    ) -> SlotState:
        """Makes the candidate active (the active version becomes previous). Recorded
        after the flip, so the log never holds a promotion that did not happen; if the
        audit log does not take it, the flip is undone and the error raised.

        An owner's promotion (not ``automatic``) reads the gate's verdict under the
        model's lock and is refused while it is failing unless ``force``
        (:func:`owner_promote_check`); the audit reason says what the verdict was."""
        async with self._lock(name):
            before = await self.state(name)
            step = promote_step(name, before, reason)
            if not automatic:
                step = replace(
                    step, reason=f"{step.reason}; {await self._gate(name, before, force)}"
                )
            model = await self._ref(name, step.version)
            state = await asyncio.to_thread(self._registry.promote, name)
            try:
                await self._record(model, step, automatic=automatic)
            except BaseException:
                await asyncio.to_thread(self._registry.restore, name, before)
                logger.error("promotion of %s %s undone: not recorded", name, step.version)
                raise
        self._stepped(name, step, state, automatic=automatic)
        return state

    async def _gate(self, name: str, state: SlotState, force: bool) -> str:
        """:func:`owner_promote_check` on the verdict now; with ``force`` a verdict that
        cannot be read (inference unreachable) does not stop the promotion."""
        try:
            verdict = await self.verdict(name, state)
        except RoostError:
            if not force:
                raise
            return "FORCED without a health-gate verdict (inference did not answer)"
        return owner_promote_check(name, state, verdict, force=force)

    async def rollback(self, name: str, *, automatic: bool, reason: str) -> SlotState:
        """Withdraws the candidate, or restores the previous version."""
        async with self._lock(name):
            step = rollback_step(name, await self.state(name), reason)
            state = await self._recorded(
                await self._ref(name, step.version),
                step,
                lambda: self._registry.rollback(name),
                automatic=automatic,
            )
        self._stepped(name, step, state, automatic=automatic)
        return state

    # ------------------------------------------------------------------ the health gate

    async def health(self, name: str, state: SlotState) -> tuple[RoleHealth, RoleHealth] | None:
        """Active and candidate health of a rollout in shadow or A/B, with their feedback
        accuracy where it is scored; None before inference serves the rollout."""
        if self.status is None or state.stage not in RUNNING:
            return None
        active, candidate = await self.status.health(name)
        if active is None or candidate is None:
            return None
        return await self._with_feedback(name, state, active, candidate)

    async def verdict(self, name: str, state: SlotState) -> Verdict | None:
        """The gate's verdict on the candidate now; None while inference has not applied
        this rollout (or there is no inference or no rollout)."""
        if self.status is None or state.stage not in RUNNING:
            return None
        active, candidate = await self.status.health(name)
        if active is None or candidate is None or not _applied(state, candidate):
            return None
        active, candidate = await self._with_feedback(name, state, active, candidate)
        return judge(active, candidate, state.stage, self.policy)

    def judge(self, state: SlotState, active: RoleHealth, candidate: RoleHealth) -> Verdict | None:
        """:func:`judge` for the registry's ``state``; None when inference has not applied
        it yet."""
        if not _applied(state, candidate):
            return None
        return judge(active, candidate, state.stage, self.policy)

    async def check_health(self) -> list[tuple[str, Verdict]]:
        """One pass of the health gate over every candidate in shadow or A/B: rolls back
        those that fail, moves on those that are due. Returns the verdicts."""
        verdicts: list[tuple[str, Verdict]] = []
        if self.status is None:
            return verdicts
        for name in await asyncio.to_thread(self._registry.models):
            state = await asyncio.to_thread(self._registry.state, name)
            verdict = await self.verdict(name, state)
            if verdict is None:
                continue  # no rollout, or inference has not loaded it yet
            verdicts.append((name, verdict))
            await self._act(name, state, verdict)
        return verdicts

    async def _act(self, name: str, state: SlotState, verdict: Verdict) -> None:
        action = gate_action(state, verdict, self.schedule, datetime.now(UTC))
        if action is None:
            return
        if action.step == "rollback":
            AUTO_ROLLBACKS.labels(name).inc()
            logger.warning("health gate: rolling back %s %s", name, state.candidate)
            await self.rollback(name, automatic=True, reason=action.reason)
        elif action.step == "ab":
            await self.start(name, "ab", action.share, automatic=True, reason=action.reason)
        else:
            await self.promote(name, automatic=True, reason=action.reason)

    async def _with_feedback(
        self, name: str, state: SlotState, active: RoleHealth, candidate: RoleHealth
    ) -> tuple[RoleHealth, RoleHealth]:
        """``active`` and ``candidate`` with their accuracy on the homeowners' labels
        observed since the stage started, when the personalization service scores them."""
        if self.feedback is None:
            return active, candidate
        since = datetime.fromisoformat(state.stage_started_at) if state.stage_started_at else None
        scores = await self.feedback.accuracy(name, [active.version, candidate.version], since)

        def scored(h: RoleHealth) -> RoleHealth:
            accuracy, count = scores.get(h.version, (0.0, 0))
            if count <= 0:
                return h
            return replace(h, feedback_accuracy=accuracy, feedback_count=count)

        return scored(active), scored(candidate)

    # ------------------------------------------------------------------ internals

    async def _record(self, model: common_pb2.ModelRef, step: Step, *, automatic: bool) -> None:
        await self._trail.record(model, step.action, step.summary, step.reason, automatic=automatic)

    async def _recorded(
        self,
        model: common_pb2.ModelRef,
        step: Step,
        apply: Callable[[], SlotState],
        *,
        automatic: bool,
    ) -> SlotState:
        """Records ``step``, then applies it; if applying fails, a compensating
        ``update.failed`` entry says the recorded step did not take effect."""
        await self._record(model, step, automatic=automatic)
        try:
            return await asyncio.to_thread(apply)
        except Exception as e:
            failed = Step(
                FAILED_ACTION,
                step.version,
                f"{step.action} of {step.version} did not take effect",
                f"{type(e).__name__}: {str(e)[:200]}",
            )
            try:
                await self._record(model, failed, automatic=automatic)
            except Exception:
                logger.exception("could not record that %s of %s failed", step.action, model.name)
            raise

    async def _ref(self, name: str, version: str) -> common_pb2.ModelRef:
        return ref(await asyncio.to_thread(self._registry.info, name, version))

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _stepped(self, name: str, step: Step, state: SlotState, *, automatic: bool) -> None:
        STEPS.labels(name, step.name, "automatic" if automatic else "operator").inc()
        STAGE.labels(name).set(_STAGE_NUMBERS[state.stage])


def _applied(state: SlotState, candidate: RoleHealth) -> bool:
    """Whether inference reports the registry's candidate at (or after) the generation
    that started its stage: a candidate not loaded then has failed to load. Until then
    its statistics are those of the stage before (shadow rows read as A/B would be
    judged by the wrong rules), so there is no verdict."""
    return candidate.version == state.candidate and candidate.generation >= state.generation


def ref(info: VersionInfo) -> common_pb2.ModelRef:
    """The audit log's and the API's reference to an installed version."""
    return common_pb2.ModelRef(name=info.name, version=info.version, sha256=info.sha256)


async def run_health_gate(
    check: Callable[[], Awaitable[list[tuple[str, Verdict]]]], interval_seconds: float
) -> None:
    """Runs the health gate every ``interval_seconds`` until cancelled."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            for name, verdict in await check():
                logger.debug("health gate %s: %s", name, verdict.summary())
        except Exception:
            logger.exception("health gate pass failed; retrying")
