"""The figures docs/models.md states for the shipped occupancy model against the
``light > 364 lx`` rule on ``datatest.txt`` (issue 18): recomputed from the artifact,
so the known limit cannot silently go stale when the model changes."""

from __future__ import annotations

import numpy as np
import pytest

from models.datasets import load_occupancy
from models.export import run
from models.manifest import Manifest, shipped_models_dir
from models.occupancy.data import build_features
from tests.support.shared_data import DATA_DIR, MISSING

MODEL_DIR = shipped_models_dir() / "occupancy"
DOCS = MODEL_DIR.parents[2] / "docs" / "models.md"
RULE_LX = 364.0


def test_false_alarms_per_day_on_datatest_match_the_docs(manifest: Manifest) -> None:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    test = load_occupancy("test", DATA_DIR)
    probs = run(MODEL_DIR / manifest.file, build_features(test), "features", "probabilities")
    y = test.occupancy
    model_fp = int(np.sum((probs[:, 1] >= 0.5) & (y == 0)))
    rule_fp = int(np.sum((test.light > RULE_LX) & (y == 0)))
    days = (test.ts[-1] - test.ts[0] + 60.0) / 86_400.0
    stated = (
        f'On `datatest.txt` ({days:.2f} days) it raises {model_fp} false "occupied"\n'
        f"  rows ({model_fp / days:.1f}/day) against the rule's {rule_fp}"
    )
    assert stated in DOCS.read_text()
