"""The loaded models: one onnxruntime session per manifest in the model directory.

Sessions run on a small thread pool, never on the event loop. The registry maps
model name to the active version; replacing an entry is a single dict assignment,
so a later hot swap never leaves a request without a model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from prometheus_client import Gauge, Histogram

from models.manifest import MANIFEST_FILE, Manifest, ManifestError, load_manifest
from services.kit.errors import NotFound

log = logging.getLogger(__name__)

RUN_SECONDS = Histogram(
    "roost_inference_session_run_seconds",
    "onnxruntime session.run time per call (a batch is one call).",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
)
MODELS_LOADED = Gauge("roost_inference_models_loaded", "Models loaded and serving.")


@dataclass
class LoadedModel:
    manifest: Manifest
    session: ort.InferenceSession
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def open_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def load_model(model_dir: Path) -> LoadedModel:
    manifest = load_manifest(model_dir)
    session = open_session(model_dir / manifest.file)
    inputs = {i.name: i for i in session.get_inputs()}
    if manifest.input.name not in inputs:
        raise ManifestError(
            f"{model_dir}: ONNX has no input '{manifest.input.name}' (has {sorted(inputs)})"
        )
    outputs = {o.name for o in session.get_outputs()}
    if manifest.output_name not in outputs:
        raise ManifestError(f"{model_dir}: ONNX has no output '{manifest.output_name}'")
    return LoadedModel(manifest=manifest, session=session)


class ModelRegistry:
    def __init__(self, threads: int = 1) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="onnxruntime")

    @classmethod
    def from_directory(cls, root: Path, threads: int = 1) -> ModelRegistry:
        """Load every ``<root>/<name>/manifest.json``. A broken model is logged and skipped."""
        registry = cls(threads)
        for manifest_path in sorted(root.glob(f"*/{MANIFEST_FILE}")):
            try:
                registry.put(load_model(manifest_path.parent))
            except (ManifestError, OSError, ort.capi.onnxruntime_pybind11_state.Fail) as e:
                log.error("skipping model in %s: %s", manifest_path.parent, e)
        if not registry._models:
            log.warning("no models loaded from %s", root)
        return registry

    def put(self, model: LoadedModel) -> None:
        self._models[model.manifest.name] = model
        MODELS_LOADED.set(len(self._models))
        m = model.manifest
        log.info("loaded model %s %s (sha256 %s)", m.name, m.version, m.sha256[:12])

    def get(self, name: str, version: str = "") -> LoadedModel:
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"model_name: '{name}' is not loaded (loaded: {sorted(self._models)})")
        if version and model.manifest.version != version:
            raise NotFound(
                f"version: '{name}' {version} is not loaded (serving {model.manifest.version})"
            )
        return model

    def all(self) -> list[LoadedModel]:
        return sorted(self._models.values(), key=lambda m: m.manifest.name)

    async def run(
        self, model: LoadedModel, batch: npt.NDArray[np.generic]
    ) -> npt.NDArray[np.float32]:
        """Run one batch (leading batch dimension) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.run_sync, model, batch)

    @staticmethod
    def run_sync(model: LoadedModel, batch: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        m = model.manifest
        started = time.perf_counter()
        (out,) = model.session.run([m.output_name], {m.input.name: batch})
        RUN_SECONDS.labels(m.name).observe(time.perf_counter() - started)
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def stack(arrays: Sequence[npt.NDArray[np.generic]]) -> npt.NDArray[np.generic]:
    return np.stack(arrays) if arrays else np.empty((0,))
