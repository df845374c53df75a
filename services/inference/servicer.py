"""gRPC servicer of the inference service: Predict, PredictBatch, Explain, ListModels."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter

from models.manifest import Manifest
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as pb
from roost.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.explain import attributions, occlusion_batch
from services.inference.registry import LoadedModel, ModelRegistry
from services.inference.validation import DTYPE_ENUM, tensor_to_array
from services.kit.auth import Policy, Role
from services.kit.errors import InvalidArgument

PREDICTIONS = Counter(
    "roost_inference_predictions_total",
    "Predictions served, by model and version.",
    ["model", "version"],
)

_SVC = "/roost.inference.v1.InferenceService/"
POLICY: Policy = {
    _SVC + "Predict": frozenset({Role.HUB, Role.UPDATE, Role.PERSONALIZATION, Role.ADMIN}),
    _SVC + "PredictBatch": frozenset({Role.HUB, Role.UPDATE, Role.PERSONALIZATION, Role.ADMIN}),
    _SVC + "Explain": frozenset({Role.HUB, Role.UPDATE, Role.ADMIN, Role.AUDITOR}),
    _SVC + "ListModels": frozenset(
        {Role.HUB, Role.UPDATE, Role.PERSONALIZATION, Role.ADMIN, Role.AUDITOR}
    ),
}
MAX_PAGE_SIZE = 100


def model_ref(m: Manifest) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=m.name, version=m.version, sha256=m.sha256)


def to_prediction(m: Manifest, row: npt.NDArray[np.float32]) -> pb.Prediction:
    values = [float(v) for v in row]
    if m.task_kind != "classification":
        return pb.Prediction(values=values)
    k = int(np.argmax(row))
    label = m.output_labels[k] if k < len(m.output_labels) else str(k)
    return pb.Prediction(values=values, label=label, confidence=float(row[k]))


def _require_model_name(name: str) -> None:
    if not name:
        raise InvalidArgument("model_name: required")


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, registry: ModelRegistry, max_batch: int) -> None:
        self._registry = registry
        self._max_batch = max_batch

    def _model(self, name: str, version: str) -> LoadedModel:
        _require_model_name(name)
        return self._registry.get(name, version)

    async def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        model = self._model(request.model_name, request.version)
        m = model.manifest
        if not request.HasField("input"):
            raise InvalidArgument("input: required")
        x = tensor_to_array(request.input, m.input, "input")
        out = await self._registry.run(model, x[None, ...])
        PREDICTIONS.labels(m.name, m.version).inc()
        return pb.PredictResponse(model=model_ref(m), prediction=to_prediction(m, out[0]))

    async def PredictBatch(
        self, request: pb.PredictBatchRequest, context: Any
    ) -> pb.PredictBatchResponse:
        model = self._model(request.model_name, request.version)
        m = model.manifest
        n = len(request.inputs)
        if n == 0:
            raise InvalidArgument("inputs: at least one input is required")
        if n > self._max_batch:
            raise InvalidArgument(f"inputs: {n} inputs, at most {self._max_batch} per batch")
        if request.entity_ids and len(request.entity_ids) != n:
            raise InvalidArgument(f"entity_ids: {len(request.entity_ids)} ids for {n} inputs")
        batch = np.stack(
            [tensor_to_array(t, m.input, f"inputs[{i}]") for i, t in enumerate(request.inputs)]
        )
        out = await self._registry.run(model, batch)
        PREDICTIONS.labels(m.name, m.version).inc(n)
        return pb.PredictBatchResponse(
            model=model_ref(m), predictions=[to_prediction(m, row) for row in out]
        )

    async def Explain(self, request: pb.ExplainRequest, context: Any) -> pb.ExplainResponse:
        model = self._model(request.model_name, request.version)
        m = model.manifest
        if not request.HasField("input"):
            raise InvalidArgument("input: required")
        if request.top_k < 0:
            raise InvalidArgument("top_k: must be >= 0")
        x = tensor_to_array(request.input, m.input, "input")
        out = await self._registry.run(model, occlusion_batch(m, x))
        _, scores = attributions(m, out)
        ranked = sorted(zip(m.input.feature_names(), scores, strict=True), key=lambda p: -abs(p[1]))
        if request.top_k:
            ranked = ranked[: request.top_k]
        return pb.ExplainResponse(
            model=model_ref(m),
            prediction=to_prediction(m, out[0]),
            method=pb.EXPLANATION_METHOD_OCCLUSION,
            attributions=[
                common_pb2.FeatureAttribution(feature=f, attribution=a) for f, a in ranked
            ],
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        size = request.page_size or MAX_PAGE_SIZE
        if not 0 < size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size: must be between 1 and {MAX_PAGE_SIZE}")
        start = _decode_offset(request.page_token)
        models = self._registry.all()
        page = models[start : start + size]
        nxt = start + size
        return pb.ListModelsResponse(
            models=[_model_info(lm) for lm in page],
            next_page_token=_encode_offset(nxt) if nxt < len(models) else "",
        )


def _model_info(lm: LoadedModel) -> pb.ModelInfo:
    m = lm.manifest
    loaded = Timestamp()
    loaded.FromDatetime(lm.loaded_at)
    return pb.ModelInfo(
        model=model_ref(m),
        task_kind=(
            pb.TASK_KIND_CLASSIFICATION
            if m.task_kind == "classification"
            else pb.TASK_KIND_REGRESSION
        ),
        input_schema=pb.InputSchema(
            input_name=m.input.name,
            dtype=DTYPE_ENUM[m.input.dtype],
            shape=list(m.input.shape),
            features=[pb.FeatureSpec(name=f.name, unit=f.unit) for f in m.input.features],
        ),
        output_names=list(m.output_labels),
        loaded_at=loaded,
        feature_spec=m.feature_spec,
    )


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def _decode_offset(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if not text.startswith("o:"):
            raise ValueError(text)
        offset = int(text[2:])
    except ValueError:
        raise InvalidArgument(
            "page_token: invalid; pass back a next_page_token unchanged"
        ) from None
    if offset < 0:
        raise InvalidArgument("page_token: invalid; pass back a next_page_token unchanged")
    return offset
