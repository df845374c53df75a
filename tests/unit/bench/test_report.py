"""The benchmark's report renders every section from a result (no stack needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.e2e_report import plot, render
from bench.report import markdown_table, percentile


def spread(v: float) -> dict[str, float]:
    return {"median": v, "min": v * 0.9, "max": v * 1.1}


def cost(cpu: float, load: float = 1.0) -> dict[str, Any]:
    return {
        "cpu_ms_per_decision": {"hub": cpu / 2, "inference": cpu / 4, "audit": cpu / 4},
        "serving_cpu_ms_per_decision": cpu,
        "stage_mean_ms": {s: {"batches": 10, "mean_ms": 1.0} for s in ("predict", "record")},
        "outside_hub_mean_ms": 1.5,
        "e2e_mean_ms": 4.0,
        "mean_batch": 1.2,
        "load_average": [load, load, load],
        "energy_mj_per_decision": "unavailable",
    }


def result(*, load: float = 0.3, cpu: float = 0.9) -> dict[str, Any]:
    repeat = {"cost": cost(cpu, load)}
    return {
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "memory_gib": 24,
            "platform": "linux",
            "python": "3.11",
            "broker": "mosquitto 2",
            "date": "2026-11-25",
        },
        "load_average": {"start": [load] * 3, "end": [load] * 3},
        "steady": {
            "rate": 200,
            "seconds": 30,
            "repeats": [repeat, repeat, repeat],
            "p50": spread(3.0),
            "p99": spread(20.0),
            "p50_over_echo": spread(4.0),
            "p99_over_echo": spread(10.0),
            "echo_p50": spread(0.75),
            "echo_p99": spread(2.0),
            "session_p50": spread(0.02),
            "p50_over_session": spread(150.0),
            "cpu_ms_per_decision": spread(cpu),
            "grpc_p50": spread(0.5),
            "grpc_p99": spread(0.9),
            "grpc_cpu_ms": spread(0.7),
            "fsync_p50": spread(0.25),
            "floor_p50_ms": spread(2.75),
            "floor_cpu_ms": spread(1.4),
            "p50_over_floor": spread(3.0 / 2.75),
            "cpu_over_floor": spread(cpu / 1.4),
        },
        "ramp": [
            {
                "rate": 1000,
                "achieved": 999.0,
                "p50": 9.0,
                "p99": 30.0,
                "sent": 30000,
                "received": 29997,
                "sustained": True,
                "keeps_up": True,
                "cost": cost(0.7, load),
            }
        ],
        "ramp_seconds": 30,
        "max_rate_p99_within_limit": 1000,
        "max_rate_keeping_up": 1000,
        "cold_start_s": {"runs": [0.5], **spread(0.5)},
        "idle": {"seconds": 30, "percent_of_one_core": {"hub": 0.5}, "total_percent": 0.5},
        "energy_mj_per_decision": "unavailable",
        "rss_peak_mb": {"hub": 70.0, "inference": 95.0, "audit": 65.0, "personalization": 300.0},
        "rss_serving_total_mb": 230.0,
        "rss_personalization_mb": 300.0,
    }


def test_render_has_every_section_and_floor() -> None:
    _, md = render(result())
    for heading in (
        "# End-to-end benchmark",
        "## Side by side",
        "## Where the time goes",
        "## CPU per decision",
        "## Ramp",
        "## Edge metrics",
        "## Against the design's floor",
    ):
        assert heading in md
    assert "| e2e p99 @200/s (ms) | 20.00 (18.00 to 22.00) | <= 25 | yes |" in md
    assert "| e2e p50 @200/s / broker echo p50, same run | 4.0 (3.6 to 4.4)x | <= 5x | yes |" in md
    assert "| energy per decision | unavailable |" in md
    # The floor: 2 x 0.75 + 2 x 0.5 + 0.25 = 2.75 ms, 3.7x the echo; Roost 1.1x it.
    assert "| **floor p50 (ms)** | 2.75 (2.48 to 3.03) |" in md
    assert "| floor p50 / broker echo p50 | 3.7x |" in md
    assert "| Roost e2e p50 / floor p50 | 1.1 (1.0 to 1.2)x |" in md
    assert "peak RSS personalization, apart (MB) | 300 |" in md
    assert "serving path, hub+inference+audit (MB) | 230 (" in md
    assert "a loaded run" not in md
    # The ramp beside the echo: 9 ms / 0.75 ms, 30 ms / 2 ms.
    assert "| 1000 | 999 | 9.00 | 12x | 30.00 | 15x | yes | yes |" in md


def test_a_missed_floor_and_a_loaded_run_are_said() -> None:
    _, md = render(result(load=7.5, cpu=2.5))
    assert (
        "| CPU per decision, hub+inference+audit @200/s (ms) | 2.50 (2.25 to 2.75) | <= 1.0 | **NO** |"
        in md
    )
    assert "a loaded run" in md
    assert "7.5" in md  # the load average is in the report


def test_the_ramps_own_load_at_the_end_does_not_make_a_loaded_run() -> None:
    res = result(load=0.2)
    res["load_average"]["end"] = [3.0] * 3  # the ramp's 2,000/s step on 2 cores
    _, md = render(res)
    assert "a loaded run" not in md
    assert "0.2 at the start (3.0 at the end, the ramp's own load)" in md


def test_percentile_and_table() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 100.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 100.0], 99) == 100.0
    assert markdown_table(["a"], [[1]]) == "| a |\n|---|\n| 1 |"


def test_the_plot_draws_with_and_without_the_floor(tmp_path: Path) -> None:
    res = result()
    plot(res, tmp_path / "with.png")
    for key in ("floor_p50_ms", "floor_cpu_ms"):  # a result from before the floor was measured
        del res["steady"][key]
    plot(res, tmp_path / "without.png")
    assert (tmp_path / "with.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "without.png").stat().st_size > 0
