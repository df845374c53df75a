"""The routine classifier as a torch module, its recipe's hyper-parameters and loss weights.

What a service needs to rebuild the shipped model or fine-tune it: personalization
builds :class:`RoutineNet` with the :class:`Hyper` width and dropout and loads the
artifact's weights into it; the privacy-utility bench reuses :func:`class_weights`.
The training loop is ``models.routine.fit``, the recipe ``models.routine.train``.
Imports torch but no CLI or display code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.routine.data import CLASSES
from models.training import const

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]


class RoutineNet(nn.Module):
    """Standardize (training mean/std) -> MLP -> softmax; no BatchNorm (Opacus-safe).

    First-layer weights of inputs that are constant in the training data start at
    zero; they receive no gradient, so they stay zero: a group (area, kind) the
    training home does not have contributes nothing until personalization trains it.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, x: F32Array, hidden: int, dropout: float) -> None:
        super().__init__()
        std = x.std(axis=0, dtype=np.float64)
        constant = std <= 1e-6
        std = np.where(constant, 1.0, std)
        self.register_buffer("mean", const(x.mean(axis=0, dtype=np.float64)))
        self.register_buffer("std", const(std))
        first = nn.Linear(x.shape[1], hidden)
        with torch.no_grad():
            first.weight[:, torch.from_numpy(constant)] = 0.0
        self.mlp = nn.Sequential(
            first,
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, len(CLASSES)),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp((x - self.mean) / self.std)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=-1)


@dataclass(frozen=True)
class Hyper:
    epochs: int = 12
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 64
    dropout: float = 0.1
    # Class weight = (N / (K * count)) ** power: 1 is inverse frequency; below 1
    # softens it, so the 35 "drink" slices do not dominate the loss.
    class_weight_power: float = 0.25
    n_folds: int = 7


def class_weights(y: I64Array, power: float) -> torch.Tensor:
    counts = np.bincount(y, minlength=len(CLASSES)).astype(np.float64)
    w = (counts.sum() / (len(CLASSES) * np.maximum(counts, 1.0))) ** power
    return torch.tensor(w, dtype=torch.float32)
