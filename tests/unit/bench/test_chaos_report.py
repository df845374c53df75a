"""The chaos report renders every section from a result, and says plainly when an
invariant did not hold (no stack needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.chaos import label, plan
from bench.chaos_ledger import aggregate
from bench.chaos_report import plot, render, verdicts


def row(process: str, kind: str, **kw: Any) -> dict[str, Any]:
    return {
        "process": process,
        "kind": kind,
        "down_s": 2.0 if kind == "short" else 60.0,
        "outage_s": 2.6,
        "pid_killed": 10,
        "pid_restarted": 11,
        "offered": 1000,
        "published": 990,
        "not_published": 10,
        "lost": 120,
        "lost_while_down": 100,
        "lost_after_ready": 15,
        "resume_s": 1.25,
        "publish_gap_s": 0.01,
        "decision_gap_s": 3.5,
        "unaudited": 0,
        "acked_before": 5000,
        "acked_lost": 0,
        "duplicates": 0,
        "redelivered": 0,
        "recorded_not_received": 0,
        **kw,
    }


def result(rows: list[dict[str, Any]], **totals: int) -> dict[str, Any]:
    return {
        "mode": "quick",
        "rate": 300.0,
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "memory_gib": 24,
            "platform": "linux",
            "python": "3.11",
            "broker": "mosquitto 2",
            "date": "2026-11-25",
        },
        "outages": rows,
        "summary": aggregate(rows),
        "totals": {
            "offered": 6000,
            "published": 5900,
            "decided_readings": 5500,
            "decisions_received": 5500,
            "log_entries": 5600,
            "unaudited": 0,
            "acked_checked": 5000,
            "acked_lost": 0,
            "recorded_not_received": 100,
            "malformed": 0,
            **totals,
        },
        "log_lines": {"hub": 12, "audit": 0},
    }


def test_render_has_every_section() -> None:
    res = result([row("mosquitto", "short"), row("mosquitto", "long"), row("audit", "short")])
    table, md = render(res)
    assert table.row_count == 3
    for heading in ("# Chaos suite (quick run)", "## Invariants", "## Per process", "## Every"):
        assert heading in md
    assert "| broker | short | 1 | 2 |" in md
    assert "**NO**" not in md
    assert "hub 12, audit 0" in md


def test_a_broken_invariant_is_reported_as_no() -> None:
    res = result([row("hub", "short", resume_s=None, acked_lost=2)], unaudited=3)
    checks = {what: (value, held) for what, value, held in verdicts(res)}
    assert checks["published but unaudited decisions"] == ("3", False)
    assert checks["acknowledged audit entries lost"][1] is False
    assert checks["the hub decides again after every restart"] == ("never after hub short", False)
    assert render(res)[1].count("**NO**") == 3


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "chaos.png"
    plot(result([row("hub", "short"), row("hub", "long", resume_s=None)]), path)
    assert path.stat().st_size > 1000


def test_plans_kill_each_process_short_then_long() -> None:
    p = plan(["mosquitto", "hub"], short=2.0, long=60.0, repeats=3)
    assert [(label(x), k, d) for x, k, d in p.outages] == [
        *[("broker", "short", 2.0)] * 3,
        ("broker", "long", 60.0),
        *[("hub", "short", 2.0)] * 3,
        ("hub", "long", 60.0),
    ]
    readings, seconds = p.bounds()
    assert readings == int(300 * seconds)
