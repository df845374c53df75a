"""Fixtures shared by the comfort model tests: the shipped manifest, the UCI Appliances
data (skips without it), the test samples and the recomputed metrics.
"""

from __future__ import annotations

import pytest

from models.comfort.data import AppliancesData, Samples, load_appliances
from models.comfort.evaluate import evaluate, evaluation_samples
from models.datasets import DatasetMissing
from models.manifest import Manifest, load_manifest, shipped_models_dir
from tests.support.shared_data import DATA_DIR, MISSING

MODEL_DIR = shipped_models_dir() / "comfort"


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    return load_manifest(MODEL_DIR)  # checks the sha256 of the served file and every variant


@pytest.fixture(scope="session")
def data() -> AppliancesData:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    try:
        return load_appliances(DATA_DIR)
    except DatasetMissing as e:
        pytest.skip(f"UCI Appliances data not available: {e}")


@pytest.fixture(scope="session")
def test_set(data: AppliancesData) -> Samples:
    return evaluation_samples(data)


@pytest.fixture(scope="session")
def recomputed(data: AppliancesData) -> dict[str, float]:
    return evaluate(MODEL_DIR, DATA_DIR, data)
