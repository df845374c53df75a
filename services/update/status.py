"""Health and drift of a model, as the inference service measures them."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.update.v1 import update_service_pb2 as pb
from services.kit.errors import Unavailable
from services.update.health import RoleHealth

logger = logging.getLogger(__name__)


def role_health(h: inf_pb.RoleHealth) -> RoleHealth | None:
    if not h.loaded:
        return None
    return RoleHealth(
        version=h.model.version,
        predictions=int(h.predictions),
        errors=int(h.errors),
        p99_seconds=float(h.latency_p99_seconds),
        agreement=float(h.agreement_rate) if h.compared else 1.0,
        compared=int(h.compared),
    )


class InferenceStatus:
    """``GetModelStatus`` of the inference service, as the update service needs it."""

    def __init__(self, channel: Any, timeout: float = 2.0) -> None:
        self._stub = inf_grpc.InferenceServiceStub(channel)
        self._timeout = timeout

    async def _status(self, name: str) -> inf_pb.GetModelStatusResponse:
        try:
            response: inf_pb.GetModelStatusResponse = await self._stub.GetModelStatus(
                inf_pb.GetModelStatusRequest(model_name=name), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as e:
            raise Unavailable(
                f"inference status of {name} unavailable ({e.code().name}: {e.details()})"
            ) from None
        return response

    async def health(self, name: str) -> tuple[RoleHealth | None, RoleHealth | None]:
        status = await self._status(name)
        candidate = role_health(status.candidate) if status.HasField("candidate") else None
        return role_health(status.active), candidate

    async def drift(self, name: str) -> list[pb.FeatureDrift]:
        status = await self._status(name)
        return [
            pb.FeatureDrift(feature=f.feature, psi=f.psi, ks_statistic=f.ks, alert=f.alert)
            for f in status.drift
        ]
