"""gRPC servicer of the update service: parses requests, calls the rollout and the
installer, builds responses.

Who may do what (``POLICY``, then :func:`owner_note`): reading is open to every
identity that needs it; rolling back, starting a rollout and staging a release are
owner actions — the admin identity (the CLI), or the hub relaying an owner's explicit
Home Assistant action with its ``owner_request_id``, which goes into the audited
reason. The hub cannot take these steps on its own; personalization may stage only
local candidates. Promoting is the admin's alone (Home Assistant never offers it), and
refused while the health gate's verdict is failing unless the request forces it.

The lifecycle itself (which steps are allowed, audited before they take effect, the
health gate and the automatic schedule) is :mod:`services.update.rollout`; fetching and
verifying versions is :mod:`services.update.install`. Every slot change is first
recorded in the audit log, then applied to the registry (an atomic ``state.json``
write); inference notices the new generation within its poll interval and swaps
sessions without failing a request.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any

from roost.common.v1 import common_pb2
from roost.update.v1 import update_service_pb2 as pb
from roost.update.v1 import update_service_pb2_grpc as pb_grpc
from services.kit.auth import Policy, Role
from services.kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    echo,
)
from services.kit.interceptors import peer_role
from services.kit.paging import decode_offset, encode_offset, page_size
from services.modelstore.card import release_notes_in
from services.modelstore.reader import SlotState, VersionInfo
from services.modelstore.reader import Stage as StageName
from services.modelstore.registry import Registry
from services.update.health import HealthPolicy, RolloutSchedule
from services.update.install import Installer
from services.update.rollout import FeedbackSource, ModelStatusSource, Rollout, ref
from services.update.trail import Trail
from services.update.transitions import refuse_stage
from services.update.tuf_client import ModelUpdater

_SVC = "/roost.update.v1.UpdateService/"
# The hub only with an owner_request_id (owner_note).
_OPERATORS = frozenset({Role.ADMIN, Role.HUB})
_READERS = frozenset({Role.ADMIN, Role.HUB, Role.AUDITOR, Role.PERSONALIZATION})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
POLICY: Policy = {
    _SVC + "ListVersions": _READERS,
    # Personalization stages its local candidates; owners stage releases.
    _SVC + "Stage": _OPERATORS | {Role.PERSONALIZATION},
    _SVC + "StartRollout": _OPERATORS,
    # Admin only: Home Assistant offers Install (stage + shadow) and Roll back; the
    # health gate promotes a healthy candidate by itself.
    _SVC + "Promote": frozenset({Role.ADMIN}),
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
_SOURCES = {"tuf": pb.SOURCE_TUF, "local": pb.SOURCE_LOCAL, "shipped": pb.SOURCE_SHIPPED}
MAX_PAGE = 100


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
        self._status = status
        self.rollout = Rollout(
            registry,
            trail,
            status=status,
            health_policy=health_policy,
            feedback=feedback,
            schedule=schedule,
        )
        self._installer = Installer(
            registry,
            updater,
            local_public_key=local_public_key,
            max_bundle_bytes=max_bundle_bytes,
        )

    # ------------------------------------------------------------------ reads

    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: Any
    ) -> pb.ListVersionsResponse:
        query = [request.model_name]
        start = decode_offset(request.page_token, query)
        size = page_size(request.page_size, MAX_PAGE)
        names = [request.model_name] if request.model_name else self._registry.models()
        out: list[pb.ModelVersion] = []
        for name in names:
            state = await asyncio.to_thread(self._registry.state, name)
            versions = await asyncio.to_thread(self._registry.versions, name)
            if request.model_name and not versions:
                raise NotFound(f"model_name: no versions of {echo(name)} are installed")
            out.extend(await asyncio.to_thread(_versions_pb, versions, state))
        return pb.ListVersionsResponse(
            versions=out[start : start + size],
            next_page_token=_next_token(start, size, len(out), query),
        )

    async def GetRolloutStatus(
        self, request: pb.GetRolloutStatusRequest, context: Any
    ) -> pb.GetRolloutStatusResponse:
        name = _required_name(request.model_name)
        state = await self.rollout.state(name)
        return pb.GetRolloutStatusResponse(status=await self._rollout_status(name, state))

    async def CheckForUpdates(
        self, request: pb.CheckForUpdatesRequest, context: Any
    ) -> pb.CheckForUpdatesResponse:
        start = decode_offset(request.page_token)
        size = page_size(request.page_size, MAX_PAGE)
        updates = [
            pb.AvailableUpdate(
                model=common_pb2.ModelRef(name=t.family, version=t.version),
                length_bytes=t.length,
                release_notes=t.release_notes,
            )
            for t in await self._installer.available()
        ]
        return pb.CheckForUpdatesResponse(
            updates=updates[start : start + size],
            next_page_token=_next_token(start, size, len(updates)),
        )

    async def GetDrift(self, request: pb.GetDriftRequest, context: Any) -> pb.GetDriftResponse:
        name = _required_name(request.model_name)
        query = [name]
        start = decode_offset(request.page_token, query)
        size = page_size(request.page_size, MAX_PAGE)
        await self.rollout.state(name)
        if self._status is None:
            raise FailedPrecondition("drift: the inference service is not connected")
        features = await self._status.drift(name)
        return pb.GetDriftResponse(
            features=features[start : start + size],
            next_page_token=_next_token(start, size, len(features), query),
        )

    # ------------------------------------------------------------------ lifecycle

    async def Stage(self, request: pb.StageRequest, context: Any) -> pb.StageResponse:
        name = _required_name(request.model_name)
        role = peer_role(context)
        if request.local_bundle:
            if role not in (Role.PERSONALIZATION, Role.ADMIN):
                raise PermissionDenied(
                    f"the {role} identity may not stage local candidates: they come from"
                    " the personalization service"
                )
            if request.version:
                raise InvalidArgument("version: must be empty with local_bundle")
            prepared = await self._installer.local(
                name, bytes(request.local_bundle), bytes(request.local_signature)
            )
            note = ""
        elif not request.version:
            raise InvalidArgument("version: required (or local_bundle for a local candidate)")
        elif role == Role.PERSONALIZATION:
            raise PermissionDenied("personalization may stage local candidates only")
        else:
            note = owner_note(role, request.owner_request_id, "stage a release")
            # Refused before fetching (re-checked under the model's lock before writing).
            self._installer.updater()
            refuse_stage(name, await self.rollout.state(name), request.version)
            prepared = await self._installer.release(name, request.version)
        try:
            info, state = await self.rollout.stage(
                name,
                lambda: asyncio.to_thread(prepared.commit, self._registry),
                version=prepared.version,
                note=note,
            )
        finally:
            await asyncio.to_thread(prepared.discard)
        return pb.StageResponse(staged=await asyncio.to_thread(_version_pb, info, state))

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
        note = owner_note(peer_role(context), request.owner_request_id, "start a rollout")
        share = float(request.candidate_share) if stage == "ab" else 0.0
        state = await self.rollout.start(
            name, stage, share, automatic=False, reason=f"started by the owner{note}"
        )
        return pb.StartRolloutResponse(status=await self._rollout_status(name, state))

    async def Promote(self, request: pb.PromoteRequest, context: Any) -> pb.PromoteResponse:
        name = _required_name(request.model_name)
        role = peer_role(context)
        if role != Role.ADMIN:  # POLICY says so too; this holds without the interceptor
            raise PermissionDenied(
                f"the {role} identity may not promote: Home Assistant offers Install and"
                " Roll back, and the health gate promotes a healthy candidate; use the"
                " admin identity (roost models promote)"
            )
        note = owner_note(role, request.owner_request_id, "promote")
        state = await self.rollout.promote(
            name, automatic=False, reason=f"promoted by the owner{note}", force=request.force
        )
        return pb.PromoteResponse(active=await self._active_pb(name, state))

    async def Rollback(self, request: pb.RollbackRequest, context: Any) -> pb.RollbackResponse:
        name = _required_name(request.model_name)
        note = owner_note(peer_role(context), request.owner_request_id, "roll back")
        reason = (request.reason.strip() or "rolled back by the owner") + note
        state = await self.rollout.rollback(name, automatic=False, reason=reason)
        return pb.RollbackResponse(active=await self._active_pb(name, state))

    # ------------------------------------------------------------------ responses

    async def _active_pb(self, name: str, state: SlotState) -> pb.ModelVersion:
        assert state.active is not None
        info = await asyncio.to_thread(self._registry.info, name, state.active)
        return await asyncio.to_thread(_version_pb, info, state)

    async def _rollout_status(self, name: str, state: SlotState) -> pb.RolloutStatus:
        status = pb.RolloutStatus(
            model_name=name,
            stage=_STAGE_CODES.get(state.stage, pb.ROLLOUT_STAGE_UNSPECIFIED),
            candidate_share=state.share,
            rolled_back_version=state.rolled_back or "",
        )
        if state.active is not None:
            status.active.CopyFrom(await self._ref(name, state.active))
        if state.candidate is not None:
            status.candidate.CopyFrom(await self._ref(name, state.candidate))
        if state.stage_started_at:
            status.stage_started_at.FromDatetime(datetime.fromisoformat(state.stage_started_at))
        health = await self.rollout.health(name, state)
        if health is not None:
            active, candidate = health
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
                    candidate_predictions=candidate.predictions,
                    candidate_errors=candidate.errors,
                    candidate_non_finite=candidate.non_finite,
                    output_psi=candidate.output_psi,
                    output_ks=candidate.output_ks,
                    output_samples=candidate.output_samples,
                    confidence_psi=candidate.confidence_psi,
                    confidence_ks=candidate.confidence_ks,
                    confidence_samples=candidate.confidence_samples,
                    candidate_loaded=candidate.loaded,
                )
            )
            verdict = self.rollout.judge(state, active, candidate)
            status.verdict = (
                verdict.summary()
                if verdict is not None
                else f"undecided: inference has not applied {state.stage} of {state.candidate} yet"
            )
        return status

    async def _ref(self, name: str, version: str) -> common_pb2.ModelRef:
        return ref(await asyncio.to_thread(self._registry.info, name, version))


def _versions_pb(versions: list[VersionInfo], state: SlotState) -> list[pb.ModelVersion]:
    return [_version_pb(v, state) for v in versions]


def _version_pb(info: VersionInfo, state: SlotState) -> pb.ModelVersion:
    """One version as the API reports it (reads its model card: call in a thread)."""
    slot = pb.SLOT_NONE
    if info.version == state.active:
        slot = pb.SLOT_ACTIVE
    elif info.version == state.candidate:
        slot = pb.SLOT_CANDIDATE
    elif info.version == state.previous:
        slot = pb.SLOT_PREVIOUS
    v = pb.ModelVersion(
        model=ref(info),
        slot=slot,
        source=_SOURCES[info.source],
        release_notes=release_notes_in(info.path),
    )
    v.staged_at.FromDatetime(datetime.fromisoformat(info.staged_at))
    return v


def owner_note(role: Role | None, owner_request_id: str, action: str) -> str:
    """What the audit log records about who asked; PermissionDenied for the hub without
    an owner's request (it cannot ``action`` by itself)."""
    if owner_request_id and not _REQUEST_ID.fullmatch(owner_request_id):
        raise InvalidArgument("owner_request_id: 1-64 characters of letters, digits and . _ : -")
    if role == Role.ADMIN:
        return f" (admin, request {owner_request_id})" if owner_request_id else ""
    if not owner_request_id:
        raise PermissionDenied(
            f"the {role} identity may {action} only to relay an owner's explicit request"
            " (owner_request_id, e.g. a Home Assistant action); use the admin identity"
            " (roost models …) otherwise"
        )
    return f" (owner request {owner_request_id} relayed by the {role})"


def _required_name(name: str) -> str:
    if not name:
        raise InvalidArgument("model_name: required")
    return name


def _next_token(start: int, size: int, total: int, query: list[str] | None = None) -> str:
    """The token of the page after ``[start, start + size)``, or "" after the last."""
    return encode_offset(start + size, query or ()) if start + size < total else ""
