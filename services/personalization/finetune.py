"""Differentially private fine-tuning of a shipped model on one household's data.

The personalization service calls this library; it is the only torch/opacus importer
outside ``models/``. The flow is::

    base = base_model("routine", artifacts / "routine" / "routine.onnx")
    res = dp_finetune(base, x, y, target_epsilon=2.0, delta=1e-5, ...)
    ledger.charge(res.noise_multiplier, res.sample_rate, res.steps, res.delta)
    export_candidate(res.model, candidate_dir / "routine.onnx", "routine")

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
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import numpy_helper
from opacus import GradSampleModule  # type: ignore[import-untyped]
from opacus.accountants import create_accountant  # type: ignore[import-untyped]
from opacus.accountants.utils import get_noise_multiplier  # type: ignore[import-untyped]
from opacus.optimizers import DPOptimizer  # type: ignore[import-untyped]
from opacus.validators import ModuleValidator  # type: ignore[import-untyped]
from torch import nn

from models.export import export_onnx, run

Task = Literal["occupancy", "routine"]
Trainable = Literal["all", "head", "top"]
TASKS: tuple[str, ...] = ("occupancy", "routine")
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
PARITY_TOLERANCE = 1e-5
PARITY_ROWS = 256

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


class OnnxLoadError(ValueError):
    """An ONNX artifact does not fit the module, or the loaded module disagrees with it."""


# --- Loading the shipped model ---------------------------------------------------------


def _gemm_transposed(graph: onnx.GraphProto) -> set[str]:
    """Initializers used as the B input of a Gemm with transB=0 (stored as [in, out])."""
    out: set[str] = set()
    for node in graph.node:
        if node.op_type == "Gemm" and len(node.input) > 1:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            if trans_b == 0:
                out.add(node.input[1])
    return out


def initializer_mapping(module: nn.Module, graph: onnx.GraphProto) -> dict[str, str]:
    """state_dict key -> ONNX initializer name.

    ``torch.onnx.export`` (TorchScript exporter, as used by ``models.export``) keeps
    the state_dict names for parameters and buffers (``mlp.0.weight``, ``mean`` ...),
    which is what the shipped artifacts contain: the mapping is then the identity.
    Exporters that rename initializers (``onnx::Gemm_12``) are handled by pairing the
    remaining keys with the remaining initializers in order, if and only if every
    pair has the same number of elements; anything else is an error.
    """
    inits = {i.name: i for i in graph.initializer}
    keys = list(module.state_dict().keys())
    mapping = {k: k for k in keys if k in inits}
    rest_keys = [k for k in keys if k not in mapping]
    rest_inits = [i.name for i in graph.initializer if i.name not in mapping.values()]
    if rest_keys:
        state = module.state_dict()
        if len(rest_keys) != len(rest_inits):
            raise OnnxLoadError(
                f"cannot map {rest_keys} onto initializers {rest_inits}: counts differ"
            )
        for k, name in zip(rest_keys, rest_inits, strict=True):
            n = int(np.prod(list(inits[name].dims)))
            if n != state[k].numel():
                raise OnnxLoadError(f"{k} {tuple(state[k].shape)} vs initializer {name}: sizes")
            mapping[k] = name
    return mapping


def load_from_onnx(module: nn.Module, onnx_path: Path, *, seed: int = 0) -> nn.Module:
    """Copy every parameter and buffer of ``onnx_path`` into ``module``; check parity.

    ``module`` must already have the artifact's architecture (see :func:`base_model`).
    After copying, the module (eval mode) and onnxruntime are run on
    ``PARITY_ROWS`` random rows around the module's ``mean``/``std`` buffers (or
    standard normal rows); the largest absolute difference of the outputs must be at
    most ``PARITY_TOLERANCE`` (1e-5), else :class:`OnnxLoadError`. Returns ``module``.
    """
    proto = onnx.load(str(onnx_path))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    transposed = _gemm_transposed(graph)
    mapping = initializer_mapping(module, graph)
    state = module.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    for key, name in mapping.items():
        arr = np.array(numpy_helper.to_array(inits[name]), dtype=np.float32)
        if name in transposed and arr.ndim == 2:
            arr = arr.T
        target = state[key]
        if tuple(arr.shape) != tuple(target.shape):
            if arr.size != target.numel():
                raise OnnxLoadError(
                    f"{onnx_path}: {name} has shape {arr.shape}, module {key} has "
                    f"{tuple(target.shape)}"
                )
            arr = arr.reshape(tuple(target.shape))
        new_state[key] = torch.from_numpy(np.ascontiguousarray(arr)).to(target.dtype)
    module.load_state_dict(new_state, strict=True)
    module.eval()
    diff = parity(module, onnx_path, seed=seed)
    if not diff <= PARITY_TOLERANCE:
        raise OnnxLoadError(
            f"{onnx_path}: torch vs onnxruntime max abs diff {diff:.3e} > {PARITY_TOLERANCE} "
            "(wrong architecture or initializer mapping)"
        )
    return module


def _input_width(graph: onnx.GraphProto) -> int:
    dims = graph.input[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value)


def parity_inputs(module: nn.Module, width: int, seed: int, rows: int = PARITY_ROWS) -> F32Array:
    """Random rows in the module's input range: mean + 2 std * N(0, 1) if it has them."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, width)).astype(np.float32)
    buffers = dict(module.named_buffers())
    if "mean" in buffers and "std" in buffers:
        mean = buffers["mean"].detach().numpy()
        std = buffers["std"].detach().numpy()
        out: F32Array = (mean + 2.0 * std * z).astype(np.float32)
        return out
    return z


