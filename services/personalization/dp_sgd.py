"""The DP-SGD loop of :func:`services.personalization.finetune.dp_finetune`.

The training rows (private, then public replay, with the teacher's log-probabilities),
one Poisson-sampled step for each privacy unit, the run of steps and the clean-up of the
trained net:

* example unit (:class:`Stepper`): Adam under Opacus' per-sample gradients and its
  clipping/noising optimizer (:class:`opacus.optimizers.DPOptimizer`);
* household-day unit (:class:`DayStepper`): a documented per-unit step on top of torch
  (:func:`clipped_unit_sum`), accounted by Opacus: each sampled day's per-example
  gradients are averaged (computed as the gradient of the day's mean loss), the average
  is clipped, the clipped sum is noised and divided by the expected number of units,
  and Adam takes the step.

Why this is DP-SGD with the accounted mechanism is argued in
:mod:`services.personalization.finetune`.
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

    @property
    def n_items(self) -> int:
        """What each step Poisson-samples: the rows."""
        return len(self.rows.xs)

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


def clipped_unit_sum(
    grads: Sequence[torch.Tensor], unit_of: torch.Tensor, n_units: int, max_grad_norm: float
) -> list[torch.Tensor]:
    """The sum over units of each unit's mean per-example gradient, clipped to
    ``max_grad_norm`` (L2 over all parameters together).

    ``grads[k]`` is parameter ``k``'s per-example gradients ``[rows, *shape]``,
    ``unit_of`` each row's unit in ``0..n_units-1``. However many rows a unit has, its
    term in the sum has norm at most ``max_grad_norm``: that is the sensitivity the
    noise is calibrated to.
    """
    counts = torch.zeros(n_units).index_add_(0, unit_of, torch.ones(len(unit_of)))
    means = []
    for g in grads:
        flat = g.reshape(len(g), -1)
        summed = torch.zeros(n_units, flat.shape[1], dtype=flat.dtype).index_add_(0, unit_of, flat)
        means.append(summed / counts.clamp(min=1.0).unsqueeze(1))
    norms = torch.sqrt(sum([(m**2).sum(dim=1) for m in means], torch.zeros(n_units)))
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return [
        (factors.unsqueeze(1) * m).sum(dim=0).reshape(g.shape[1:])
        for m, g in zip(means, grads, strict=True)
    ]


@dataclass(frozen=True)
class DayStepper:
    """Every step of one run with the household-day unit: Poisson-sample units (the
    private days, then the public replay's pseudo-days), take each sampled unit's mean
    gradient (the gradient of its rows' mean loss: the mean of their per-example
    gradients, without materialising them), clip it, noise the sum and take an Adam step
    on ``(sum + noise) / expected_batch_size`` (the expected number of units, never the
    realised one)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    params: list[nn.Parameter]
    rows: Rows
    unit_of_row: torch.Tensor
    weights: torch.Tensor | None
    distill_weight: float
    expected_batch_size: int
    noise_multiplier: float
    max_grad_norm: float
    noise_gen: torch.Generator
    private: bool = True

    @property
    def n_items(self) -> int:
        """What each step Poisson-samples: the units."""
        return int(self.unit_of_row.max().item()) + 1 if len(self.unit_of_row) else 0

    def _noised(self, summed: list[torch.Tensor]) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p, total in zip(self.params, summed, strict=True):
            noise = (
                torch.normal(0.0, std, size=p.shape, generator=self.noise_gen)
                if self.noise_multiplier > 0
                else torch.zeros(p.shape)
            )
            p.grad = ((total + noise) / self.expected_batch_size).to(p.dtype)

    def _unit_gradient(self, unit: torch.Tensor) -> tuple[list[torch.Tensor], float]:
        """The gradient of the unit's mean loss over its rows, and that loss."""
        rows = torch.nonzero(self.unit_of_row == unit).flatten()
        soft = self.rows.soft
        loss = per_sample_loss(
            self.model(self.rows.xs[rows]),
            self.rows.ys[rows],
            None if soft is None else soft[rows],
            self.weights,
            self.distill_weight,
        ).mean()
        grads = torch.autograd.grad(loss, self.params)
        return [g.detach() for g in grads], float(loss.item())

    def step(self, units: torch.Tensor) -> float | None:
        """One step on the sampled ``units``; their mean loss (None if none)."""
        self.opt.zero_grad()
        if len(units) == 0:
            # An empty Poisson batch still releases a noisy step.
            self._noised([torch.zeros(p.shape) for p in self.params])
            self.opt.step()
            return None
        per_unit = [self._unit_gradient(u) for u in units]
        stacked = [torch.stack(gs) for gs in zip(*(g for g, _ in per_unit), strict=True)]
        summed = clipped_unit_sum(stacked, torch.arange(len(units)), len(units), self.max_grad_norm)
        self._noised(summed)
        self.opt.step()
        return sum(loss for _, loss in per_unit) / len(per_unit)


def make_day_stepper(
    net: nn.Module,
    params: list[nn.Parameter],
    rows: Rows,
    unit_of_row: torch.Tensor,
    *,
    noise_multiplier: float,
    lr: float,
    max_grad_norm: float,
    expected_batch_size: int,
    distill_weight: float,
    class_weights: Sequence[float] | None,
    noise_gen: torch.Generator,
) -> DayStepper:
    """Adam on ``params`` with per-unit clipping and noise (``noise_multiplier`` 0: the
    same step without noise, for the non-private baseline)."""
    weights = (
        torch.tensor(list(class_weights), dtype=torch.float32)
        if class_weights is not None
        else None
    )
    return DayStepper(
        _Logits(net),
        torch.optim.Adam(params, lr=lr),
        params,
        rows,
        unit_of_row,
        weights,
        distill_weight,
        expected_batch_size,
        noise_multiplier,
        max_grad_norm,
        noise_gen,
    )


def run_steps(
    stepper: Stepper | DayStepper,
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
    the non-empty batches. Each step includes every item (row or unit) independently
    with probability ``sample_rate``."""
    n = stepper.n_items
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
