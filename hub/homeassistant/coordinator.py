"""The services behind the Roost hub's Home Assistant entities.

Every ``poll_seconds`` the coordinator first sends the homeowner's learning mode to the
personalization service, which enforces it (:mod:`hub.homeassistant.learning_sync`),
then fetches what the entities show and pushes it,
retained, to their state topics:

* the household privacy budget (personalization; its availability topic goes
  ``offline`` while the service does not answer or is not deployed);
* fleet learning: on or off, the last round and its ε (``[fleet]`` and the audit log,
  :mod:`hub.homeassistant.fleet_entities`);
* per model, drift and health (inference ``GetModelStatus``; drift is the service's
  alert or, with enough live samples, the homeowner's PSI level) — a drifting
  personalizable model can start a DP fine-tuning run, at most once per cooldown;
* per model, the update entity: installed and latest version, the latest's source,
  rollout step and notes, the version last rolled back (update; signed updates are
  checked every ``update_check_seconds``; see ``update_entity``).

It also makes the service calls behind the entities' commands: "was wrong"
(``RecordLabel``), "learn now" (``StartTraining``), "roll back" and "install".

A failed call to a service is translated by ``services.kit.peers`` (peer, method and
status code; never the peer's details, which may quote household values) and never
stops the hub: the entity shows it (offline, a health reason) or the command is
counted as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import grpc

from hub.homeassistant.entities import ModelInfo
from hub.homeassistant.fleet_entities import FLEET_KEY, FleetStatus
from hub.homeassistant.learning_sync import LearningModeSync
from hub.homeassistant.metrics import COMMANDS, DRIFT_RETRAINS, FEEDBACK
from hub.homeassistant.settings import Settings
from hub.homeassistant.topics import personalization_availability, state_topic
from hub.homeassistant.update_entity import STAGES, Release, UpdateView, version_key
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from roost.update.v1 import update_service_pb2 as upd_pb
from roost.update.v1 import update_service_pb2_grpc as upd_grpc
from services.kit.peers import is_retryable, peer_error, status_of

log = logging.getLogger(__name__)

# The models personalization can fine-tune.
PERSONALIZABLE = frozenset({"occupancy", "routine"})
# A candidate is unhealthy when its error rate exceeds the active's by this much.
CANDIDATE_ERROR_MARGIN = 0.05

# (topic, payload, retain): where the coordinator's states go (the bridge's outbox).
Push = Callable[[str, bytes, bool], None]
# Runs a command's follow-up in the background (the bridge's task set).
Spawn = Callable[[Awaitable[None]], None]


def _failure(e: grpc.RpcError, peer: str, method: str) -> str:
    """A failed command's call, for the log: peer, method, code, whether to try again."""
    error = peer_error(e, peer, method)
    return f"{error}; try again later" if is_retryable(e) else str(error)


