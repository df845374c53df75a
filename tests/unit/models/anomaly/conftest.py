"""Fixtures shared by the anomaly model tests: the shipped manifest and session, the
UCI Appliances data (skips without it) and the recomputed metrics.
"""

from __future__ import annotations

import pytest

from models.anomaly.data import ApplianceData, load_appliances
from models.anomaly.evaluate import evaluate
from models.datasets import DatasetMissing
from models.manifest import Manifest, load_manifest, shipped_models_dir
from models.onnx_runtime import ort
from tests.support.shared_data import DATA_DIR, MISSING

MODEL_DIR = shipped_models_dir() / "anomaly"


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    return load_manifest(MODEL_DIR)  # checks the sha256 of the served file and every variant


@pytest.fixture(scope="session")
def session(manifest: Manifest) -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL_DIR / manifest.file), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def data() -> ApplianceData:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    try:
        return load_appliances(DATA_DIR)
    except DatasetMissing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def evaluated(data: ApplianceData) -> dict[str, float]:
    return evaluate(MODEL_DIR, DATA_DIR)
