"""Evaluate the shipped occupancy artifact on ``datatest.txt`` (torch-free).

``roost models evaluate occupancy`` prints these; the reproducibility test compares
them with the metrics recorded in the manifest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console

from models.datasets import DatasetMissing, load_occupancy
from models.export import run
from models.manifest import load_manifest, shipped_models_dir
from models.occupancy.data import build_features
from models.report import comparison_table


def evaluate(model_dir: Path) -> dict[str, float]:
    """Test accuracy of each shipped precision, keyed like the manifest's metrics."""
    manifest = load_manifest(model_dir)
    data = load_occupancy("test")
    x, y = build_features(data), data.occupancy
    out: dict[str, float] = {}
    for name, key in (("fp32", "test_accuracy"), ("int8", "test_accuracy_int8")):
        variant = manifest.variants[name]
        probs = run(model_dir / variant.file, x, manifest.input.name, manifest.output_name)
        out[key] = round(float(np.mean(probs.argmax(axis=1) == y)), 6)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate the occupancy model")
    parser.add_argument("--model-dir", type=Path, default=shipped_models_dir() / "occupancy")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(args.model_dir)
    except DatasetMissing as e:
        Console(stderr=True).print(f"[red]cannot evaluate occupancy:[/] {e}")
        return 2
    table, ok = comparison_table(
        f"occupancy on datatest.txt ({args.model_dir})",
        metrics,
        load_manifest(args.model_dir).metrics,
    )
    Console().print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
