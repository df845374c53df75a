"""Health and drift of a model, as the inference service measures them, and its
outcomes: accuracy against the homeowners' labels, as the personalization service
scores them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import grpc
from prometheus_client import Counter

from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from roost.update.v1 import update_service_pb2 as pb
from services.kit.peers import is_retryable, peer_error
from services.update.health import RoleHealth

logger = logging.getLogger(__name__)

FEEDBACK_UNAVAILABLE = Counter(
    "roost_update_feedback_unavailable_total",
    "Feedback-accuracy refreshes that failed (personalization unreachable or refusing);"
    " the health gate ran without feedback labels.",
    ["model"],
)
#: Scoring runs both versions on up to a few thousand labels: allow it time.
FEEDBACK_DEADLINE_SECONDS = 30.0

Scores = Mapping[str, tuple[float, int]]
"""``version -> (accuracy, labels scored)``."""


def role_health(h: inf_pb.RoleHealth, generation: int = 0) -> RoleHealth:
    """One version's rolling health as the gate judges it (``loaded`` False when
    inference could not load it at registry ``generation``)."""
    return RoleHealth(
        version=h.model.version,
        predictions=int(h.predictions),
        errors=int(h.errors),
        p99_seconds=float(h.latency_p99_seconds),
        latency_calls=int(h.latency_calls),
        agreement=float(h.agreement_rate) if h.compared else 1.0,
        compared=int(h.compared),
        loaded=h.loaded,
        generation=generation,
        non_finite=int(h.non_finite),
        paired_latency_ratio=float(h.paired_latency_ratio),
        output_psi=float(h.output_psi),
        output_ks=float(h.output_ks),
        output_samples=int(h.output_samples),
        confidence_psi=float(h.confidence_psi),
        confidence_ks=float(h.confidence_ks),
        confidence_samples=int(h.confidence_samples),
    )


class InferenceStatus:
    """``GetModelStatus`` of the inference service, as the update service needs it; a
    failed call raises the peer's error as ``services.kit.peers`` translates it."""

    def __init__(self, channel: Any, timeout: float = 2.0) -> None:
        self._stub = inf_grpc.InferenceServiceStub(channel)
        self._timeout = timeout

    async def _status(self, name: str) -> inf_pb.GetModelStatusResponse:
        try:
            response: inf_pb.GetModelStatusResponse = await self._stub.GetModelStatus(
                inf_pb.GetModelStatusRequest(model_name=name), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as e:
            # The request names only the model: inference's details quote nothing private.
            raise peer_error(e, "inference", "GetModelStatus", echo_details=True) from None
        return response

    async def health(self, name: str) -> tuple[RoleHealth | None, RoleHealth | None]:
        """Active and candidate health; a candidate that is not loaded comes back with
        ``loaded`` False (the gate tells "not yet" from "failed" by the generation)."""
        status = await self._status(name)
        candidate = (
            role_health(status.candidate, int(status.generation))
            if status.HasField("candidate")
            else None
        )
        active = role_health(status.active, int(status.generation))
        return (active if active.loaded else None), candidate

    async def drift(self, name: str) -> list[pb.FeatureDrift]:
        status = await self._status(name)
        return [
            pb.FeatureDrift(feature=f.feature, psi=f.psi, ks_statistic=f.ks, alert=f.alert)
            for f in status.drift
        ]


class PersonalizationFeedback:
    """``EvaluateVersions`` of the personalization service, as the health gate needs it.

    Scores are refreshed at most every ``refresh_seconds`` per model (each refresh runs
    the versions on the stored labels); in between, the last answer is reused. When the
    service is unreachable or refuses, the answer is "no scores" (the gate then works
    without feedback): logged once until it answers again (INFO for an outage, WARNING
    for a refusal, which will not pass by itself), and counted.
    """

    def __init__(
        self,
        channel: Any,
        *,
        refresh_seconds: float = 30.0,
        timeout: float = FEEDBACK_DEADLINE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = pers_grpc.PersonalizationServiceStub(channel)
        self._refresh = refresh_seconds
        self._timeout = timeout
        self._clock = clock
        # model -> (key of the request, when, scores); one entry per model.
        self._cache: dict[str, tuple[tuple[object, ...], float, Scores]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._down = False

    async def accuracy(self, name: str, versions: Sequence[str], since: datetime | None) -> Scores:
        key = (tuple(versions), since)
        async with self._locks.setdefault(name, asyncio.Lock()):
            hit = self._cache.get(name)
            if hit is not None and hit[0] == key and self._clock() - hit[1] < self._refresh:
                return hit[2]
            scores = await self._evaluate(name, versions, since)
            self._cache[name] = (key, self._clock(), scores)
            return scores

    async def _evaluate(self, name: str, versions: Sequence[str], since: datetime | None) -> Scores:
        request = pers_pb.EvaluateVersionsRequest(model_name=name, versions=list(versions))
        if since is not None:
            request.since.FromDatetime(since)
        try:
            response: pers_pb.EvaluateVersionsResponse = await self._stub.EvaluateVersions(
                request, timeout=self._timeout
            )
        except grpc.aio.AioRpcError as e:
            FEEDBACK_UNAVAILABLE.labels(name).inc()
            if not self._down:
                self._down = True
                # An outage passes by itself; a refusal (e.g. a misconfigured identity) does not.
                logger.log(
                    logging.INFO if is_retryable(e) else logging.WARNING,
                    "feedback labels unavailable (%s); the health gate runs without them",
                    peer_error(e, "personalization", "EvaluateVersions"),
                )
            return {}
        if self._down:
            self._down = False
            logger.info("feedback labels available again (personalization answers)")
        return {r.version: (float(r.accuracy), int(r.count)) for r in response.results}
