"""gRPC servicer of the inference service: Predict, PredictBatch, Explain, ListModels,
GetModelStatus.

Each request reads the model's :class:`~services.inference.registry.Serving` once and
uses that snapshot throughout, so a concurrent hot swap never mixes versions within a
request. Routing:

- ``version`` set: exactly that version (active or a loaded candidate).
- stage ``ab``: per entity (``entity_id``), ``Serving.routes_to_candidate``; a batch
  with mixed routing runs both versions on their sub-batches and reassembles the
  predictions in request order. If the candidate fails, its rows fall back to the
  active version (counted as candidate errors), so the rollout never fails a caller.
- otherwise (and always without an entity id): the active version.

Every ``Prediction.model`` names the version that produced it; the response-level
``model`` stays the active version. After the answer is computed, the inputs go to the
:class:`~services.inference.monitor.Monitor` (drift, and in shadow the candidate's
background run), which never blocks the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter

from models.manifest import Manifest
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as pb
from roost.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.explain import (
    attributions,
    block_attributions,
    block_width,
    occlusion_batch,
    occlusion_rows,
    top_features,
)
from services.inference.health import HealthBook, HealthSnapshot
from services.inference.monitor import Monitor
from services.inference.outputs import finite_rows, non_finite_error, output_shift, summaries
from services.inference.registry import LoadedModel, ModelRegistry, Serving
from services.kit.auth import Policy, Role
from services.kit.call_streams import ordered_replies
from services.kit.errors import InvalidArgument
from services.kit.paging import decode_offset, encode_offset, page_size
from services.kit.tensors import DTYPE_ENUM, tensor_to_array

log = logging.getLogger(__name__)

PREDICTIONS = Counter(
    "roost_inference_predictions_total",
    "Predictions served, by model and version.",
    ["model", "version"],
)
NON_FINITE = Counter(
    "roost_inference_non_finite_outputs_total",
    "Rows a version answered with NaN or infinity (never served).",
    ["model", "version"],
)

SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"]
_SVC = f"/{SERVICE.full_name}/"
POLICY: Policy = {
    _SVC + "Predict": frozenset({Role.HUB, Role.UPDATE, Role.PERSONALIZATION, Role.ADMIN}),
    _SVC + "PredictBatch": frozenset({Role.HUB, Role.UPDATE, Role.PERSONALIZATION, Role.ADMIN}),
    _SVC + "PredictBatchStream": frozenset({Role.HUB}),
    _SVC + "Explain": frozenset({Role.HUB, Role.UPDATE, Role.ADMIN, Role.AUDITOR}),
    _SVC + "ListModels": frozenset(
        {Role.HUB, Role.UPDATE, Role.PERSONALIZATION, Role.ADMIN, Role.AUDITOR}
    ),
    _SVC + "GetModelStatus": frozenset({Role.UPDATE, Role.ADMIN, Role.HUB, Role.AUDITOR}),
}
STAGE_ENUM: dict[str, pb.RolloutStage.ValueType] = {
    "none": pb.ROLLOUT_STAGE_NONE,
    "staged": pb.ROLLOUT_STAGE_STAGED,
    "shadow": pb.ROLLOUT_STAGE_SHADOW,
    "ab": pb.ROLLOUT_STAGE_AB,
}


def model_ref(m: Manifest) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=m.name, version=m.version, sha256=m.sha256)


def to_prediction(
    m: Manifest, row: npt.NDArray[np.float32], ref: common_pb2.ModelRef | None = None
) -> pb.Prediction:
    """One output row as a Prediction of model ``m`` (``ref``: its ModelRef, if built)."""
    values = [float(v) for v in row]
    ref = ref if ref is not None else model_ref(m)
    if m.task_kind != "classification":
        return pb.Prediction(values=values, model=ref)
    k = int(np.argmax(row))
    label = m.output_labels[k] if k < len(m.output_labels) else str(k)
    return pb.Prediction(values=values, label=label, confidence=float(row[k]), model=ref)


def _attach_attributions(
    m: Manifest, out_rows: npt.NDArray[np.float32], predictions: list[pb.Prediction], top_k: int
) -> None:
    """Adds the top-k occlusion attributions to each prediction, from the outputs of
    its :func:`occlusion_rows` block."""
    _, deltas = block_attributions(m, out_rows)
    names = m.input.feature_names()
    for prediction, row, top in zip(predictions, deltas, top_features(deltas, top_k), strict=True):
        prediction.attributions.extend(
            common_pb2.FeatureAttribution(feature=names[j], attribution=float(row[j])) for j in top
        )


def _predictions(m: Manifest, out: npt.NDArray[np.float32]) -> list[pb.Prediction]:
    ref = model_ref(m)
    return [to_prediction(m, row, ref) for row in out]


# Model names and versions longer than this are refused without being echoed (a 100 KB
# name in a NOT_FOUND message overflowed the status metadata: RESOURCE_EXHAUSTED).
MAX_NAME_CHARS = 64


def _require_model_name(name: str) -> None:
    if not name:
        raise InvalidArgument("model_name: required")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"model_name: longer than {MAX_NAME_CHARS} characters")


def _select(serving: Serving, version: str) -> LoadedModel:
    """The requested version of ``serving`` ("" = active)."""
    if not version:
        return serving.active
    if len(version) > MAX_NAME_CHARS:
        raise InvalidArgument(f"version: longer than {MAX_NAME_CHARS} characters")
    return serving.version(version)


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(
        self, registry: ModelRegistry, max_batch: int, monitor: Monitor | None = None
    ) -> None:
        self._registry = registry
        self._max_batch = max_batch
        self._monitor = monitor if monitor is not None else Monitor(registry)

    def _serving(self, name: str) -> Serving:
        _require_model_name(name)
        return self._registry.serving(name)

    def _model(self, name: str, version: str) -> LoadedModel:
        return _select(self._serving(name), version)

    async def _predict(
        self, model: LoadedModel, batch: npt.NDArray[np.generic]
    ) -> npt.NDArray[np.float32]:
        """Run ``model`` on the batch, counting the outcome in its health stats; a batch
        with a non-finite output row is refused whole (``services.inference.outputs``)."""
        return (await self._predict_rows(model, batch, 1))[0]

    async def _predict_rows(
        self, model: LoadedModel, rows: npt.NDArray[np.generic], width: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Like :meth:`_predict` for inputs given as blocks of ``width`` rows, the input
        first (occlusion rows, ``width`` > 1, or the plain batch, 1): (the inputs'
        outputs, every row's outputs). Only the inputs are counted as predictions."""
        m = model.manifest
        n = len(rows) // width
        stats = self._registry.health.of(m.name, m.version)
        try:
            out_rows = await self._registry.run(model, rows)
        except Exception:
            stats.outcome(errors=n)
            raise
        out = out_rows[::width]
        finite = finite_rows(out)
        bad = n - int(finite.sum())
        if bad:
            NON_FINITE.labels(m.name, m.version).inc(bad)
            stats.outcome(predictions=n - bad, errors=bad, non_finite=bad)
            raise non_finite_error(m, bad, n)
        stats.outcome(predictions=n)
        stats.outputs(summaries(m, out))
        PREDICTIONS.labels(m.name, m.version).inc(n)
        return out, out_rows

    async def _predict_routed(
        self, serving: Serving, batch: npt.NDArray[np.generic], to_candidate: list[bool]
    ) -> tuple[list[pb.Prediction], npt.NDArray[np.float32] | None]:
        """Predictions in request order; also the active outputs of the whole batch when
        the active version answered every row (what a shadow run compares with)."""
        active = serving.active
        candidate = serving.candidate
        idx = np.flatnonzero(to_candidate)
        if candidate is None or len(idx) == 0:
            out = await self._predict(active, batch)
            return _predictions(active.manifest, out), out
        rest = np.flatnonzero(np.logical_not(to_candidate))
        predictions: list[pb.Prediction | None] = [None] * len(batch)
        if len(rest):
            out_a = await self._predict(active, batch[rest])
            for i, pred in zip(rest, _predictions(active.manifest, out_a), strict=True):
                predictions[i] = pred
        try:
            out_c = await self._predict(candidate, batch[idx])
            served = candidate
        except Exception as e:
            # A/B must not fail callers: the candidate's rows fall back to active.
            log.warning(
                "candidate %s %s failed (%s); its rows fall back to active",
                candidate.manifest.name,
                candidate.manifest.version,
                type(e).__name__,
            )
            out_c = await self._predict(active, batch[idx])
            served = active
        for i, pred in zip(idx, _predictions(served.manifest, out_c), strict=True):
            predictions[i] = pred
        return [p for p in predictions if p is not None], None

    async def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        with self._monitor.request():
            return await self._predict_one(request)

    async def PredictBatch(
        self, request: pb.PredictBatchRequest, context: Any
    ) -> pb.PredictBatchResponse:
        return await self._predict_batch_counted(request)

    async def PredictBatchStream(
        self, requests: AsyncIterable[pb.PredictBatchStreamRequest], context: Any
    ) -> AsyncIterator[pb.PredictBatchStreamResponse]:
        """PredictBatch for each request of the stream; one reply each, in order."""
        async for reply in ordered_replies(
            requests,
            lambda m: self._predict_batch_counted(m.request),
            pb.PredictBatchStreamResponse,
            context=context,
            service=Role.INFERENCE.value,
            method="PredictBatch",
        ):
            yield reply

    async def _predict_batch_counted(
        self, request: pb.PredictBatchRequest
    ) -> pb.PredictBatchResponse:
        with self._monitor.request():
            return await self._predict_batch(request)

    async def _predict_one(self, request: pb.PredictRequest) -> pb.PredictResponse:
        serving = self._serving(request.model_name)
        model = _select(serving, request.version)
        m = model.manifest
        if not request.HasField("input"):
            raise InvalidArgument("input: required")
        x = tensor_to_array(request.input, m.input, "input")[None, ...]
        if request.version:
            out = await self._predict(model, x)
            prediction, active_out = to_prediction(m, out[0]), None
        else:
            to_candidate = [serving.routes_to_candidate(request.entity_id)]
            predictions, active_out = await self._predict_routed(serving, x, to_candidate)
            prediction = predictions[0]
        self._monitor.after(serving, x, active_out)
        return pb.PredictResponse(model=model_ref(m), prediction=prediction)

    async def _predict_batch(self, request: pb.PredictBatchRequest) -> pb.PredictBatchResponse:
        serving = self._serving(request.model_name)
        model = _select(serving, request.version)
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
        if request.explain_top_k < 0:
            raise InvalidArgument("explain_top_k: must be >= 0")
        to_candidate: list[bool] = []
        if not request.version and serving.stage == "ab" and serving.candidate is not None:
            to_candidate = [serving.routes_to_candidate(e) for e in request.entity_ids]
        active_out: npt.NDArray[np.float32] | None
        if request.explain_top_k and not any(to_candidate):
            # One version answers every row: predictions and explanations in one run.
            out, out_rows = await self._predict_rows(
                model, occlusion_rows(m, batch), block_width(m)
            )
            predictions = _predictions(m, out)
            _attach_attributions(m, out_rows, predictions, request.explain_top_k)
            active_out = None if request.version else out
        elif request.version:
            out = await self._predict(model, batch)
            predictions, active_out = _predictions(m, out), None
        else:
            predictions, active_out = await self._predict_routed(serving, batch, to_candidate)
            if request.explain_top_k:
                await self._explain_each(serving, model, batch, predictions, request.explain_top_k)
        self._monitor.after(serving, batch, active_out)
        return pb.PredictBatchResponse(model=model_ref(m), predictions=predictions)

    async def _explain_each(
        self,
        serving: Serving,
        default: LoadedModel,
        batch: npt.NDArray[np.generic],
        predictions: list[pb.Prediction],
        top_k: int,
    ) -> None:
        """Adds the top-k occlusion attributions to each prediction, computed with the
        version that produced it, in one session.run per version."""
        by_version: dict[str, list[int]] = {}
        for i, p in enumerate(predictions):
            by_version.setdefault(p.model.version, []).append(i)
        for version, rows in by_version.items():
            model = default if version == default.manifest.version else serving.version(version)
            m = model.manifest
            out = await self._registry.run(model, occlusion_rows(m, batch[rows]))
            _attach_attributions(m, out, [predictions[i] for i in rows], top_k)

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

    async def GetModelStatus(
        self, request: pb.GetModelStatusRequest, context: Any
    ) -> pb.GetModelStatusResponse:
        serving = self._serving(request.model_name)
        health = self._registry.health
        a = serving.active.manifest
        response = pb.GetModelStatusResponse(
            active=_role_health(model_ref(a), True, health.snapshot(a.name, a.version), False),
            stage=STAGE_ENUM.get(serving.stage, pb.ROLLOUT_STAGE_UNSPECIFIED),
            share=serving.share,
            generation=serving.generation,
            window_seconds=health.window_seconds,
            shadow_dropped=self._monitor.dropped.get(a.name, 0),
        )
        if serving.candidate_version is not None:
            c = serving.candidate
            ref = (
                model_ref(c.manifest)
                if c is not None
                else common_pb2.ModelRef(name=a.name, version=serving.candidate_version)
            )
            snap = health.snapshot(a.name, serving.candidate_version)
            candidate = _role_health(ref, c is not None, snap, serving.stage == "shadow")
            _compare_outputs(candidate, serving, health)
            response.candidate.CopyFrom(candidate)
        drift = self._monitor.drift_for(a)
        response.drift_window_seconds = self._monitor.drift_settings.window_seconds
        if drift is not None:
            stats = await asyncio.to_thread(drift.export)
            response.drift_monitored = True
            response.drift_alert = any(st.alert for st in stats)
            response.drift.extend(
                pb.FeatureDrift(
                    feature=st.feature, psi=st.psi, ks=st.ks, alert=st.alert, samples=st.samples
                )
                for st in stats
            )
        return response

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        size = page_size(request.page_size)
        start = decode_offset(request.page_token)
        models = self._registry.all()
        page = models[start : start + size]
        nxt = start + size
        return pb.ListModelsResponse(
            models=[_model_info(lm) for lm in page],
            next_page_token=encode_offset(nxt) if nxt < len(models) else "",
        )


