"""Configuration of the inference service (section ``[inference]``, env ``ROOST_INFERENCE_*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.manifest import shipped_models_dir
from services.kit.config import ServiceConfig

DEFAULT_PORT = 50051


@dataclass(frozen=True)
class InferenceConfig(ServiceConfig):
    port: int = DEFAULT_PORT
    # One sub-directory per model, each with manifest.json and its ONNX file.
    model_dir: Path = field(default_factory=shipped_models_dir)
    # onnxruntime worker threads (sessions run here, off the event loop).
    threads: int = 1
    # Largest PredictBatch accepted.
    max_batch: int = 4096
