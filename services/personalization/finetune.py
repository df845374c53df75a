"""Differentially private fine-tuning of a shipped model on one household's data.

The personalization service calls this library (in its training child); with
:mod:`services.personalization.onnx_roundtrip`, which turns the shipped ONNX models into
torch modules and back, it is the only torch code outside ``models/``. The flow is::

    base = base_model("routine", artifacts / "routine" / "routine.onnx")  # onnx_roundtrip
    res = dp_finetune(base, x, y, target_epsilon=2.0, delta=1e-5, ...)
    ledger.charge(res.noise_multiplier, res.sample_rate, res.steps, res.delta)
    export_candidate(res.model, candidate_dir / "routine.onnx", "routine")  # onnx_roundtrip

**Privacy reasoning.** Training is DP-SGD (Abadi et al. 2016) with Opacus' per-sample
gradients (:class:`opacus.GradSampleModule`) and clipping/noising optimizer
(:class:`opacus.optimizers.DPOptimizer`):

* every step includes each example independently with probability ``sample_rate``
  (Poisson sampling; a batch may be empty and still takes a noisy step), so the
  privacy amplification by subsampling that the accountant assumes really holds;
* each example's gradient (over the trainable parameters, flat) is clipped to
  ``max_grad_norm`` and Gaussian noise of std ``noise_multiplier * max_grad_norm`` is
  added to their sum, which is divided by the fixed ``expected_batch_size`` (never
  by the realised batch size, which would depend on the data);
* the loss of an example depends only on that example (per-sample cross-entropy and
  the optional per-sample distillation term), so clipping bounds its influence. A
  penalty on the weights (EWC, L2 to the base) is NOT a per-sample term: Opacus
  would silently drop it from the private update, so none is offered here;
* the class weights of the loss are constants that must not come from the private
  data (pass the base model's, or none);
* the mechanism ``(noise_multiplier, sample_rate, steps)`` is returned, and the
  epsilon is accounted from it by an Opacus accountant ("prv" by default, "rdp"
  optional) for the steps actually taken: stopping early (``max_seconds``) spends
  less, never more.

The base model, its training data and any replay data are public (they ship with
Roost); only the household's rows are private. Randomness (parameter noise, Poisson
sampling, dropout) comes from generators seeded by ``seed``: given the seed and the
same torch thread count, a run is bit-for-bit repeatable. That is right for
experiments and tests; a production run should pass a fresh random seed so that the
noise is not predictable (Opacus' ``secure_mode`` needs torchcsprng, not installed).
"""

from __future__ import annotations

import copy
import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from opacus import GradSampleModule  # type: ignore[import-untyped]
from opacus.accountants.utils import get_noise_multiplier  # type: ignore[import-untyped]
from opacus.optimizers import DPOptimizer  # type: ignore[import-untyped]
from opacus.validators import ModuleValidator  # type: ignore[import-untyped]
from torch import nn

from services.personalization.accounting import mechanism_epsilon

Trainable = Literal["all", "head", "top"]

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]


# Defaults chosen by `python -m bench.privacy_utility` (docs/personalization.md):
# distillation + replay of public base rows forgot least and gained most (within the
# seed spread of replay alone) on both tasks at epsilon 1-4. Replay rows must be
# public base-training data, as many as the private rows.
DEFAULTS: dict[str, dict[str, Any]] = {
    "routine": {
        "trainable": "all",
        "distill_weight": 1.0,
        "replay": True,
        "epochs": 6,
        "expected_batch_size": 256,
        "max_grad_norm": 1.0,
        "lr": 1e-3,
        "delta": 1e-5,
        "accountant": "prv",
    },
    "occupancy": {
        "trainable": "all",
        "distill_weight": 1.0,
        "replay": True,
        "epochs": 8,
        "expected_batch_size": 64,
        "max_grad_norm": 1.0,
        "lr": 1e-3,
        "delta": 1e-5,
        "accountant": "prv",
    },
}


# --- DP fine-tuning --------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneResult:
    """The fine-tuned model and the mechanism that produced it (what a ledger charges).

    ``epsilon`` is accounted by ``accountant`` from ``(noise_multiplier, sample_rate,
    steps)`` at ``delta``; ``inf`` for a non-private run (``noise_multiplier`` 0).
    """

    model: nn.Module
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float
    delta: float
    seconds: float
    epochs_done: float
    accountant: str
    max_grad_norm: float
    n_private: int
    n_replay: int
    losses: list[float] = field(default_factory=list)

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0


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


