"""The anomaly network (``models.anomaly.net``): component scores in units of their
calibrated thresholds, and the overall score their maximum."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.imports import modules_imported_by

torch = pytest.importorskip("torch")

from models.anomaly.net import COMPONENTS, AnomalyNet, Hyper  # noqa: E402
from models.anomaly.spec import ANOMALY_SCORE, ANOMALY_V1, OUTPUT_LABELS, WINDOW  # noqa: E402


def test_imports_no_recipe_and_no_display_code() -> None:
    imported = modules_imported_by(["models.anomaly.net"])
    assert "rich" not in imported
    assert not {m for m in imported if m.endswith(".train")}


def test_the_anomaly_score_is_the_largest_component_score() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(10.0, 200.0, size=(32, *ANOMALY_V1.input_shape)).astype(np.float32)
    net = AnomalyNet(x, Hyper(hidden=8)).eval()
    with torch.no_grad():
        net.tau.copy_(torch.full((len(COMPONENTS),), 2.0))
        out = net(torch.from_numpy(x))
        _, raw = net.raw_scores(torch.from_numpy(x))
    assert out.shape == (32, len(OUTPUT_LABELS))
    scores = out[:, [OUTPUT_LABELS.index(n) for n in OUTPUT_LABELS if n.endswith("_score")]]
    assert torch.equal(out[:, ANOMALY_SCORE], scores.max(dim=1).values)
    assert torch.allclose(out[:, ANOMALY_SCORE], (raw / 2.0).max(dim=1).values)


def test_history_must_fit_the_window() -> None:
    x = np.ones((4, *ANOMALY_V1.input_shape), dtype=np.float32)
    with pytest.raises(ValueError, match="history"):
        AnomalyNet(x, Hyper(history=WINDOW))
