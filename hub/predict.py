"""PredictBatch for the decision pipeline: outages waited out, refused inputs isolated.

One call per model and batch. What can go wrong, and what the hub does:

- **inference cannot be reached** (down, restarting, too slow: :data:`OUTAGE`): every
  attempt waits for the channel to be ready (``wait_for_ready``; the reconnect backoff
  of every channel is bounded to about a second, :mod:`services.kit.client`), and the
  batch is retried until inference is back. Nothing is dropped; the readings that keep
  arriving wait in the pipeline's bounded backlog.
- **a batch is refused for its inputs** (``INVALID_ARGUMENT``: one poisoned reading):
  it is split in halves, first half first, until each refused reading is alone. Only
  those are dropped (counted ``invalid_input``); the others are decided, in order.
- **the model is refused** (``NOT_FOUND``, ``PERMISSION_DENIED``, ...): the batch is
  dropped (counted ``predict_failed``) and the model reported refused.
- **inference fails on its side** (``INTERNAL``, ``UNKNOWN``): a few attempts, then the
  batch is dropped (``predict_failed``).

Logs are rate-limited per reason and never carry an input.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter

from hub.health import DecisionHealth, Peer
from hub.peer_streams import PredictsBatches
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb
from services.kit.peers import is_retryable, peer_error, status_of
from services.kit.ratelog import RateLimitedLog
from services.kit.tensors import array_to_tensor

log = logging.getLogger(__name__)

PREDICT_FAILURES = Counter(
    "roost_hub_predict_failures_total", "PredictBatch calls that failed, by code.", ["code"]
)

# A call that could not reach its peer (down, restarting, too slow): retried until the
# peer is back, holding the batch. Each attempt waits for the channel to be ready.
OUTAGE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)
# Backoff between attempts, for inference and audit alike (the calls themselves already
# wait for the channel, so the pause stays short: decisions resume right after).
RETRY_FIRST_DELAY = 0.05
RETRY_MAX_DELAY = 0.25
# Other retryable failures of PredictBatch (INTERNAL, UNKNOWN, ...): attempts per batch.
PREDICT_ATTEMPTS = 3
# Refusals of the inputs themselves: the batch is split to isolate the refused reading.
INPUT_REFUSED = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})


class Item(Protocol):
    @property
    def model(self) -> str: ...
    @property
    def area(self) -> str: ...
    @property
    def features(self) -> npt.NDArray[np.float32]: ...


T = TypeVar("T", bound=Item)

# (model, outcome, how many readings): readings that got no prediction.
OnDropped = Callable[[str, str, int], None]


@dataclass(frozen=True)
class Predicted(Generic[T]):
    pending: T
    tensor: common_pb2.Tensor
    prediction: inf_pb.Prediction
    model: common_pb2.ModelRef  # the exact model that produced it
    decided_at: Timestamp


def _now_ts() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class Predictor(Generic[T]):
    def __init__(
        self,
        inference: PredictsBatches,
        *,
        deadline: float,
        explain_top_k: int,
        health: DecisionHealth,
        on_dropped: OnDropped,
        queued: Callable[[], int],
    ) -> None:
        self._inference = inference
        self._deadline = deadline
        # Attributions recorded with each decision (its "why"); 0 records none.
        self._explain_top_k = explain_top_k
        self._health = health
        self._on_dropped = on_dropped
        self._queued = queued
        self._log = RateLimitedLog(log)

    async def predict(self, batch: Sequence[T]) -> list[Predicted[T]]:
        """One PredictBatch per model; the predictions in reading order (a reading that
        got none is left out)."""
        by_model: dict[str, list[int]] = {}
        for i, p in enumerate(batch):
            by_model.setdefault(p.model, []).append(i)
        predicted: list[Predicted[T] | None] = [None] * len(batch)
        for model, positions in by_model.items():
            items = [(batch[i], array_to_tensor(batch[i].features)) for i in positions]
            results = await self._isolating(model, items)
            for i, result in zip(positions, results, strict=True):
                predicted[i] = result
        return [x for x in predicted if x is not None]

    async def _isolating(
        self, model: str, items: list[tuple[T, common_pb2.Tensor]]
    ) -> list[Predicted[T] | None]:
        """Predictions for ``items`` of one model (None where none was made).

        A part refused for its inputs is split in halves, first half first, until each
        refused reading is alone: only those are dropped. One poisoned reading among n
        costs about 2·log2(n) extra calls."""
        out: list[Predicted[T] | None] = [None] * len(items)
        parts = [(0, len(items))]
        while parts:
            lo, hi = parts.pop()
            result = await self._call(model, items[lo:hi])
            if isinstance(result, grpc.StatusCode):
                if result in INPUT_REFUSED and hi - lo > 1:
                    mid = (lo + hi) // 2
                    parts += [(mid, hi), (lo, mid)]
                else:
                    self._give_up(model, hi - lo, result)
                continue
            # One decision time per call: its predictions arrived together.
            decided_at = _now_ts()
            for k, pred in zip(range(lo, hi), result.predictions, strict=True):
                # Each prediction names the exact model that produced it (during an A/B
                # rollout, the candidate for some entities); older servers only the batch's.
                ref = pred.model if pred.HasField("model") else result.model
                out[k] = Predicted(items[k][0], items[k][1], pred, ref, decided_at)
        return out

    def _give_up(self, model: str, n: int, code: grpc.StatusCode) -> None:
        if code in INPUT_REFUSED:
            self._on_dropped(model, "invalid_input", n)
            self._log(
                f"invalid_input:{model}",
                "%s: inference refused a reading's features (%s); dropped it, decided the "
                "rest of its batch",
                model,
                code.name,
            )
            return
        self._on_dropped(model, "predict_failed", n)
        self._log(
            f"predict_failed:{model}:{code.name}",
            "%s: PredictBatch failed (%s); %d readings dropped",
            model,
            code.name,
            n,
        )

    async def _call(
        self, model: str, items: list[tuple[T, common_pb2.Tensor]]
    ) -> inf_pb.PredictBatchResponse | grpc.StatusCode:
        """The response, or the status code it was given up with. An outage is waited
        out (retried until inference is back); other failures are retried a few times."""
        request = inf_pb.PredictBatchRequest(
            model_name=model,
            inputs=[t for _, t in items],
            # The entity ids route A/B rollouts (stable per entity); never logged.
            entity_ids=[f"{p.model}.{p.area}" for p, _ in items],
            explain_top_k=self._explain_top_k,
        )
        delay = RETRY_FIRST_DELAY
        failures = 0
        while True:
            try:
                response: inf_pb.PredictBatchResponse = await self._inference.PredictBatch(
                    request, timeout=self._deadline, wait_for_ready=True
                )
            except grpc.aio.AioRpcError as e:
                code = status_of(e)
                PREDICT_FAILURES.labels(code.name).inc()
                if code in OUTAGE:
                    self._health.peer_failed(Peer.INFERENCE)
                    self._log(
                        "inference_outage",
                        "%s; holding readings until it is back (%d queued)",
                        peer_error(e, "inference", "PredictBatch"),
                        self._queued(),
                    )
                elif not is_retryable(e):
                    self._health.peer_ok(Peer.INFERENCE)  # it answered: a refusal
                    if code not in INPUT_REFUSED:
                        self._health.model_refused(model, code.name)  # e.g. NOT_FOUND
                    return code
                else:
                    failures += 1
                    if failures == PREDICT_ATTEMPTS:
                        return code
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            self._health.peer_ok(Peer.INFERENCE)
            self._health.model_ok(model)
            return response