def _role_health(
    ref: common_pb2.ModelRef, loaded: bool, snap: HealthSnapshot, compared: bool
) -> pb.RoleHealth:
    health = pb.RoleHealth(
        model=ref,
        loaded=loaded,
        predictions=snap.predictions,
        errors=snap.errors,
        error_rate=snap.error_rate,
        latency_p50_seconds=snap.latency_p50_seconds,
        latency_p99_seconds=snap.latency_p99_seconds,
        latency_calls=snap.latency_calls,
    )
    health.non_finite = snap.non_finite
    if compared:
        health.compared = snap.compared
        health.agreement_rate = snap.agreement_rate
        health.paired_latency_ratio = snap.paired_latency_ratio
    return health


def _compare_outputs(candidate: pb.RoleHealth, serving: Serving, health: HealthBook) -> None:
    """The candidate's output distribution against the active version's (same window)."""
    a = serving.active.manifest
    active_stats = health.stats(a.name, a.version)
    candidate_stats = health.stats(a.name, candidate.model.version)
    if active_stats is None or candidate_stats is None:
        return
    values = candidate_stats.output_values()
    shift = output_shift(a, active_stats.output_values(), values)
    candidate.output_psi, candidate.output_ks = shift.psi, shift.ks
    candidate.output_samples = len(values)
    candidate.confidence_psi, candidate.confidence_ks = shift.confidence_psi, shift.confidence_ks
    candidate.confidence_samples = shift.confidence_samples


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
        execution_provider=lm.execution_provider,
    )
