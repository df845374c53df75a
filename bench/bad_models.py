"""Validly signed bad versions of the shipped occupancy model, for the health gate's
tests (``tests/integration/test_update_gate.py``) and benchmark (``bench/update_gate.py``).

Each is the shipped model directory under a new version with its ONNX file replaced
(the manifest's hashes updated, so the bundle verifies and TUF signs it like any
release); what is wrong is in the graph:

- ``wrong_schema``: the graph wants 7 features where the manifest (and the active model)
  say 6;
- ``fails_to_load``: the "ONNX file" is not a model at all;
- ``nan_outputs``: the shipped model, but NaN whenever co2 is above 900 ppm (sqrt of a
  negative number added, times zero, to the probabilities): finite on the baseline,
  NaN on many occupied rooms;
- ``slow``: the shipped model plus a dead branch of ``layers`` 256x256 matrix products
  (multiplied by zero): the same answers, many times slower (``SLOW_LAYERS`` makes it
  about 25x on this machine, see ``bench/results/update.md``);
- ``label_inverted``: the shipped model with its two output columns swapped.

:func:`attach_shipped_canary` adds a canary set (``models/canary.py``) whose expected
labels are what the shipped model answers, as a publisher would.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.canary import attach_canary
from models.manifest import MANIFEST_FILE, sha256_file, shipped_models_dir
from models.onnx_runtime import open_session

KINDS = ("wrong_schema", "fails_to_load", "nan_outputs", "slow", "label_inverted")
SLOW_LAYERS = 24
WIDTH = 256

# Features in the manifest's order: temperature, humidity, light, co2, hour_sin, hour_cos.
OCCUPIED = [
    22.5,
    27.0,
    520.0,
    950.0,
    math.sin(2 * math.pi * 14 / 24),
    math.cos(2 * math.pi * 14 / 24),
]
VACANT = [19.5, 24.0, 0.0, 420.0, math.sin(2 * math.pi * 3 / 24), math.cos(2 * math.pi * 3 / 24)]


def _shipped_graph() -> onnx.ModelProto:
    """The shipped occupancy graph with its final output renamed ``raw``."""
    model = onnx.load(str(shipped_models_dir() / "occupancy" / "occupancy.onnx"))
    for node in model.graph.node:
        node.output[:] = ["raw" if o == "probabilities" else o for o in node.output]
    return model


def _finish(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray]
) -> bytes:
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    return model.SerializeToString()


def _nan_outputs() -> bytes:
    f32 = np.float32
    nodes = [
        helper.make_node("Slice", ["features", "s", "e", "ax"], ["co2"]),
        helper.make_node("Sub", ["limit", "co2"], ["room"]),
        helper.make_node("Sqrt", ["room"], ["root"]),  # NaN above the limit
        helper.make_node("Mul", ["root", "zero"], ["nan_or_zero"]),
        helper.make_node("Add", ["raw", "nan_or_zero"], ["probabilities"]),
    ]
    consts: dict[str, np.ndarray] = {
        "s": np.array([3], np.int64),
        "e": np.array([4], np.int64),
        "ax": np.array([1], np.int64),
        "limit": np.array([900.0], f32),
        "zero": np.array([0.0], f32),
    }
    return _finish(_shipped_graph(), nodes, consts)


def _slow(layers: int) -> bytes:
    rng = np.random.default_rng(0)
    consts: dict[str, np.ndarray] = {
        "w_in": (rng.normal(size=(6, WIDTH)) * 0.01).astype(np.float32),
        "zero": np.array([0.0], np.float32),
        "axes": np.array([1], np.int64),
    }
    nodes = [helper.make_node("MatMul", ["features", "w_in"], ["h0"])]
    for i in range(layers):
        consts[f"w{i}"] = (rng.normal(size=(WIDTH, WIDTH)) / WIDTH).astype(np.float32)
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"h{layers}", "axes"], ["dead"], keepdims=1),
        helper.make_node("Mul", ["dead", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["probabilities"]),
    ]
    return _finish(_shipped_graph(), nodes, consts)


def _label_inverted() -> bytes:
    nodes = [helper.make_node("Gather", ["raw", "swap"], ["probabilities"], axis=1)]
    return _finish(_shipped_graph(), nodes, {"swap": np.array([1, 0], np.int64)})


def _wrong_schema() -> bytes:
    w = helper.make_tensor("w", TensorProto.FLOAT, [7, 2], [0.01] * 14)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "seven",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 7])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model.SerializeToString()


def onnx_bytes(kind: str, layers: int = SLOW_LAYERS) -> bytes:
    if kind == "wrong_schema":
        return _wrong_schema()
    if kind == "fails_to_load":
        return b"this is not an ONNX model\n" * 64
    if kind == "nan_outputs":
        return _nan_outputs()
    if kind == "slow":
        return _slow(layers)
    if kind == "label_inverted":
        return _label_inverted()
    raise ValueError(f"unknown bad model kind {kind!r} (one of {KINDS})")


def occupancy_copy(tmp: Path, version: str, kind: str = "good") -> Path:
    """The shipped occupancy model as ``version`` (nothing wrong with it)."""
    dst = tmp / f"occupancy-{version}-{kind}"
    shutil.copytree(shipped_models_dir() / "occupancy", dst)
    raw = json.loads((dst / MANIFEST_FILE).read_text())
    raw["version"] = version
    (dst / MANIFEST_FILE).write_text(json.dumps(raw))
    return dst


def bad_version(tmp: Path, kind: str, version: str, *, layers: int = SLOW_LAYERS) -> Path:
    """The shipped occupancy model as ``version``, made bad the ``kind`` way."""
    dst = occupancy_copy(tmp, version, kind)
    raw = json.loads((dst / MANIFEST_FILE).read_text())
    for variant in raw["variants"].values():
        (dst / variant["file"]).unlink(missing_ok=True)
    onnx_path = dst / "occupancy.onnx"
    onnx_path.write_bytes(onnx_bytes(kind, layers))
    digest = sha256_file(onnx_path)
    size = onnx_path.stat().st_size
    raw.update(file=onnx_path.name, sha256=digest)
    raw["variants"] = {"fp32": {"file": onnx_path.name, "sha256": digest, "size_bytes": size}}
    (dst / MANIFEST_FILE).write_text(json.dumps(raw))
    return dst


def attach_shipped_canary(model_dir: Path) -> None:
    """A canary set of an occupied and a vacant room, expected as the shipped model
    answers them."""
    session = open_session(shipped_models_dir() / "occupancy" / "occupancy.onnx")
    rows = [OCCUPIED, VACANT]
    (out,) = session.run(["probabilities"], {"features": np.asarray(rows, np.float32)})
    labels = [("vacant", "occupied")[int(k)] for k in np.argmax(out, axis=1)]
    attach_canary(model_dir, rows, labels)
