"""The occupancy fleet head on real data: the hubs' training slices the fleet tests use,
and a head's held-out accuracy (the shipped model with its federated head replaced)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.datasets import DatasetMissing, load_occupancy
from models.manifest import load_manifest, shipped_models_dir
from models.occupancy.data import build_features
from services.personalization.federated_train import HEADS
from services.personalization.onnx_roundtrip import base_model
from tests.support.shared_data import DATA_DIR

#: Values in the occupancy federated head (mlp.4, Linear(32, 2): 64 weights, 2 biases).
HEAD_SIZE = 66


def labels(occupied: np.ndarray) -> list[str]:
    return ["occupied" if v else "vacant" for v in occupied]


def hub_slices(hubs: int, per_hub: int) -> list[tuple[np.ndarray, list[str]]]:
    """Contiguous stretches of the training file, one per hub, so the hubs differ."""
    try:
        train = load_occupancy("train", DATA_DIR)
    except DatasetMissing as e:
        pytest.skip(f"{e}")
    x = build_features(train).astype(np.float32)
    y = labels(np.asarray(train.occupancy))
    bounds = np.linspace(0, len(y), hubs + 1).astype(int)
    return [(x[b : b + per_hub], y[b : b + per_hub]) for b in bounds[:hubs]]


def head_accuracy(head: np.ndarray) -> float:
    """Accuracy on the occupancy test file of the shipped model carrying ``head``."""
    manifest = load_manifest(shipped_models_dir() / "occupancy")
    model = base_model("occupancy", shipped_models_dir() / "occupancy" / manifest.file)
    params = [p for _, p in model.get_submodule(HEADS["occupancy"]).named_parameters()]
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(torch.from_numpy(head[offset : offset + p.numel()].copy()).view_as(p))
            offset += p.numel()
        test = load_occupancy("test", DATA_DIR)
        xt = torch.from_numpy(build_features(test).astype(np.float32))
        pred = model.logits(xt).argmax(dim=1).numpy()  # type: ignore[operator]
    truth = np.array([manifest.output_labels.index(v) for v in labels(test.occupancy)])
    return float((pred == truth).mean())
