"""The DP-SGD loop of :func:`services.personalization.finetune.dp_finetune`.

The training rows (private, then public replay, with the teacher's log-probabilities),
Adam under Opacus' per-sample gradients and clipping/noising optimizer, one
Poisson-sampled step, the run of steps and the clean-up of the trained net. Why this is
DP-SGD with the accounted mechanism is argued in :mod:`services.personalization.finetune`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from opacus import GradSampleModule  # type: ignore[import-untyped]
from opacus.optimizers import DPOptimizer  # type: ignore[import-untyped]
from torch import nn

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]


class _Logits(nn.Module):
    """The net's pre-softmax outputs as ``forward`` (what the loss and Opacus see)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.net, x)


def logits_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net.logits(x)``: the Roost nets expose their pre-softmax outputs so."""
    fn = cast("Callable[[torch.Tensor], torch.Tensor]", net.logits)
    return fn(x)


def per_sample_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    teacher: torch.Tensor | None,
    weights: torch.Tensor | None,
    distill_weight: float,
) -> torch.Tensor:
    """Cross-entropy plus distill_weight * KL(teacher || model), one value per example."""
    loss = nn.functional.cross_entropy(logits, y, weight=weights, reduction="none")
    if teacher is not None and distill_weight > 0:
        log_p = torch.log_softmax(logits, dim=-1)
        kl = (teacher.exp() * (teacher - log_p)).sum(dim=-1)
        loss = loss + distill_weight * kl
    return loss


@dataclass(frozen=True)
class Rows:
    """The sampled set: the private rows, then the public replay rows, and the teacher's
    log-probabilities of every row (None without distillation)."""

    xs: torch.Tensor
    ys: torch.Tensor
    soft: torch.Tensor | None
    n_private: int
    n_replay: int


def training_rows(
    x: F32Array, y: I64Array, replay: tuple[F32Array, I64Array] | None, teacher: nn.Module | None
) -> Rows:
    """The rows the steps sample from; the teacher (if any) labels them once, up front."""
    xs, ys = torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(y)
    n_private = len(xs)
    n_replay = 0
    if replay is not None and len(replay[0]):
        rx = torch.from_numpy(np.asarray(replay[0], dtype=np.float32))
        ry = torch.from_numpy(np.asarray(replay[1], dtype=np.int64))
        n_replay = len(rx)
        xs, ys = torch.cat([xs, rx]), torch.cat([ys, ry])
    soft: torch.Tensor | None = None
    if teacher is not None:
        with torch.no_grad():
            soft = torch.log_softmax(logits_of(teacher, xs), dim=-1)
    return Rows(xs, ys, soft, n_private, n_replay)


@dataclass(frozen=True)
class Stepper:
    """What every step of one run uses: the module, its optimizer and the rows."""

    model: nn.Module
    opt: Any
    params: list[nn.Parameter]
    rows: Rows
    weights: torch.Tensor | None
    distill_weight: float
    expected_batch_size: int
    private: bool

    def step(self, idx: torch.Tensor) -> float | None:
        """One optimizer step on the rows ``idx``; the batch's mean loss (None if empty)."""
        self.opt.zero_grad()
        if len(idx) == 0:
            if self.private:
                # An empty Poisson batch still releases a noisy (zero-sum) step.
                for p in self.params:
                    p.grad_sample = torch.zeros((0, *p.shape))  # type: ignore[attr-defined]
                self.opt.step()
            return None
        logits = self.model(self.rows.xs[idx])
        soft = self.rows.soft
        per_sample = per_sample_loss(
            logits,
            self.rows.ys[idx],
            None if soft is None else soft[idx],
            self.weights,
            self.distill_weight,
        )
        # Sum / expected batch size: the DP normalisation, used in both modes so that the
        # private and non-private runs optimise the same objective.
        loss = per_sample.sum() / self.expected_batch_size
        if self.private:
            # Opacus' "mean" reduction rescales by the realised batch size; feed it the
            # per-sample mean so each grad_sample is that example's own.
            torch.autograd.backward(per_sample.mean())
        else:
            torch.autograd.backward(loss)
        self.opt.step()
        return float(per_sample.mean().item())


def make_stepper(
    net: nn.Module,
    params: list[nn.Parameter],
    rows: Rows,
    *,
    noise_multiplier: float | None,
    lr: float,
    max_grad_norm: float,
    expected_batch_size: int,
    distill_weight: float,
    class_weights: Sequence[float] | None,
    noise_gen: torch.Generator,
) -> Stepper:
    """Adam on ``params``, under Opacus' per-sample gradients and clipping/noising
    optimizer when ``noise_multiplier`` is not None (a private run)."""
    weights = (
        torch.tensor(list(class_weights), dtype=torch.float32)
        if class_weights is not None
        else None
    )
    inner = _Logits(net)
    model: nn.Module = inner
    opt: Any = torch.optim.Adam(params, lr=lr)
    if noise_multiplier is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = GradSampleModule(inner, loss_reduction="mean", strict=True)
            opt = DPOptimizer(
                opt,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                expected_batch_size=expected_batch_size,
                loss_reduction="mean",
                generator=noise_gen,
            )
    private = noise_multiplier is not None
    return Stepper(model, opt, params, rows, weights, distill_weight, expected_batch_size, private)


def run_steps(
    stepper: Stepper,
    gen: torch.Generator,
    sample_rate: float,
    steps_planned: int,
    *,
    progress: Callable[[float], None] | None,
    started: float,
    max_seconds: float | None,
) -> tuple[int, list[float]]:
    """Runs the Poisson-sampled steps, up to ``steps_planned`` or until the step that
    crosses ``max_seconds`` since ``started``; returns the steps taken and the losses of
    the non-empty batches."""
    n = len(stepper.rows.xs)
    losses: list[float] = []
    steps = 0
    with warnings.catch_warnings():
        # Opacus' full backward hooks fire on module outputs: the inputs need no grad.
        warnings.filterwarnings("ignore", message="Full backward hook")
        try:
            for step in range(steps_planned):
                mask = torch.rand(n, generator=gen) < sample_rate
                loss = stepper.step(torch.nonzero(mask).flatten())
                steps += 1
                if loss is not None:
                    losses.append(loss)
                if progress is not None:
                    progress((step + 1) / steps_planned)
                if max_seconds is not None and time.perf_counter() - started > max_seconds:
                    break
        finally:
            if isinstance(stepper.model, GradSampleModule):
                stepper.model.remove_hooks()
    return steps, losses


def release(net: nn.Module) -> None:
    """Eval mode, every parameter trainable again, no gradient or Opacus state left."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None
        for attr in ("grad_sample", "summed_grad", "_processed"):
            if hasattr(p, attr):
                delattr(p, attr)
