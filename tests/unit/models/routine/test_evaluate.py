"""Re-scoring the shipped routine artifact (``models.routine.evaluate``): the report
and the metrics recomputed from the ONNX files. Tests needing the van Kasteren data
skip with a reason when it is not on this machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.datasets import DatasetMissing
from models.manifest import Manifest, shipped_models_dir
from models.routine.data import CLASSES, KasterenData, load_kasteren, other_home
from models.routine.evaluate import TOLERANCE, evaluate, report
from models.routine.spec import KASTEREN_MAPPING
from tests.support.shared_data import DATA_DIR, MISSING

MODEL_DIR = shipped_models_dir() / "routine"
# Stated floors (leave-days-out CV macro-F1 over 8 classes, onnxruntime fp32).
CV_MACRO_F1_FLOOR = 0.55


def _kasteren() -> KasterenData:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    try:
        return load_kasteren(DATA_DIR)
    except DatasetMissing as e:
        pytest.skip(f"van Kasteren data not available: {e}")


def test_report_macro_f1() -> None:
    y = np.array([0, 0, 1, 7], dtype=np.int64)
    r = report(y, np.array([0, 1, 1, 7], dtype=np.int64))
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["f1_away"] == pytest.approx(2 / 3)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1.0) / len(CLASSES))


def test_evaluate_reproduces_manifest(manifest: Manifest) -> None:
    data = _kasteren()
    assert data.sha256 == manifest.training_data_sha256
    assert len(data.sensors) == 1319
    assert len(data.activities) == 245
    assert {iv.name for iv in other_home(data).sensors}.isdisjoint(KASTEREN_MAPPING)
    metrics = evaluate(MODEL_DIR, DATA_DIR)
    for variant in ("fp32", "int8"):
        assert f"alldays_macro_f1_{variant}" in metrics
        assert f"other_home_alldays_macro_f1_{variant}" in metrics
    for key, value in metrics.items():
        assert value == pytest.approx(manifest.metrics[key], abs=TOLERANCE), key
    assert metrics["alldays_macro_f1_fp32"] >= CV_MACRO_F1_FLOOR
