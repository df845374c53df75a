"""The personalization service's calls to its peers: audit, inference and update.

Each peer is reached through a small async callable (:data:`DecisionSource`,
:data:`Predictor`, :data:`Stager`) so the servicer and the job manager can be tested with
fakes; the functions here build them over the peers' gRPC stubs. A failed call is
translated by :func:`services.kit.peers.peer_error`, the one translation shared by all
services: a refusal keeps its meaning, an outage (or a peer failing on its side) is
``Unavailable``. Where a refusal means something specific to this service, the message
says so in its own words:

* audit ``GetDecision``: an unknown decision is ``NotFound``, an invalid id
  ``InvalidArgument`` (audit's details name the id's format, not household data);
* inference ``PredictBatch``: a version inference does not serve, or that does not take
  the stored inputs, is ``FailedPrecondition`` on the requested versions. Inference's
  details are never echoed: they could quote an input;
* update ``Stage``: a refused candidate keeps the refusal's kind (e.g. ``FailedPrecondition``,
  ``InvalidArgument``) and update's details (they describe the bundle, not the household);
  an outage is ``Unavailable``;
* audit ``AppendDecisions`` / ``QueryDecisions`` for the privacy ledger's trail
  (:func:`privacy_recorder`, :func:`privacy_records`): any failure means the ledger
  fails closed (the change is rolled back, or training is refused), with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

import grpc
import numpy as np
import numpy.typing as npt

from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.update.v1 import update_service_pb2 as update_pb
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.kit.peers import is_retryable, peer_error, status_of
from services.kit.tensors import array_to_tensor
from services.personalization.ledger import Recorder
from services.personalization.ledger_trail import PRIVACY_MODEL, PrivacyRecord

#: Staging unpacks and verifies a bundle: allow it time.
STAGE_DEADLINE_SECONDS: Final = 60.0
#: Past any privacy record's time (QueryDecisions' end defaults to the audit's "now").
_END_OF_TIME: Final = datetime(9999, 12, 31, tzinfo=UTC)

DecisionSource = Callable[[str], Awaitable[audit_pb.LogEntry]]
"""``decision_id -> LogEntry`` from the audit log (NotFound if it is not there)."""

Predictor = Callable[[str, str, npt.NDArray[np.float32]], Awaitable[list[str]]]
"""``(model, exact version, inputs [n, *shape]) -> the predicted label of each input``,
from the inference service's PredictBatch."""

Stager = Callable[[str, bytes, bytes], Awaitable[tuple[str, str, str]]]
"""``(model, bundle, signature) -> (name, version, sha256)`` of the staged candidate."""


def audit_decisions(stub: Any, deadline_seconds: float) -> DecisionSource:
    """A :data:`DecisionSource` over the audit service's GetDecision."""

    async def get(decision_id: str) -> audit_pb.LogEntry:
        try:
            resp = await stub.GetDecision(
                audit_pb.GetDecisionRequest(decision_id=decision_id), timeout=deadline_seconds
            )
        except grpc.aio.AioRpcError as e:
            error = peer_error(e, "audit", "GetDecision")
            if isinstance(error, NotFound):
                raise NotFound(f"decision_id: {decision_id!r} is not in the audit log") from None
            if isinstance(error, InvalidArgument):
                raise InvalidArgument(f"decision_id: {e.details()}") from None
            raise error from None
        entry: audit_pb.LogEntry = resp.entry
        return entry

    return get