class Coordinator:
    """Polls the services for the entities' states; calls them for the entities' commands."""

    def __init__(
        self,
        *,
        hub_id: str,
        models: Sequence[ModelInfo],
        settings: Settings,
        inference: inf_grpc.InferenceServiceAsyncStub,
        personalization: pers_grpc.PersonalizationServiceAsyncStub | None,
        update: upd_grpc.UpdateServiceAsyncStub | None,
        fleet: FleetStatus,
        push: Push,
        spawn: Spawn,
        poll_seconds: float = 30.0,
        update_check_seconds: float = 3600.0,
        drift_retrain_seconds: float = 0.0,
        drift_retrain_epsilon: float = 1.0,
        drift_min_samples: int = 500,
    ) -> None:
        self.hub_id = hub_id
        # Labels from discovery; the active version as the last poll saw it.
        self.models = {m.name: m for m in models}
        self.settings = settings
        self.inference = inference
        self.personalization = personalization
        self.learning = LearningModeSync(settings, personalization)
        self.update = update
        self.fleet = fleet
        # The privacy budget's last document (δ and privacy unit of the fleet's ε).
        self._budget: dict[str, Any] | None = None
        self._push = push
        self._spawn = spawn
        self.poll_seconds = poll_seconds
        self.update_check_seconds = update_check_seconds
        # Drift-triggered personalization: at most once per this many seconds per model.
        self.drift_retrain_seconds = drift_retrain_seconds
        self.drift_retrain_epsilon = drift_retrain_epsilon
        self.drift_min_samples = drift_min_samples
        self._drift_trained: dict[str, float] = {}
        # model -> the newest signed release the update service offered
        self._offered: dict[str, Release] = {}
        # model -> what its update entity showed last
        self._views: dict[str, UpdateView] = {}
        self._update_checked = -1e9

    def _push_doc(self, key: str, doc: dict[str, Any]) -> None:
        self._push(state_topic(self.hub_id, key), json.dumps(doc).encode(), True)

    # ------------------------------------------------------------ commands

    # Each command returns why it failed (for the owner's notification), None if it did not.

    async def record_label(self, decision_id: str, label: str) -> str | None:
        """The corrected label of a decision ("was wrong"), as feedback for personalization."""
        if self.personalization is None:
            FEEDBACK.labels("unavailable").inc()
            log.warning("'was wrong' pressed but the personalization service is not deployed")
            return "the personalization service is not deployed"
        try:
            await self.personalization.RecordLabel(
                pers_pb.RecordLabelRequest(
                    decision_id=decision_id,
                    label=label,
                    source=pers_pb.LABEL_SOURCE_FEEDBACK,
                ),
                timeout=5.0,
            )
        except grpc.aio.AioRpcError as e:
            FEEDBACK.labels("failed").inc()
            why = _failure(e, "personalization", "RecordLabel")
            log.warning("'was wrong' not recorded: %s", why)
            return why
        FEEDBACK.labels("recorded").inc()
        log.info("feedback recorded for decision %s", decision_id)
        return None

    async def train(self, model: str, epsilon: float = 1.0) -> str | None:
        """A DP fine-tuning run ("learn now", or drift), unless learning is paused."""
        if not self.settings.training_allowed():
            COMMANDS.labels("button", "refused").inc()
            log.info("learning is paused: not starting training for %s", model)
            return "learning is paused (Learning mode): set it to learning first"
        if self.personalization is None:
            COMMANDS.labels("button", "failed").inc()
            return "the personalization service is not deployed"
        try:
            await self.personalization.StartTraining(
                pers_pb.StartTrainingRequest(model_name=model, target_epsilon=epsilon),
                timeout=10.0,
            )
        except grpc.aio.AioRpcError as e:
            COMMANDS.labels("button", "failed").inc()
            why = _failure(e, "personalization", "StartTraining")
            log.warning("training %s not started: %s", model, why)
            return why
        return None

    async def rollback(self, model: str) -> str | None:
        if self.update is None:
            COMMANDS.labels("button", "failed").inc()
            return "the update service is not deployed"
        why = None
        try:
            await self.update.Rollback(
                upd_pb.RollbackRequest(
                    model_name=model,
                    reason="from Home Assistant",
                    owner_request_id=owner_request_id(),
                ),
                timeout=10.0,
            )
        except grpc.aio.AioRpcError as e:
            COMMANDS.labels("button", "failed").inc()
            why = _failure(e, "update", "Rollback")
            log.warning("rolling back %s failed: %s", model, why)
        await self.poll_update(model)
        return why

    async def install(self, model: str) -> str | None:
        """Stage the offered signed release (unless a candidate is staged already) and
        start its shadow trial."""
        if self.update is None:
            COMMANDS.labels("update", "failed").inc()
            return "the update service is not deployed"
        why = None
        last = self._views.get(model) or UpdateView(Release(""))
        offer = replace(last, offered=self._offered.get(model)).offer()
        method = "Stage"
        request_id = owner_request_id()  # the owner pressed Install: one request, two steps
        try:
            if offer is not None:
                await self.update.Stage(
                    upd_pb.StageRequest(
                        model_name=model, version=offer.version, owner_request_id=request_id
                    ),
                    timeout=60.0,
                )
            method = "StartRollout"
            await self.update.StartRollout(
                upd_pb.StartRolloutRequest(
                    model_name=model,
                    stage=upd_pb.ROLLOUT_STAGE_SHADOW,
                    owner_request_id=request_id,
                ),
                timeout=10.0,
            )
        except grpc.aio.AioRpcError as e:
            COMMANDS.labels("update", "failed").inc()
            why = _failure(e, "update", method)
            log.warning("installing %s failed: %s", model, why)
        await self.poll_update(model)
        return why

    def maybe_retrain(self, model: str) -> None:
        """Drift can trigger personalization: a DP fine-tuning run on the local examples
        (learning not paused, a personalizable model, at most once per cooldown)."""
        if not self.drift_retrain_seconds or model not in PERSONALIZABLE:
            return
        if not self.settings.training_allowed() or self.personalization is None:
            return
        now = time.monotonic()
        last = self._drift_trained.get(model)
        if last is not None and now - last < self.drift_retrain_seconds:
            return
        self._drift_trained[model] = now
        DRIFT_RETRAINS.labels(model).inc()
        log.info("%s drifted: starting a personalization run", model)
        self._spawn(self._train_quietly(model))

    async def _train_quietly(self, model: str) -> None:
        """A drift-triggered run: a failure is logged and counted, not an owner's notice."""
        await self.train(model, epsilon=self.drift_retrain_epsilon)

    # ------------------------------------------------------------ polling

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_seconds)

    async def poll_once(self) -> None:
        await self.learning.sync()
        await self.poll_budget()
        await self.push_fleet()
        loop = asyncio.get_running_loop()
        if loop.time() - self._update_checked >= self.update_check_seconds:
            self._update_checked = loop.time()
            await self.check_updates()
        for model in sorted(self.models):
            await self.poll_model(model)
            await self.poll_update(model)

    async def push_fleet(self) -> None:
        """The fleet sensors' state document (the learning mode decides whether it is off)."""
        doc = await self.fleet.document(self._budget, self.settings.learning_mode)
        self._push_doc(FLEET_KEY, doc)

    async def poll_budget(self) -> None:
        avail = personalization_availability(self.hub_id)
        self._budget = None
        if self.personalization is None:
            self._push(avail, b"offline", True)
            return
        try:
            resp = await self.personalization.GetPrivacyBudget(
                pers_pb.GetPrivacyBudgetRequest(scope="household"), timeout=3.0
            )
        except grpc.aio.AioRpcError as e:
            log.debug("privacy budget: %s", peer_error(e, "personalization", "GetPrivacyBudget"))
            self._push(avail, b"offline", True)
            return
        b = resp.budget
        doc = {
            "epsilon_spent": round(b.epsilon_spent, 4),
            "epsilon_limit": round(b.epsilon_limit, 4),
            "epsilon_remaining": round(max(b.epsilon_limit - b.epsilon_spent, 0.0), 4),
            "delta": b.delta,
            "privacy_unit": b.privacy_unit or "example",
            "scope": b.scope or "household",
            "learning_mode": self.settings.learning_mode,
        }
        if b.HasField("period_end"):
            doc["period_end"] = b.period_end.ToJsonString()
        self._push_doc("privacy_budget", doc)
        self._push(avail, b"online", True)
        self._budget = doc

    async def poll_model(self, model: str) -> None:
        try:
            s: inf_pb.GetModelStatusResponse = await self.inference.GetModelStatus(
                inf_pb.GetModelStatusRequest(model_name=model), timeout=3.0
            )
        except grpc.aio.AioRpcError as e:
            log.debug("status of %s: %s", model, peer_error(e, "inference", "GetModelStatus"))
            reason = status_of(e).name
            self._push_doc(
                f"{model}_status", {"drift": "OFF", "health": "ON", "details": {"reason": reason}}
            )
            return
        psi_max = max((f.psi for f in s.drift), default=0.0)
        # The homeowner's PSI level applies only to features with enough live samples
        # (a handful of readings after a restart is not drift).
        over = [
            f
            for f in s.drift
            if f.psi >= self.settings.drift_psi_alert and f.samples >= self.drift_min_samples
        ]
        drift = s.drift_alert or (s.drift_monitored and bool(over))
        unhealthy, reason = _health(s)
        drifting = sorted(f.feature for f in s.drift if f.alert or f in over)
        doc = {
            "drift": "ON" if drift else "OFF",
            "health": "ON" if unhealthy else "OFF",
            "details": {
                "psi_max": round(psi_max, 4),
                "psi_alert_level": self.settings.drift_psi_alert,
                "drifting_features": drifting,
                "health": reason,
                "active_version": s.active.model.version,
                "candidate_version": s.candidate.model.version,
            },
        }
        self._push_doc(f"{model}_status", doc)
        if drift:
            self.maybe_retrain(model)
        info = self.models.get(model)
        if info is not None and s.active.model.version:
            self.models[model] = ModelInfo(info.name, info.labels, s.active.model.version)

    async def check_updates(self) -> None:
        if self.update is None:
            return
        try:
            resp = await self.update.CheckForUpdates(upd_pb.CheckForUpdatesRequest(), timeout=30.0)
        except grpc.aio.AioRpcError as e:
            log.info("update check: %s", peer_error(e, "update", "CheckForUpdates"))
            return
        for u in resp.updates:
            current = self._offered.get(u.model.name)
            if current is None or version_key(u.model.version) > version_key(current.version):
                self._offered[u.model.name] = Release.offered(u)

    async def poll_update(self, model: str) -> None:
        """The update entity's state: versions, source, rollout step and notes."""
        view = UpdateView(Release(self.models[model].version if model in self.models else ""))
        if self.update is not None:
            method = "ListVersions"
            try:
                versions = await self.update.ListVersions(
                    upd_pb.ListVersionsRequest(model_name=model), timeout=3.0
                )
                for v in versions.versions:
                    if v.slot == upd_pb.SLOT_ACTIVE:
                        view = replace(view, installed=Release.of(v))
                    elif v.slot == upd_pb.SLOT_CANDIDATE:
                        view = replace(view, candidate=Release.of(v))
                method = "GetRolloutStatus"
                s = (
                    await self.update.GetRolloutStatus(
                        upd_pb.GetRolloutStatusRequest(model_name=model), timeout=3.0
                    )
                ).status
                view = replace(
                    view,
                    stage=STAGES.get(s.stage, "none"),
                    share=s.candidate_share,
                    stage_since=s.stage_started_at.ToJsonString()
                    if s.HasField("stage_started_at")
                    else "",
                    verdict=s.verdict,
                    rolled_back=s.rolled_back_version,
                )
            except grpc.aio.AioRpcError as e:
                log.debug("update status of %s: %s", model, peer_error(e, "update", method))
                # Unknown now: keep what the last answer said was rolled back.
                last = self._views.get(model)
                view = replace(view, rolled_back=last.rolled_back if last else "")
        view = replace(view, offered=self._offered.get(model))
        self._views[model] = view
        if view.installed.version:
            self._push_doc(f"{model}_update", view.state(model))


def _health(s: inf_pb.GetModelStatusResponse) -> tuple[bool, str]:
    """(unhealthy, why): the active model must be loaded, a candidate too and not fail
    noticeably more often than the active."""
    if not s.active.loaded:
        return True, "active model not loaded"
    if s.HasField("candidate") and s.candidate.model.version:
        if not s.candidate.loaded:
            return True, "rollout candidate not loaded"
        if s.candidate.error_rate > s.active.error_rate + CANDIDATE_ERROR_MARGIN:
            return True, "rollout candidate fails more often than active"
    return False, "ok"


def owner_request_id() -> str:
    """The id of one owner action from Home Assistant, relayed to the update service
    (which refuses owner steps from the hub without one) and recorded in the audit log."""
    return f"ha-{uuid.uuid4().hex[:16]}"
