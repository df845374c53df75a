"""Configuration of the personalization service (section ``[personalization]``, env
``ROOST_PERSONALIZATION_*``).

The privacy budget is a household setting, not a per-request one: ``epsilon`` at
``delta`` per fixed ``period_days`` window, composed by the ``accountant`` across every
fine-tuning run of the period (see ``services.personalization.ledger``). The per-job
limits bound what one training run may cost the hub (wall time, memory above the
imported libraries, CPU priority).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from services.kit.config import ServiceConfig

DEFAULT_PORT = 50054
ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class PersonalizationConfig(ServiceConfig):
    port: int = DEFAULT_PORT
    hub_id: str = "local"
    # The model registry (written by the update service; read-only here).
    registry_root: Path = Path("var/data/models")
    # Peers.
    audit_target: str = "127.0.0.1:50052"
    update_target: str = "127.0.0.1:50053"
    inference_target: str = "127.0.0.1:50051"
    peer_deadline_seconds: float = 10.0
    # The household's privacy budget: epsilon at delta per period, for ALL models together
    # (one scope, "household": the models learn from the same sensors and minutes, so their
    # data is not disjoint and parallel composition would not hold).
    epsilon_per_period: float = 4.0
    delta: float = 1e-5
    period_days: int = 30
    accountant: str = "prv"
    # Per-job limits. max_duration_seconds is the default and the upper bound of a
    # request's max_duration_seconds; max_memory_mb bounds the address space the job may
    # add once torch and onnxruntime are imported; nice lowers its CPU priority.
    max_duration_seconds: int = 600
    max_memory_mb: int = 1024
    nice: int = 10
    # 0 = the task's default epochs (services.personalization.finetune.DEFAULTS).
    epochs: float = 0.0
    # Training needs at least this many labelled examples of the model.
    min_examples: int = 200
    # Labelled examples older than this are deleted from the local store.
    retention_days: float = 90.0
    # How often the retention pruning runs.
    retention_interval_seconds: float = 3600.0
    # The public base-task data sets (replay against forgetting, the forgetting metric):
    # None means ../shared/data next to the checkout; absent data means no replay.
    public_data_dir: Path | None = None
    # Largest AddExamples request, in examples.
    max_examples_per_request: int = 10_000

    def __post_init__(self) -> None:
        if not self.hub_id:
            raise ValueError("personalization.hub_id: required")
        if not (math.isfinite(self.epsilon_per_period) and self.epsilon_per_period > 0):
            raise ValueError("personalization.epsilon_per_period: must be > 0")
        if not 0 < self.delta < 1:
            raise ValueError("personalization.delta: must be in (0, 1)")
        if self.period_days < 1:
            raise ValueError("personalization.period_days: must be >= 1")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"personalization.accountant: must be one of {', '.join(ACCOUNTANTS)}")
        if self.max_duration_seconds < 1:
            raise ValueError("personalization.max_duration_seconds: must be >= 1")
        if self.max_memory_mb < 64:
            raise ValueError("personalization.max_memory_mb: must be >= 64")
        if not 0 <= self.nice <= 19:
            raise ValueError("personalization.nice: must be in [0, 19]")
        if not (math.isfinite(self.epochs) and self.epochs >= 0):
            raise ValueError("personalization.epochs: must be >= 0 (0 = the task default)")
        if self.min_examples < 1:
            raise ValueError("personalization.min_examples: must be >= 1")
        if not self.retention_days > 0:
            raise ValueError("personalization.retention_days: must be > 0")
        if not self.retention_interval_seconds > 0:
            raise ValueError("personalization.retention_interval_seconds: must be > 0")
        if self.max_examples_per_request < 1:
            raise ValueError("personalization.max_examples_per_request: must be >= 1")
        if not self.peer_deadline_seconds > 0:
            raise ValueError("personalization.peer_deadline_seconds: must be > 0")
