"""Every shipped model: loads with verified hashes, is small, reproduces its recorded
metrics from the artifact, and explains itself consistently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import tasks
from models.manifest import MANIFEST_FILE, load_manifest, shipped_models_dir
from models.report import within
from services.inference.explain import attributions, occlusion_batch
from services.inference.registry import ModelRegistry, load_model
from tests.support.shared_data import DATA_DIR, MISSING

MAX_ARTIFACT_BYTES = 2 * 1024 * 1024
SHIPPED = sorted(p.parent.name for p in shipped_models_dir().glob(f"*/{MANIFEST_FILE}"))


def test_every_task_ships_an_artifact() -> None:
    assert set(tasks.available()) <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_artifacts_are_small_and_hashed(name: str) -> None:
    model_dir = shipped_models_dir() / name
    manifest = load_manifest(model_dir)  # verifies the sha256 of every variant
    assert manifest.name == name
    assert set(manifest.variants) == {"fp32", "int8"}
    assert manifest.file in {v.file for v in manifest.variants.values()}
    for variant in manifest.variants.values():
        size = (model_dir / variant.file).stat().st_size
        assert size == variant.size_bytes
        assert size < MAX_ARTIFACT_BYTES


@pytest.mark.parametrize("name", SHIPPED)
def test_evaluation_reproduces_the_manifest(name: str) -> None:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    model_dir = shipped_models_dir() / name
    recorded = load_manifest(model_dir).metrics
    measured = tasks.evaluate(name)(model_dir, DATA_DIR)
    assert measured, "evaluate() returned no metrics"
    for key, value in measured.items():
        assert key in recorded, f"{key} is not recorded in the manifest"
        assert within(value, recorded[key], key), (key, value, recorded[key])


@pytest.mark.parametrize("name", SHIPPED)
def test_explanations_are_consistent(name: str) -> None:
    model = load_model(shipped_models_dir() / name)
    m = model.manifest
    rng = np.random.default_rng(0)
    baseline = np.asarray(m.baseline, dtype=np.float32).reshape(m.input.shape)
    x = baseline * rng.uniform(0.5, 1.5, size=baseline.shape).astype(np.float32)
    # Features left at their baseline value cannot move the output: exactly 0.
    x[..., 0] = baseline[..., 0]
    out = ModelRegistry.run_sync(model, occlusion_batch(m, x))
    _, scores = attributions(m, out)
    assert len(scores) == len(m.input.features)
    assert np.all(np.isfinite(scores))
    assert scores[0] == pytest.approx(0.0, abs=1e-6)
    # Explaining the baseline itself attributes nothing to any feature.
    out = ModelRegistry.run_sync(model, occlusion_batch(m, baseline))
    assert np.allclose(attributions(m, out)[1], 0.0, atol=1e-6)


def test_missing_recipe_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="unknown task"):
        tasks.evaluate("weather")


def test_models_dir_is_the_package_artifacts() -> None:
    assert shipped_models_dir() == Path(tasks.__file__).resolve().parent / "artifacts"
