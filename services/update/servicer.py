"""gRPC servicer of the update service: the registry's lifecycle, audited step by step.

Every slot change is first recorded in the audit log (``services.update.trail``), then
applied to the registry (an atomic ``state.json`` write); inference notices the new
generation within its poll interval and swaps sessions without failing a request.
A background task (:func:`run_health_gate`) compares candidates in shadow or A/B with
the active model and rolls back automatically when the gate fails; where homeowners'
labels exist, it also compares their accuracy on the labels observed since the stage
started (scored by the personalization service; optional).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from roost.common.v1 import common_pb2
from roost.update.v1 import update_service_pb2 as pb
from roost.update.v1 import update_service_pb2_grpc as pb_grpc
from services.kit.auth import Policy, Role
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.kit.interceptors import peer_role
from services.modelstore import local_key
from services.modelstore.bundle import parse_version, unpack_bundle
from services.modelstore.registry import Registry, SlotState, VersionInfo
from services.modelstore.registry import Stage as StageName
from services.update.health import HealthPolicy, RoleHealth, RolloutSchedule, Verdict, judge
from services.update.trail import Trail
from services.update.tuf_client import ModelUpdater

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

_SVC = "/roost.update.v1.UpdateService/"
_OPERATORS = frozenset({Role.ADMIN, Role.HUB})
_READERS = frozenset({Role.ADMIN, Role.HUB, Role.AUDITOR, Role.PERSONALIZATION})
POLICY: Policy = {
    _SVC + "ListVersions": _READERS,
    # Personalization stages its local candidates; people stage releases.
    _SVC + "Stage": _OPERATORS | {Role.PERSONALIZATION},
    _SVC + "StartRollout": _OPERATORS,
    _SVC + "Promote": _OPERATORS,
    _SVC + "Rollback": _OPERATORS,
    _SVC + "GetRolloutStatus": _READERS,
    _SVC + "CheckForUpdates": _READERS,
    _SVC + "GetDrift": _READERS,
}
_STAGE_CODES: dict[str, pb.RolloutStage.ValueType] = {
    "staged": pb.ROLLOUT_STAGE_STAGED,
    "shadow": pb.ROLLOUT_STAGE_SHADOW,
    "ab": pb.ROLLOUT_STAGE_AB,
}
_STAGE_NUMBERS = {"none": 0, "staged": 1, "shadow": 2, "ab": 3}
_SOURCES = {"tuf": pb.SOURCE_TUF, "local": pb.SOURCE_LOCAL, "shipped": pb.SOURCE_TUF}
MAX_PAGE = 100


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


class UpdateServicer(pb_grpc.UpdateServiceServicer):
    def __init__(
        self,
        registry: Registry,
        trail: Trail,
        *,
        updater: ModelUpdater | None,
        status: ModelStatusSource | None,
        local_public_key: Any,
        max_bundle_bytes: int,
        health_policy: HealthPolicy,
        feedback: FeedbackSource | None = None,
        schedule: RolloutSchedule | None = None,
    ) -> None:
        self._registry = registry
        self._trail = trail
        self._updater = updater
        self._status = status
        self._local_public = local_public_key
        self._max_bundle_bytes = max_bundle_bytes
        self._policy = health_policy
        self._feedback = feedback
        self._schedule = schedule or RolloutSchedule()
        # One lifecycle change at a time per model (the registry locks across processes).
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ reads

    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: Any
    ) -> pb.ListVersionsResponse:
        names = [request.model_name] if request.model_name else self._registry.models()
        out: list[pb.ModelVersion] = []
        for name in names:
            state = await asyncio.to_thread(self._registry.state, name)
            versions = await asyncio.to_thread(self._registry.versions, name)
            if request.model_name and not versions:
                raise NotFound(f"model_name: no versions of {name!r} are installed")
            out.extend(_version_pb(v, state) for v in versions)
        start = _page_start(request.page_token)
        size = _page_size(request.page_size)
        page = out[start : start + size]
        token = str(start + size) if start + size < len(out) else ""
        return pb.ListVersionsResponse(versions=page, next_page_token=token)

    async def GetRolloutStatus(
        self, request: pb.GetRolloutStatusRequest, context: Any
    ) -> pb.GetRolloutStatusResponse:
        name = _required_name(request.model_name)
        state = await self._state(name)
        status = await self._rollout_status(name, state)
        return pb.GetRolloutStatusResponse(status=status)

    async def CheckForUpdates(
        self, request: pb.CheckForUpdatesRequest, context: Any
    ) -> pb.CheckForUpdatesResponse:
        updater = self._require_updater()
        await asyncio.to_thread(updater.refresh)
        updates: list[pb.AvailableUpdate] = []
        for family in updater.families():
            latest = updater.latest(family)
            if latest is None:
                continue
            active = (await asyncio.to_thread(self._registry.state, family)).active
            if active is not None and parse_version(latest.version) <= parse_version(active):
                continue
            updates.append(
                pb.AvailableUpdate(
                    model=common_pb2.ModelRef(name=family, version=latest.version),
                    length_bytes=latest.length,
                )
            )
        start = _page_start(request.page_token)
        size = _page_size(request.page_size)
        token = str(start + size) if start + size < len(updates) else ""
        return pb.CheckForUpdatesResponse(
            updates=updates[start : start + size], next_page_token=token
        )

    async def GetDrift(self, request: pb.GetDriftRequest, context: Any) -> pb.GetDriftResponse:
        name = _required_name(request.model_name)
        await self._state(name)
        if self._status is None:
            raise FailedPrecondition("drift: the inference service is not connected")
        features = await self._status.drift(name)
        start = _page_start(request.page_token)
        size = _page_size(request.page_size)
        token = str(start + size) if start + size < len(features) else ""
        return pb.GetDriftResponse(features=features[start : start + size], next_page_token=token)

    # ------------------------------------------------------------------ lifecycle

    async def Stage(self, request: pb.StageRequest, context: Any) -> pb.StageResponse:
        name = _required_name(request.model_name)
        role = peer_role(context)
        async with self._lock(name):
            if request.local_bundle:
                info = await self._install_local(name, request, role)
            elif not request.version:
                raise InvalidArgument("version: required (or local_bundle for a local candidate)")
            elif role == Role.PERSONALIZATION:
                raise PermissionDenied("personalization may stage local candidates only")
            else:
                info = await self._install_release(name, request.version)
            state = await self._state(name)
            if state.candidate == info.version:
                return pb.StageResponse(staged=_version_pb(info, state))
            self._registry_check_stage(state, name, info.version)
            await self._trail.record(
                _ref(info),
                "update.stage",
                f"{info.version} staged ({info.source})",
                f"candidate {info.version} staged beside active {state.active}",
            )
            state = await asyncio.to_thread(self._registry.stage, name, info.version)
        self._stepped(name, "stage", state, automatic=False)
        return pb.StageResponse(staged=_version_pb(info, state))

    async def StartRollout(
        self, request: pb.StartRolloutRequest, context: Any
    ) -> pb.StartRolloutResponse:
        name = _required_name(request.model_name)
        stage: StageName
        if request.stage == pb.ROLLOUT_STAGE_SHADOW:
            stage = "shadow"
        elif request.stage == pb.ROLLOUT_STAGE_AB:
            stage = "ab"
            if not 0 < request.candidate_share <= 1:
                raise InvalidArgument(
                    f"candidate_share: {request.candidate_share:g} is not in (0, 1]"
                )
        else:
            raise InvalidArgument("stage: must be ROLLOUT_STAGE_SHADOW or ROLLOUT_STAGE_AB")
        share = float(request.candidate_share) if stage == "ab" else 0.0
        state = await self.start(name, stage, share, automatic=False, reason="")
        return pb.StartRolloutResponse(status=await self._rollout_status(name, state))

    async def Promote(self, request: pb.PromoteRequest, context: Any) -> pb.PromoteResponse:
        name = _required_name(request.model_name)
        state = await self.promote(name, automatic=False, reason="promoted by an operator")
        assert state.active is not None
        info = await asyncio.to_thread(self._registry.info, name, state.active)
        return pb.PromoteResponse(active=_version_pb(info, state))

    async def Rollback(self, request: pb.RollbackRequest, context: Any) -> pb.RollbackResponse:
        name = _required_name(request.model_name)
        reason = request.reason.strip() or "rolled back by an operator"
        state = await self.rollback(name, automatic=False, reason=reason)
        assert state.active is not None
        info = await asyncio.to_thread(self._registry.info, name, state.active)
        return pb.RollbackResponse(active=_version_pb(info, state))

    # ------------------------------------------------------------------ shared steps

    async def start(
        self, name: str, stage: StageName, share: float, *, automatic: bool, reason: str
    ) -> SlotState:
        """Moves the candidate into shadow or A/B (``share`` of entities), audited first."""
        async with self._lock(name):
            state = await self._state(name)
            if state.candidate is None:
                raise FailedPrecondition(f"model {name} has no candidate: stage one first")
            what = "shadow" if stage == "shadow" else f"A/B with {share:.0%} of entities"
            await self._trail.record(
                await self._ref(name, state.candidate),
                f"update.{stage}",
                f"{state.candidate} in {what}",
                reason or f"candidate {state.candidate} moves to {what}; active {state.active}",
                automatic=automatic,
            )
            state = await asyncio.to_thread(self._registry.start_rollout, name, stage, share)
        self._stepped(name, stage, state, automatic=automatic)
        return state

    async def promote(self, name: str, *, automatic: bool, reason: str) -> SlotState:
        async with self._lock(name):
            state = await self._state(name)
            if state.candidate is None:
                raise FailedPrecondition(f"model {name} has no candidate to promote")
            if state.stage not in ("shadow", "ab"):
                raise FailedPrecondition(
                    f"model {name}: candidate {state.candidate} is only {state.stage}; run it"
                    " in shadow or A/B before promoting it"
                )
            await self._trail.record(
                await self._ref(name, state.candidate),
                "update.promote",
                f"{state.candidate} active (was {state.active})",
                reason,
                automatic=automatic,
            )
            state = await asyncio.to_thread(self._registry.promote, name)
        self._stepped(name, "promote", state, automatic=automatic)
        return state

    async def rollback(self, name: str, *, automatic: bool, reason: str) -> SlotState:
        async with self._lock(name):
            state = await self._state(name)
            if state.candidate is not None:
                target, summary = state.candidate, f"candidate {state.candidate} withdrawn"
            elif state.previous is not None:
                target = state.active or state.previous
                summary = f"{state.previous} active again (was {state.active})"
            else:
                raise FailedPrecondition(f"model {name} has nothing to roll back to")
            await self._trail.record(
                await self._ref(name, target),
                "update.rollback",
                summary,
                reason,
                automatic=automatic,
            )
            state = await asyncio.to_thread(self._registry.rollback, name)
        self._stepped(name, "rollback", state, automatic=automatic)
        return state

    async def check_health(self) -> list[tuple[str, Verdict]]:
        """One pass of the health gate over every candidate in shadow or A/B; rolls back
        those that fail. Returns the verdicts (for tests and logs)."""
        verdicts: list[tuple[str, Verdict]] = []
        if self._status is None:
            return verdicts
        for name in await asyncio.to_thread(self._registry.models):
            state = await asyncio.to_thread(self._registry.state, name)
            if state.stage not in ("shadow", "ab") or state.candidate is None:
                continue
            active, candidate = await self._status.health(name)
            if active is None or candidate is None or candidate.version != state.candidate:
                continue  # inference has not loaded this rollout yet
            active, candidate = await self._with_feedback(name, state, active, candidate)
            verdict = judge(active, candidate, state.stage, self._policy)
            verdicts.append((name, verdict))
            if verdict.healthy is False:
                AUTO_ROLLBACKS.labels(name).inc()
                logger.warning("health gate: rolling back %s %s", name, state.candidate)
                await self.rollback(
                    name, automatic=True, reason="health gate: " + "; ".join(verdict.reasons)
                )
            elif verdict.healthy:
                await self._advance_if_due(name, state, verdict)
        return verdicts

    async def _advance_if_due(self, name: str, state: SlotState, verdict: Verdict) -> None:
        """A candidate healthy for long enough moves on by itself: shadow -> A/B ->
        active (``RolloutSchedule``; audited as automatic steps)."""
        schedule = self._schedule
        if not schedule.enabled or not state.stage_started_at:
            return
        started = datetime.fromisoformat(state.stage_started_at)
        elapsed = (datetime.now(UTC) - started).total_seconds()
        reason = f"healthy for {elapsed / 60:.0f} min ({verdict.summary()})"
        if state.stage == "shadow" and elapsed >= schedule.shadow_seconds:
            await self.start(name, "ab", schedule.ab_share, automatic=True, reason=reason)
        elif state.stage == "ab" and elapsed >= schedule.ab_seconds:
            await self.promote(name, automatic=True, reason=reason)

    # ------------------------------------------------------------------ internals

    def _registry_check_stage(self, state: SlotState, name: str, version: str) -> None:
        if state.active is not None and parse_version(version) <= parse_version(state.active):
            raise FailedPrecondition(
                f"model {name}: {version} is not newer than active {state.active}"
                " (rollback protection; use Rollback to go back)"
            )
        if state.candidate is not None and state.stage in ("shadow", "ab"):
            raise FailedPrecondition(
                f"model {name}: candidate {state.candidate} is in {state.stage}; promote or"
                " roll it back before staging another"
            )

    async def _install_release(self, name: str, version: str) -> VersionInfo:
        parse_version(version)
        try:
            return await asyncio.to_thread(self._registry.info, name, version)
        except NotFound:
            pass
        updater = self._require_updater()

        def fetch() -> VersionInfo:
            updater.refresh()
            target = next((t for t in updater.targets(name) if t.version == version), None)
            if target is None:
                raise NotFound(f"model {name} {version} is not in the signed model repository")
            with tempfile.TemporaryDirectory(prefix=".stage-", dir=self._registry.root) as tmp:
                installed = updater.install(target, Path(tmp), installed_version=None)
                return self._registry.add_version(installed, "tuf")

        return await asyncio.to_thread(fetch)

    async def _install_local(
        self, name: str, request: pb.StageRequest, role: Role | None
    ) -> VersionInfo:
        if role not in (Role.PERSONALIZATION, Role.ADMIN):
            raise PermissionDenied("local candidates come from the personalization service")
        if request.version:
            raise InvalidArgument("version: must be empty with local_bundle")
        if len(request.local_bundle) > self._max_bundle_bytes:
            raise InvalidArgument(f"local_bundle: larger than {self._max_bundle_bytes} bytes")
        if self._local_public is None:
            raise FailedPrecondition("no local-candidate key configured on this hub")
        bundle = bytes(request.local_bundle)

        def install() -> VersionInfo:
            with tempfile.TemporaryDirectory(prefix=".local-", dir=self._registry.root) as tmp:
                path = Path(tmp) / "bundle.tar"
                path.write_bytes(bundle)
                manifest = unpack_bundle(path, Path(tmp) / "model", max_bytes=len(bundle) + 1)
                if manifest.name != name:
                    raise InvalidArgument(
                        f"local_bundle: holds model {manifest.name!r}, not {name!r}"
                    )
                local_key.verify(
                    self._local_public, name, manifest.version, bundle, request.local_signature
                )
                return self._registry.add_version(Path(tmp) / "model", "local")

        return await asyncio.to_thread(install)

    async def _rollout_status(self, name: str, state: SlotState) -> pb.RolloutStatus:
        status = pb.RolloutStatus(
            model_name=name,
            stage=_STAGE_CODES.get(state.stage, pb.ROLLOUT_STAGE_UNSPECIFIED),
            candidate_share=state.share,
        )
        if state.active is not None:
            status.active.CopyFrom(await self._ref(name, state.active))
        if state.candidate is not None:
            status.candidate.CopyFrom(await self._ref(name, state.candidate))
        if state.stage_started_at:
            status.stage_started_at.FromDatetime(datetime.fromisoformat(state.stage_started_at))
        if self._status is not None and state.stage in ("shadow", "ab"):
            active, candidate = await self._status.health(name)
            if active is not None and candidate is not None:
                active, candidate = await self._with_feedback(name, state, active, candidate)
                status.health.CopyFrom(
                    pb.HealthComparison(
                        active_error_rate=active.error_rate,
                        candidate_error_rate=candidate.error_rate,
                        active_p99_latency_seconds=active.p99_seconds,
                        candidate_p99_latency_seconds=candidate.p99_seconds,
                        agreement=candidate.agreement,
                        active_feedback_accuracy=active.feedback_accuracy or 0.0,
                        candidate_feedback_accuracy=candidate.feedback_accuracy or 0.0,
                        active_feedback_count=active.feedback_count,
                        candidate_feedback_count=candidate.feedback_count,
                        compared_predictions=candidate.compared,
                    )
                )
        return status

    async def _with_feedback(
        self, name: str, state: SlotState, active: RoleHealth, candidate: RoleHealth
    ) -> tuple[RoleHealth, RoleHealth]:
        """``active`` and ``candidate`` with their accuracy on the homeowners' labels
        observed since the stage started, when the personalization service scores them."""
        if self._feedback is None:
            return active, candidate
        since = datetime.fromisoformat(state.stage_started_at) if state.stage_started_at else None
        scores = await self._feedback.accuracy(name, [active.version, candidate.version], since)

        def scored(h: RoleHealth) -> RoleHealth:
            accuracy, count = scores.get(h.version, (0.0, 0))
            if count <= 0:
                return h
            return replace(h, feedback_accuracy=accuracy, feedback_count=count)

        return scored(active), scored(candidate)

    async def _state(self, name: str) -> SlotState:
        state = await asyncio.to_thread(self._registry.state, name)
        if state.active is None and state.candidate is None:
            raise NotFound(f"model_name: {name!r} is not in the registry")
        return state

    async def _ref(self, name: str, version: str) -> common_pb2.ModelRef:
        info = await asyncio.to_thread(self._registry.info, name, version)
        return _ref(info)

    def _require_updater(self) -> ModelUpdater:
        if self._updater is None:
            raise FailedPrecondition(
                "no model repository configured (update.tuf_source and update.tuf_trusted_root)"
            )
        return self._updater

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _stepped(self, name: str, step: str, state: SlotState, *, automatic: bool) -> None:
        STEPS.labels(name, step, "automatic" if automatic else "operator").inc()
        STAGE.labels(name).set(_STAGE_NUMBERS[state.stage])


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


def _ref(info: VersionInfo) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=info.name, version=info.version, sha256=info.sha256)


def _version_pb(info: VersionInfo, state: SlotState) -> pb.ModelVersion:
    slot = pb.SLOT_NONE
    if info.version == state.active:
        slot = pb.SLOT_ACTIVE
    elif info.version == state.candidate:
        slot = pb.SLOT_CANDIDATE
    elif info.version == state.previous:
        slot = pb.SLOT_PREVIOUS
    v = pb.ModelVersion(model=_ref(info), slot=slot, source=_SOURCES[info.source])
    v.staged_at.FromDatetime(datetime.fromisoformat(info.staged_at))
    return v


def _required_name(name: str) -> str:
    if not name:
        raise InvalidArgument("model_name: required")
    return name


def _page_size(size: int) -> int:
    if size < 0 or size > MAX_PAGE:
        raise InvalidArgument(f"page_size: must be between 0 and {MAX_PAGE}")
    return size or MAX_PAGE


def _page_start(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 9:
        raise InvalidArgument("page_token: invalid")
    return int(token)
