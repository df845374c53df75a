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
  an outage is ``Unavailable``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc
import numpy as np
import numpy.typing as npt

from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.update.v1 import update_service_pb2 as update_pb
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.kit.peers import is_retryable, peer_error, status_of
from services.kit.tensors import array_to_tensor

#: Staging unpacks and verifies a bundle: allow it time.
STAGE_DEADLINE_SECONDS: Final = 60.0

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
