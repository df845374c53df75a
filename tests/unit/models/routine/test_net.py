"""The routine network (``models.routine.net``): what personalization rebuilds."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.imports import modules_imported_by

torch = pytest.importorskip("torch")

from models.routine.data import CLASSES  # noqa: E402
from models.routine.net import Hyper, RoutineNet, class_weights  # noqa: E402


def test_imports_no_recipe_and_no_display_code() -> None:
    imported = modules_imported_by(["models.routine.net", "models.routine.fit"])
    assert "rich" not in imported
    assert not {m for m in imported if m.endswith(".train")}


def test_inputs_constant_in_training_start_with_zero_weights() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(32, 5)).astype(np.float32)
    x[:, 2] = 0.0  # a group this home does not have
    net = RoutineNet(x, hidden=Hyper.hidden, dropout=Hyper.dropout).eval()
    first = net.mlp[0].weight
    assert torch.all(first[:, 2] == 0.0)
    assert torch.all(first[:, [0, 1, 3, 4]] != 0.0)
    with torch.no_grad():
        assert net(torch.from_numpy(x)).shape == (32, len(CLASSES))


def test_class_weight_power_softens_inverse_frequency() -> None:
    y = np.array([0] * 6 + [1] * 2, dtype=np.int64)
    inverse = class_weights(y, 1.0)
    assert inverse[0].item() == pytest.approx(8 / (len(CLASSES) * 6))
    assert inverse[1].item() == pytest.approx(8 / (len(CLASSES) * 2))
    assert torch.allclose(class_weights(y, 0.0), torch.ones(len(CLASSES)))
