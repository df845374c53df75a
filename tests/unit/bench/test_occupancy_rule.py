"""The occupancy rule comparison: the docs quote the recorded results, and "beats the
rule" means better accuracy AND fewer false alarms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.occupancy_rule import RECIPES, beats_rule, median
from bench.report import RESULTS

DOCS = Path(__file__).resolve().parents[3] / "docs" / "models.md"
RECORDED: dict[str, Any] = json.loads((RESULTS / "occupancy_rule.json").read_text())
DOC_ROWS = {
    "shipped": "shipped recipe (class weights, argmax)",
    "v1 calibrated": "v1, no class weights, Platt on validation",
    "v1 weighted calibrated": "v1, class weights, Platt on validation",
    "v2 calibrated": "`occupancy/v2` (+ CO2 slope, light history), Platt",
}


def _fmt(value: float, key: str, bold: bool = False) -> str:
    text = f"{value:.4f}" if key == "accuracy" else f"{value:.1f}"
    return f"**{text}**" if bold else text


def test_the_docs_table_quotes_the_recorded_medians() -> None:
    docs = DOCS.read_text()
    for name, label in DOC_ROWS.items():
        runs = RECORDED["recipes"][name]["runs"]
        cells = [
            _fmt(median(runs, s, k), k)
            for s in ("validation", "test")
            for k in ("accuracy", "false_alarms_per_day")
        ]
        row = f"| {label} | " + " | ".join(cells) + " |"
        plain = docs.replace("**", "")
        assert row in plain, row


def test_no_recorded_recipe_beats_the_rule_on_every_split() -> None:
    """What the docs and the unchanged artifact rest on."""
    assert set(RECORDED["recipes"]) == {r.name for r in RECIPES}
    for name in RECORDED["recipes"]:
        assert not all(beats_rule(RECORDED, name, s) for s in ("validation", "test")), name


def _result(acc: float, fp: float) -> dict[str, Any]:
    run = {"x": {"accuracy": acc, "false_occupied": fp}}
    return {
        "rule": {"x": {"accuracy": 0.99, "false_occupied": 5.0}},
        "recipes": {"r": {"runs": [run]}},
    }


def test_beating_the_rule_needs_both_accuracy_and_fewer_false_alarms() -> None:
    assert beats_rule(_result(0.995, 4.0), "r", "x")
    assert not beats_rule(_result(0.995, 5.0), "r", "x")  # a tie in false alarms
    assert not beats_rule(_result(0.99, 1.0), "r", "x")  # a tie in accuracy
    assert not beats_rule(_result(0.999, 9.0), "r", "x")
