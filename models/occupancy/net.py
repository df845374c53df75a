"""The occupancy classifier as a torch module, and the loss weights of its recipe.

What a service needs to rebuild the shipped model or fine-tune it (personalization
loads the artifact's weights into :class:`OccupancyNet`; the privacy-utility bench
reuses :func:`class_weights`). The recipe is ``models.occupancy.train``; this module
imports torch but no CLI or display code.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.training import const

LABELS = ("vacant", "occupied")
HIDDEN = 32

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]


class OccupancyNet(nn.Module):
    """Clamp to the training range -> standardize -> MLP -> softmax.

    All preprocessing constants are buffers, so the exported graph takes raw
    physical-unit features. Clamping keeps the MLP from extrapolating to readings
    outside what it was trained on (e.g. CO2 lingering far above the training
    maximum after a room is left). No BatchNorm, so Opacus can train it.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, x: F32Array, hidden: int = HIDDEN) -> None:
        super().__init__()
        std = x.std(axis=0, dtype=np.float64)
        std = np.where(std > 1e-6, std, 1.0)
        self.register_buffer("lower", const(x.min(axis=0)))
        self.register_buffer("upper", const(x.max(axis=0)))
        self.register_buffer("mean", const(x.mean(axis=0, dtype=np.float64)))
        self.register_buffer("std", const(std))
        self.mlp = nn.Sequential(
            nn.Linear(x.shape[1], hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, len(LABELS)),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.minimum(torch.maximum(x, self.lower), self.upper)
        out: torch.Tensor = self.mlp((x - self.mean) / self.std)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=-1)


def class_weights(y: I64Array) -> torch.Tensor:
    """Inverse class frequency: ~21% of the training minutes are occupied."""
    counts = np.bincount(y, minlength=len(LABELS)).astype(np.float64)
    return torch.tensor(counts.sum() / (len(LABELS) * counts), dtype=torch.float32)
