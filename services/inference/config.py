"""Configuration of the inference service (section ``[inference]``, env ``ROOST_INFERENCE_*``).

Models come from the on-disk model registry when ``registry_root`` is set (the
``models`` volume the update service writes; hot swap, shadow and A/B follow it), or
from the plain directory ``model_dir`` when it is not (tests and tools: load once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.manifest import shipped_models_dir
from services.kit.config import ServiceConfig

DEFAULT_PORT = 50051


@dataclass(frozen=True)
class InferenceConfig(ServiceConfig):
    port: int = DEFAULT_PORT
    # One sub-directory per model, each with manifest.json and its ONNX file. Used only
    # when registry_root is None.
    model_dir: Path = field(default_factory=shipped_models_dir)
    # The model store (services/modelstore), read only: the update service (or, for a
    # stack on one machine, the launcher) installs the shipped models. None: model_dir.
    registry_root: Path | None = None
    # How often each model's state.json is checked (a stat; read only on change).
    registry_poll_seconds: float = 0.2
    # onnxruntime worker threads (sessions run here, off the event loop).
    threads: int = 1
    # onnxruntime execution providers in preference, e.g. "OpenVINOExecutionProvider"
    # (needs the onnxruntime-openvino wheel), "QNNExecutionProvider", "CUDAExecutionProvider".
    # Those this build lacks are skipped with a warning; CPU always comes last.
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # Largest PredictBatch accepted.
    max_batch: int = 4096
    # Shadow runs waiting for an idle moment, and batches waiting to be counted for
    # drift; beyond these, jobs are dropped and counted (overload never slows serving).
    shadow_queue: int = 64
    drift_queue: int = 1024
    # Shadow: a regressor agrees when max |candidate - active| <= this, in output units.
    regression_tolerance: float = 0.5
    # Health stats window: this long, at most stats_max_records session.run calls.
    stats_window_seconds: float = 600.0
    stats_max_records: int = 10_000
    # Drift: alert when a feature's PSI or KS exceeds these with enough live values.
    psi_alert: float = 0.25
    ks_alert: float = 0.3
    min_samples: int = 500
    # Drift window: drift_buckets buckets of drift_bucket_seconds (default 24 x 1 h).
    drift_bucket_seconds: float = 3600.0
    drift_buckets: int = 24
