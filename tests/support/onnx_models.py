"""Tiny hand-built ONNX models for unit tests (no training, no torch)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from models.manifest import FeatureInfo, InputSchema, Manifest, sha256_file
from services.inference.registry import LoadedModel, load_model


def linear_model(tmp_path: Path, weights: list[float]) -> LoadedModel:
    """y = softmax([0, w·x]) as an ONNX graph: a classifier whose logit is linear in x."""
    n = len(weights)
    w = helper.make_tensor("w", TensorProto.FLOAT, [n, 2], [v for wi in weights for v in (0.0, wi)])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "linear.onnx"
    onnx.save(model, str(path))
    manifest = Manifest(
        name="linear",
        version="0.0.1",
        task_kind="classification",
        file=path.name,
        sha256=sha256_file(path),
        input=InputSchema(
            "features", "float32", (n,), tuple(FeatureInfo(f"f{i}") for i in range(n))
        ),
        output_name="probabilities",
        output_labels=("no", "yes"),
        feature_spec="test",
        baseline=tuple(0.0 for _ in range(n)),
    )
    (tmp_path / "manifest.json").write_text(manifest.to_json())
    return load_model(tmp_path)
