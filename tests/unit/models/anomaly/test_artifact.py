"""The shipped anomaly artifact (``models/artifacts/anomaly``): manifest, ONNX
contract and scores on hand-made windows, in onnxruntime as the inference service
runs it. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from models.anomaly.spec import ANOMALY_V1, ENERGY, OUTPUT_LABELS, WINDOW
from models.manifest import Manifest, shipped_models_dir
from models.onnx_runtime import ort

MODEL_DIR = shipped_models_dir() / "anomaly"
MAX_ARTIFACT_BYTES = 2 * 1024 * 1024


def _run(
    session: ort.InferenceSession, manifest: Manifest, x: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    (out,) = session.run([manifest.output_name], {manifest.input.name: x})
    return np.asarray(out, dtype=np.float32)


def test_manifest_matches_feature_spec(manifest: Manifest) -> None:
    assert manifest.name == "anomaly"
    assert manifest.version == "1.0.0"
    assert manifest.task_kind == "regression"
    assert manifest.feature_spec == ANOMALY_V1.spec_id == "anomaly/v1"
    assert manifest.input.name == "features"
    assert manifest.input.dtype == "float32"
    assert manifest.input.shape == ANOMALY_V1.input_shape == (WINDOW, 5)
    assert manifest.input.feature_names() == ANOMALY_V1.feature_names
    assert [f.unit for f in manifest.input.features] == ANOMALY_V1.units
    assert manifest.output_labels == OUTPUT_LABELS
    assert len(manifest.baseline) == manifest.input.size
    assert set(manifest.variants) == {"fp32", "int8"}
    assert manifest.file in {v.file for v in manifest.variants.values()}
    assert manifest.metrics["anomaly_threshold"] == 1.0
    assert manifest.metrics["params"] <= 100_000
    for name in (*(v.file for v in manifest.variants.values()), "manifest.json", "MODEL_CARD.md"):
        assert (MODEL_DIR / name).stat().st_size < MAX_ARTIFACT_BYTES


def test_onnx_io_matches_manifest(manifest: Manifest, session: ort.InferenceSession) -> None:
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert inp.name == manifest.input.name
    assert inp.type == "tensor(float)"
    assert inp.shape[1:] == list(manifest.input.shape)
    assert isinstance(inp.shape[0], str)  # dynamic batch axis
    assert out.name == manifest.output_name


def _windows(manifest: Manifest, energy: Sequence[float]) -> npt.NDArray[np.float32]:
    """A typical window (training means) with the given energy readings, oldest first."""
    x = np.asarray(manifest.baseline, dtype=np.float32).reshape(manifest.input.shape).copy()
    x[:, ENERGY] = energy
    return x


def test_scores_on_handmade_windows(manifest: Manifest, session: ort.InferenceSession) -> None:
    """Each fault's signature raises its own score past the alert level; a varied ordinary
    window does not alert. Outputs are finite and anomaly_score is the components' max."""
    ordinary = [60, 50, 70, 60, 50, 60, 80, 60, 50, 60, 70, 60]
    zeros = [60, 50, 70, 60, 50, 60, 0, 0, 0, 0, 0, 0]
    frozen = [60, 50] + [90] * 10
    stuck = [v + 400 for v in ordinary]
    surge = [*ordinary[:-1], 2000]
    x = np.stack([_windows(manifest, e) for e in (ordinary, zeros, frozen, stuck, surge)])
    out = _run(session, manifest, x)
    assert out.shape == (5, len(OUTPUT_LABELS))
    assert np.all(np.isfinite(out))
    col = {label: i for i, label in enumerate(OUTPUT_LABELS)}
    np.testing.assert_allclose(out[:, col["anomaly_score"]], out[:, 2:].max(axis=1), rtol=1e-6)
    threshold = manifest.metrics["anomaly_threshold"]
    assert out[0, col["anomaly_score"]] < threshold
    assert 20.0 < out[0, col["expected_wh"]] < 200.0
    assert out[1, col["dropout_score"]] >= threshold
    assert out[2, col["frozen_score"]] >= threshold
    assert out[3, col["stuck_on_score"]] >= threshold
    assert out[4, col["surge_score"]] >= threshold
