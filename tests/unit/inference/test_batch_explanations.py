"""PredictBatch with explanations answers predictions and attributions from one session
run per version: the same answers as one Predict and one Explain per input, whichever
version serves each row, and only the inputs counted as predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from roost.inference.v1 import inference_service_pb2 as pb
from services.inference.app import InferenceApp
from tests.support.rollouts import StartApp, batch_request, config, tensor, two_linear_versions

TOP_K = 2


def _inputs(n: int) -> np.ndarray:
    x = np.random.default_rng(7).normal(size=(n, 3)).astype(np.float32)
    x[0] = [0.0, 0.0, 0.0]  # every attribution 0: ties kept in feature order
    x[1] = [1.0, -1.0, 1.0]  # equal magnitudes
    return x


async def _one_by_one(
    app: InferenceApp, x: np.ndarray, versions: list[str]
) -> list[tuple[pb.Prediction, pb.ExplainResponse]]:
    out = []
    for row, version in zip(x, versions, strict=True):
        one = await app.servicer.Predict(
            pb.PredictRequest(model_name="linear", version=version, input=tensor(row)), None
        )
        why = await app.servicer.Explain(
            pb.ExplainRequest(model_name="linear", version=version, input=tensor(row), top_k=TOP_K),
            None,
        )
        out.append((one.prediction, why))
    return out


def _assert_same(
    batch: pb.PredictBatchResponse, single: list[tuple[pb.Prediction, pb.ExplainResponse]]
) -> None:
    assert len(batch.predictions) == len(single)
    for got, (want, why) in zip(batch.predictions, single, strict=True):
        assert got.model.version == want.model.version
        assert got.label == want.label
        np.testing.assert_allclose(got.values, want.values, rtol=1e-6)
        assert [a.feature for a in got.attributions] == [a.feature for a in why.attributions]
        np.testing.assert_allclose(
            [a.attribution for a in got.attributions],
            [a.attribution for a in why.attributions],
            atol=1e-6,
        )


@pytest.mark.parametrize("stage", ["shadow", "ab"])
async def test_batch_explanations_match_predict_and_explain_per_input(
    tmp_path: Path, start_app: StartApp, stage: str
) -> None:
    two_linear_versions(tmp_path, stage, share=0.5)
    app = await start_app(config(tmp_path))
    x = _inputs(40)
    ids = [f"entity-{i}" for i in range(len(x))]
    request = batch_request(x, ids)
    request.explain_top_k = TOP_K
    batch = await app.servicer.PredictBatch(request, None)
    versions = [p.model.version for p in batch.predictions]
    if stage == "ab":
        assert set(versions) == {"1.0.0", "2.0.0"}  # a mixed batch: one run per version
    else:
        assert set(versions) == {"1.0.0"}
    _assert_same(batch, await _one_by_one(app, x, versions))


async def test_a_pinned_version_explains_with_that_version(
    tmp_path: Path, start_app: StartApp
) -> None:
    two_linear_versions(tmp_path, "shadow")  # the candidate loaded, serving nothing
    app = await start_app(config(tmp_path))
    x = _inputs(5)
    request = batch_request(x)
    request.version, request.explain_top_k = "2.0.0", TOP_K
    batch = await app.servicer.PredictBatch(request, None)
    _assert_same(batch, await _one_by_one(app, x, ["2.0.0"] * len(x)))


async def test_only_the_inputs_count_as_predictions(tmp_path: Path, start_app: StartApp) -> None:
    two_linear_versions(tmp_path, "staged")
    app = await start_app(config(tmp_path))
    request = batch_request(_inputs(6))
    request.explain_top_k = TOP_K
    await app.servicer.PredictBatch(request, None)
    status = await app.servicer.GetModelStatus(pb.GetModelStatusRequest(model_name="linear"), None)
    assert status.active.predictions == 6  # not 6 x 4 occlusion rows
