"""Input drift: PSI and KS match their definitions, the alert flips when live inputs
shift (and no metric label carries an input value), malformed references are refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import REGISTRY

from models.manifest import MANIFEST_FILE, ManifestError, parse_manifest
from models.reference import reference_histograms
from roost.inference.v1 import inference_service_pb2 as pb
from services.inference.drift import EPSILON, DriftMonitor, DriftSettings
from tests.support.onnx_models import linear_model
from tests.support.rollouts import (
    W_ACTIVE,
    StartApp,
    batch_request,
    config,
    metric,
    two_linear_versions,
)


def direct_psi_ks(
    edges: tuple[float, ...], probs: tuple[float, ...], values: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """PSI and KS straight from the definitions, one feature at a time."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(probs))
    p_live = counts / counts.sum()
    p_ref = np.asarray(probs)
    q_live = (p_live + EPSILON) / (1 + EPSILON * len(probs))
    q_ref = (p_ref + EPSILON) / (1 + EPSILON * len(probs))
    psi = float(np.sum((q_live - q_ref) * np.log(q_live / q_ref)))
    ks = float(np.max(np.abs(np.cumsum(p_live) - np.cumsum(p_ref))[:-1]))
    return psi, ks


def test_psi_and_ks_match_a_direct_computation(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train = np.stack(
        [rng.normal(size=4000), rng.exponential(size=4000), rng.integers(0, 2, 4000)], axis=1
    )
    reference = reference_histograms(train, ["f0", "f1", "f2"])
    assert len(reference["f0"].probs) == 10
    assert reference["f2"].edges == (0.0, 1.0)  # a binary feature: <= 0, (0, 1], > 1
    for ref in reference.values():
        assert sum(ref.probs) == pytest.approx(1.0, abs=1e-5)
    manifest = dataclasses.replace(linear_model(tmp_path, W_ACTIVE).manifest, reference=reference)
    now = [0.0]
    drift = DriftMonitor(manifest, DriftSettings(min_samples=100), clock=lambda: now[0])
    live = np.stack(
        [rng.normal(1.0, 1.2, 700), rng.exponential(size=700), rng.integers(0, 2, 700)], axis=1
    )
    for chunk in np.array_split(live, 7):
        drift.observe(chunk.astype(np.float32))
    stats = {s.feature: s for s in drift.stats()}
    for j, name in enumerate(["f0", "f1", "f2"]):
        values = live[:, j].astype(np.float32).astype(np.float64)
        psi, ks = direct_psi_ks(reference[name].edges, reference[name].probs, values)
        assert stats[name].psi == pytest.approx(psi, rel=1e-6, abs=1e-9)
        assert stats[name].ks == pytest.approx(ks, rel=1e-6, abs=1e-9)
        assert stats[name].samples == 700
    assert stats["f0"].alert
    assert stats["f0"].psi > 0.25
    assert not stats["f1"].alert
    assert stats["f1"].psi < 0.1
    # The window: a day later the counts have rolled out.
    now[0] += 25 * 3600
    assert all(s.samples == 0 and s.psi == 0 and not s.alert for s in drift.stats())


async def test_drift_alert_flips_when_live_inputs_shift(
    tmp_path: Path, start_app: StartApp
) -> None:
    rng = np.random.default_rng(4)
    reference = reference_histograms(rng.normal(size=(5000, 3)), ["f0", "f1", "f2"])
    two_linear_versions(tmp_path, "shadow", reference=reference)
    app = await start_app(config(tmp_path, min_samples=500))
    status_request = pb.GetModelStatusRequest(model_name="linear")

    await app.servicer.PredictBatch(
        batch_request(rng.normal(size=(400, 3)).astype(np.float32)), None
    )
    await app.monitor.drain()
    status = await app.servicer.GetModelStatus(status_request, None)
    assert status.drift_monitored
    assert not status.drift_alert
    assert [d.feature for d in status.drift] == ["f0", "f1", "f2"]
    assert {d.samples for d in status.drift} == {400}  # below min_samples: no alert anyway

    await app.servicer.PredictBatch(
        batch_request(rng.normal(size=(400, 3)).astype(np.float32)), None
    )
    await app.monitor.drain()
    status = await app.servicer.GetModelStatus(status_request, None)
    assert not status.drift_alert
    assert all(d.psi < 0.1 and d.ks < 0.1 for d in status.drift)
    assert metric("roost_inference_drift_alert", model="linear") == 0.0

    # The household changes: f0 shifts by 2 sd (with a sentinel row to look for later).
    shifted = rng.normal(size=(1200, 3)).astype(np.float32)
    shifted[:, 0] += 2.0
    shifted[0] = [4242.4242, 1717.1717, 9191.9191]
    await app.servicer.PredictBatch(batch_request(shifted), None)
    await app.monitor.drain()
    status = await app.servicer.GetModelStatus(status_request, None)
    by_feature = {d.feature: d for d in status.drift}
    assert status.drift_alert
    assert by_feature["f0"].alert
    assert by_feature["f0"].psi > 0.25
    assert not by_feature["f1"].alert
    assert by_feature["f0"].samples == 2000
    assert metric("roost_inference_drift_alert", model="linear") == 1.0
    assert metric("roost_inference_feature_psi", model="linear", feature="f0") == pytest.approx(
        by_feature["f0"].psi
    )
    assert metric("roost_inference_feature_ks", model="linear", feature="f0") == pytest.approx(
        by_feature["f0"].ks
    )

    # No metric of this service carries an input value in a label.
    for family in REGISTRY.collect():
        if not family.name.startswith("roost_inference"):
            continue
        for sample in family.samples:
            assert set(sample.labels) <= {"model", "feature", "version", "role", "le"}
            for value in sample.labels.values():
                assert not any(s in value for s in ("4242", "1717", "9191")), sample


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ({"nope": {"edges": [0.0], "probs": [0.5, 0.5]}}, "not an input feature"),
        ({"f0": {"edges": [1.0, 1.0], "probs": [0.2, 0.3, 0.5]}}, "strictly increasing"),
        ({"f0": {"edges": [0.0], "probs": [1.0]}}, "1 probs for 2 bins"),
        ({"f0": {"edges": [0.0], "probs": [0.5, 0.6]}}, "sum to"),
        ({"f0": {"probs": [0.5, 0.5]}}, "missing field 'edges'"),
    ],
)
def test_malformed_references_are_refused(
    tmp_path: Path, reference: dict[str, object], message: str
) -> None:
    linear_model(tmp_path, W_ACTIVE)
    raw = json.loads((tmp_path / MANIFEST_FILE).read_text())
    raw["reference"] = reference
    with pytest.raises(ManifestError, match=message):
        parse_manifest(raw)
