"""Occlusion explanations: consistent, and ~0 for a feature the model ignores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.inference.explain import attributions, occlusion_batch
from services.inference.registry import ModelRegistry
from tests.support.onnx_models import linear_model


def test_ignored_feature_gets_zero(tmp_path: Path) -> None:
    model = linear_model(tmp_path, [2.0, 0.0, -1.0])
    x = np.asarray([1.0, 5.0, 0.5], dtype=np.float32)
    out = ModelRegistry.run_sync(model, occlusion_batch(model.manifest, x))
    target, scores = attributions(model.manifest, out)
    assert target == 1  # logit 1.5 > 0
    assert abs(scores[1]) < 1e-6
    assert scores[0] > 0.1  # occluding the positive evidence lowers p(yes)
    assert scores[2] < 0  # removing negative evidence raises p(yes)


def test_one_batched_call_and_stable(tmp_path: Path) -> None:
    model = linear_model(tmp_path, [1.0, 1.0])
    x = np.asarray([0.3, -0.2], dtype=np.float32)
    batch = occlusion_batch(model.manifest, x)
    assert batch.shape == (3, 2)
    a = attributions(model.manifest, ModelRegistry.run_sync(model, batch))
    b = attributions(model.manifest, ModelRegistry.run_sync(model, batch))
    assert a == b
