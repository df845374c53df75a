"""bench.cost: CPU time read from /proc (a command name with spaces and parentheses
included), CPU and stage times per decision between two snapshots, and energy said
unavailable rather than estimated where RAPL is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cost as cost_module
from bench.cost import Snapshot, cost, cpu_seconds, energy_uj


def test_cpu_seconds_counts_a_busy_child_with_an_awkward_name(tmp_path: Path) -> None:
    # A command name with a space and a ")" must not shift the parsed fields.
    exe = tmp_path / "busy ) proc"
    exe.symlink_to(sys.executable)
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
    child = subprocess.Popen([str(exe), "-c", spin + "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        used = 0.0
        while time.monotonic() < deadline and used < 0.5:
            used = cpu_seconds(child.pid)
            time.sleep(0.05)  # polling with a deadline
        assert 0.5 <= used < 5
    finally:
        child.kill()
        child.wait()


def test_own_cpu_seconds_match_the_kernel() -> None:
    mine = cpu_seconds(os.getpid())
    times = os.times()
    assert abs(mine - (times.user + times.system)) < 0.1


def snap(
    at: float,
    cpu: dict[str, float],
    published: float,
    stage_n: float,
    stage_sum: float,
    energy: int | None = None,
) -> Snapshot:
    metrics = {
        ("roost_hub_decisions_total", 'model="occupancy",outcome="published"'): published,
        ("roost_hub_decisions_total", 'model="occupancy",outcome="duplicate"'): 50.0,
        ("roost_hub_stage_seconds_count", 'stage="predict"'): stage_n,
        ("roost_hub_stage_seconds_sum", 'stage="predict"'): stage_sum,
        ("roost_hub_batch_size_count", ""): stage_n,
        ("roost_hub_batch_size_sum", ""): published,
    }
    return Snapshot(at, cpu, metrics, energy)


def test_cost_per_decision_between_snapshots() -> None:
    a = snap(0.0, {"hub": 1.0, "inference": 2.0, "audit": 3.0, "mosquitto": 0.0}, 100, 10, 0.01)
    b = snap(10.0, {"hub": 2.0, "inference": 2.5, "audit": 3.5, "mosquitto": 0.4}, 1100, 260, 0.51)
    c = cost(a, b)
    assert c["decisions"] == 1000  # published only: duplicates are not decisions
    assert c["cpu_ms_per_decision"]["hub"] == pytest.approx(1.0)
    assert c["serving_cpu_ms_per_decision"] == pytest.approx(2.0)  # the broker apart
    assert c["cpu_percent_of_one_core"]["mosquitto"] == pytest.approx(4.0)
    assert c["stage_mean_ms"]["predict"]["mean_ms"] == pytest.approx(2.0)
    assert c["mean_batch"] == pytest.approx(4.0)
    assert c["energy_mj_per_decision"] == "unavailable"


def test_energy_per_decision_where_rapl_is_exposed() -> None:
    a = snap(0.0, {"hub": 0.0}, 0, 0, 0, energy=1_000_000)
    b = snap(1.0, {"hub": 0.0}, 500, 0, 0, energy=3_000_000)
    assert cost(a, b)["energy_mj_per_decision"] == pytest.approx(4.0)


def test_energy_is_unavailable_without_rapl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cost_module, "RAPL", tmp_path / "missing")
    assert energy_uj() is None
    zone = tmp_path / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text("123456\n")
    monkeypatch.setattr(cost_module, "RAPL", tmp_path / "powercap")
    assert energy_uj() == 123456
    (zone / "energy_uj").write_text("garbage")
    assert energy_uj() is None  # unreadable: unavailable, never a guess
