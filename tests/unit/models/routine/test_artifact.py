"""The shipped routine artifact (``models/artifacts/routine``): manifest, ONNX
contract and the recorded floors, in onnxruntime as the inference service runs it.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.manifest import Manifest, shipped_models_dir
from models.onnx_runtime import ort
from models.routine.data import CLASSES
from models.routine.spec import FEATURE_NAMES, FEATURE_UNITS, INPUT_SHAPE, SPEC_ID
from services.inference.registry import load_model

MODEL_DIR = shipped_models_dir() / "routine"
# Stated floors (leave-days-out CV macro-F1 over 8 classes, onnxruntime fp32).
CV_MACRO_F1_FLOOR = 0.55
MIN_GAIN_OVER_TIME_OF_DAY = 0.15
OTHER_HOME_MACRO_F1_FLOOR = 0.50


def test_manifest_matches_spec(manifest: Manifest) -> None:
    assert manifest.name == "routine"
    assert manifest.version == "1.0.0"
    assert manifest.task_kind == "classification"
    assert manifest.feature_spec == SPEC_ID
    assert manifest.input.name == "features"
    assert manifest.input.dtype == "float32"
    assert manifest.input.shape == INPUT_SHAPE
    assert manifest.input.feature_names() == list(FEATURE_NAMES)
    assert [f.unit for f in manifest.input.features] == list(FEATURE_UNITS)
    assert manifest.output_name == "probabilities"
    assert manifest.output_labels == CLASSES
    assert len(manifest.baseline) == manifest.input.size
    assert set(manifest.variants) == {"fp32", "int8"}
    served = next(v for v in manifest.variants.values() if v.file == manifest.file)
    assert served.sha256 == manifest.sha256
    for v in manifest.variants.values():
        assert (MODEL_DIR / v.file).stat().st_size == v.size_bytes < 2_000_000
    for c in CLASSES:
        assert f"cv_f1_{c}" in manifest.metrics
    assert manifest.metrics["params"] <= 100_000
    load_model(MODEL_DIR)  # the inference service's loader accepts it


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_variants_output_probabilities(manifest: Manifest, variant: str) -> None:
    sess = ort.InferenceSession(
        str(MODEL_DIR / manifest.variants[variant].file), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(16, *INPUT_SHAPE)).astype(np.float32)
    x[0] = np.asarray(manifest.baseline, dtype=np.float32)
    x[1] = 0.0
    (probs,) = sess.run([manifest.output_name], {manifest.input.name: x})
    assert probs.shape == (16, len(CLASSES))
    assert np.all(np.isfinite(probs))
    assert np.all(probs >= 0.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_macro_f1_floor_vs_baselines(manifest: Manifest) -> None:
    m = manifest.metrics
    assert m["cv_macro_f1"] >= CV_MACRO_F1_FLOOR
    assert m["cv_macro_f1"] >= m["baseline_time_of_day_macro_f1"] + MIN_GAIN_OVER_TIME_OF_DAY
    assert m["cv_macro_f1"] > m["baseline_majority_macro_f1"]
    assert m["other_home_macro_f1"] >= OTHER_HOME_MACRO_F1_FLOOR
    # The served variant is int8 only if it kept macro-F1 within 1 pp.
    if manifest.file == manifest.variants["int8"].file:
        assert m["cv_macro_f1_int8"] >= m["cv_macro_f1_fp32"] - 0.01
