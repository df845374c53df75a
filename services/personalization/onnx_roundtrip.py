"""The shipped ONNX models as torch modules and back, with a parity check both ways.

:func:`base_model` rebuilds a task's shipped net (OccupancyNet, RoutineNet) and
:func:`load_from_onnx` copies every parameter and buffer from the artifact's
initializers; :func:`export_candidate` writes a fine-tuned module with the shipped
exporter, names and opset (``models.export``), so the inference service's manifest
applies unchanged. Either way, torch and onnxruntime must agree on random rows to
``PARITY_TOLERANCE`` or :class:`OnnxLoadError` is raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from models.export import export_onnx, run

Task = Literal["occupancy", "routine"]
TASKS: tuple[str, ...] = ("occupancy", "routine")
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
PARITY_TOLERANCE = 1e-5
PARITY_ROWS = 256

F32Array = npt.NDArray[np.float32]


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


def export_candidate(
    model: nn.Module,
    onnx_path: Path,
    task: str,
    doc: str = "personalized candidate (DP fine-tuned on this home)",
) -> float:
    """Write ``model`` as the task's ONNX candidate and check parity; returns the max diff.

    Same exporter, names and opset as the shipped artifacts (``models.export``), so
    the inference service's manifest (input ``features``, output ``probabilities``)
    applies unchanged. Raises :class:`OnnxLoadError` if torch and onnxruntime differ
    by more than ``PARITY_TOLERANCE``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}'; known: {', '.join(TASKS)}")
    model.eval()
    width = int(next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(
        model,
        torch.zeros(2, width, dtype=torch.float32),
        onnx_path,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        doc=f"Roost {task}: {doc}",
    )
    diff = parity(model, onnx_path)
    if not diff <= PARITY_TOLERANCE:
        raise OnnxLoadError(
            f"{onnx_path}: candidate torch vs onnxruntime max abs diff {diff:.3e} "
            f"> {PARITY_TOLERANCE}"
        )
    return diff
