"""The routine training loop (``models.routine.fit``): seeded, so bit-for-bit repeatable."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.routine.data import CLASSES  # noqa: E402
from models.routine.fit import fit  # noqa: E402
from models.routine.net import Hyper  # noqa: E402


def _rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 7)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) * (len(CLASSES) - 1)
    return x, y


def test_same_seed_same_model_and_one_callback_per_epoch() -> None:
    torch.set_num_threads(1)
    x, y = _rows()
    hp = Hyper(epochs=3, batch_size=32, hidden=8)
    losses: list[float] = []
    a = fit(x, y, hp=hp, seed=0, on_epoch=losses.append)
    b = fit(x, y, hp=hp, seed=0, on_epoch=lambda _loss: None)
    c = fit(x, y, hp=hp, seed=1, on_epoch=lambda _loss: None)
    assert len(losses) == hp.epochs
    assert all(np.isfinite(losses))
    assert not a.training  # returned ready for inference (dropout off)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
