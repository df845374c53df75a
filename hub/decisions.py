"""The decision path: predict, record durably, then publish.

Readings that complete a model's feature window become ``Pending`` items. One task
takes whatever is pending (up to ``max_batch``), predicts it with one
``PredictBatch`` per model, appends the decisions to the audit log in one
``AppendDecisions`` call, and only once the audit service acknowledged them
publishes them on MQTT. The append is retried with the same decision ids until it
succeeds (the audit log is idempotent by id), so a decision is never published
unrecorded and an acknowledged one is never lost. Batching grows by itself under
load: while one batch is in flight the next one accumulates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Gauge, Histogram

from hub.topics import decision_topic
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from services.kit.tensors import array_to_tensor

log = logging.getLogger(__name__)

DECISIONS = Counter(
    "roost_hub_decisions_total", "Decisions by model and outcome.", ["model", "outcome"]
)
DECISION_LATENCY = Histogram(
    "roost_hub_decision_latency_seconds",
    "From a reading's arrival to its decision being published.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
BATCH_SIZE = Histogram(
    "roost_hub_batch_size", "Decisions per batch.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 512)
)
STAGE_SECONDS = Histogram(
    "roost_hub_stage_seconds",
    "Time per batch in each stage of the decision path.",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
PENDING = Gauge("roost_hub_pending_decisions", "Readings waiting for a decision.")
AUDIT_RETRIES = Counter(
    "roost_hub_audit_append_retries_total", "Audit appends retried (audit slow or down)."
)
HA_ACTIONS = Counter(
    "roost_hub_ha_actions_total",
    "Allow-list actions by outcome: blocked (recorded, never called), called, failed "
    "(after every attempt), retried (one failed attempt).",
    ["outcome"],
)
PREDICT_FAILURES = Counter(
    "roost_hub_predict_failures_total", "PredictBatch calls that failed, by code.", ["code"]
)

REPORT_ONLY = audit_pb.Policy(
    policy_id="report-only",
    verdict=audit_pb.POLICY_VERDICT_NOT_APPLICABLE,
    reason="Roost reports this prediction; no action is configured for this entity.",
)
PREDICT_ATTEMPTS = 3
# Home Assistant domains Roost never operates on its own, whatever the allow-list says.
NEVER_AUTOMATIC = frozenset({"lock", "alarm_control_panel", "siren", "camera", "valve"})
_RULE = re.compile(
    r"^(?P<suggest>suggest\s+)?(?P<model>[a-z0-9_]{1,64})\.(?P<area>[a-z0-9_]{1,64})"
    r":(?P<label>[A-Za-z0-9_]{1,64})=(?P<domain>[a-z0-9_]{1,64})\.(?P<service>[a-z0-9_]{1,64})"
    r":(?P<target>[a-z0-9_]{1,64}\.[a-z0-9_]{1,255})$"
)


@dataclass(frozen=True)
class ActionRule:
    """One allow-list entry: when ``model`` decides ``label`` for ``area``, call
    ``domain.service`` on ``target`` in Home Assistant (``allowed``), or only record
    that it would have (a ``suggest`` entry, verdict BLOCKED)."""

    model: str
    area: str
    label: str
    domain: str
    service: str
    target: str
    allowed: bool = True

    @property
    def action(self) -> str:
        return f"{self.domain}.{self.service}"

    @property
    def policy_id(self) -> str:
        return f"ha-allow-list:{self.model}.{self.area}:{self.label}"


def parse_action_rules(entries: Sequence[str]) -> list[ActionRule]:
    """``"occupancy.kitchen:vacant=light.turn_off:light.kitchen"`` (allowed) or the same
    prefixed with ``suggest `` (recorded as BLOCKED, never called). ValueError if malformed."""
    rules: list[ActionRule] = []
    for entry in entries:
        m = _RULE.match(entry.strip())
        if m is None:
            raise ValueError(
                f"ha_actions: '{entry}' must look like "
                "'occupancy.kitchen:vacant=light.turn_off:light.kitchen_light' "
                "(optionally prefixed with 'suggest ')"
            )
        rules.append(
            ActionRule(
                model=m["model"],
                area=m["area"],
                label=m["label"],
                domain=m["domain"],
                service=m["service"],
                target=m["target"],
                allowed=m["suggest"] is None,
            )
        )
    return rules


class ActionPolicy:
    """Turns a prediction into the policy and action recorded with its decision.

    The occupancy label is re-derived from P(occupied) and the configurable threshold;
    other models use the model's label. An allow-list rule fires on a *change* of that
    label for its (model, area) (the first decision counts as a change), so a light is
    not switched off again with every reading.
    """

    def __init__(self, rules: Sequence[ActionRule] = (), occupancy_threshold: float = 0.5) -> None:
        self.occupancy_threshold = occupancy_threshold
        self._rules = {(r.model, r.area, r.label): r for r in rules}
        self._last: dict[tuple[str, str], str] = {}

    @property
    def rules(self) -> list[ActionRule]:
        return list(self._rules.values())

    def effective_label(self, model: str, label: str, values: Sequence[float]) -> str:
        if model == "occupancy" and len(values) == 2:  # (vacant, occupied)
            return "occupied" if values[1] >= self.occupancy_threshold else "vacant"
        return label

    def evaluate(
        self, model: str, area: str, label: str, values: Sequence[float]
    ) -> tuple[audit_pb.Policy, str, ActionRule | None]:
        """(policy, action, rule to execute or None)."""
        effective = self.effective_label(model, label, values)
        previous = self._last.get((model, area))
        self._last[(model, area)] = effective
        rule = self._rules.get((model, area, effective))
        if rule is None:
            return REPORT_ONLY, "publish", None
        if previous == effective:
            return (
                audit_pb.Policy(
                    policy_id=rule.policy_id,
                    verdict=audit_pb.POLICY_VERDICT_NOT_APPLICABLE,
                    reason=f"unchanged since the last decision; {rule.action} is not repeated",
                ),
                "publish",
                None,
            )
        if not rule.allowed or rule.domain in NEVER_AUTOMATIC:
            HA_ACTIONS.labels("blocked").inc()
            why = (
                f"{rule.domain} is never operated automatically"
                if rule.domain in NEVER_AUTOMATIC
                else "suggested only: the homeowner has not allowed this action"
            )
            return (
                audit_pb.Policy(
                    policy_id=rule.policy_id,
                    verdict=audit_pb.POLICY_VERDICT_BLOCKED,
                    reason=f"{rule.action} on {rule.target} blocked: {why}",
                ),
                rule.action,
                None,
            )
        return (
            audit_pb.Policy(
                policy_id=rule.policy_id,
                verdict=audit_pb.POLICY_VERDICT_ALLOWED,
                reason=f"allow-listed: {rule.action} on {rule.target} when {model} in "
                f"{area} is {effective}",
            ),
            rule.action,
            rule,
        )


@dataclass(frozen=True)
class Recorded:
    """A decision the audit log acknowledged, and the action it allows (if any)."""

    model: str
    area: str
    decision_id: str
    label: str
    index: int
    topic: str
    payload: bytes
    action: ActionRule | None


@dataclass(frozen=True)
class Pending:
    model: str
    area: str
    features: npt.NDArray[np.float32]
    feature_names: tuple[str, ...]
    reading_ts: float
    trigger_id: str
    received_at: float  # time.perf_counter() at arrival


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes


Publish = Callable[[Sequence[Outgoing]], Awaitable[None]]
# Called once a batch is acknowledged by the audit log, before it is published; the
# awaitable may hold the publish back briefly (Home Assistant discovery of new entities).
OnRecorded = Callable[[Sequence[Recorded]], Awaitable[None]]


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7) as 32 hex digits: unique like uuid4, but
    consecutive decisions sort together, so the audit log's id index grows at its end."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & ((1 << 48) - 1)) << 80
        | 0x7 << 76
        | ((rand >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | (rand & ((1 << 62) - 1))
    )
    return uuid.UUID(int=value).hex


def _now_ts() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class DecisionPipeline:
    def __init__(
        self,
        *,
        hub_id: str,
        inference: inf_grpc.InferenceServiceAsyncStub,
        audit: audit_grpc.AuditServiceAsyncStub,
        publish: Publish,
        predict_deadline: float,
        audit_deadline: float,
        max_pending: int,
        max_batch: int,
        on_overflow: Callable[[], None],
        max_in_flight: int = 4,
        explain_top_k: int = 3,
        policy: ActionPolicy | None = None,
        on_recorded: OnRecorded | None = None,
    ) -> None:
        self.policy = policy or ActionPolicy()
        self._on_recorded = on_recorded
        # Decision id -> the allow-listed action it carries, until acknowledged.
        self._actions: dict[str, ActionRule] = {}
        self._hub_id = hub_id
        # Attributions recorded with each decision (its "why"); 0 records none.
        self._explain_top_k = explain_top_k
        self._inference = inference
        self._audit = audit
        self._publish = publish
        self._predict_deadline = predict_deadline
        self._audit_deadline = audit_deadline
        self._max_batch = max_batch
        self._pending: deque[Pending] = deque()
        self._max_pending = max_pending
        self._on_overflow = on_overflow
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()

    def submit(self, item: Pending) -> None:
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self._on_overflow()
        self._pending.append(item)
        self._idle.clear()
        PENDING.set(len(self._pending))
        self._wakeup.set()

    async def run(self) -> None:
        """Process batches until cancelled, or closed and drained.

        Up to ``max_in_flight`` batches overlap (one predicting while another is being
        recorded), which hides the round-trip latency of each stage. Batches still
        publish in the order they were taken, and each only after its own append was
        acknowledged.
        """
        previous: asyncio.Future[None] | None = None
        try:
            while True:
                if not self._pending:
                    if not self._in_flight:
                        self._idle.set()
                        if self._closing:
                            return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._slots.acquire()
                if not self._pending:
                    self._slots.release()
                    continue
                n = min(self._max_batch, len(self._pending))
                batch = [self._pending.popleft() for _ in range(n)]
                PENDING.set(len(self._pending))
                BATCH_SIZE.observe(n)
                published: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                task = asyncio.create_task(self._process(batch, previous, published))
                previous = published
                self._in_flight.add(task)
                task.add_done_callback(self._finished)
        finally:
            for task in list(self._in_flight):
                task.cancel()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("decision batch failed", exc_info=task.exception())
        self._wakeup.set()

    async def drain(self, within: float) -> bool:
        """Stop taking new work once the queue is empty; True if drained in time."""
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    async def _process(
        self,
        batch: list[Pending],
        previous: asyncio.Future[None] | None,
        published: asyncio.Future[None],
    ) -> None:
        try:
            t0 = time.perf_counter()
            decided = await self._decide(batch)
            t1 = time.perf_counter()
            results = await self._append([d for _, d in decided]) if decided else None
            t2 = time.perf_counter()
            if previous is not None:
                await asyncio.shield(previous)  # keep the publish order of batches
            t3 = time.perf_counter()
            STAGE_SECONDS.labels("predict").observe(t1 - t0)
            STAGE_SECONDS.labels("record").observe(t2 - t1)
            STAGE_SECONDS.labels("ordering").observe(t3 - t2)
            if results is None:
                for p, d in decided:
                    DECISIONS.labels(p.model, "unrecorded").inc()
                    self._actions.pop(d.decision_id, None)
                return
            out = [
                Outgoing(decision_topic(self._hub_id, p.model, p.area), _payload(p, d, r.index))
                for (p, d), r in zip(decided, results, strict=True)
            ]
            recorded = [
                Recorded(
                    model=p.model,
                    area=p.area,
                    decision_id=d.decision_id,
                    label=d.output_label,
                    index=r.index,
                    topic=o.topic,
                    payload=o.payload,
                    action=self._actions.pop(d.decision_id, None),
                )
                for (p, d), r, o in zip(decided, results, out, strict=True)
            ]
            if self._on_recorded is not None:
                # Acknowledged: allowed actions may run now, even while the broker is away.
                await self._on_recorded(recorded)
            await self._publish(out)
            done = time.perf_counter()
            STAGE_SECONDS.labels("publish").observe(done - t3)
            for p, _ in decided:
                DECISION_LATENCY.observe(done - p.received_at)
                DECISIONS.labels(p.model, "published").inc()
        finally:
            if not published.done():
                published.set_result(None)

    async def _decide(self, batch: list[Pending]) -> list[tuple[Pending, audit_pb.Decision]]:
        by_model: dict[str, list[Pending]] = {}
        for p in batch:
            by_model.setdefault(p.model, []).append(p)
        decided: list[tuple[Pending, audit_pb.Decision]] = []
        for model, items in by_model.items():
            tensors = [array_to_tensor(p.features) for p in items]
            # The entity ids route A/B rollouts (stable per entity); never logged.
            entity_ids = [f"{p.model}.{p.area}" for p in items]
            response = await self._predict(model, tensors, entity_ids)
            if response is None:
                DECISIONS.labels(model, "predict_failed").inc(len(items))
                continue
            # One decision time per batch: its predictions arrived together.
            decided_at = _now_ts()
            # Each prediction names the exact model that produced it (during an A/B
            # rollout, the candidate for some entities); older servers only the batch's.
            decided.extend(
                (
                    p,
                    self._decision(
                        p,
                        t,
                        decided_at,
                        pred.model if pred.HasField("model") else response.model,
                        pred,
                    ),
                )
                for p, t, pred in zip(items, tensors, response.predictions, strict=True)
            )
        return decided

    async def _predict(
        self, model: str, tensors: list[common_pb2.Tensor], entity_ids: list[str]
    ) -> inf_pb.PredictBatchResponse | None:
        request = inf_pb.PredictBatchRequest(
            model_name=model,
            inputs=tensors,
            entity_ids=entity_ids,
            explain_top_k=self._explain_top_k,
        )
        delay = 0.05
        for attempt in range(PREDICT_ATTEMPTS):
            try:
                response: inf_pb.PredictBatchResponse = await self._inference.PredictBatch(
                    request, timeout=self._predict_deadline
                )
                return response
            except grpc.aio.AioRpcError as e:
                PREDICT_FAILURES.labels(e.code().name).inc()
                retryable = e.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if not retryable or attempt == PREDICT_ATTEMPTS - 1:
                    log.warning("%s: PredictBatch failed: %s", model, e.code().name)
                    return None
                await asyncio.sleep(delay)
                delay *= 2
        return None

    def _decision(
        self,
        p: Pending,
        tensor: common_pb2.Tensor,
        decided_at: Timestamp,
        model: common_pb2.ModelRef,
        pred: inf_pb.Prediction,
    ) -> audit_pb.Decision:
        policy, action, rule = self.policy.evaluate(p.model, p.area, pred.label, pred.values)
        decision_id = uuid7()
        if rule is not None:
            self._actions[decision_id] = rule
        return audit_pb.Decision(
            decision_id=decision_id,
            decided_at=decided_at,
            hub_id=self._hub_id,
            entity_id=f"{p.model}.{p.area}",
            model=model,
            inputs=audit_pb.DecisionInputs(feature_names=list(p.feature_names), tensor=tensor),
            output_values=list(pred.values),
            output_label=pred.label,
            confidence=pred.confidence,
            explanation=list(pred.attributions),
            policy=policy,
            action=action,
            actor=audit_pb.ACTOR_AUTOMATIC,
        )

    async def _append(
        self, decisions: list[audit_pb.Decision]
    ) -> Sequence[audit_pb.AppendResult] | None:
        """Append until acknowledged (same ids, so retries are idempotent).

        Gives up only when the pipeline is closing and the drain deadline passes;
        those decisions were never acknowledged and are never published.
        """
        request = audit_pb.AppendDecisionsRequest(decisions=decisions)
        delay = 0.05
        while True:
            try:
                response: audit_pb.AppendDecisionsResponse = await self._audit.AppendDecisions(
                    request, timeout=self._audit_deadline
                )
                return response.results
            except grpc.aio.AioRpcError as e:
                if e.code() in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    log.error("audit refused %d decisions: %s", len(decisions), e.details())
                    return None
                AUDIT_RETRIES.inc()
                log.warning("audit append failed (%s); retrying in %.2fs", e.code().name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


def _payload(p: Pending, d: audit_pb.Decision, index: int) -> bytes:
    doc = {
        "decision_id": d.decision_id,
        "audit_index": index,
        "entity_id": d.entity_id,
        "area": p.area,
        "model": {"name": d.model.name, "version": d.model.version, "sha256": d.model.sha256},
        "label": d.output_label,
        "confidence": round(d.confidence, 6),
        "values": [round(v, 6) for v in d.output_values],
        "decided_at": d.decided_at.ToDatetime(UTC).isoformat(),
        "reading_ts": p.reading_ts,
        "trigger_id": p.trigger_id,
        "why": why_text(d.explanation),
        "action": d.action,
        "policy": {
            "id": d.policy.policy_id,
            "verdict": audit_pb.PolicyVerdict.Name(d.policy.verdict)
            .removeprefix("POLICY_VERDICT_")
            .lower(),
        },
        "explanation": [
            {"feature": a.feature, "attribution": round(a.attribution, 6)} for a in d.explanation
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def why_text(explanation: Sequence[common_pb2.FeatureAttribution]) -> str:
    """A plain-language reason from the top attributions, e.g. "mostly light (raised
    it by 0.41), then co2 (raised it by 0.12)"; empty without attributions."""
    parts = []
    for a in explanation:
        if abs(a.attribution) < 1e-6:
            continue
        verb = "raised" if a.attribution > 0 else "lowered"
        parts.append(f"{a.feature.replace('_', ' ')} ({verb} it by {abs(a.attribution):.2g})")
    if not parts:
        return ""
    if len(parts) == 1:
        return f"mostly {parts[0]}"
    return f"mostly {parts[0]}, then " + ", ".join(parts[1:])
