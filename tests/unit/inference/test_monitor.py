"""Shadow runs: callers only see the active version while the candidate runs on the same
inputs in the background and is compared with it; regressors agree within a tolerance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from roost.inference.v1 import inference_service_pb2 as pb
from services.inference.monitor import agreement
from tests.support.onnx_models import linear_model
from tests.support.rollouts import (
    W_ACTIVE,
    W_CANDIDATE,
    StartApp,
    batch_request,
    config,
    linear_probs,
    tensor,
    two_linear_versions,
)


async def test_shadow_runs_the_candidate_in_the_background(
    tmp_path: Path, start_app: StartApp
) -> None:
    two_linear_versions(tmp_path, "shadow")
    app = await start_app(config(tmp_path))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    response = await app.servicer.PredictBatch(batch_request(x), None)
    # Callers only ever see the active version.
    assert response.model.version == "1.0.0"
    assert {p.model.version for p in response.predictions} == {"1.0.0"}
    got = np.array([p.values for p in response.predictions])
    assert np.allclose(got, linear_probs(W_ACTIVE, x), atol=1e-5)
    single = await app.servicer.Predict(
        pb.PredictRequest(model_name="linear", input=tensor(x[0]), entity_id="e1"), None
    )
    assert single.prediction.model.version == "1.0.0"
    await app.monitor.drain()

    status = await app.servicer.GetModelStatus(pb.GetModelStatusRequest(model_name="linear"), None)
    assert status.stage == pb.ROLLOUT_STAGE_SHADOW
    assert (status.active.model.version, status.active.predictions) == ("1.0.0", 201)
    c = status.candidate
    assert (c.model.version, c.loaded, c.predictions, c.errors, c.compared) == (
        "2.0.0",
        True,
        201,
        0,
        201,
    )
    xs = np.vstack([x, x[:1]])
    expected = np.mean((xs @ W_ACTIVE > 0) == (xs @ W_CANDIDATE > 0))
    assert 0.2 < expected < 0.8  # the two versions really disagree on some inputs
    assert c.agreement_rate == pytest.approx(expected)
    assert 0 < status.active.latency_p50_seconds <= status.active.latency_p99_seconds
    assert 0 < c.latency_p50_seconds <= c.latency_p99_seconds
    assert status.window_seconds == 600


def test_regressors_agree_within_the_tolerance(tmp_path: Path) -> None:
    m = dataclasses.replace(linear_model(tmp_path, [1.0]).manifest, task_kind="regression")
    a = np.array([[20.0, 21.0], [20.0, 21.0], [20.0, 21.0]], dtype=np.float32)
    c = np.array([[20.4, 20.6], [20.6, 21.0], [20.0, 22.0]], dtype=np.float32)
    assert agreement(m, a, c, 0.5).tolist() == [True, False, False]
