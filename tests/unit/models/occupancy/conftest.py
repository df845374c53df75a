"""Fixtures shared by the occupancy model tests: the shipped manifest and session."""

from __future__ import annotations

import pytest

from models.manifest import Manifest, load_manifest, shipped_models_dir
from models.onnx_runtime import ort

MODEL_DIR = shipped_models_dir() / "occupancy"


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    return load_manifest(MODEL_DIR)  # also checks the ONNX file's sha256


@pytest.fixture(scope="session")
def session(manifest: Manifest) -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL_DIR / manifest.file), providers=["CPUExecutionProvider"])
