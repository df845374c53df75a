"""The shipped comfort artifact (``models/artifacts/comfort``): manifest and ONNX
contract, in onnxruntime as the inference service runs it. Torch-free.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.comfort.spec import COMFORT_V1, OUTPUT_LABELS
from models.manifest import Manifest, shipped_models_dir
from models.onnx_runtime import ort

MODEL_DIR = shipped_models_dir() / "comfort"
MAX_ARTIFACT_BYTES = 2 * 1024 * 1024


def test_manifest_matches_feature_spec(manifest: Manifest) -> None:
    assert manifest.name == "comfort"
    assert manifest.version == "1.0.0"
    assert manifest.task_kind == "regression"
    assert manifest.feature_spec == COMFORT_V1.spec_id == "comfort/v1"
    assert manifest.input.name == "features"
    assert manifest.input.dtype == "float32"
    assert manifest.input.shape == COMFORT_V1.input_shape == (COMFORT_V1.window, 6)
    assert manifest.input.feature_names() == COMFORT_V1.feature_names
    assert [f.unit for f in manifest.input.features] == COMFORT_V1.units
    assert manifest.output_labels == OUTPUT_LABELS == ("temperature_30min", "temperature_60min")
    assert len(manifest.baseline) == manifest.input.size
    assert set(manifest.variants) == {"fp32", "int8"}
    served = [v for v in manifest.variants.values() if v.file == manifest.file]
    assert len(served) == 1
    assert served[0].sha256 == manifest.sha256
    for variant in manifest.variants.values():
        size = (MODEL_DIR / variant.file).stat().st_size
        assert size == variant.size_bytes < MAX_ARTIFACT_BYTES
    for name in ("manifest.json", "MODEL_CARD.md"):
        assert (MODEL_DIR / name).stat().st_size < MAX_ARTIFACT_BYTES


@pytest.mark.parametrize("variant", ["fp32", "int8"])
@pytest.mark.parametrize("n", [1, 5, 64])
def test_output_shape(manifest: Manifest, variant: str, n: int) -> None:
    """[n, 2] finite float32 forecasts near the inputs' temperature, dynamic batch axis."""
    sess = ort.InferenceSession(
        str(MODEL_DIR / manifest.variants[variant].file), providers=["CPUExecutionProvider"]
    )
    (inp,) = sess.get_inputs()
    assert inp.name == manifest.input.name
    assert inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str)
    assert inp.shape[1:] == list(manifest.input.shape)
    rng = np.random.default_rng(n)
    baseline = np.asarray(manifest.baseline, dtype=np.float32).reshape(manifest.input.shape)
    x = np.repeat(baseline[None], n, axis=0)
    x[..., 0] += rng.uniform(-3.0, 3.0, size=(n, 1)).astype(np.float32)
    (out,) = sess.run([manifest.output_name], {manifest.input.name: x})
    assert out.dtype == np.float32
    assert out.shape == (n, len(OUTPUT_LABELS))
    assert np.all(np.isfinite(out))
    # A steady room stays near its current temperature.
    assert np.all(np.abs(out - x[:, -1, :1]) < 1.0)
