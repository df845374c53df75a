"""Configuration of the personalization service (section ``[personalization]``, env
``ROOST_PERSONALIZATION_*``).

The privacy budget is a household setting, not a per-request one: ``epsilon`` at
``delta`` for every fine-tuning run in any ``period_days`` window, composed by the
``accountant`` (see ``services.personalization.ledger``), for one ``privacy_unit``: a
household-day (the default) or one example (``services.personalization.privacy_unit``).
``delta`` 0 derives δ from the unit and the retention
(:attr:`PersonalizationConfig.budget_delta`). Examples are kept ``retention_days``,
which may not exceed ``period_days``: no example outlives the window its budget is
counted in. The per-job
limits bound what one training run may cost the hub (wall time, memory above the
imported libraries, CPU priority).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from services.kit.config import ServiceConfig
from services.personalization.privacy_unit import UNITS, derived_delta

DEFAULT_PORT = 50054
ACCOUNTANTS = ("rdp", "prv")


# (field, is the value invalid, what it must be), checked in this order.
_RULES: Final[tuple[tuple[str, Callable[[Any], bool], str], ...]] = (
    ("hub_id", lambda v: not v, "required"),
    ("epsilon_per_period", lambda v: not (math.isfinite(v) and v > 0), "must be > 0"),
    ("delta", lambda v: not 0 <= v < 1, "must be in [0, 1) (0 = derived from the unit)"),
    ("privacy_unit", lambda v: v not in UNITS, f"must be one of {', '.join(UNITS)}"),
    ("period_days", lambda v: v < 1, "must be >= 1"),
    ("accountant", lambda v: v not in ACCOUNTANTS, f"must be one of {', '.join(ACCOUNTANTS)}"),
    ("max_duration_seconds", lambda v: v < 1, "must be >= 1"),
    ("max_memory_mb", lambda v: v < 64, "must be >= 64"),
    ("nice", lambda v: not 0 <= v <= 19, "must be in [0, 19]"),
    (
        "epochs",
        lambda v: not (math.isfinite(v) and v >= 0),
        "must be >= 0 (0 = the task default)",
    ),
    ("min_examples", lambda v: v < 1, "must be >= 1"),
    ("retention_days", lambda v: not v > 0, "must be > 0"),
    ("retention_interval_seconds", lambda v: not v > 0, "must be > 0"),
    ("max_examples_per_request", lambda v: v < 1, "must be >= 1"),
    ("peer_deadline_seconds", lambda v: not v > 0, "must be > 0"),
)


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
    # The household's privacy budget: epsilon at delta in any period_days window, for ALL
    # models together
    # (one scope, "household": the models learn from the same sensors and minutes, so their
    # data is not disjoint and parallel composition would not hold).
    epsilon_per_period: float = 4.0
    # What one guarantee protects: "day" (every row of one household-day, the default) or
    # "example" (one labelled row).
    privacy_unit: str = "day"
    # 0: the largest power of ten <= 1/(10 * the most units one run can see) (budget_delta).
    delta: float = 0.0
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
    # Labelled examples older than this are deleted from the local store (at most
    # period_days, so the budget covers an example's whole life on the hub).
    retention_days: float = 30.0
    # How often the retention pruning runs.
    retention_interval_seconds: float = 3600.0
    # The public base-task data sets (replay against forgetting, the forgetting metric):
    # None means ../shared/data next to the checkout; absent data means no replay.
    public_data_dir: Path | None = None
    # Largest AddExamples request, in examples.
    max_examples_per_request: int = 10_000

    def __post_init__(self) -> None:
        for name, invalid, rule in _RULES:
            if invalid(getattr(self, name)):
                raise ValueError(f"personalization.{name}: {rule}")
        if self.retention_days > self.period_days:
            raise ValueError(
                "personalization.retention_days: must be <= period_days (examples must not"
                " outlive the window their privacy budget is counted in)"
            )

    @property
    def budget_delta(self) -> float:
        """The budget's δ: ``delta``, or derived from the unit and the retention."""
        return self.delta or derived_delta(self.privacy_unit, self.retention_days)
