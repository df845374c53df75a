"""RoostFedAvg with stand-in results (the real SecAgg+ round: tests/integration/test_fleet_flower.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager

from fleet.server_app import RoostFedAvg
from fleet.server_settings import ServerSettings


def _result(vec: np.ndarray) -> tuple[Any, FitRes]:
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vec]), 1, {})
    return object(), res


def _strategy(tmp_path: Path, **kw: Any) -> RoostFedAvg:
    settings = ServerSettings(
        min_nodes=3, min_participants=2, head_size=4, report_path=str(tmp_path / "r.jsonl"), **kw
    )
    return RoostFedAvg(settings, run_tag="run1")


def _report(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]


def test_the_global_head_moves_by_the_average_delta_and_the_round_is_accounted(
    tmp_path: Path,
) -> None:
    s = _strategy(tmp_path)
    avg = np.array([0.5, -0.25, 0.0, 1.0], np.float32)  # SecAgg+ gives each result the average
    params, metrics = s.aggregate_fit(1, [_result(avg), _result(avg)], [])
    assert params is not None
    assert np.allclose(parameters_to_ndarrays(params)[0], avg)
    params, _ = s.aggregate_fit(2, [_result(avg), _result(avg)], [])
    assert params is not None
    assert np.allclose(parameters_to_ndarrays(params)[0], 2 * avg)
    assert s.accountant.rounds == 2
    lines = _report(tmp_path)
    assert [r["round"] for r in lines] == [1, 2]
    assert lines[1]["epsilon"] > lines[0]["epsilon"] == metrics["epsilon"]
    assert lines[1]["head"] == [float(v) for v in 2 * avg]


def test_a_sum_of_fewer_than_t_hubs_is_not_released(tmp_path: Path) -> None:
    s = _strategy(tmp_path)
    params, _ = s.aggregate_fit(1, [_result(np.ones(4, np.float32))], [RuntimeError("x")])
    assert params is None
    assert s.accountant.rounds == 0
    assert np.all(s.global_head == 0)
    assert _report(tmp_path) == [{"run": "run1", "round": 1, "participants": 1, "released": False}]


def test_no_hub_is_asked_once_the_fleet_budget_is_spent(tmp_path: Path) -> None:
    s = _strategy(tmp_path, noise_multiplier=1.0, epsilon_budget=5.0, delta=1e-5)
    s.aggregate_fit(1, [_result(np.ones(4, np.float32))] * 2, [])  # epsilon 4.73
    manager = SimpleClientManager()  # empty: would block if it were asked to sample
    assert s.configure_fit(2, s.initial_parameters, manager) == []  # type: ignore[arg-type]
    assert s.configure_fit(3, s.initial_parameters, manager) == []  # type: ignore[arg-type]
    stops = [r for r in _report(tmp_path) if "stopped" in r]
    assert stops == [{"run": "run1", "round": 2, "stopped": "fleet budget spent"}]
    assert s._fit_config(1)["roost.round_id"] == "run1-1"


def test_the_runs_last_line_says_how_it_ended_and_on_what_base(tmp_path: Path) -> None:
    s = _strategy(tmp_path, base_version="1.2.0")
    s.aggregate_fit(1, [_result(np.ones(4, np.float32))] * 2, [])
    s.aggregate_fit(2, [_result(np.ones(4, np.float32))], [])  # 1 < t: not released
    s.finish("completed")
    assert _report(tmp_path)[-1] == {
        "run": "run1",
        "ended": "completed",
        "model": "occupancy",
        "base_version": "1.2.0",
        "released_rounds": 1,
    }
