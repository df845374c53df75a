"""The comfort forecaster as a torch module (:class:`ComfortNet`).

What a service needs to rebuild the shipped model or fine-tune it; the recipe is
``models.comfort.train``. Imports torch but no CLI or display code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.comfort.data import F32Array
from models.comfort.spec import COMFORT_V1, OUTPUT_LABELS, TEMPERATURE
from models.training import const

HIDDEN = 64
N_SENSORS = len(COMFORT_V1.sensors)
N_OUT = len(OUTPUT_LABELS)


class ComfortNet(nn.Module):
    """Raw window -> scaled features -> MLP -> temperature change -> + current temperature.

    Features (all constants are buffers, from the training windows): each sensor's
    latest value, standardized; each sensor's earlier values as differences from its
    latest value, divided by their RMS; the latest time of day. They are clamped to
    the training range. The MLP predicts the change of the room temperature in units
    of its training RMS at each horizon; the graph adds the current temperature back,
    so the output is in degC. No BatchNorm.
    """

    level_mean: torch.Tensor
    level_std: torch.Tensor
    diff_scale: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    delta_scale: torch.Tensor

    def __init__(self, x: F32Array, y: F32Array, hidden: int = HIDDEN) -> None:
        super().__init__()
        sensors = x[:, :, :N_SENSORS].astype(np.float64)
        last = sensors[:, -1]
        diffs = sensors[:, :-1] - sensors[:, -1:]
        diff_rms = np.sqrt(np.mean(diffs**2, axis=(0, 1)))
        level_std = last.std(axis=0)
        self.register_buffer("level_mean", const(last.mean(axis=0)))
        self.register_buffer("level_std", const(np.where(level_std > 1e-6, level_std, 1.0)))
        self.register_buffer("diff_scale", const(np.where(diff_rms > 1e-6, diff_rms, 1.0)))
        scaled = self._scale(torch.from_numpy(x)).numpy()
        self.register_buffer("lower", const(scaled.min(axis=0)))
        self.register_buffer("upper", const(scaled.max(axis=0)))
        delta = y.astype(np.float64) - x[:, -1, TEMPERATURE : TEMPERATURE + 1]
        self.register_buffer("delta_scale", const(np.sqrt(np.mean(delta**2, axis=0))))
        n_in = scaled.shape[1]
        self.mlp = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, N_OUT),
        )

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        sensors = x[:, :, :N_SENSORS]
        last = sensors[:, -1, :]
        diffs = (sensors[:, :-1, :] - sensors[:, -1:, :]) / self.diff_scale
        levels = (last - self.level_mean) / self.level_std
        time_of_day = x[:, -1, N_SENSORS:]
        return torch.cat([levels, diffs.flatten(1), time_of_day], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(self._scale(x), self.lower), self.upper)

    def scaled_delta(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(self.features(x))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        current = x[:, -1, TEMPERATURE : TEMPERATURE + 1]
        return current + self.scaled_delta(x) * self.delta_scale
