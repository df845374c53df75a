"""The appliance energy anomaly model as a torch module (:class:`AnomalyNet`) and the
hyper-parameters it is built from (:class:`Hyper`).

What a service needs to rebuild the shipped model or fine-tune it; the recipe (training,
threshold calibration, export) is ``models.anomaly.train``. Imports torch but no CLI or
display code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.anomaly.spec import ANOMALY_V1, ENERGY, WINDOW
from models.training import const

# The raw statistics behind the scores, in the order of AnomalyNet.raw_scores.
COMPONENTS = ("surge", "surge_abs", "dropout", "stuck_short", "stuck_long", "frozen")
COMPONENT_UNITS = {
    "surge": "log Wh",
    "surge_abs": "Wh",
    "dropout": "log Wh",
    "stuck_short": "Wh",
    "stuck_long": "Wh",
    "frozen": "steps",
}
CTX = tuple(i for i in range(len(ANOMALY_V1.feature_names)) if i != ENERGY)

F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Hyper:
    epochs: int = 40
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    hidden: int = 48
    # Energy readings before the current step that the expectation sees (<= WINDOW - 1).
    history: int = WINDOW - 1
    # Quantiles of log energy predicted from context and history (low, median, high).
    q_low: float = 0.02
    q_high: float = 0.98
    # The short rolling minimum of the stuck-on residual (the long one is the window).
    stuck_short_steps: int = 6
    # False-alarm budgets (alert episodes per day on the clean validation period) that
    # calibrate each component's threshold.
    budget_surge: float = 0.2
    budget_surge_abs: float = 0.05
    budget_dropout: float = 0.05
    budget_stuck_short: float = 0.05
    budget_stuck_long: float = 0.05
    budget_frozen: float = 0.05


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_out),
    )


class AnomalyNet(nn.Module):
    """Raw ANOMALY_V1 window ``[batch, WINDOW, features]`` -> ``[batch, 6]`` outputs.

    Two small MLPs (no BatchNorm) over clamped, standardized inputs, energy in log1p:

    - ``quantile_net``: context of the current step + the previous ``history`` energy
      readings -> low / median / high quantile of the current log energy (monotone by
      construction). ``expected_wh`` is the median.
    - ``context_net``: context of one step alone -> median log energy; applied to every
      step of the window, it is the baseline a stuck-on load is measured against
      (history would learn to expect the load once it has been on for a while).

    Raw statistics (observed energy is NOT clamped, so 0 and surges stay visible):

    - surge: ``log1p(e_now) - q_high``; surge_abs: ``e_now`` (Wh: a busy step's wide
      q_high would hide a multiple of it that is more than the home ever draws);
      dropout: ``q_low - log1p(e_now)``
    - stuck_short / stuck_long: minimum over the last ``stuck_short_steps`` / all steps
      of ``e_t - context median_t`` (Wh): a load that lifts every reading
    - frozen: trailing run of identical readings (steps)

    Each is divided by its calibrated threshold (``tau``), so a score of 1 is that
    component's alert level; ``anomaly_score`` is their maximum.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    ctx_mean: torch.Tensor
    ctx_std: torch.Tensor
    le_mean: torch.Tensor
    le_std: torch.Tensor
    quantile_levels: torch.Tensor
    steps: torch.Tensor
    tau: torch.Tensor

    def __init__(self, x: F32Array, hp: Hyper) -> None:
        super().__init__()
        if not 1 <= hp.history <= WINDOW - 1:
            raise ValueError(f"history must be in 1..{WINDOW - 1}")
        self.history = hp.history
        self.short = hp.stuck_short_steps
        rows = x[:, -1, :].astype(np.float64)  # every training row once
        lower, upper = rows.min(axis=0), rows.max(axis=0)
        ctx = np.clip(rows, lower, upper)[:, CTX]
        log_e = np.log1p(np.clip(rows[:, ENERGY], lower[ENERGY], upper[ENERGY]))
        ctx_std = ctx.std(axis=0)
        self.register_buffer("lower", const(lower))
        self.register_buffer("upper", const(upper))
        self.register_buffer("ctx_mean", const(ctx.mean(axis=0)))
        self.register_buffer("ctx_std", const(np.where(ctx_std > 1e-6, ctx_std, 1.0)))
        self.register_buffer("le_mean", const(log_e.mean()))
        self.register_buffer("le_std", const(log_e.std()))
        self.register_buffer("quantile_levels", const([hp.q_low, 0.5, hp.q_high]))
        self.register_buffer("steps", const(np.arange(1, WINDOW)))
        self.register_buffer("tau", torch.ones(len(COMPONENTS)))
        self.quantile_net = _mlp(len(CTX) + hp.history, hp.hidden, 3)
        self.context_net = _mlp(len(CTX), hp.hidden, 1)

    def _context(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized context features of ``x[..., features]``."""
        x = torch.minimum(torch.maximum(x, self.lower), self.upper)
        return (x[..., list(CTX)] - self.ctx_mean) / self.ctx_std

    def quantiles(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, 3]`` (low, median, high) of the current step's log1p energy."""
        x = torch.minimum(torch.maximum(x, self.lower), self.upper)
        past = x[:, WINDOW - 1 - self.history : WINDOW - 1, ENERGY]
        hist = (torch.log1p(past) - self.le_mean) / self.le_std
        ctx = (x[:, -1, list(CTX)] - self.ctx_mean) / self.ctx_std
        o = self.quantile_net(torch.cat([ctx, hist], dim=1))
        med = self.le_mean + self.le_std * o[:, 1]
        low = med - self.le_std * nn.functional.softplus(o[:, 0])
        high = med + self.le_std * nn.functional.softplus(o[:, 2])
        return torch.stack([low, med, high], dim=1)

    def context_median(self, x: torch.Tensor) -> torch.Tensor:
        """Median log1p energy of each step from its context alone: ``x[..., features]``
        -> ``x.shape[:-1]``."""
        out: torch.Tensor = self.context_net(self._context(x))[..., 0]
        return self.le_mean + self.le_std * out

    def raw_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected Wh ``[batch]``, raw statistics ``[batch, 6]`` in COMPONENTS order)."""
        e = torch.clamp(x[:, :, ENERGY], min=0.0)  # observed: not clamped above
        log_now = torch.log(e[:, -1] + 1.0)
        q = self.quantiles(x)
        expected = torch.exp(q[:, 1]) - 1.0
        surge = log_now - q[:, 2]
        dropout = q[:, 0] - log_now
        baseline = torch.exp(self.context_median(x)) - 1.0
        residual = e - baseline
        stuck_short = torch.amin(residual[:, WINDOW - self.short :], dim=1)
        stuck_long = torch.amin(residual, dim=1)
        changed = (torch.abs(e[:, 1:] - e[:, :-1]) > 1e-3).to(e.dtype)
        last_change = torch.amax(changed * self.steps, dim=1)
        frozen = (WINDOW - 1) - last_change
        raw = torch.stack([surge, e[:, -1], dropout, stuck_short, stuck_long, frozen], dim=1)
        return expected, raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected, raw = self.raw_scores(x)
        s = raw / self.tau
        surge = torch.maximum(s[:, 0], s[:, 1])
        stuck = torch.maximum(s[:, 3], s[:, 4])
        dropout, frozen = s[:, 2], s[:, 5]
        anomaly = torch.maximum(torch.maximum(stuck, surge), torch.maximum(dropout, frozen))
        return torch.stack([expected, anomaly, stuck, surge, dropout, frozen], dim=1)
