"""The benchmark's report renders every section from a result (no stack needed)."""

from __future__ import annotations

from typing import Any

from bench.e2e import render
from bench.report import markdown_table, percentile


def result() -> dict[str, Any]:
    run = {"p50": 5.0, "p99": 20.0}
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
        "session_run_ms": {"p50": 0.02, "p99": 0.05},
        "echo_ms": {"p50": 0.6, "p99": 1.3, "rate": 200},
        "e2e_steady": {"rate": 200, **run, "runs": [run, run, run], "sent": 6000, "received": 5991},
        "ramp": [
            {
                "rate": 500,
                "achieved": 499.0,
                "p50": 9.0,
                "p99": 30.0,
                "sent": 2500,
                "received": 2497,
                "sustained": True,
                "keeps_up": True,
            }
        ],
        "max_sustained_rate": 500,
        "max_rate_p99_within_50ms": 500,
        "cold_start_s": {"runs": [0.5], "median": 0.5},
        "rss_peak_mb": {"hub": 70.0, "inference": 95.0, "audit": 65.0},
        "rss_total_mb": 230.0,
    }


def test_render_has_every_section_and_floor() -> None:
    _, md = render(result())
    for heading in ("# End-to-end benchmark", "## Side by side", "## Ramp", "## Memory"):
        assert heading in md
    assert "| e2e p99 @200/s, median of 3 runs (ms) | 20.00 | <= 25 | yes |" in md
    assert "| peak RSS hub+inference+audit (MB) | 230 | <= 400 | yes |" in md


def test_percentile_and_table() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 100.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 100.0], 99) == 100.0
    assert markdown_table(["a"], [[1]]) == "| a |\n|---|\n| 1 |"