def parity(module: nn.Module, onnx_path: Path, *, seed: int = 0) -> float:
    """Max abs difference between ``module`` (eval) and onnxruntime on random rows."""
    graph = onnx.load(str(onnx_path)).graph
    x = parity_inputs(module, _input_width(graph), seed)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    module.train(was_training)
    got = run(onnx_path, x, graph.input[0].name, graph.output[0].name)
    return float(np.max(np.abs(np.asarray(got) - ref)))


def new_module(task: str, onnx_path: Path) -> nn.Module:
    """An untrained module with the architecture of the task's artifact at ``onnx_path``.

    The constructors derive their buffers from a data matrix; a dummy one is given,
    every value is then overwritten by :func:`load_from_onnx`. Widths are read from
    the artifact's initializers.
    """
    graph = onnx.load(str(onnx_path)).graph
    width = _input_width(graph)
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    dummy = np.zeros((2, width), dtype=np.float32)
    if task == "occupancy":
        from models.occupancy.net import OccupancyNet  # noqa: PLC0415 - the task's net only

        hidden = int(shapes.get("mlp.0.weight", (32,))[0])
        return OccupancyNet(dummy, hidden=hidden)
    if task == "routine":
        from models.routine.net import Hyper, RoutineNet  # noqa: PLC0415

        hidden = int(shapes.get("mlp.0.weight", (Hyper.hidden,))[0])
        return RoutineNet(dummy, hidden=hidden, dropout=Hyper.dropout)
    raise ValueError(f"unknown task '{task}'; known: {', '.join(TASKS)}")


def base_model(task: str, onnx_path: Path) -> nn.Module:
    """The shipped model of ``task`` ("occupancy" or "routine") as a torch module."""
    return load_from_onnx(new_module(task, onnx_path), onnx_path)


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
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps, by an Opacus accountant."""
    if noise_multiplier <= 0:
        return math.inf
    if steps == 0:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # RDP's "optimal order" notice
        return float(acc.get_epsilon(delta=delta))


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


# --- Candidate export ------------------------------------------------------------------


def export_candidate(model: nn.Module, onnx_path: Path, task: str) -> float:
    """Write ``model`` as the task's ONNX candidate and check parity; returns the max diff.

    Same exporter, names and opset as the shipped artifacts (``models.export``), so
    the inference service's manifest (input ``features``, output ``probabilities``)
    applies unchanged. Raises :class:`OnnxLoadError` if torch and onnxruntime differ
    by more than ``PARITY_TOLERANCE``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}'; known: {', '.join(TASKS)}")
    model.eval()
    width = int(next(iter(_linears(model))).in_features)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(
        model,
        torch.zeros(2, width, dtype=torch.float32),
        onnx_path,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        doc=f"Roost {task}: personalized candidate (DP fine-tuned on this home)",
    )
    diff = parity(model, onnx_path)
    if not diff <= PARITY_TOLERANCE:
        raise OnnxLoadError(
            f"{onnx_path}: candidate torch vs onnxruntime max abs diff {diff:.3e} "
            f"> {PARITY_TOLERANCE}"
        )
    return diff
