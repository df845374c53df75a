"""The comfort network (``models.comfort.net``): forecasts are the current temperature
plus a learned change."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.imports import modules_imported_by

torch = pytest.importorskip("torch")

from models.comfort.net import N_OUT, ComfortNet  # noqa: E402
from models.comfort.spec import COMFORT_V1, TEMPERATURE  # noqa: E402


def test_imports_no_recipe_and_no_display_code() -> None:
    imported = modules_imported_by(["models.comfort.net"])
    assert "rich" not in imported
    assert not {m for m in imported if m.endswith(".train")}


def test_a_net_that_predicts_no_change_forecasts_persistence() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(10.0, 25.0, size=(16, *COMFORT_V1.input_shape)).astype(np.float32)
    y = rng.uniform(10.0, 25.0, size=(16, N_OUT)).astype(np.float32)
    net = ComfortNet(x, y).eval()
    with torch.no_grad():
        net.mlp[-1].weight.zero_()
        net.mlp[-1].bias.zero_()
        out = net(torch.from_numpy(x))
    assert out.shape == (16, N_OUT)
    current = torch.from_numpy(x[:, -1, TEMPERATURE : TEMPERATURE + 1]).expand(-1, N_OUT)
    assert torch.equal(out, current)
