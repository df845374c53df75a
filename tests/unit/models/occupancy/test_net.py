"""The occupancy network (``models.occupancy.net``): what personalization rebuilds."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.imports import modules_imported_by

torch = pytest.importorskip("torch")

from models.occupancy.net import LABELS, OccupancyNet, class_weights  # noqa: E402


def test_imports_no_recipe_and_no_display_code() -> None:
    imported = modules_imported_by(["models.occupancy.net"])
    assert "rich" not in imported
    assert not {m for m in imported if m.endswith(".train")}


def test_outputs_probabilities_and_clamps_to_the_training_range() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(64, 6)).astype(np.float32)
    net = OccupancyNet(x).eval()
    inside = torch.from_numpy(x[:8])
    with torch.no_grad():
        probs = net(inside)
        assert probs.shape == (8, len(LABELS))
        assert torch.allclose(probs.sum(dim=1), torch.ones(8))
        # Far outside the training range the network sees its bounds.
        assert torch.equal(net(inside * 0 + 1e6), net(net.upper.expand(8, -1)))
        assert torch.equal(net(inside * 0 - 1e6), net(net.lower.expand(8, -1)))


def test_class_weights_are_inverse_frequency() -> None:
    weights = class_weights(np.array([0, 0, 0, 1], dtype=np.int64))
    assert weights.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
