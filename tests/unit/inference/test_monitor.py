"""Shadow runs: callers only see the active version while the candidate runs on the same
inputs in the background and is compared with it; regressors agree within a tolerance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from roost.inference.v1 import inference_service_pb2 as pb
from services.inference.app import InferenceApp
from services.inference.monitor import agreement
from services.inference.outputs import OutputShift, output_shift, summaries
from services.kit.errors import FailedPrecondition
from services.modelstore.registry import Registry
from tests.support.onnx_models import linear_model
from tests.support.rollouts import (
    W_ACTIVE,
    W_CANDIDATE,
    StartApp,
    batch_request,
    config,
    linear_dir,
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
    # What the percentiles rest on: one batch and one single call (the gate needs more).
    assert status.active.latency_calls == 2
    assert 1 <= c.latency_calls <= 2  # shadow runs may be coalesced
    assert status.window_seconds == 600


def test_regressors_agree_within_the_tolerance(tmp_path: Path) -> None:
    m = dataclasses.replace(linear_model(tmp_path, [1.0]).manifest, task_kind="regression")
    a = np.array([[20.0, 21.0], [20.0, 21.0], [20.0, 21.0]], dtype=np.float32)
    c = np.array([[20.4, 20.6], [20.6, 21.0], [20.0, 22.0]], dtype=np.float32)
    assert agreement(m, a, c, 0.5).tolist() == [True, False, False]


NAN_WEIGHTS = [float("nan"), 0.0, 0.0]


def nan_candidate(tmp: Path, stage: str, share: float = 0.0) -> Registry:
    """linear 1.0.0 active; 2.0.0, whose every output is NaN, the candidate at ``stage``."""
    disk = Registry(tmp / "registry")
    disk.add_version(linear_dir(tmp, W_ACTIVE, "1.0.0"), "local")
    disk.activate("linear", "1.0.0")
    disk.add_version(linear_dir(tmp, NAN_WEIGHTS, "2.0.0"), "local")
    disk.stage("linear", "2.0.0")
    disk.start_rollout("linear", stage, share)  # type: ignore[arg-type]
    return disk


async def status_of(app: InferenceApp) -> pb.GetModelStatusResponse:
    return await app.servicer.GetModelStatus(pb.GetModelStatusRequest(model_name="linear"), None)


async def test_nan_in_shadow_counts_as_errors_and_is_not_compared(
    tmp_path: Path, start_app: StartApp
) -> None:
    nan_candidate(tmp_path, "shadow")
    app = await start_app(config(tmp_path))
    x = np.random.default_rng(2).normal(size=(50, 3)).astype(np.float32)
    await app.servicer.PredictBatch(batch_request(x), None)
    await app.monitor.drain()
    c = (await status_of(app)).candidate
    assert (c.predictions, c.errors, c.non_finite, c.compared) == (0, 50, 50, 0)
    assert c.paired_latency_ratio > 0  # timed against the active on the same batch


async def test_nan_is_never_served_in_ab(tmp_path: Path, start_app: StartApp) -> None:
    nan_candidate(tmp_path, "ab", 1.0)
    app = await start_app(config(tmp_path))
    x = np.random.default_rng(3).normal(size=(40, 3)).astype(np.float32)
    ids = [f"e{i}" for i in range(40)]
    response = await app.servicer.PredictBatch(batch_request(x, ids), None)
    # Every row was routed to the candidate; it answered NaN, so the active answered.
    assert {p.model.version for p in response.predictions} == {"1.0.0"}
    assert all(
        np.isfinite(p.values).all() and np.isfinite(p.confidence) for p in response.predictions
    )
    c = (await status_of(app)).candidate
    assert (c.predictions, c.errors, c.non_finite) == (0, 40, 40)


async def test_an_active_version_answering_nan_is_refused_not_served(
    tmp_path: Path, start_app: StartApp
) -> None:
    disk = Registry(tmp_path / "registry")
    disk.add_version(linear_dir(tmp_path, NAN_WEIGHTS, "1.0.0"), "local")
    disk.activate("linear", "1.0.0")
    app = await start_app(config(tmp_path))
    x = np.ones((3, 3), dtype=np.float32)
    with pytest.raises(FailedPrecondition, match=r"non-finite outputs .* for 3 of 3 inputs"):
        await app.servicer.PredictBatch(batch_request(x), None)
    active = (await status_of(app)).active
    assert (active.predictions, active.errors, active.non_finite) == (0, 3, 3)


async def test_ab_starts_a_fresh_window_and_compares_output_distributions(
    tmp_path: Path, start_app: StartApp
) -> None:
    disk = two_linear_versions(tmp_path, "shadow")
    app = await start_app(config(tmp_path))
    x = np.random.default_rng(4).normal(size=(300, 3)).astype(np.float32)
    await app.servicer.PredictBatch(batch_request(x), None)
    await app.monitor.drain()
    assert (await status_of(app)).candidate.compared == 300
    disk.start_rollout("linear", "ab", 1.0)
    assert app.watcher is not None
    await app.watcher.refresh(force=True)
    c = (await status_of(app)).candidate
    # Shadow-phase rows do not count in A/B: the candidate has served nothing live yet.
    assert (c.predictions, c.compared, c.output_samples) == (0, 0, 0)
    await app.servicer.PredictBatch(batch_request(x, [f"e{i}" for i in range(300)]), None)
    c = (await status_of(app)).candidate
    assert (c.predictions, c.output_samples) == (300, 300)


def _rows(labels: list[float], confidence: float) -> np.ndarray:
    """Classifier summaries: (label index, confidence) per row."""
    return np.column_stack([labels, np.full(len(labels), confidence)])


def test_output_shift_sees_inverted_labels_and_shifted_forecasts(tmp_path: Path) -> None:
    m = linear_model(tmp_path, [1.0]).manifest
    labels = [0.0] * 90 + [1.0] * 10
    mostly_vacant = _rows(labels, 0.9)
    shift = output_shift(m, mostly_vacant, _rows([1.0 - v for v in labels], 0.9))
    assert shift.psi > 1.0
    assert shift.ks == pytest.approx(0.8)
    same = output_shift(m, mostly_vacant, _rows(labels[::-1], 0.9))
    assert (same.psi, same.ks, same.confidence_psi, same.confidence_samples) == (0, 0, 0, 100)
    regressor = dataclasses.replace(m, task_kind="regression")
    forecasts = np.random.default_rng(5).normal(20.0, 1.0, size=(1000, 1))
    assert output_shift(regressor, forecasts, forecasts + 0.01).psi < 0.05
    shift = output_shift(regressor, forecasts, forecasts + 3.0)
    assert shift.psi > 1.0
    assert shift.ks > 0.8
    assert shift.confidence_samples == 0  # no confidence for a regressor
    assert output_shift(m, mostly_vacant, np.empty(0)) == OutputShift()


def test_a_classifier_that_keeps_its_labels_but_collapses_its_confidence(
    tmp_path: Path,
) -> None:
    """Same label on every row, but 0.51 where the active version said ~0.95: the label
    shares see nothing, the confidence distribution does."""
    m = linear_model(tmp_path, [1.0]).manifest
    rng = np.random.default_rng(7)
    active_out = np.column_stack([rng.uniform(0.85, 1.0, 500), np.zeros(500)])
    active_out[:, 1] = 1.0 - active_out[:, 0]
    active_out[::4] = active_out[::4, ::-1]  # a quarter of the rows the other label
    collapsed = np.where(active_out > 0.5, 0.51, 0.49)
    a = summaries(m, active_out.astype(np.float32))
    c = summaries(m, collapsed.astype(np.float32))
    assert (a[:, 0] == c[:, 0]).all()  # every label kept
    shift = output_shift(m, a, c)
    assert (shift.psi, shift.ks) == (0.0, 0.0)
    assert shift.confidence_psi > 1.0
    assert shift.confidence_ks >= 0.85  # every row below the lowest decile edge
    assert shift.confidence_samples == 500
    # The same model against itself, other rows: well under the gate's 0.25.
    again = np.column_stack([rng.uniform(0.85, 1.0, 500), np.zeros(500)])
    again[:, 1] = 1.0 - again[:, 0]
    assert output_shift(m, a, summaries(m, again.astype(np.float32))).confidence_psi < 0.1
