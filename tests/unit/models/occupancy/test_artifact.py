"""The shipped occupancy artifact (``models/artifacts/occupancy``): manifest, ONNX
contract and accuracy on datatest.txt.

Torch-free: it runs the ONNX in onnxruntime exactly as the inference service does and
builds its inputs with the serving feature code (``models.features.snapshot``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from models.datasets import DatasetMissing, load_occupancy
from models.features import OCCUPANCY_V1
from models.manifest import Manifest
from models.occupancy.data import build_features
from models.onnx_runtime import ort
from tests.support.shared_data import DATA_DIR, MISSING


def _run(
    session: ort.InferenceSession, manifest: Manifest, x: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    (out,) = session.run([manifest.output_name], {manifest.input.name: x})
    return np.asarray(out, dtype=np.float32)


def test_manifest_matches_feature_spec(manifest: Manifest) -> None:
    assert manifest.name == "occupancy"
    assert manifest.task_kind == "classification"
    assert manifest.feature_spec == OCCUPANCY_V1.spec_id
    assert manifest.input.name == "features"
    assert manifest.input.dtype == "float32"
    assert manifest.input.shape == OCCUPANCY_V1.input_shape == (6,)
    assert manifest.input.feature_names() == OCCUPANCY_V1.feature_names
    assert [f.unit for f in manifest.input.features] == OCCUPANCY_V1.units
    assert manifest.output_name == "probabilities"
    assert manifest.output_labels == ("vacant", "occupied")
    assert len(manifest.baseline) == manifest.input.size


def test_onnx_io_matches_manifest(manifest: Manifest, session: ort.InferenceSession) -> None:
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert inp.name == manifest.input.name
    assert inp.type == "tensor(float)"
    assert inp.shape[1:] == list(manifest.input.shape)
    assert isinstance(inp.shape[0], str)  # dynamic batch axis
    assert out.name == manifest.output_name
    assert out.shape[1:] == [len(manifest.output_labels)]


@pytest.mark.parametrize("n", [1, 7, 256])
def test_output_is_probabilities(manifest: Manifest, session: ort.InferenceSession, n: int) -> None:
    """Rows of shape [n, 2] that sum to 1, for raw inputs in and far outside the training range."""
    rng = np.random.default_rng(n)
    baseline = np.asarray(manifest.baseline, dtype=np.float32)
    x = (baseline * rng.uniform(0.0, 3.0, size=(n, baseline.size))).astype(np.float32)
    x[0] = [-40.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    if n > 1:
        x[1] = [60.0, 100.0, 100_000.0, 40_000.0, -1.0, 0.0]
    (raw,) = session.run([manifest.output_name], {manifest.input.name: x})
    assert raw.dtype == np.float32
    probs = _run(session, manifest, x)
    assert probs.shape == (n, 2)
    assert np.all(np.isfinite(probs))
    assert np.all((probs >= 0.0) & (probs <= 1.0))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_test_set_accuracy(manifest: Manifest, session: ort.InferenceSession) -> None:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    try:
        data = load_occupancy("test", DATA_DIR)
    except DatasetMissing as e:
        pytest.skip(f"UCI Occupancy test split not available: {e}")
    probs = _run(session, manifest, build_features(data))
    accuracy = float(np.mean(probs.argmax(axis=1) == data.occupancy))
    assert accuracy >= 0.97, f"test accuracy {accuracy:.4f} < 0.97"
    # The manifest reports what the shipped file actually scores.
    assert accuracy == pytest.approx(manifest.metrics["test_accuracy"], abs=1e-5)
