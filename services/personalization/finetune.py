"""Differentially private fine-tuning of a shipped model on one household's data.

The personalization service calls this library (in its training child); with
:mod:`services.personalization.onnx_roundtrip`, which turns the shipped ONNX models into
torch modules and back, and :mod:`services.personalization.dp_sgd`, its step loop, it is
the only torch code outside ``models/``. The flow is::

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
* with the household-day unit (``unit="day"``) the same holds with a day in place of
  an example: each step includes each *day* independently with probability
  ``sample_rate``; the per-example gradients of a sampled day are averaged (a day of
  10,000 rows weighs what a day of 10 does), the average is clipped to
  ``max_grad_norm``, and the noise and the division by ``expected_batch_size`` (now
  in days) are as above. Adding or removing a whole day changes the noised sum by at
  most ``max_grad_norm``: the sampled Gaussian mechanism Opacus' accountants analyse,
  with the day as the unit. This per-unit step is ours, on top of torch's autograd
  gradients (:func:`services.personalization.dp_sgd.clipped_unit_sum`);
  the accounting is Opacus';
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
from typing import Any, Literal

import numpy as np
import torch
from opacus.accountants.utils import get_noise_multiplier  # type: ignore[import-untyped]
from opacus.validators import ModuleValidator  # type: ignore[import-untyped]
from torch import nn

from services.personalization.accounting import mechanism_epsilon
from services.personalization.dp_sgd import (
    F32Array,
    I64Array,
    Rows,
    make_day_stepper,
    make_stepper,
    release,
    run_steps,
    training_rows,
)
from services.personalization.privacy_unit import replay_units, unit_index

Trainable = Literal["all", "head", "top"]


# Defaults chosen by `python -m bench.privacy_utility` (docs/personalization.md):
# distillation + replay of public base rows forgot least and gained most (within the
# seed spread of replay alone) on both tasks at epsilon 1-4. Replay rows must be
# public base-training data, as many as the private rows. These are the example unit's;
# DAY_OVERRIDES changes what differs for the household-day unit (where
# expected_batch_size counts days). delta is the budget's
# (services.personalization.privacy_unit.derived_delta), not a recipe setting.
DEFAULTS: dict[str, dict[str, Any]] = {
    "routine": {
        "trainable": "all",
        "distill_weight": 1.0,
        "replay": True,
        "epochs": 6,
        "expected_batch_size": 256,
        "max_grad_norm": 1.0,
        "lr": 1e-3,
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
        "accountant": "prv",
    },
}
DAY_OVERRIDES: dict[str, dict[str, Any]] = {
    "routine": {"expected_batch_size": 8, "lr": 2e-3, "epochs": 10},
    "occupancy": {"expected_batch_size": 8, "lr": 2e-3, "epochs": 10},
}


def hyper_parameters(task: str, unit: str) -> dict[str, Any]:
    """The service recipe of ``task`` for the privacy ``unit`` ("day" or "example")."""
    hyper = dict(DEFAULTS[task])
    if unit == "day":
        hyper.update(DAY_OVERRIDES[task])
    return hyper


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
    #: The privacy unit ("day" or "example") and how many private units were sampled from.
    unit: str = "example"
    n_units: int = 0
    losses: list[float] = field(default_factory=list)

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0


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


def _check_inputs(x: F32Array, y: I64Array, target_epsilon: float | None, delta: float) -> None:
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and aligned, got {len(x)} and {len(y)}")
    if target_epsilon is not None and not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be positive or None, got {target_epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def _prepare_nets(
    base: nn.Module, trainable: str, distill_weight: float
) -> tuple[nn.Module, nn.Module | None, list[nn.Parameter]]:
    """The trained copy of ``base`` (validated for Opacus), the frozen teacher (None
    without distillation) and the trainable parameters."""
    net = copy.deepcopy(base).train()
    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        raise ValueError(f"the model cannot be trained with Opacus: {errors}")
    teacher: nn.Module | None = None
    if distill_weight > 0:
        teacher = copy.deepcopy(base).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    return net, teacher, set_trainable(net, trainable)


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
    days: I64Array | None = None,
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

    ``days``: the household-day of each private row (e.g. UTC day numbers): given, the
    privacy unit is the day (see the module docstring); ``expected_batch_size`` then
    counts units, and the ``replay`` rows are split into as many public pseudo-days as
    there are private days. None: the unit is one example.

    ``max_seconds``: wall-time cap; training stops after the step that crosses it and
    the epsilon is accounted for the steps actually taken (at most the target).
    ``progress`` is called with the fraction of planned steps done.
    """
    _check_inputs(x, y, target_epsilon, delta)
    started = time.perf_counter()
    torch.manual_seed(seed)  # dropout masks
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed + 1_000_003)

    net, teacher, params = _prepare_nets(base, trainable, distill_weight)
    rows = training_rows(x, y, replay, teacher)
    unit_of_row, n_units = _units(rows, days)
    n_items = len(rows.xs) if unit_of_row is None else int(unit_of_row.max().item()) + 1
    sample_rate = min(1.0, expected_batch_size / n_items)
    steps_planned = max(1, math.ceil(epochs / sample_rate))
    noise_multiplier = (
        None
        if target_epsilon is None
        else calibrate_noise(target_epsilon, delta, sample_rate, steps_planned, accountant)
    )
    common: dict[str, Any] = {
        "lr": lr,
        "max_grad_norm": max_grad_norm,
        "expected_batch_size": expected_batch_size,
        "distill_weight": distill_weight,
        "class_weights": class_weights,
        "noise_gen": noise_gen,
    }
    if unit_of_row is None:
        stepper: Any = make_stepper(net, params, rows, noise_multiplier=noise_multiplier, **common)
    else:
        if noise_multiplier is None:  # non-private: per-day means, no clipping, no noise
            common["max_grad_norm"] = math.inf
        stepper = make_day_stepper(
            net, params, rows, unit_of_row, noise_multiplier=noise_multiplier or 0.0, **common
        )
    net.train()
    steps, losses = run_steps(
        stepper,
        gen,
        sample_rate,
        steps_planned,
        progress=progress,
        started=started,
        max_seconds=max_seconds,
    )
    release(net)
    noise = noise_multiplier or 0.0
    return FinetuneResult(
        model=net,
        noise_multiplier=noise,
        sample_rate=sample_rate,
        steps=steps,
        epsilon=accounted_epsilon(noise, sample_rate, steps, delta, accountant),
        delta=delta,
        seconds=time.perf_counter() - started,
        epochs_done=steps * sample_rate,
        accountant=accountant,
        max_grad_norm=max_grad_norm if noise_multiplier is not None else math.inf,
        n_private=rows.n_private,
        n_replay=rows.n_replay,
        unit="example" if unit_of_row is None else "day",
        n_units=rows.n_private if unit_of_row is None else n_units,
        losses=losses,
    )


def _units(rows: Rows, days: I64Array | None) -> tuple[torch.Tensor | None, int]:
    """Each row's unit (private days first, then the replay's pseudo-days) and the
    number of private days; ``(None, 0)`` for the example unit."""
    if days is None:
        return None, 0
    if len(days) != rows.n_private:
        raise ValueError(f"days must have one entry per private row, got {len(days)}")
    private, n_days = unit_index(days)
    public = replay_units(rows.n_replay, n_days, n_days)
    return torch.from_numpy(np.concatenate([private, public])), n_days
