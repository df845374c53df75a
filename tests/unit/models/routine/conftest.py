"""Fixtures shared by the routine model tests: the shipped manifest."""

from __future__ import annotations

import pytest

from models.manifest import Manifest, load_manifest, shipped_models_dir

MODEL_DIR = shipped_models_dir() / "routine"


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    return load_manifest(MODEL_DIR)  # checks every variant's sha256
