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
PREDICT_FAILURES = Counter(
    "roost_hub_predict_failures_total", "PredictBatch calls that failed, by code.", ["code"]
)

REPORT_ONLY = audit_pb.Policy(
    policy_id="report-only",
    verdict=audit_pb.POLICY_VERDICT_NOT_APPLICABLE,
    reason="Roost reports this prediction; no action is configured for this entity.",
)
PREDICT_ATTEMPTS = 3


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


def _tensor(x: npt.NDArray[np.float32]) -> common_pb2.Tensor:
    return common_pb2.Tensor(
        dtype=common_pb2.DATA_TYPE_FLOAT32, shape=list(x.shape), float_values=x.ravel().tolist()
    )


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
    ) -> None:
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
                for p, _ in decided:
                    DECISIONS.labels(p.model, "unrecorded").inc()
                return
            out = [
                Outgoing(decision_topic(self._hub_id, p.model, p.area), _payload(p, d, r.index))
                for (p, d), r in zip(decided, results, strict=True)
            ]
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
            tensors = [_tensor(p.features) for p in items]
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
        return audit_pb.Decision(
            decision_id=uuid7(),
            decided_at=decided_at,
            hub_id=self._hub_id,
            entity_id=f"{p.model}.{p.area}",
            model=model,
            inputs=audit_pb.DecisionInputs(feature_names=list(p.feature_names), tensor=tensor),
            output_values=list(pred.values),
            output_label=pred.label,
            confidence=pred.confidence,
            explanation=list(pred.attributions),
            policy=REPORT_ONLY,
            action="publish",
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
