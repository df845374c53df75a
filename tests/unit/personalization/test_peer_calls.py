"""Calls to the audit, inference and update services over fake stubs: the requests they
send, and how each peer's failures become domain errors (refusals keep their meaning,
outages are Unavailable, INVALID_ARGUMENT is never retryable, inference's details are
never echoed)."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.update.v1 import update_service_pb2 as update_pb
from services.kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RoostError,
    Unavailable,
)
from services.personalization.peer_calls import (
    audit_decisions,
    inference_predictor,
    update_stager,
)

# A distinctive value: a peer's details that quote it must not be echoed.
SECRET = 1234.5678


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FakeStub:
    """One stub for the three peers: answers, or fails every call with ``error``."""

    def __init__(self, error: grpc.StatusCode | None = None, details: str = "") -> None:
        self.error = error
        self.details = details
        self.requests: list[Any] = []
        self.timeouts: list[float] = []

    def _call(self, request: Any, timeout: float) -> None:
        self.requests.append(request)
        self.timeouts.append(timeout)
        if self.error is not None:
            raise rpc_error(self.error, self.details)

    async def PredictBatch(
        self, request: inf_pb.PredictBatchRequest, timeout: float
    ) -> inf_pb.PredictBatchResponse:
        self._call(request, timeout)
        return inf_pb.PredictBatchResponse(
            predictions=[inf_pb.Prediction(label="vacant") for _ in request.inputs]
        )

    async def GetDecision(
        self, request: audit_pb.GetDecisionRequest, timeout: float
    ) -> audit_pb.GetDecisionResponse:
        self._call(request, timeout)
        response = audit_pb.GetDecisionResponse()
        response.entry.decision.model.name = "occupancy"
        return response

    async def Stage(self, request: update_pb.StageRequest, timeout: float) -> Any:
        self._call(request, timeout)
        response = update_pb.StageResponse()
        response.staged.model.CopyFrom(
            common_pb2.ModelRef(name=request.model_name, version="1.0.0.1", sha256="ab" * 32)
        )
        return response


def rows() -> np.ndarray:
    return np.asarray([[1.0, SECRET, 0, 0, 0, 1], [0.0, SECRET, 1, 0, 0, 1]], dtype=np.float32)


async def test_the_inference_adapter_asks_for_the_exact_version_and_echoes_no_details() -> None:
    stub = FakeStub()
    predict = inference_predictor(stub, 5.0)
    assert await predict("occupancy", "1.2.0", rows()) == ["vacant", "vacant"]
    (request,) = stub.requests
    assert (request.model_name, request.version, len(request.inputs)) == ("occupancy", "1.2.0", 2)
    assert list(request.inputs[1].shape) == [6]
    assert request.inputs[1].float_values[1] == pytest.approx(SECRET)
    assert stub.timeouts == [5.0]
    for code, error, match in (
        (grpc.StatusCode.NOT_FOUND, FailedPrecondition, "does not serve"),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition, "does not serve"),
        (grpc.StatusCode.INVALID_ARGUMENT, FailedPrecondition, "does not take the stored inputs"),
        (grpc.StatusCode.UNAVAILABLE, Unavailable, "PredictBatch failed \\(UNAVAILABLE\\)"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable, "DEADLINE_EXCEEDED"),
        (grpc.StatusCode.INTERNAL, Unavailable, "INTERNAL"),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied, "PERMISSION_DENIED"),
    ):
        stub = FakeStub(code, details=f"x={SECRET}")
        with pytest.raises(error, match=match) as e:
            await inference_predictor(stub, 5.0)("occupancy", "1.2.0", rows())
        assert type(e.value) is error
        assert "1234" not in str(e.value)


async def test_the_audit_adapter_reads_one_decision_and_translates_failures() -> None:
    stub = FakeStub()
    entry = await audit_decisions(stub, 3.0)("d1")
    assert entry.decision.model.name == "occupancy"
    assert [r.decision_id for r in stub.requests] == ["d1"]
    assert stub.timeouts == [3.0]
    cases: list[tuple[grpc.StatusCode, type[RoostError], str]] = [
        (grpc.StatusCode.NOT_FOUND, NotFound, "'d1' is not in the audit log"),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument, "decision_id: not a UUID"),
        (grpc.StatusCode.UNAVAILABLE, Unavailable, "GetDecision failed \\(UNAVAILABLE\\)"),
        (grpc.StatusCode.UNKNOWN, Unavailable, "GetDecision failed \\(UNKNOWN\\)"),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied, "PERMISSION_DENIED"),
    ]
    for code, error, match in cases:
        with pytest.raises(error, match=match) as e:
            await audit_decisions(FakeStub(code, details="not a UUID"), 3.0)("d1")
        assert type(e.value) is error


async def test_the_update_adapter_stages_and_keeps_refusals_apart_from_outages() -> None:
    stub = FakeStub()
    staged = await update_stager(stub)("occupancy", b"bundle", b"signature")
    assert staged == ("occupancy", "1.0.0.1", "ab" * 32)
    (request,) = stub.requests
    assert (request.model_name, request.local_bundle, request.local_signature) == (
        "occupancy",
        b"bundle",
        b"signature",
    )
    assert stub.timeouts == [60.0]
    cases: list[tuple[grpc.StatusCode, type[RoostError], str]] = [
        # Refusals: update's words, never a retryable Unavailable.
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition, "refused it"),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument, "refused it"),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied, "refused it"),
        # Outages: Unavailable, whatever update would have said.
        (grpc.StatusCode.UNAVAILABLE, Unavailable, "Stage failed \\(UNAVAILABLE\\)"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable, "DEADLINE_EXCEEDED"),
        (grpc.StatusCode.INTERNAL, Unavailable, "INTERNAL"),
    ]
    for code, error, match in cases:
        with pytest.raises(error, match=match) as e:
            await update_stager(FakeStub(code, details="bad signature"))("occupancy", b"b", b"s")
        assert type(e.value) is error
        assert ("bad signature" in str(e.value)) == (error is not Unavailable)
