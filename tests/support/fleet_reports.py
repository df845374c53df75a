"""Fleet run reports written the way the ServerApp writes them: by ``RoostFedAvg`` itself,
fed the averages SecAgg+ would hand it (the real rounds: tests/integration/test_fleet_flower.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from fleet.server_app import RoostFedAvg
from fleet.server_settings import ServerSettings
from models.manifest import load_manifest, shipped_models_dir
from services.personalization.federated_train import head_of

F32Array = npt.NDArray[np.float32]


def shipped_head() -> F32Array:
    base = shipped_models_dir() / "occupancy"
    return head_of(base / load_manifest(base).file, "occupancy")


def write_report(
    report: Path,
    run: str,
    heads: Sequence[F32Array],
    participants: Sequence[int],
    outcome: str = "completed",
    **settings: Any,
) -> RoostFedAvg:
    """Rounds whose global head becomes ``heads[i]`` with ``participants[i]`` hubs in the
    sum (fewer than min-participants: not released), then the run's last line."""
    kw: dict[str, Any] = {
        "min_nodes": 4,
        "min_participants": 2,
        "noise_multiplier": 0.5,
        "epsilon_budget": 24.0,
    }
    s = RoostFedAvg(ServerSettings(report_path=str(report), **(kw | settings)), run_tag=run)
    for i, (head, n) in enumerate(zip(heads, participants, strict=True), start=1):
        average = (np.asarray(head, np.float32) - s.global_head).astype(np.float32)
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([average]), 1, {})
        s.aggregate_fit(i, [(object(), res)] * n, [])  # type: ignore[list-item]
    s.finish(outcome)
    return s