def _linears(net: nn.Module) -> list[nn.Linear]:
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


def set_trainable(net: nn.Module, trainable: str) -> list[nn.Parameter]:
    """Freeze all but the chosen parameters; returns the trainable ones.

    ``all``: every parameter; ``head``: the last Linear only; ``top``: every Linear but
    the first (the input layer, where a new home's sensor layout lands, stays put).
    """
    linears = _linears(net)
    if not linears:
        raise ValueError("the model has no Linear layer")
    if trainable == "all":
        chosen = list(net.parameters())
    elif trainable == "head":
        chosen = list(linears[-1].parameters())
    elif trainable == "top":
        chosen = [p for lin in linears[1:] for p in lin.parameters()]
    else:
        raise ValueError(f"trainable must be 'all', 'head' or 'top', got '{trainable}'")
    ids = {id(p) for p in chosen}
    for p in net.parameters():
        p.requires_grad_(id(p) in ids)
    return chosen


def accounted_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str
) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps, by an Opacus accountant
    (``inf`` without noise: a non-private run)."""
    if noise_multiplier <= 0:
        return math.inf
    return mechanism_epsilon(noise_multiplier, sample_rate, steps, delta, accountant)


@functools.lru_cache(maxsize=256)
def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The noise multiplier whose accounted epsilon after ``steps`` is <= the target.

    Opacus' binary search (tolerance 0.01 in epsilon, from above): the result is a
    pure function of its arguments, so it is cached (PRV calibration takes ~1 s).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )


def _per_sample_loss(
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


def dp_finetune(
    base: nn.Module,
    x: F32Array,
    y: I64Array,
    *,
    target_epsilon: float | None,
    delta: float,
    epochs: float,
    expected_batch_size: int,
    max_grad_norm: float,
    lr: float,
    accountant: str = "prv",
    trainable: str = "all",
    distill_weight: float = 0.0,
    replay: tuple[F32Array, I64Array] | None = None,
    class_weights: Sequence[float] | None = None,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
    max_seconds: float | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``base`` on the household rows ``(x, y)`` with DP-SGD (Adam).

    ``target_epsilon`` None trains without privacy (same sampling, loss and
    optimizer; no clipping, no noise; epsilon ``inf``): the utility ceiling and the
    overhead baseline. Otherwise the noise multiplier is the smallest (to Opacus'
    tolerance) whose accounted epsilon after the planned steps is at most
    ``target_epsilon`` at ``delta``.

    Sampling: each step includes every row of the training set independently with
    probability ``sample_rate = expected_batch_size / n`` (Poisson), where ``n`` counts
    the private rows plus the ``replay`` rows; ``steps = ceil(epochs / sample_rate)``.

    ``replay``: public rows (the base model's own training data, which ships with
    Roost) mixed into the sampled set to counter forgetting. The accounting on the
    private rows stays valid: neighbouring datasets differ in one *private* row; every
    row, public or private, is still included independently with the same
    ``sample_rate``, clipped to ``max_grad_norm``, and noised together. The public
    rows' clipped gradients are a function of public data and of the (data-independent)
    sampling, so they are post-processing of nothing private: the sampled Gaussian
    mechanism seen by any one private row is exactly the one accounted. (The only
    effect of the replay rows is a lower sampling rate of the private rows for the
    same number of epochs, which the returned ``sample_rate`` already reflects.)

    ``distill_weight``: adds ``distill_weight * KL(base(x_i) || model(x_i))`` to each
    example's loss, with the frozen base as teacher. It is a per-sample term of the
    same example, so it is clipped with it and DOES enter the private update, unlike
    an EWC/L2 penalty on the weights, which Opacus' per-sample clipping drops.

    ``trainable``: "all", "head" (last Linear only) or "top" (all Linear layers but the
    first). Frozen parameters receive no update and no noise.

    ``class_weights``: per-class constants of the cross-entropy; they must not be
    computed from the private rows (use the base recipe's), or they would leak
    counts outside the accounting.

    ``max_seconds``: wall-time cap; training stops after the step that crosses it and
    the epsilon is accounted for the steps actually taken (at most the target).
    ``progress`` is called with the fraction of planned steps done.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and aligned, got {len(x)} and {len(y)}")
    if target_epsilon is not None and not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be positive or None, got {target_epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    started = time.perf_counter()
    torch.manual_seed(seed)  # dropout masks
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed + 1_000_003)

    net = copy.deepcopy(base).train()
    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        raise ValueError(f"the model cannot be trained with Opacus: {errors}")
    teacher: nn.Module | None = None
    if distill_weight > 0:
        teacher = copy.deepcopy(base).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    params = set_trainable(net, trainable)

    xs, ys = torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(y)
    n_private = len(xs)
    n_replay = 0
    if replay is not None and len(replay[0]):
        rx = torch.from_numpy(np.asarray(replay[0], dtype=np.float32))
        ry = torch.from_numpy(np.asarray(replay[1], dtype=np.int64))
        n_replay = len(rx)
        xs, ys = torch.cat([xs, rx]), torch.cat([ys, ry])
    n = len(xs)
    sample_rate = min(1.0, expected_batch_size / n)
    steps_planned = max(1, math.ceil(epochs / sample_rate))
    weights = (
        torch.tensor(list(class_weights), dtype=torch.float32)
        if class_weights is not None
        else None
    )
    soft: torch.Tensor | None = None
    if teacher is not None:
        with torch.no_grad():
            soft = torch.log_softmax(logits_of(teacher, xs), dim=-1)

    private = target_epsilon is not None
    if private:
        assert target_epsilon is not None
        noise_multiplier = calibrate_noise(
            target_epsilon, delta, sample_rate, steps_planned, accountant
        )
    else:
        noise_multiplier = 0.0

    inner = _Logits(net)
    model: nn.Module
    base_opt = torch.optim.Adam(params, lr=lr)
    opt: Any
    if private:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = GradSampleModule(inner, loss_reduction="mean", strict=True)
            opt = DPOptimizer(
                base_opt,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                expected_batch_size=expected_batch_size,
                loss_reduction="mean",
                generator=noise_gen,
            )
    else:
        model, opt = inner, base_opt

    losses: list[float] = []
    steps = 0
    net.train()
    with warnings.catch_warnings():
        # Opacus' full backward hooks fire on module outputs: the inputs need no grad.
        warnings.filterwarnings("ignore", message="Full backward hook")
        try:
            for step in range(steps_planned):
                mask = torch.rand(n, generator=gen) < sample_rate
                idx = torch.nonzero(mask).flatten()
                opt.zero_grad()
                if len(idx) == 0:
                    if private:
                        # An empty Poisson batch still releases a noisy (zero-sum) step.
                        for p in params:
                            p.grad_sample = torch.zeros((0, *p.shape))  # type: ignore[attr-defined]
                        opt.step()
                    steps += 1
                else:
                    logits = model(xs[idx])
                    per_sample = _per_sample_loss(
                        logits,
                        ys[idx],
                        None if soft is None else soft[idx],
                        weights,
                        distill_weight,
                    )
                    # Sum / expected batch size: the DP normalisation, used in both modes so
                    # that the private and non-private runs optimise the same objective.
                    loss = per_sample.sum() / expected_batch_size
                    if private:
                        # Opacus' "mean" reduction rescales by the realised batch size; feed
                        # it the per-sample mean so each grad_sample is that example's own.
                        torch.autograd.backward(per_sample.mean())
                    else:
                        torch.autograd.backward(loss)
                    opt.step()
                    steps += 1
                    losses.append(float(per_sample.mean().item()))
                if progress is not None:
                    progress((step + 1) / steps_planned)
                if max_seconds is not None and time.perf_counter() - started > max_seconds:
                    break
        finally:
            if isinstance(model, GradSampleModule):
                model.remove_hooks()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None
        for attr in ("grad_sample", "summed_grad", "_processed"):
            if hasattr(p, attr):
                delattr(p, attr)
    epsilon = accounted_epsilon(noise_multiplier, sample_rate, steps, delta, accountant)
    return FinetuneResult(
        model=net,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        epsilon=epsilon,
        delta=delta,
        seconds=time.perf_counter() - started,
        epochs_done=steps * sample_rate,
        accountant=accountant,
        max_grad_norm=max_grad_norm if private else math.inf,
        n_private=n_private,
        n_replay=n_replay,
        losses=losses,
    )