def inference_predictor(stub: Any, deadline_seconds: float) -> Predictor:
    """A :data:`Predictor` over the inference service's PredictBatch (exact versions)."""

    async def predict(model: str, version: str, x: npt.NDArray[np.float32]) -> list[str]:
        request = inf_pb.PredictBatchRequest(
            model_name=model, version=version, inputs=[array_to_tensor(row) for row in x]
        )
        try:
            resp = await stub.PredictBatch(request, timeout=deadline_seconds)
        except grpc.aio.AioRpcError as e:
            # Inference's details are not echoed: they could quote an input.
            error = peer_error(e, "inference", "PredictBatch")
            if isinstance(error, NotFound | FailedPrecondition):
                raise FailedPrecondition(
                    f"versions: inference does not serve {model} {version} (only the active"
                    " version and a candidate in shadow or A/B are)"
                ) from None
            if isinstance(error, InvalidArgument):
                raise FailedPrecondition(
                    f"versions: {model} {version} does not take the stored inputs"
                ) from None
            raise error from None
        return [p.label for p in resp.predictions]

    return predict


def update_stager(stub: Any, deadline_seconds: float = STAGE_DEADLINE_SECONDS) -> Stager:
    """A :data:`Stager` over the update service's Stage (a candidate, never activated)."""

    async def stage(model: str, bundle: bytes, signature: bytes) -> tuple[str, str, str]:
        request = update_pb.StageRequest(
            model_name=model, local_bundle=bundle, local_signature=signature
        )
        try:
            resp = await stub.Stage(request, timeout=deadline_seconds)
        except grpc.aio.AioRpcError as e:
            error = peer_error(e, "update", "Stage")
            if is_retryable(e):
                raise error from None
            # A refusal (bad signature, version taken, ...): its kind and update's words.
            raise type(error)(
                f"the update service refused it ({status_of(e).name}: {e.details()})"
            ) from None
        ref = resp.staged.model
        return ref.name, ref.version, ref.sha256

    return stage


def privacy_recorder(
    stub: Any, hub_id: str, deadline_seconds: float, loop: asyncio.AbstractEventLoop
) -> Recorder:
    """A ledger :data:`~services.personalization.ledger.Recorder` over AppendDecisions.

    Called by the ledger in a worker thread (inside its transaction); the append runs on
    ``loop``, retried while the audit log is briefly unavailable, until the deadline.
    """

    async def append(record: PrivacyRecord) -> None:
        request = audit_pb.AppendDecisionsRequest(decisions=[record.decision(hub_id)])
        give_up = loop.time() + deadline_seconds
        delay = 0.05
        while True:
            try:
                await stub.AppendDecisions(request, timeout=max(0.1, give_up - loop.time()))
                return
            except grpc.aio.AioRpcError as e:
                if is_retryable(e) and loop.time() + delay < give_up:
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 0.5)
                    continue
                error = peer_error(e, "audit", "AppendDecisions")
                raise type(error)(
                    f"{error}; the privacy {record.action} was not made because the audit log"
                    " did not record it (the ledger fails closed)"
                ) from None

    def record(r: PrivacyRecord) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("the privacy recorder must not run on the event loop")
        asyncio.run_coroutine_threadsafe(append(r), loop).result(deadline_seconds + 5)

    return record


def privacy_records(
    stub: Any, deadline_seconds: float
) -> Callable[[], Awaitable[list[PrivacyRecord]]]:
    """Every privacy record in the audit log, in log order (QueryDecisions, paged)."""

    async def fetch() -> list[PrivacyRecord]:
        entries: list[audit_pb.LogEntry] = []
        token = ""
        while True:
            request = audit_pb.QueryDecisionsRequest(
                model_name=PRIVACY_MODEL, page_size=1000, page_token=token
            )
            request.end_time.FromDatetime(_END_OF_TIME)
            try:
                resp = await stub.QueryDecisions(request, timeout=deadline_seconds)
            except grpc.aio.AioRpcError as e:
                error = peer_error(e, "audit", "QueryDecisions")
                raise Unavailable(
                    f"{error}; the privacy ledger cannot be checked against the audit log, so"
                    " training is refused (fail closed)"
                ) from None
            entries.extend(resp.entries)
            token = resp.next_page_token
            if not token:
                break
        entries.sort(key=lambda e: e.index)
        return [PrivacyRecord.from_decision(e.decision) for e in entries]

    return fetch
