"""The decision path's two calls, each over one long-lived stream to its service.

:class:`StreamedInference` and :class:`StreamedAudit` have the unary stubs' method
(``PredictBatch``, ``AppendDecisions``) and its outcomes (the response, or
``grpc.aio.AioRpcError`` with the same codes), so the pipeline's retry and isolation
rules (:mod:`hub.predict`, :mod:`hub.pipeline`) are unchanged; underneath, each call is
one message on ``PredictBatchStream`` / ``AppendDecisionsStream``
(:class:`services.kit.call_streams.StreamedCalls`). Every call waits for the channel
to be ready, as the unary calls did with ``wait_for_ready``.
"""

from __future__ import annotations

from typing import Protocol

from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from services.kit.call_streams import StreamedCalls


class PredictsBatches(Protocol):
    """What the pipeline needs of inference: the unary stub, or :class:`StreamedInference`."""

    async def PredictBatch(
        self, request: inf_pb.PredictBatchRequest, *, timeout: float, wait_for_ready: bool
    ) -> inf_pb.PredictBatchResponse: ...


class AppendsDecisions(Protocol):
    """What the pipeline needs of audit: the unary stub, or :class:`StreamedAudit`."""

    async def AppendDecisions(
        self, request: audit_pb.AppendDecisionsRequest, *, timeout: float, wait_for_ready: bool
    ) -> audit_pb.AppendDecisionsResponse: ...


class StreamedInference:
    def __init__(self, stub: inf_grpc.InferenceServiceAsyncStub) -> None:
        self._calls: StreamedCalls[inf_pb.PredictBatchRequest, inf_pb.PredictBatchResponse] = (
            StreamedCalls(
                stub.PredictBatchStream,
                "PredictBatchStream",
                lambda r: inf_pb.PredictBatchStreamRequest(request=r),
            )
        )

    async def PredictBatch(
        self, request: inf_pb.PredictBatchRequest, *, timeout: float, wait_for_ready: bool = True
    ) -> inf_pb.PredictBatchResponse:
        return await self._calls(request, timeout=timeout)

    async def close(self) -> None:
        await self._calls.close()


class StreamedAudit:
    def __init__(self, stub: audit_grpc.AuditServiceAsyncStub) -> None:
        self._calls: StreamedCalls[
            audit_pb.AppendDecisionsRequest, audit_pb.AppendDecisionsResponse
        ] = StreamedCalls(
            stub.AppendDecisionsStream,
            "AppendDecisionsStream",
            lambda r: audit_pb.AppendDecisionsStreamRequest(request=r),
        )

    async def AppendDecisions(
        self,
        request: audit_pb.AppendDecisionsRequest,
        *,
        timeout: float,
        wait_for_ready: bool = True,
    ) -> audit_pb.AppendDecisionsResponse:
        return await self._calls(request, timeout=timeout)

    async def close(self) -> None:
        await self._calls.close()
