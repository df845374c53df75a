"""Other versions of the shipped occupancy model, for update and rollout tests, and a
signed TUF repository offering one."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from cli.tuf_repo import ModelRepository
from models.manifest import MANIFEST_FILE, sha256_file, shipped_models_dir
from services.modelstore.bundle import pack_bundle

# Features in the occupancy manifest's order: temperature, humidity, light, co2, hour.
OCCUPIED = [
    22.5,
    27.0,
    520.0,
    950.0,
    math.sin(2 * math.pi * 14 / 24),
    math.cos(2 * math.pi * 14 / 24),
]


def occupancy_version(tmp: Path, version: str, *, constant_vacant: bool = False) -> Path:
    """The shipped occupancy model as another version; ``constant_vacant`` swaps in a
    model that always answers "vacant" (same input and output names)."""
    dst = tmp / f"occupancy-{version}"
    shutil.copytree(shipped_models_dir() / "occupancy", dst)
    raw = json.loads((dst / MANIFEST_FILE).read_text())
    raw["version"] = version
    if constant_vacant:
        zeros = helper.make_tensor("w", TensorProto.FLOAT, [6, 2], [0.0] * 12)
        bias = helper.make_tensor("b", TensorProto.FLOAT, [2], [5.0, -5.0])
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["features", "w"], ["m"]),
                helper.make_node("Add", ["m", "b"], ["logits"]),
                helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            ],
            "vacant",
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 6])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
            initializer=[zeros, bias],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        for variant in list(raw["variants"]):
            (dst / raw["variants"][variant]["file"]).unlink(missing_ok=True)
        onnx.save(model, str(dst / "occupancy.onnx"))
        digest = sha256_file(dst / "occupancy.onnx")
        raw["file"], raw["sha256"] = "occupancy.onnx", digest
        size = (dst / "occupancy.onnx").stat().st_size
        raw["variants"] = {"fp32": {"file": "occupancy.onnx", "sha256": digest, "size_bytes": size}}
    (dst / MANIFEST_FILE).write_text(json.dumps(raw))
    return dst


def tuf_repository_offering(home: Path, version: str) -> dict[str, str]:
    """A signed TUF repository under ``home`` offering occupancy ``version`` (the shipped
    weights); the update service's environment that points at it and trusts its root."""
    repo = ModelRepository.create(home / "repo", home / "keys")
    bundle = pack_bundle(occupancy_version(home, version), home / "bundle.tar")
    repo.publish("occupancy", bundle.path, version)
    trusted = home / "trusted-root.json"
    shutil.copy(repo.root_path, trusted)
    return {
        "ROOST_UPDATE_TUF_SOURCE": str(home / "repo"),
        "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(trusted),
    }
