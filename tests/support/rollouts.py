"""Registry-backed inference for rollout tests: two versions of a tiny linear model in
an on-disk registry, request builders, and the service's metrics."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from prometheus_client import REGISTRY

from models.manifest import MANIFEST_FILE, Manifest, parse_manifest
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as pb
from services.inference.app import InferenceApp
from services.inference.config import InferenceConfig
from services.modelstore.registry import Registry
from tests.support.onnx_models import linear_model

W_ACTIVE = [1.0, 0.0, -1.0]
W_CANDIDATE = [1.0, 0.0, 1.0]

#: The ``start_app`` fixture (tests/unit/inference/conftest.py): starts an InferenceApp
#: from a config and closes it after the test.
StartApp = Callable[[InferenceConfig], Awaitable[InferenceApp]]


def rewrite_manifest(model_dir: Path, **changes: object) -> Manifest:
    path = model_dir / MANIFEST_FILE
    manifest = dataclasses.replace(parse_manifest(json.loads(path.read_text())), **changes)  # type: ignore[arg-type]
    path.write_text(manifest.to_json())
    return manifest


def linear_dir(tmp: Path, weights: list[float], version: str, **changes: object) -> Path:
    """A tiny 'linear' classifier (softmax([0, w.x]): label 'yes' iff w.x > 0)."""
    dst = tmp / f"linear-{version}"
    linear_model(dst, weights)
    rewrite_manifest(dst, version=version, **changes)
    return dst


def linear_probs(weights: list[float], x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    z = x.astype(np.float64) @ np.asarray(weights)
    p_yes = 1.0 / (1.0 + np.exp(-z))
    return np.stack([1.0 - p_yes, p_yes], axis=1)


def tensor(row: npt.ArrayLike) -> common_pb2.Tensor:
    values = np.asarray(row, dtype=np.float32).ravel().tolist()
    return common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT32, float_values=values)


def batch_request(
    x: npt.NDArray[np.float32], entity_ids: list[str] | None = None, model: str = "linear"
) -> pb.PredictBatchRequest:
    return pb.PredictBatchRequest(
        model_name=model, inputs=[tensor(r) for r in x], entity_ids=entity_ids or []
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def config(tmp: Path, **overrides: object) -> InferenceConfig:
    """The inference service on port 0, following the registry under ``tmp``."""
    return InferenceConfig(
        port=0,
        certs_dir=tmp / "certs",
        registry_root=tmp / "registry",
        **overrides,  # type: ignore[arg-type]
    )


def two_linear_versions(tmp: Path, stage: str, share: float = 0.0, **changes: object) -> Registry:
    """A registry with linear 1.0.0 active and 2.0.0 as the candidate at ``stage``."""
    disk = Registry(tmp / "registry")
    disk.add_version(linear_dir(tmp, W_ACTIVE, "1.0.0", **changes), "local")
    disk.activate("linear", "1.0.0")
    disk.add_version(linear_dir(tmp, W_CANDIDATE, "2.0.0", **changes), "local")
    disk.stage("linear", "2.0.0")
    if stage != "staged":
        disk.start_rollout("linear", stage, share)  # type: ignore[arg-type]
    return disk
